package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/host/hosttest"
	"github.com/quenchnet/quench/internal/testutil"
)

// TestNitridingFlagAliases: nitriding-daemon's flags (brave/nitriding-daemon
// main.go, the flag.*Var calls) whose meaning quench-enclave has under
// another name are taken as that flag, so a nitriding command line keeps
// working.
func TestNitridingFlagAliases(t *testing.T) {
	var stderr bytes.Buffer
	o, err := parse([]string{
		"-fqdn", "example.com",
		"-appwebsrv", "http://127.0.0.1:8081",
		"-intport=9090",
		"--ext-pub-port", "8443",
		"-ext-priv-port", "4444",
		"-fqdn-leader", "leader.internal",
		"-host-proxy-port", "2048",
		"-prometheus-port", "9100",
		"-appcmd", "python3 app.py -p 8081",
		"-wait-for-app",
	}, &stderr)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	got := []string{o.cfg.AppURL.String(), o.cfg.InternalAddr, o.cfg.PublicAddr, o.cfg.SyncAddr, o.cfg.MetricsAddr, strings.Join(o.appArgs, " ")}
	want := []string{"http://127.0.0.1:8081", "127.0.0.1:9090", ":8443", ":4444", ":9100", "python3 app.py -p 8081"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if !o.cfg.WaitForApp || o.cfg.FQDN != "example.com" {
		t.Errorf("wait-for-app %v, fqdn %q", o.cfg.WaitForApp, o.cfg.FQDN)
	}
	// -host-proxy-port N is -host vsock://3:N: the dialled address.
	if o.hostAddr != "vsock://3:2048" {
		t.Errorf("host %q, want vsock://3:2048", o.hostAddr)
	}
	// Releases before -ext-pub-port named it -extport.
	o, err = parse([]string{"-fqdn", "x", "-extport", "8443"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.PublicAddr != ":8443" {
		t.Errorf("-extport 8443: public address %q", o.cfg.PublicAddr)
	}
	// Amnesic Systems' fork spells -intport -int-port.
	o, err = parse([]string{"-fqdn", "x", "-int-port", "9091"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.InternalAddr != "127.0.0.1:9091" {
		t.Errorf("-int-port 9091: internal address %q", o.cfg.InternalAddr)
	}
	// -prometheus-port 0 is nitriding's "off".
	o, err = parse([]string{"-prometheus-port", "0"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.MetricsAddr != "" {
		t.Errorf("-prometheus-port 0: metrics on %q, want off", o.cfg.MetricsAddr)
	}
}

// TestNitridingFlagHints: nitriding-daemon's flags that quench-enclave does
// not take are refused with what to do instead, not with the flag
// package's "flag provided but not defined" and the whole usage text.
func TestNitridingFlagHints(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-debug"}, "-log-level debug"},
		{[]string{"-debug=true"}, "-dev-attester"},
		{[]string{"-profile"}, "-pprof"},
		{[]string{"-mock-cert-fp", "abcd"}, "-mock-cert-fp"},
		{[]string{"-disable-keep-alives"}, "-disable-keep-alives"},
		{[]string{"-vsock-ext"}, "-ingress vsock://:PORT"},
		{[]string{"-appurl", "https://github.com/foo/bar"}, "needs serving: -app-url, or -fqdn"},
		{[]string{"-fqdn", "x", "-appurl", "::"}, "-appurl"},
		{[]string{"-intport", "http"}, "-intport"},
		{[]string{"-ext-pub-port", "70000"}, "-ext-pub-port"},
		{[]string{"-appwebsrv"}, "needs a value"},
		{[]string{"-loader"}, "-app-cmd"},
		// Amnesic Systems' fork's -app-url is the code repository.
		{[]string{"-app-url", "github.com/foo/bar"}, "-source-url"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stderr bytes.Buffer
			if code := run(tc.args, &stderr); code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			out := stderr.String()
			if !strings.Contains(out, tc.want) || !strings.Contains(out, "nitriding") {
				t.Errorf("stderr %q lacks %q (and nitriding)", out, tc.want)
			}
			if strings.Contains(out, "flag provided but not defined") {
				t.Errorf("stderr %q: the flag package's message, not the hint", out)
			}
		})
	}
	// A value that looks like a nitriding flag is a value.
	var stderr bytes.Buffer
	o, err := parse([]string{"-app-url", "http://127.0.0.1:1", "-app-cmd", "-debug"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"-debug"}, o.appArgs); diff != "" {
		t.Errorf("app args (-want +got):\n%s", diff)
	}
	// So are the app's arguments after --.
	o, err = parse([]string{"-app-url", "http://127.0.0.1:1", "--", "app", "-debug"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"app", "-debug"}, o.appArgs); diff != "" {
		t.Errorf("app args (-want +got):\n%s", diff)
	}
}

// TestServeWithoutApp: nitriding-daemon serves its public API (attestation
// binding the certificate and the hash the app registers) and its internal
// one without -appwebsrv: for an app that listens on ports of its own
// (doc/usage.md: "Does your enclave application expose any other ports?
// If so, you have to forward these ports too"). -fqdn, which nitriding
// requires, and the other serving flags turn serving on without -app-url;
// other paths get 404, as from nitriding's router without a proxy.
func TestServeWithoutApp(t *testing.T) {
	for _, args := range [][]string{
		{"-fqdn", "example.com", "-appcmd", "my-enclave-app -s foo"},
		// nitriding-daemon's example/start.sh, word for word.
		{"-fqdn", "example.com", "-extport", "8443", "-intport", "8080"},
		{"-fqdn", "example.com", "-wait-for-app", "-intport", "8081", "--", "my-enclave-app"},
		{"-dev-attester", "-network", "userspace"},
		{"-fqdn", "example.com", "-fqdn-leader", "leader.internal"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var stderr bytes.Buffer
			o, err := parse(args, &stderr)
			if err != nil {
				t.Fatalf("%v\n%s", err, stderr.String())
			}
			if o.cfg.AppURL != nil || o.cfg.Handler == nil {
				t.Fatalf("app URL %v, handler %v: want serving without an app", o.cfg.AppURL, o.cfg.Handler)
			}
			// enclave.New takes the configuration too.
			if code := run(args, &stderr); code != exitWouldStart {
				t.Errorf("run: exit code %d, want %d (accepted)\n%s", code, exitWouldStart, stderr.String())
			}
			rec := httptest.NewRecorder()
			o.cfg.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/anything", nil))
			if rec.Code != http.StatusNotFound {
				t.Errorf("/anything: %d, want 404", rec.Code)
			}
		})
	}
	// The proxy's own flags still need the app to proxy to.
	var stderr bytes.Buffer
	if _, err := parse([]string{"-fqdn", "example.com", "-max-in-flight", "10"}, &stderr); err == nil || !strings.Contains(err.Error(), "-max-in-flight needs -app-url") {
		t.Errorf("-max-in-flight without -app-url: %v", err)
	}
	// Networking only stays networking only.
	o, err := parse([]string{"-forward", "vsock://:8080=127.0.0.1:3000"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.Handler != nil || o.cfg.AppURL != nil {
		t.Error("serving on without a serving flag")
	}
}

// TestNitridingCommandLine runs the quench-enclave binary (userspace mode,
// development attester) with nitriding-daemon's flags and no app to proxy
// to: the public server serves attestation documents binding the hash the
// app registers on -intport, and 404 elsewhere.
func TestNitridingCommandLine(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	bin := testutil.Binaries(t)
	pub, _ := host.ParsePublish("127.0.0.1:0:443")
	h := hosttest.Start(t, host.Config{Publish: []host.Publish{pub}})
	sock := hosttest.Serve(t, h)
	intPort := testutil.FreePort(t)
	cmd := exec.Command(filepath.Join(bin, "quench-enclave"),
		"-network", "userspace", "-host", "unix://"+sock, "-dev-attester",
		"-fqdn", "example.com", "-intport", strconv.Itoa(intPort), "-ext-pub-port", "443")
	p := testutil.Start(t, "quench-enclave", cmd)

	base := "https://" + h.Published()[0].String()
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	get := func(u string) (int, string, error) {
		resp, err := client.Get(u)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	testutil.WaitFor(t, 20*time.Second, "quench-enclave serving", func() error {
		_, _, err := get(base + "/enclave")
		return err
	})

	// The app registers its key's hash, as with nitriding.
	sum := sha256.Sum256([]byte("app key"))
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/enclave/hash", intPort), "text/plain",
		strings.NewReader(base64.StdEncoding.EncodeToString(sum[:])+"\n"))
	if err != nil {
		t.Fatalf("%v\n%s", err, p.Output())
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /enclave/hash: %s", resp.Status)
	}
	code, body, err := get(base + "/enclave/attestation?nonce=" + strings.Repeat("AB", 20))
	if err != nil || code != http.StatusOK {
		t.Fatalf("attestation: %d %q %v", code, body, err)
	}
	doc, err := base64.StdEncoding.DecodeString(strings.TrimSpace(body))
	if err != nil || !bytes.Contains(doc, sum[:]) {
		t.Errorf("attestation document (%d bytes, %v) does not carry the app key hash", len(doc), err)
	}
	if code, body, err := get(base + "/app/path"); err != nil || code != http.StatusNotFound {
		t.Errorf("/app/path: %d %q %v, want 404 (no app)", code, body, err)
	}
}

// TestNitridingAppURL: nitriding-daemon's -appurl (the code repository, shown
// on the index page: handlers.go formatIndexPage) is taken, and shown on
// /enclave and in /enclave/config (annotation source_url).
func TestNitridingAppURL(t *testing.T) {
	var stderr bytes.Buffer
	o, err := parse([]string{"-fqdn", "example.com", "-appurl", "https://github.com/foo/bar"}, &stderr)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if got := o.cfg.Annotations["source_url"]; got != "https://github.com/foo/bar" {
		t.Errorf("annotation source_url %q", got)
	}
}

// TestNitridingPrometheusNamespace: nitriding-daemon's -prometheus-port
// comes with -prometheus-namespace (its metrics' prefix). quench's metric
// names are fixed, so the namespace is dropped with a warning naming them,
// rather than stopping an enclave over its dashboards.
func TestNitridingPrometheusNamespace(t *testing.T) {
	var stderr bytes.Buffer
	o, err := parse([]string{"-prometheus-port", "9100", "-prometheus-namespace", "myapp", "-host-ip-provider-port", "6161"}, &stderr)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if o.cfg.MetricsAddr != ":9100" {
		t.Errorf("metrics on %q", o.cfg.MetricsAddr)
	}
	// So is -host-ip-provider-port (vsock-relay's service, which quench
	// does not need).
	if out := stderr.String(); !strings.Contains(out, "-prometheus-namespace") || !strings.Contains(out, "quench_enclave_") || !strings.Contains(out, "-host-ip-provider-port 6161") {
		t.Errorf("no warning: %q", out)
	}
}

// TestAppURLNamingAHost: -app-url naming a host rather than an address in
// the enclave (Amnesic Systems' nitriding's -app-url, the code repository)
// is taken, with a warning naming -source-url; a local address is not
// warned about.
func TestAppURLNamingAHost(t *testing.T) {
	for _, tc := range []struct {
		url  string
		warn bool
	}{
		{"https://github.com/foo/bar", true},
		{"http://127.0.0.1:8081", false},
		{"http://localhost:8081", false},
		{"http://[::1]:8081", false},
		{"unix:///run/app.sock", false},
	} {
		var stderr bytes.Buffer
		if _, err := parse([]string{"-app-url", tc.url}, &stderr); err != nil {
			t.Fatalf("%s: %v", tc.url, err)
		}
		if got := strings.Contains(stderr.String(), "-source-url"); got != tc.warn {
			t.Errorf("%s: warned %v, want %v: %q", tc.url, got, tc.warn, stderr.String())
		}
	}
}

// TestNoNSMNamesDevAttester: outside a Nitro Enclave, without
// -dev-attester, quench-enclave exits naming the flag to use, not the
// library's Config.Attester.
func TestNoNSMNamesDevAttester(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	if _, err := os.Stat("/dev/nsm"); err == nil {
		t.Skip("/dev/nsm exists: this is a Nitro Enclave")
	}
	bin := testutil.Binaries(t)
	h := hosttest.Start(t, host.Config{})
	sock := hosttest.Serve(t, h)
	cmd := exec.Command(filepath.Join(bin, "quench-enclave"),
		"-network", "userspace", "-host", "unix://"+sock, "-fqdn", "example.com",
		"-internal-addr", "127.0.0.1:"+strconv.Itoa(testutil.FreePort(t)))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("Nitro Secure Module")) || !bytes.Contains(out, []byte("-dev-attester")) {
		t.Errorf("output does not name the missing NSM and -dev-attester:\n%s", out)
	}
}
