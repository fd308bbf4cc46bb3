package enclave_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	proxyproto "github.com/pires/go-proxyproto"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/testutil"
	"github.com/quenchnet/quench/policy"
)

// These tests run an in-process quench-host and an enclave in userspace
// mode serving HTTPS, joined by a unix socket standing in for VSOCK, with
// the development attester. They need no privileges.

// svEnv is a host publishing 127.0.0.1:0 to the enclave's :443 and a
// serving enclave.
type svEnv struct {
	host    *host.Host
	enc     *enclave.Enclave
	dev     *attestation.DevAttester
	public  string // https://127.0.0.1:PORT
	intBase string // http://127.0.0.1:PORT (internal server)
}

// svHost starts a host publishing 127.0.0.1:0 to the enclave's :443 and
// 127.0.0.1:0 to its :9090 (metrics).
func svHost(tb testing.TB, sock string) *host.Host {
	tb.Helper()
	return startTestHost(tb, sock, host.Config{}, "127.0.0.1:0:443", "127.0.0.1:0:9090")
}

// svStart starts host and enclave; mod adjusts the enclave's Config (whose
// Handler defaults to one answering "hello from the app").
func svStart(tb testing.TB, mod func(*enclave.Config)) *svEnv {
	tb.Helper()
	sock := filepath.Join(tb.TempDir(), "host.sock")
	env := &svEnv{host: svHost(tb, sock)}
	dev, err := attestation.NewDevAttester(attestation.DevConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	env.dev = dev
	cfg := enclave.Config{
		DialHost:     testutil.DialUnix(sock),
		ReconnectMin: 10 * time.Millisecond,
		ReconnectMax: 200 * time.Millisecond,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from the app at %s", r.URL.Path)
		}),
		InternalAddr: "127.0.0.1:0",
		Attester:     dev,
		DrainTimeout: 5 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	e := startEnclave(tb, cfg)
	env.enc = e
	env.public = "https://" + env.host.Published()[0].String()
	addrs, err := e.Addrs()
	if err != nil {
		tb.Fatal(err)
	}
	if addrs.Internal != nil {
		env.intBase = "http://" + addrs.Internal.String()
	}
	return env
}

// svClient trusts any certificate: the attestation document authenticates
// it. A fresh transport per test keeps connections from leaking between
// tests.
func svClient(tb testing.TB) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	tb.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func svGet(tb testing.TB, c *http.Client, u string) (int, string) {
	tb.Helper()
	resp, err := c.Get(u)
	if err != nil {
		tb.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("GET %s: body: %v", u, err)
	}
	return resp.StatusCode, string(b)
}

