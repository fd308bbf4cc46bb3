package attestation_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/attestationtest"
	"github.com/quenchnet/quench/internal/testutil"
)

// TestTransportTemplateHTTP2: a template Transport that asks for HTTP/2
// (Protocols, ForceAttemptHTTP2) against a server that speaks it: the
// request still goes over HTTP/1.1 on the verified connection.
func TestTransportTemplateHTTP2(t *testing.T) {
	for _, name := range []string{"h1+h2", "h2 only", "force"} {
		t.Run(name, func(t *testing.T) {
			e := newEnclaveServerH2(t)
			tmpl := &http.Transport{}
			switch name {
			case "h1+h2":
				tmpl.Protocols = new(http.Protocols)
				tmpl.Protocols.SetHTTP1(true)
				tmpl.Protocols.SetHTTP2(true)
			case "h2 only":
				tmpl.Protocols = new(http.Protocols)
				tmpl.Protocols.SetHTTP2(true)
			case "force":
				tmpl.ForceAttemptHTTP2 = true
			}
			tr := newTransport(t, e, func(c *attestation.ClientConfig) { c.Transport = tmpl; c.TrustFor = -1 })
			for range 2 {
				resp, err := tr.Client().Get(e.URL + "/x")
				if err != nil {
					t.Logf("err = %v", err)
					continue
				}
				resp.Body.Close()
				if resp.ProtoMajor != 1 {
					t.Errorf("proto %s", resp.Proto)
				}
			}
			if n := e.bare.Load(); n != 0 {
				t.Errorf("%d requests on connections without a document", n)
			}
		})
	}
}

func newEnclaveServerH2(t *testing.T) *enclaveServer {
	t.Helper()
	e := newEnclaveServerUnstarted(t)
	e.EnableHTTP2 = true
	e.StartTLS()
	return e
}

// TestTransportNoProxy: a proxy from the environment or the template is not
// used: the CONNECT tunnel's TLS would not go through the verifying dialer.
func TestTransportNoProxy(t *testing.T) {
	e := newEnclaveServer(t, pcr0)
	var proxied atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied.Add(1)
		http.Error(w, "no", http.StatusForbidden)
	}))
	t.Cleanup(proxy.Close)
	t.Setenv("HTTPS_PROXY", proxy.URL)
	t.Setenv("NO_PROXY", "")
	tr := newTransport(t, e, func(c *attestation.ClientConfig) {
		c.Transport = &http.Transport{Proxy: http.ProxyFromEnvironment}
	})
	if _, err := get(t, tr.Client(), e.URL+"/x"); err != nil {
		t.Fatal(err)
	}
	if n := proxied.Load(); n != 0 {
		t.Errorf("the proxy saw %d requests", n)
	}
}

// TestTransportRedirectToHTTP: a verified enclave redirecting to http://
// gets nothing: the redirect fails before any connection.
func TestTransportRedirectToHTTP(t *testing.T) {
	var plain atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { plain.Add(1) }))
	t.Cleanup(srv.Close)
	e := newEnclaveServerUnstarted(t)
	mux := e.Config.Handler.(*http.ServeMux)
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, srv.URL+"/stolen", http.StatusFound)
	})
	e.StartTLS()
	tr := newTransport(t, e, nil)
	_, err := get(t, tr.Client(), e.URL+"/redirect")
	if err == nil || !strings.Contains(err.Error(), "https URLs only") {
		t.Fatalf("err = %v", err)
	}
	if n := plain.Load(); n != 0 {
		t.Errorf("the http server saw %d requests", n)
	}
}

// TestTransportParallelFirstRequests: many first requests at once each get
// a verified connection.
func TestTransportParallelFirstRequests(t *testing.T) {
	e := newEnclaveServer(t, pcr0)
	tr := newTransport(t, e, func(c *attestation.ClientConfig) { c.TrustFor = -1 })
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := get(t, tr.Client(), e.URL+"/p"); err != nil {
				t.Error(err)
			}
		})
	}
	go tr.CloseIdleConnections()
	wg.Wait()
	if n := e.bare.Load(); n != 0 {
		t.Errorf("%d requests on connections without a document", n)
	}
	// (A dial net/http started for a request that another connection then
	// served may still be under way: no count of documents per connection.)
	if n := e.appHits.Load(); n != 20 {
		t.Errorf("the app saw %d requests, want 20", n)
	}
}