func TestServeHTTPSAndAttestation(t *testing.T) {
	env := svStart(t, nil)
	c := svClient(t)

	code, body := svGet(t, c, env.public+"/some/path")
	if code != http.StatusOK || body != "hello from the app at /some/path" {
		t.Fatalf("app: got %d %q", code, body)
	}
	code, body = svGet(t, c, env.public+"/enclave")
	if code != http.StatusOK || !strings.Contains(body, "/enclave/attestation") {
		t.Fatalf("index: got %d %q", code, body)
	}
	code, body = svGet(t, c, env.public+"/enclave/health")
	var h enclave.Health
	if err := json.Unmarshal([]byte(body), &h); err != nil || code != http.StatusOK || h.Status != "ok" || !h.AppReady || !h.Network.Connected {
		t.Fatalf("health: got %d %q (%v)", code, body, err)
	}

	// The document binds the certificate served on the very connection.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	remote := func() *attestation.Result {
		t.Helper()
		res, err := attestation.VerifyRemote(ctx, env.public, attestation.RemoteConfig{
			Options:   attestation.Options{Time: time.Now(), Roots: env.dev.Roots(), MaxAge: time.Minute},
			TLSConfig: &tls.Config{InsecureSkipVerify: true},
		})
		if err != nil {
			t.Fatalf("VerifyRemote: %v", err)
		}
		return res
	}
	res := remote()
	ud, err := attestation.ParseUserData(res.UserData)
	if err != nil {
		t.Fatal(err)
	}
	if ud.HasAppKey() {
		t.Errorf("app key hash set before registration: %x", ud.AppKeyHash)
	}
	// The AWS root must not accept development documents.
	if _, err := attestation.VerifyRemote(ctx, env.public, attestation.RemoteConfig{
		Options:   attestation.Options{Time: time.Now()},
		TLSConfig: &tls.Config{InsecureSkipVerify: true},
	}); err == nil {
		t.Error("development document verified against the AWS Nitro root")
	}

	// Register an app key hash on the internal server; documents bind it.
	want := sha256.Sum256([]byte("app public key"))
	resp, err := http.Post(env.intBase+enclave.HashPath, "text/plain", strings.NewReader(base64.StdEncoding.EncodeToString(want[:])))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s", enclave.HashPath, resp.Status)
	}
	ud, err = attestation.ParseUserData(remote().UserData)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, ud.AppKeyHash); diff != "" {
		t.Errorf("app key hash (-want +got):\n%s", diff)
	}

	// /enclave/config: plain, then attested.
	code, plain := svGet(t, c, env.public+enclave.ConfigPath)
	if code != http.StatusOK || !strings.Contains(plain, `"dev_attester":true`) || !strings.Contains(plain, `"egress":null`) {
		t.Fatalf("config: %d %q (want dev_attester true and egress null: no policy)", code, plain)
	}
	nonce := make([]byte, attestation.NonceSize)
	nonce[0] = 7
	code, body = svGet(t, c, env.public+enclave.ConfigPath+"?nonce="+hex.EncodeToString(nonce))
	if code != http.StatusOK {
		t.Fatalf("attested config: %d %q", code, body)
	}
	var cr enclave.ConfigResponse
	if err := json.Unmarshal([]byte(body), &cr); err != nil {
		t.Fatal(err)
	}
	if got, want := string(cr.Config), strings.TrimSpace(plain); got != want {
		t.Errorf("attested config %s, plain %s", got, want)
	}
	doc, err := attestation.DecodeDocument([]byte(cr.Attestation))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(cr.Config)
	cres, err := attestation.Verify(doc, attestation.Options{Time: time.Now(), Roots: env.dev.Roots(), Nonce: nonce})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sum[:], cres.PublicKey); diff != "" {
		t.Errorf("config hash in public_key (-want +got):\n%s", diff)
	}
	// The client side: VerifyRemoteConfig checks all of it on one
	// connection (nonce, certificate binding, the configuration's hash).
	_, vc, err := attestation.VerifyRemoteConfig(context.Background(), env.public, attestation.RemoteConfig{
		Options:   attestation.Options{Time: time.Now(), Roots: env.dev.Roots()},
		TLSConfig: &tls.Config{InsecureSkipVerify: true},
	})
	if err != nil || string(vc) != strings.TrimSpace(plain) {
		t.Errorf("VerifyRemoteConfig: %s, %v; want %s", vc, err, plain)
	}
}