// TestTransportCancelDuringAttestation: a request cancelled while its
// connection is being verified fails; the connection is not left in the
// pool unverified, and the next request is served on a verified one.
func TestTransportCancelDuringAttestation(t *testing.T) {
	e := newEnclaveServerUnstarted(t)
	var slow atomic.Bool
	slow.Store(true)
	inner := e.Config.Handler
	e.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == attestation.Path && slow.Load() {
			time.Sleep(300 * time.Millisecond)
		}
		inner.ServeHTTP(w, r)
	})
	e.StartTLS()
	tr := newTransport(t, e, func(c *attestation.ClientConfig) { c.TrustFor = -1; c.Timeout = 200 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.URL+"/x", nil)
	if _, err := tr.Client().Do(req); err == nil {
		t.Fatal("cancelled request succeeded")
	}
	time.Sleep(400 * time.Millisecond)
	slow.Store(false)
	for range 3 {
		if _, err := get(t, tr.Client(), e.URL+"/y"); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.bare.Load(); n != 0 {
		t.Errorf("%d requests on connections without a document", n)
	}
}

// TestTransportResumption: with a session cache, a resumed session with a
// machine in the middle (whose certificate failed) fails again, and a
// resumed session with the enclave is verified as a full one.
func TestTransportResumption(t *testing.T) {
	e := newEnclaveServer(t, pcr0)
	cache := tls.NewLRUClientSessionCache(8)
	var resumed atomic.Int64
	tr := newTransport(t, e, func(c *attestation.ClientConfig) {
		c.TrustFor = -1
		c.TLSConfig = &tls.Config{InsecureSkipVerify: true, ClientSessionCache: cache,
			VerifyConnection: func(cs tls.ConnectionState) error {
				if cs.DidResume {
					resumed.Add(1)
				}
				return nil
			}}
	})
	for range 3 {
		if _, err := get(t, tr.Client(), e.URL+"/x"); err != nil {
			t.Fatal(err)
		}
		tr.CloseIdleConnections()
	}
	if resumed.Load() == 0 {
		t.Log("no session was resumed")
	}
	if n := e.bare.Load(); n != 0 {
		t.Errorf("%d requests on connections without a document", n)
	}
	if a := e.attests.Load(); a != 3 {
		t.Errorf("%d documents for 3 connections", a)
	}
}

// TestTransportBoundedRedials: a server that closes the connection after
// each document and presents a new certificate on each connection costs a
// bounded number of connections, then a clear error.
func TestTransportBoundedRedials(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{PCRs: map[uint][]byte{0: pcr0}})
	var mu sync.Mutex
	certOf := map[net.Conn][]byte{}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			c := selfSigned(t)
			mu.Lock()
			certOf[hello.Conn] = c.Certificate[0]
			mu.Unlock()
			return &c, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	var docs atomic.Int64
	conns := testutil.ServeConnsWait(t, ln, func(c net.Conn) {
		tc := c.(*tls.Conn)
		if tc.Handshake() != nil {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		nonce, _ := hex.DecodeString(req.URL.Query().Get("nonce"))
		mu.Lock()
		der := certOf[tc.NetConn()]
		mu.Unlock()
		doc, err := dev.Attest(context.Background(), attestation.Request{Nonce: nonce, UserData: attestation.UserData{TLSCertHash: attestation.CertHash(der)}.Marshal()})
		if err != nil {
			t.Error(err)
			return
		}
		docs.Add(1)
		b64 := encodeB64(doc)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(b64), b64)
	})
	tr, err := attestation.NewTransport(attestation.ClientConfig{
		Options:   attestation.Options{Roots: dev.Roots(), PCRs: map[uint][]byte{0: pcr0}},
		TLSConfig: insecureTLS,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	_, err = get(t, tr.Client(), "https://"+ln.Addr().String()+"/x")
	if err == nil || !strings.Contains(err.Error(), "closed the connection after each") {
		t.Fatalf("err = %v", err)
	}
	if d, c := docs.Load(), conns.Load(); d != 3 || c != 3 {
		t.Errorf("%d documents on %d connections, want 3, 3", d, c)
	}
}

// TestTransportErrorsThroughURLError: the sentinels stay matchable through
// the *url.Error of http.Client.
func TestTransportErrorsThroughURLError(t *testing.T) {
	url := rawTLSServer(t, func(c net.Conn) { time.Sleep(time.Second) })
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	tr, err := attestation.NewTransport(attestation.ClientConfig{
		Options: attestation.Options{Roots: dev.Roots(), PCRs: map[uint][]byte{0: pcr0}}, TLSConfig: insecureTLS,
		Timeout: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	_, err = get(t, tr.Client(), url+"/")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want context.DeadlineExceeded", err)
	}
}

// TestTransportEscapesHandshakeErrors: a machine in the middle presenting a
// certificate whose names hold terminal escapes, to a client that verifies
// certificates (an enclave with a public certificate): crypto/x509's
// hostname error quotes those names as they are, and the error must not
// carry them to a terminal or log unescaped.
func TestTransportEscapesHandshakeErrors(t *testing.T) {
	cert := certWithNames(t, "evil\x1b]0;title\x07\x1b[2J.example")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	testutil.ServeConnsWait(t, ln, func(c net.Conn) { _ = c.(*tls.Conn).Handshake() })
	url := "https://" + ln.Addr().String()
	tcfg := &tls.Config{ServerName: "enclave.example"}
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	tr, err := attestation.NewTransport(attestation.ClientConfig{
		Options: attestation.Options{Roots: dev.Roots(), PCRs: map[uint][]byte{0: pcr0}}, TLSConfig: tcfg,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	_, terr := get(t, tr.Client(), url+"/")
	_, rerr := attestation.VerifyRemote(context.Background(), url, attestation.RemoteConfig{
		Options: attestation.Options{Time: time.Now(), Roots: dev.Roots()}, TLSConfig: tcfg,
	})
	for name, err := range map[string]error{"Transport": terr, "VerifyRemote": rerr} {
		var he x509.HostnameError
		if !errors.As(err, &he) {
			t.Errorf("%s: err = %v, want an x509.HostnameError", name, err)
		}
		if err != nil && strings.ContainsAny(err.Error(), "\x1b\x07") {
			t.Errorf("%s: err = %q: control characters from the server", name, err)
		}
		if err != nil && !strings.Contains(err.Error(), `\x1b]0;title\a`) {
			t.Errorf("%s: err = %q: want the names escaped", name, err)
		}
	}
}

func certWithNames(tb testing.TB, names ...string) tls.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