// TestServeConfigEgress: /enclave/config lists the egress policy's rules
// as given, so that clients can audit the attested policy.
func TestServeConfigEgress(t *testing.T) {
	rules := []string{"*.amazonaws.com:443", "10.0.0.0/8:5432/tcp", "192.168.127.254:9000/udp"}
	pol, err := policy.Parse(rules)
	if err != nil {
		t.Fatal(err)
	}
	notes := map[string]string{"app_sandbox": "seccomp", "app_user": "1000:1000"}
	env := svStart(t, func(c *enclave.Config) { c.Egress = pol; c.Annotations = notes })
	code, body := svGet(t, svClient(t), env.public+enclave.ConfigPath)
	if code != http.StatusOK {
		t.Fatalf("config: %d %q", code, body)
	}
	var got struct {
		Egress      []string          `json:"egress"`
		Annotations map[string]string `json:"annotations"`
		DNSProxy    *string           `json:"dns_proxy"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rules, got.Egress); diff != "" {
		t.Errorf("egress (-want +got):\n%s\nconfig: %s", diff, body)
	}
	if diff := cmp.Diff(notes, got.Annotations); diff != "" {
		t.Errorf("annotations (-want +got):\n%s\nconfig: %s", diff, body)
	}
	if got.DNSProxy != nil {
		t.Errorf("dns_proxy %q in userspace mode, where there is none", *got.DNSProxy)
	}
}

func TestServeBadRequests(t *testing.T) {
	env := svStart(t, nil)
	c := svClient(t)
	for _, tc := range []struct {
		name string
		url  string
		want int
	}{
		{"attestation without nonce", env.public + enclave.AttestationPath, http.StatusBadRequest},
		{"attestation short nonce", env.public + enclave.AttestationPath + "?nonce=abcd", http.StatusBadRequest},
		{"config bad nonce", env.public + enclave.ConfigPath + "?nonce=zz", http.StatusBadRequest},
		{"unknown enclave path", env.public + "/enclave/nope", http.StatusNotFound},
		{"ready needs GET or POST", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.url == "" {
				req, _ := http.NewRequest(http.MethodDelete, env.intBase+enclave.ReadyPath, nil)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusMethodNotAllowed {
					t.Errorf("DELETE ready: %s", resp.Status)
				}
				return
			}
			if got, _ := svGet(t, c, tc.url); got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
		})
	}
	for _, body := range []string{"", "abc", base64.StdEncoding.EncodeToString(make([]byte, 31)), strings.Repeat("a", 2000)} {
		resp, err := http.Post(env.intBase+enclave.HashPath, "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 4 {
			t.Errorf("POST hash %q: %s, want 4xx", body, resp.Status)
		}
	}
}

func TestServeWaitForApp(t *testing.T) {
	env := svStart(t, func(c *enclave.Config) { c.WaitForApp = true })
	c := svClient(t)
	c.Timeout = 300 * time.Millisecond
	if resp, err := c.Get(env.public + "/"); err == nil {
		resp.Body.Close()
		t.Fatalf("public server answered %s before the app was ready", resp.Status)
	}
	resp, err := http.Get(env.intBase + enclave.ReadyPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("ready: %s", resp.Status)
	}
	c.Timeout = 10 * time.Second
	if code, body := svGet(t, c, env.public+"/x"); code != http.StatusOK || body != "hello from the app at /x" {
		t.Fatalf("after ready: %d %q", code, body)
	}
}

// TestServeDrain: requests in flight when Close starts all complete; Close
// waits for them.
func TestServeDrain(t *testing.T) {
	const n = 8
	var arrived sync.WaitGroup
	arrived.Add(n)
	release := make(chan struct{})
	env := svStart(t, func(c *enclave.Config) {
		c.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			arrived.Done()
			<-release
			fmt.Fprint(w, "done")
		})
	})
	c := svClient(t)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			resp, err := c.Get(env.public + "/slow")
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err == nil && (resp.StatusCode != http.StatusOK || string(b) != "done") {
				err = fmt.Errorf("%s %q", resp.Status, b)
			}
			errs <- err
		}()
	}
	arrived.Wait()
	closed := make(chan error, 1)
	go func() { closed <- env.enc.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) with requests in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Errorf("request lost in drain: %v", err)
		}
	}
	if err := <-closed; err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := env.enc.Close(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("second Close: %v, want net.ErrClosed", err)
	}
}

func TestServePprofRefusesAttestation(t *testing.T) {
	env := svStart(t, func(c *enclave.Config) { c.Pprof = true; c.MetricsAddr = ":9090" })
	c := svClient(t)
	nonce := strings.Repeat("00", attestation.NonceSize)
	for _, p := range []string{enclave.AttestationPath, enclave.ConfigPath} {
		if code, body := svGet(t, c, env.public+p+"?nonce="+nonce); code != http.StatusServiceUnavailable || !strings.Contains(body, "pprof") {
			t.Errorf("%s with pprof on: %d %q", p, code, body)
		}
	}
	if code, _ := svGet(t, c, env.intBase+"/debug/pprof/cmdline"); code != http.StatusOK {
		t.Errorf("pprof: %d", code)
	}
	// Metrics, on the enclave's network, reached through the host.
	svGet(t, c, env.public+"/app")
	code, body := svGet(t, c, "http://"+env.host.Published()[1].String()+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("metrics: %d", code)
	}
	for _, want := range []string{
		`quench_enclave_attestations_total{result="refused"} 2`,
		`quench_enclave_http_requests_total{code="200",handler="app"} 1`,
		"quench_enclave_tunnel_connected 1",
		"quench_enclave_app_ready 1",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// gatedAttester holds every document until gate is closed.
type gatedAttester struct {
	attestation.Attester
	gate   chan struct{}
	inside atomic.Int32
}

func (g *gatedAttester) Attest(ctx context.Context, req attestation.Request) ([]byte, error) {
	g.inside.Add(1)
	<-g.gate
	return g.Attester.Attest(ctx, req)
}

// TestServeMaxAttestations: past MaxAttestations documents being made, an
// attestation request is refused at once with 503 and Retry-After rather
// than queued behind the NSM; the ones in progress complete.
func TestServeMaxAttestations(t *testing.T) {
	g := &gatedAttester{gate: make(chan struct{})}
	env := svStart(t, func(c *enclave.Config) {
		g.Attester = c.Attester
		c.Attester = g
		c.MaxAttestations = 2
		c.MetricsAddr = ":9090"
	})
	c := svClient(t)
	nonce := strings.Repeat("00", attestation.NonceSize)
	codes := make(chan int, 2)
	for _, p := range []string{enclave.AttestationPath, enclave.ConfigPath} {
		go func() {
			resp, err := c.Get(env.public + p + "?nonce=" + nonce)
			if err != nil {
				t.Error(err)
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	for g.inside.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	for _, p := range []string{enclave.AttestationPath, enclave.ConfigPath} {
		resp, err := c.Get(env.public + p + "?nonce=" + nonce)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
			t.Errorf("%s past the limit: %d, Retry-After %q; want 503, 1", p, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}
	if code, _ := svGet(t, c, env.public+enclave.ConfigPath); code != http.StatusOK {
		t.Errorf("config without a nonce (no document) past the limit: %d", code)
	}
	close(g.gate)
	for range 2 {
		if code := <-codes; code != http.StatusOK {
			t.Errorf("request within the limit: %d", code)
		}
	}
	if code, _ := svGet(t, c, env.public+enclave.AttestationPath+"?nonce="+nonce); code != http.StatusOK {
		t.Errorf("after the others completed: %d", code)
	}
	_, body := svGet(t, c, "http://"+env.host.Published()[1].String()+"/metrics")
	for _, want := range []string{`quench_enclave_attestations_total{result="busy"} 2`, `quench_enclave_attestations_total{result="ok"} 3`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func FuzzParseKeyHash(f *testing.F) {
	h := sha256.Sum256([]byte("k"))
	for _, s := range []string{base64.StdEncoding.EncodeToString(h[:]), hex.EncodeToString(h[:]), "", "zz", " \n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := enclave.ParseKeyHash(s)
		if err != nil {
			return
		}
		// A hash that parses must parse again from its canonical forms.
		for _, enc := range []string{base64.StdEncoding.EncodeToString(got[:]), hex.EncodeToString(got[:])} {
			again, err := enclave.ParseKeyHash(enc)
			if err != nil || again != got {
				t.Fatalf("%q parsed to %x; %q gives %x, %v", s, got, enc, again, err)
			}
		}
	})
}

// TestServeCloseNoLeaks: Start and Close of a serving enclave leave no
// goroutines behind.
func TestServeCloseNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		sock := filepath.Join(t.TempDir(), "host.sock")
		h := svHost(t, sock)
		dev, err := attestation.NewDevAttester(attestation.DevConfig{})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			e, err := enclave.New(enclave.Config{
				DialHost:     testutil.DialUnix(sock),
				Handler:      http.NotFoundHandler(),
				InternalAddr: "127.0.0.1:0",
				MetricsAddr:  ":9090",
				Attester:     dev,
				WaitForApp:   i == 1, // also while the public server still waits
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err = e.Start(ctx)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				c := svClient(t)
				svGet(t, c, "https://"+h.Published()[0].String()+"/enclave/health")
				c.Transport.(*http.Transport).CloseIdleConnections()
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
		}
		_ = h.Close()
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= before {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after Close:\n%s", before, n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// svApp serves h on the loopback as the app behind the enclave's proxy.
func svApp(t *testing.T, h http.HandlerFunc) *url.URL {
	t.Helper()
	return svAppOn(t, "tcp", h)
}

// svAppOn serves h on a loopback TCP port ("tcp") or a unix socket
// ("unix") and returns the AppURL that reaches it.
func svAppOn(t *testing.T, network string, h http.HandlerFunc) *url.URL {
	t.Helper()
	app := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	ln := listenLocal(t, network)
	go func() { _ = app.Serve(ln) }()
	t.Cleanup(func() { _ = app.Close() })
	if network == "unix" {
		return &url.URL{Scheme: "unix", Path: ln.Addr().String()}
	}
	return &url.URL{Scheme: "http", Host: ln.Addr().String()}
}

func TestServeAppURL(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			app := svAppOn(t, network, func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "proxied %s for %s", r.URL.Path, r.Header.Get("X-Forwarded-Proto"))
			})
			env := svStart(t, func(c *enclave.Config) {
				c.Handler = nil
				c.AppURL = app
			})
			c := svClient(t)
			if code, body := svGet(t, c, env.public+"/p"); code != http.StatusOK || body != "proxied /p for https" {
				t.Fatalf("got %d %q", code, body)
			}
		})
	}
}

// TestServeAppURLProtocols: with a proxied app, HTTP/1.1 clients are served
// by the proxy's front end (the enclave's endpoints through its Intercept
// hook) and HTTP/2 clients by net/http; both reach the app and the
// enclave's endpoints, and the document binds the certificate either way.
func TestServeAppURLProtocols(t *testing.T) {
	app := svApp(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "proxied %s via %s", r.URL.Path, r.Header.Get("X-Forwarded-Proto"))
	})
	env := svStart(t, func(c *enclave.Config) {
		c.Handler = nil
		c.AppURL = app
	})
	for _, tc := range []struct {
		name  string
		h2    bool
		proto int
	}{{"http/1.1", false, 1}, {"h2", true, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: tc.h2}
			if !tc.h2 {
				tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
			}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			for range 3 { // keep-alive: several requests on one connection
				resp, err := c.Get(env.public + "/p")
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || string(b) != "proxied /p via https" || resp.ProtoMajor != tc.proto {
					t.Fatalf("app: %d %q over HTTP/%d", resp.StatusCode, b, resp.ProtoMajor)
				}
			}
			code, body := svGet(t, c, env.public+"/enclave/health")
			if code != http.StatusOK || !strings.Contains(body, `"status":"ok"`) {
				t.Fatalf("health: %d %q", code, body)
			}
			if code, _ := svGet(t, c, env.public+"/enclave/nope"); code != http.StatusNotFound {
				t.Errorf("unknown enclave path: %d, want 404 (never the app)", code)
			}
			// The enclave's paths as the handlers see them (decoded), and
			// nothing else.
			if code, body := svGet(t, c, env.public+"/%65nclave/health"); code != http.StatusOK || !strings.Contains(body, `"status":"ok"`) {
				t.Errorf("encoded health path: %d %q", code, body)
			}
			if code, body := svGet(t, c, env.public+"/enclavex"); code != http.StatusOK || body != "proxied /enclavex via https" {
				t.Errorf("/enclavex: %d %q, want the app", code, body)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := attestation.VerifyRemote(ctx, env.public, attestation.RemoteConfig{
				Options:   attestation.Options{Time: time.Now(), Roots: env.dev.Roots(), MaxAge: time.Minute},
				TLSConfig: tr.TLSClientConfig,
			}); err != nil {
				t.Fatalf("VerifyRemote: %v", err)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	h := http.NotFoundHandler()
	app, _ := url.Parse("http://127.0.0.1:8081")
	for _, tc := range []struct {
		name string
		cfg  enclave.Config
		want string
	}{
		{"bad network", enclave.Config{Network: "vde"}, "unknown network mode"},
		{"handler and app", enclave.Config{Handler: h, AppURL: app}, "both set"},
		{"app scheme", enclave.Config{AppURL: &url.URL{Scheme: "ftp", Host: "x"}}, "scheme"},
		{"h2c app on the internal port", enclave.Config{AppURL: &url.URL{Scheme: "h2c", Host: enclave.DefaultInternalAddr}}, "internal server's address"},
		{"serving option without app", enclave.Config{ACME: true}, "neither Handler nor AppURL"},
		{"acme without fqdn", enclave.Config{Handler: h, ACME: true}, "needs FQDN"},
		{"acme and files", enclave.Config{Handler: h, ACME: true, FQDN: "a.example", TLSCertFile: "c", TLSKeyFile: "k"}, "exclusive"},
		{"cert without key", enclave.Config{Handler: h, TLSCertFile: "c"}, "together"},
		{"acme directory http", enclave.Config{Handler: h, ACME: true, FQDN: "a.example", ACMEDirectory: "http://x/dir"}, "https URL"},
		{"bad fqdn", enclave.Config{Handler: h, FQDN: "a.example:443"}, "not a host name"},
		{"bad public addr", enclave.Config{Handler: h, PublicAddr: "443"}, "PublicAddr"},
		{"bad metrics addr", enclave.Config{Handler: h, MetricsAddr: "x"}, "MetricsAddr"},
		{"negative drain", enclave.Config{Handler: h, DrainTimeout: -time.Second}, "DrainTimeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := enclave.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "enclave: ") {
				t.Errorf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// The zero value, and serving with defaults, are valid.
	for _, cfg := range []enclave.Config{{}, {Handler: h}} {
		if _, err := enclave.New(cfg); err != nil {
			t.Errorf("New(%+v): %v", cfg, err)
		}
	}
}

func TestServeNoNSM(t *testing.T) {
	// Without Config.Attester the NSM is the default; outside an enclave
	// Start must fail with a clear error and release the network.
	sock := filepath.Join(t.TempDir(), "host.sock")
	svHost(t, sock)
	e, err := enclave.New(enclave.Config{
		DialHost:     testutil.DialUnix(sock),
		Handler:      http.NotFoundHandler(),
		InternalAddr: "-",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = e.Start(ctx)
	if err == nil {
		_ = e.Close()
		t.Skip("this machine has /dev/nsm")
	}
	if !strings.Contains(err.Error(), "Config.Attester") {
		t.Errorf("Start: %v, want advice to set Config.Attester", err)
	}
	if err := e.Close(); err != nil {
		t.Errorf("Close after failed Start: %v", err)
	}
}

// TestServeIngress: connections on the ingress fast path listener carry a
// PROXY v2 header (as quench-host writes it) and are served by the public
// HTTPS server, with the client's address as RemoteAddr.
func TestServeIngress(t *testing.T) {
	ingressSock := filepath.Join(t.TempDir(), "ingress.sock")
	env := svStart(t, func(c *enclave.Config) {
		c.IngressListen = func() (net.Listener, error) { return net.Listen("unix", ingressSock) }
		c.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "client %s", r.RemoteAddr)
		})
	})
	_ = env
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		DialContext:     dialIngressAs(ingressSock),
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	code, body := svGet(t, c, "https://ingress.invalid/")
	if code != http.StatusOK || body != "client 203.0.113.9:40000" {
		t.Fatalf("got %d %q", code, body)
	}
}

// startEnclave creates and starts an Enclave with cfg, closed when the test
// ends.
func startEnclave(tb testing.TB, cfg enclave.Config) *enclave.Enclave {
	tb.Helper()
	e, err := enclave.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = e.Close() })
	return e
}

// TestServeIngressAppURLConcurrent drives the path quench-fast takes: TLS
// over the ingress fast path (PROXY header, a unix socket standing in for
// VSOCK) into the proxy's event loops, from 16 clients at once, mixing
// requests the loops forward to the app (with and without bodies) and the
// enclave's own endpoints (handed to the goroutine front end mid-
// connection). Every answer must be right, with the client address from the
// PROXY header; run with the race detector by make test. The app is on a
// TCP port and, as the README recommends where it can, on a unix socket.
func TestServeIngressAppURLConcurrent(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) { testServeIngressAppURLConcurrent(t, network) })
	}
}

func testServeIngressAppURLConcurrent(t *testing.T, network string) {
	ingressSock := filepath.Join(t.TempDir(), "ingress.sock")
	app := svAppOn(t, network, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s for %s via %s: %d", r.Method, r.URL.Path, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), len(b))
	})
	svStart(t, func(c *enclave.Config) {
		c.Handler = nil
		c.AppURL = app
		c.IngressListen = func() (net.Listener, error) { return net.Listen("unix", ingressSock) }
	})
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}},
		MaxConnsPerHost: 16,
		DialContext:     dialIngressAs(ingressSock),
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 30 {
				var req *http.Request
				var want string
				switch i % 3 {
				case 0:
					req, _ = http.NewRequest("GET", fmt.Sprintf("https://ingress.invalid/a/%d/%d", g, i), nil)
					want = fmt.Sprintf("GET /a/%d/%d for 203.0.113.9 via https: 0", g, i)
				case 1:
					body := strings.Repeat("x", 100*i)
					req, _ = http.NewRequest("POST", fmt.Sprintf("https://ingress.invalid/b/%d", g), strings.NewReader(body))
					want = fmt.Sprintf("POST /b/%d for 203.0.113.9 via https: %d", g, len(body))
				default:
					req, _ = http.NewRequest("GET", "https://ingress.invalid/enclave/health", nil)
					want = `"status":"ok"`
				}
				resp, err := c.Do(req)
				if err != nil {
					errs <- err
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
					errs <- fmt.Errorf("%s %s: %d %q (%v), want %q", req.Method, req.URL.Path, resp.StatusCode, b, err, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// dialIngressAs returns a DialContext that connects to the ingress socket
// sock (the VSOCK stand-in) and sends a PROXY v2 header from
// 203.0.113.9:40000, as quench-host's fast path does.
func dialIngressAs(sock string) func(ctx context.Context, _, _ string) (net.Conn, error) {
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", sock)
		if err != nil {
			return nil, err
		}
		h := proxyproto.HeaderProxyFromAddrs(2,
			&net.TCPAddr{IP: net.IPv4(203, 0, 113, 9), Port: 40000},
			&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 443})
		if _, err := h.WriteTo(c); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

// TestMetricsWithoutServing: a networking-only enclave (no Handler or
// AppURL) serves MetricsAddr too, with the network's collectors and none
// of the servers'.
func TestMetricsWithoutServing(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "host.sock")
	h := svHost(t, sock)
	extra := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "test_extra", Help: "A collector of the caller's."}, func() float64 { return 42 })
	e := startEnclave(t, enclave.Config{
		DialHost:          testutil.DialUnix(sock),
		MetricsAddr:       ":9090",
		MetricsCollectors: []prometheus.Collector{extra},
	})
	var body string
	testutil.WaitFor(t, 10*time.Second, "metrics through the published port", func() error {
		code, b := svGet(t, svClient(t), "http://"+h.Published()[1].String()+"/metrics")
		if code != http.StatusOK {
			return fmt.Errorf("metrics: %d", code)
		}
		body = b
		return nil
	})
	for _, want := range []string{"quench_enclave_tunnel_connected 1", "quench_enclave_public_connections ", "test_extra 42"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	for _, not := range []string{"quench_enclave_app_ready", "quench_enclave_attestations_total", "quench_enclave_proxy_in_flight"} {
		if strings.Contains(body, not) {
			t.Errorf("metrics of a networking-only enclave have %q", not)
		}
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
}

// A collector clashing with the enclave's own fails Start, saying which.
func TestMetricsCollectorClash(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "host.sock")
	svHost(t, sock)
	clash := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quench_enclave_tunnel_connected", Help: "Not the enclave's."}, func() float64 { return 0 })
	e, err := enclave.New(enclave.Config{DialHost: testutil.DialUnix(sock), MetricsAddr: ":9090", MetricsCollectors: []prometheus.Collector{clash}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Start(ctx); err == nil || !strings.Contains(err.Error(), "MetricsCollectors") {
		t.Fatalf("Start with a clashing collector: %v", err)
	}
}

// TestCloseProxiedLogsNoError: a graceful stop of an enclave serving a
// proxied app (quench-enclave -app-url, SIGTERM) logged
// `level=ERROR msg="server stopped" server=public err="use of closed network
// connection"` every time: the front door closes the public server's
// listener before its Shutdown. With -log-to that ERROR reached the
// host's journal on every deployment.
func TestCloseProxiedLogsNoError(t *testing.T) {
	app := svAppOn(t, "tcp", func(w http.ResponseWriter, r *http.Request) {})
	var logs lockedBuffer
	env := svStart(t, func(c *enclave.Config) {
		c.Handler = nil
		c.AppURL = app
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	if code, _ := svGet(t, svClient(t), env.public+"/enclave/health"); code != http.StatusOK {
		t.Fatalf("health: %d", code)
	}
	if err := env.enc.Close(); err != nil {
		t.Fatal(err)
	}
	if s := logs.String(); strings.Contains(s, "level=ERROR") {
		t.Fatalf("a graceful Close logged an error:\n%s", s)
	}
}

// TestStartSaysHostUnreachable: while the host does not answer, Start
// retries until its context ends (quench-enclave -start-timeout, 2 minutes
// by default). It said so only at debug level: an operator (with -log-to,
// on the parent) saw nothing for two minutes. The first failure is a
// warning now, the retries stay at debug level.
func TestStartSaysHostUnreachable(t *testing.T) {
	var logs lockedBuffer
	e, err := enclave.New(enclave.Config{
		Network:      enclave.NetworkUserspace,
		DialHost:     testutil.DialUnix(filepath.Join(t.TempDir(), "nobody.sock")),
		ReconnectMin: 10 * time.Millisecond,
		ReconnectMax: 20 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := e.Start(ctx); err == nil {
		t.Fatal("Start succeeded without a host")
	}
	_ = e.Close()
	if n := strings.Count(logs.String(), "level=WARN msg=\"host not reachable"); n != 1 {
		t.Fatalf("%d warnings that the host is not reachable, want 1:\n%s", n, logs.String())
	}
}

// TestServeAppStreams: server-sent event streams from the app give back
// their in-flight slot once their head is out (proxy.Config.MaxStreams), so
// an enclave whose app has more subscribers than Proxy.MaxInFlight still
// answers its other requests; the metrics show the streams.
func TestServeAppStreams(t *testing.T) {
	done := make(chan struct{})
	app := svApp(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/events" {
			fmt.Fprint(w, "plain")
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: hello\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-done:
		case <-r.Context().Done():
		}
	})
	defer close(done)
	env := svStart(t, func(c *enclave.Config) {
		c.Handler = nil
		c.AppURL = app
		c.Proxy.MaxInFlight = 1
		c.MetricsAddr = ":9090"
	})
	c := svClient(t)
	for i := range 3 {
		resp, err := c.Get(env.public + "/events")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if resp.StatusCode != http.StatusOK || line != "data: hello\n" {
			t.Fatalf("stream %d: %d, %q, %v", i, resp.StatusCode, line, err)
		}
	}
	if code, body := svGet(t, c, env.public+"/plain"); code != http.StatusOK || body != "plain" {
		t.Errorf("a request with three streams open and MaxInFlight 1: %d %q", code, body)
	}
	_, body := svGet(t, c, "http://"+env.host.Published()[1].String()+"/metrics")
	for _, want := range []string{"quench_enclave_proxy_streams 3\n", "quench_enclave_proxy_in_flight 0\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestServePlainHTTPOnHTTPSPort: http:// typed for the enclave's https://
// address gets a 400 that says why, as from net/http's own server, not an
// empty reply.
func TestServePlainHTTPOnHTTPSPort(t *testing.T) {
	app := svApp(t, func(w http.ResponseWriter, r *http.Request) {})
	for _, tc := range []struct {
		name string
		mod  func(*enclave.Config)
	}{
		{"in-process handler", nil},
		{"app url (front door)", func(c *enclave.Config) { c.Handler = nil; c.AppURL = app }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := svStart(t, tc.mod)
			resp, err := http.Get(strings.Replace(env.public, "https://", "http://", 1) + "/")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "HTTP request to an HTTPS server") {
				t.Errorf("plain HTTP to the HTTPS port: %d %q", resp.StatusCode, body)
			}
		})
	}
}
