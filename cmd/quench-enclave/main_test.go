package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/host/hosttest"
	"github.com/quenchnet/quench/internal/sandbox"
	"github.com/quenchnet/quench/internal/testutil"
	"github.com/quenchnet/quench/proxy"
)

func TestSplitWords(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
		err      string
	}{
		{name: "empty", in: "", want: nil},
		{name: "plain", in: "python3  app.py -p 8081", want: []string{"python3", "app.py", "-p", "8081"}},
		{name: "single quotes", in: `sh -c 'echo "a b"; exit 3'`, want: []string{"sh", "-c", `echo "a b"; exit 3`}},
		{name: "double quotes", in: `echo "a \"b\" \$HOME \x"`, want: []string{"echo", `a "b" $HOME \x`}},
		{name: "backslash", in: `a\ b c\\d`, want: []string{"a b", `c\d`}},
		{name: "adjacent", in: `a'b'"c"d`, want: []string{"abcd"}},
		{name: "empty quoted word", in: `x '' ""`, want: []string{"x", "", ""}},
		{name: "continuation", in: "a \\\nb", want: []string{"a", "b"}},
		{name: "unterminated single", in: `a 'b`, err: "unterminated single quote"},
		{name: "unterminated double", in: `a "b`, err: "unterminated double quote"},
		{name: "trailing backslash", in: `a \`, err: "trailing backslash"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := splitWords(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %q, %v; want error %q", got, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func FuzzSplitWords(f *testing.F) {
	for _, s := range []string{"a b", `'x y' "z \" w"`, `a\ b`, `"`, `'`, "\\"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		words, err := splitWords(s)
		if err != nil {
			return
		}
		// Re-quoting every word in single quotes must give the words back.
		var b strings.Builder
		for _, w := range words {
			b.WriteString(" '" + strings.ReplaceAll(w, "'", `'\''`) + "'")
		}
		again, err := splitWords(b.String())
		if err != nil {
			t.Fatalf("requoted %q: %v", b.String(), err)
		}
		if !cmp.Equal(words, again, cmp.Comparer(func(a, b string) bool { return a == b })) && !(len(words) == 0 && len(again) == 0) {
			t.Fatalf("%q: %q, requoted %q", s, words, again)
		}
	})
}

func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"-nope"}, "flag provided but not defined"},
		{"bad network", []string{"-network", "vde"}, `-network "vde": want tap or userspace`},
		{"bad host", []string{"-host", "http://x"}, "-host"},
		{"bad ip", []string{"-ip", "1.2.3.4"}, "-ip"},
		{"stray argument", []string{"python3"}, "put the app command after --"},
		{"app cmd without url", []string{"-app-cmd", "python3 app.py"}, "needs -app-url"},
		{"app after -- without url", []string{"--", "python3", "app.py"}, "needs -app-url"},
		{"both app forms", []string{"-app-url", "http://127.0.0.1:1", "-app-cmd", "a", "--", "b"}, "not both"},
		{"bad app cmd", []string{"-app-url", "http://127.0.0.1:1", "-app-cmd", "a 'b"}, "unterminated"},
		{"userspace without app", []string{"-network", "userspace"}, "needs -app-url"},
		{"acme without app or fqdn", []string{"-acme"}, "ACME needs FQDN"},
		{"bad app url", []string{"-app-url", "ftp://x"}, "want http://HOST:PORT"},
		{"acme without fqdn", []string{"-app-url", "http://127.0.0.1:1", "-acme"}, "needs FQDN"},
		{"acme email without acme", []string{"-app-url", "http://127.0.0.1:1", "-acme-email", "a@b"}, "-acme-email needs -acme"},
		{"cert without key", []string{"-app-url", "http://127.0.0.1:1", "-tls-cert", "c.pem"}, "together"},
		{"root out without dev", []string{"-app-url", "http://127.0.0.1:1", "-dev-root-out", "r.pem"}, "needs -dev-attester"},
		{"bad drain", []string{"-app-url", "http://127.0.0.1:1", "-drain-timeout", "0s"}, "must be positive"},
		{"bad ingress", []string{"-app-url", "http://127.0.0.1:1", "-ingress", "udp://x"}, "-ingress"},
		{"ingress stand-in without cid", []string{"-app-url", "http://127.0.0.1:1", "-vsock-dir", "/tmp", "-ingress", "vsock://:8443"}, "name the enclave's CID"},
		{"bad max attestations", []string{"-app-url", "http://127.0.0.1:1", "-max-attestations", "0"}, "-max-attestations 0"},
		{"max conns without app", []string{"-max-conns", "100"}, "-max-conns needs -app-url or -forward"},
		{"bad max conns with forwards only", []string{"-forward", "vsock://:8080=127.0.0.1:80", "-max-conns", "-2"}, "-max-conns -2"},
		{"bad max conns", []string{"-app-url", "http://127.0.0.1:1", "-max-conns", "-2"}, "-max-conns -2"},
		{"max in flight without app", []string{"-max-in-flight", "10"}, "-max-in-flight needs -app-url"},
		{"bad max in flight", []string{"-app-url", "http://127.0.0.1:1", "-max-in-flight", "-5"}, "-max-in-flight -5"},
		{"max streams without app", []string{"-max-streams", "10"}, "-max-streams needs -app-url"},
		{"bad max streams", []string{"-app-url", "http://127.0.0.1:1", "-max-streams", "-2"}, "-max-streams -2"},
		{"negative queue", []string{"-app-url", "http://127.0.0.1:1", "-queue", "-1"}, "must not be negative"},
		{"zero queue timeout", []string{"-app-url", "http://127.0.0.1:1", "-queue-timeout", "0s"}, "-queue-timeout must be positive"},
		{"negative app timeout", []string{"-app-url", "http://127.0.0.1:1", "-app-timeout", "-1s"}, "-app-timeout -1s: must not be negative"},
		{"app timeout without app", []string{"-forward", "vsock://:8080=127.0.0.1:3000", "-app-timeout", "5m"}, "-app-timeout needs -app-url"},
		{"bad log level", []string{"-log-level", "loud"}, "-log-level"},
		{"bad log format", []string{"-log-format", "xml"}, `-log-format "xml": want text or json`},
		{"ext priv without leader", []string{"-app-url", "http://127.0.0.1:1", "-ext-priv-addr", ":4444"}, "-ext-priv-addr needs -fqdn-leader"},
		{"advertise without leader", []string{"-app-url", "http://127.0.0.1:1", "-sync-advertise", "10.0.0.1"}, "-sync-advertise needs -fqdn-leader"},
		{"bad heartbeat", []string{"-app-url", "http://127.0.0.1:1", "-fqdn-leader", "l", "-sync-heartbeat", "0s"}, "must be positive"},
		{"bad leader", []string{"-app-url", "http://127.0.0.1:1", "-fqdn-leader", "a/b"}, "key synchronisation"},
		{"ext priv on public port", []string{"-app-url", "http://127.0.0.1:1", "-fqdn-leader", "l", "-ext-priv-addr", ":443"}, "also the public"},
		{"forward without target", []string{"-forward", "vsock://:8080"}, "want LISTEN=TARGET"},
		{"forward bad listen", []string{"-forward", "udp://x=127.0.0.1:80"}, "-forward"},
		{"forward bad option", []string{"-forward", "vsock://:8080=127.0.0.1:80,proxy"}, `unknown option "proxy"`},
		{"forward bad target", []string{"-forward", "vsock://:8080=127.0.0.1"}, `target "127.0.0.1"`},
		{"forward stand-in without cid", []string{"-vsock-dir", "/tmp", "-forward", "vsock://:8080=127.0.0.1:80"}, "name the enclave's CID"},
		{"bad allow port", []string{"-allow", "api.example.com:0"}, `-allow: policy: allow "api.example.com:0": bad port "0"`},
		{"bad allow name", []string{"-allow", "ok.example:443", "-allow", "b@d.example"}, `allow "b@d.example"`},
		{"empty allow", []string{"-allow", ""}, `-allow: policy: allow "": empty destination`},
		{"bad app sandbox", []string{"-app-sandbox", "maybe"}, `-app-sandbox "maybe": want auto, on or off`},
		{"app sandbox without app", []string{"-app-sandbox", "on"}, "-app-sandbox needs the app command"},
		{"app user without app", []string{"-app-user", "nobody"}, "-app-user needs the app command"},
		{"bad app user", []string{"-app-url", "http://127.0.0.1:1", "-app-user", "no-such-user-here", "--", "true"}, `-app-user: user "no-such-user-here"`},
		{"bad app group", []string{"-app-url", "http://127.0.0.1:1", "-app-user", "0:no-such-group-here", "--", "true"}, `group "no-such-group-here"`},
		{"empty app user", []string{"-app-url", "http://127.0.0.1:1", "-app-user", ":0", "--", "true"}, "want USER or USER:GROUP"},
		{"dns proxy not loopback", []string{"-allow", "*", "-dns-proxy", "192.168.127.2"}, `DNS proxy "192.168.127.2": want an IPv4 loopback address`},
		{"dns proxy not an address", []string{"-allow", "*", "-dns-proxy", "localhost"}, `DNS proxy "localhost"`},
		{"dns proxy without allow", []string{"-dns-proxy", "127.0.0.53"}, "-dns-proxy needs -allow in TAP mode"},
		{"dns proxy in userspace mode", []string{"-network", "userspace", "-app-url", "http://127.0.0.1:1", "-allow", "*", "-dns-proxy", "127.0.0.53"}, "-dns-proxy needs -allow in TAP mode"},
		{"internal addr without app or pprof", []string{"-internal-addr", "127.0.0.1:9000"}, "-internal-addr needs -app-url (the internal server) or -pprof"},
		{"bad log-to", []string{"-log-to", "udp://3:1025"}, "-log-to"},
		{"log-to without port", []string{"-log-to", "vsock://3"}, "-log-to"},
		{"log-to without CID", []string{"-log-to", "vsock://:1025"}, "-log-to vsock://:1025: no CID"},
		{"log-to the tunnel", []string{"-log-to", "vsock://3:1024"}, "-log-to vsock://3:1024 is -host's address"},
		{"bad acme roots", []string{"-app-url", "http://127.0.0.1:1", "-acme", "-fqdn", "a.example", "-acme-roots", "/nonexistent"}, "-acme-roots"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := run(tc.args, &stderr)
			if code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tc.want)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"-help"}, &stderr); code != 0 {
		t.Errorf("exit code %d", code)
	}
	for _, want := range []string{"-app-cmd", "-dev-attester", "userspace", "-wait-for-app", "-fqdn-leader", "-ext-priv-addr", "/enclave/state", "-forward", "proxy-header", "-allow", "attested image", "every program in TAP mode"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
	// A flag whose usage names its default in words ("(default: ...)")
	// must not also get flag's "(default V)" from a sentinel value, such
	// as -queue's -1, which the flag refuses when given.
	var flagText string
	check := func() {
		if strings.Contains(flagText, "(default:") && regexp.MustCompile(`\(default [^:]`).MatchString(flagText) {
			t.Errorf("help gives two defaults: %s", flagText)
		}
	}
	for _, line := range strings.Split(stderr.String(), "\n") {
		if strings.HasPrefix(line, "  -") {
			check()
			flagText = ""
		}
		flagText += line
	}
	check()
}

// TestMain lets the test binary act as the app for TestSIGTERMDrain, and
// as quench-enclave's sandbox step.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == sandbox.Arg {
		// superviseApp starts a sandboxed app through selfExe: this binary.
		os.Exit(sandbox.Main(os.Args[2:]))
	}
	if addr := os.Getenv("QUENCH_TEST_APP"); addr != "" {
		os.Exit(testApp(addr, os.Getenv("QUENCH_TEST_READY")))
	}
	testRefuseStart = true // run never brings up a network here
	os.Exit(m.Run())
}

// testApp serves slow responses on addr, signals readiness, and exits with
// code 3 on SIGTERM.
func testApp(addr, readyURL string) int {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			fmt.Println("request arrived")
			time.Sleep(time.Second)
		}
		fmt.Fprint(w, "slow app")
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	resp, err := http.Get(readyURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ready:", err)
		return 1
	}
	resp.Body.Close()
	fmt.Println("test app ready")
	<-sig
	_ = srv.Close()
	return 3
}

// TestSIGTERMDrain runs the quench-enclave binary in userspace mode (no
// root) against an in-process host, with this test binary as the app
// (-wait-for-app). On SIGTERM, requests in flight complete, the app gets
// the signal afterwards, and quench-enclave exits with the app's code.
func TestSIGTERMDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	bin := testutil.Binaries(t)
	dir := t.TempDir()
	pub, _ := host.ParsePublish("127.0.0.1:0:443")
	h := hosttest.Start(t, host.Config{Publish: []host.Publish{pub}})
	sock := hosttest.Serve(t, h)

	appAddr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	intAddr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "quench-enclave"),
		"-network", "userspace", "-host", "unix://"+sock,
		"-app-url", "http://"+appAddr, "-internal-addr", intAddr,
		"-wait-for-app", "-dev-attester", "-dev-root-out", filepath.Join(dir, "root.pem"),
		"-drain-timeout", "5s", "-log-level", "debug",
		"--", self)
	cmd.Env = append(os.Environ(), "QUENCH_TEST_APP="+appAddr, "QUENCH_TEST_READY=http://"+intAddr+"/enclave/ready")
	p := testutil.Start(t, "quench-enclave", cmd)

	url := "https://" + h.Published()[0].String() + "/"
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	testutil.WaitFor(t, 20*time.Second, "quench-enclave serving", func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	if _, err := os.Stat(filepath.Join(dir, "root.pem")); err != nil {
		t.Errorf("-dev-root-out: %v", err)
	}

	const n = 10
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(url + "slow")
			if err != nil {
				errs <- err
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && string(b) != "slow app" {
				err = fmt.Errorf("%s %q", resp.Status, b)
			}
			errs <- err
		}()
	}
	// SIGTERM once every request reached the app (each then takes 1 s).
	testutil.WaitFor(t, 10*time.Second, "requests in flight", func() error {
		if got := strings.Count(p.Output(), "request arrived"); got < n {
			return fmt.Errorf("%d of %d requests arrived", got, n)
		}
		return nil
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("request lost on SIGTERM: %v", err)
		}
	}
	select {
	case <-p.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("quench-enclave did not exit after SIGTERM")
	}
	if got := cmd.ProcessState.ExitCode(); got != 3 {
		t.Errorf("exit code %d, want the app's 3\n%s", got, p.Output())
	}
	if !strings.Contains(p.Output(), "test app ready") || !strings.Contains(p.Output(), "INSECURE") {
		t.Errorf("output lacks the app's output or the dev attester warning:\n%s", p.Output())
	}
}

func TestKeySyncFlags(t *testing.T) {
	var stderr bytes.Buffer
	o, err := parse([]string{"-app-url", "http://127.0.0.1:1", "-fqdn-leader", "leader.internal", "-ext-priv-addr", ":4444",
		"-sync-advertise", "10.0.0.2", "-sync-heartbeat", "5s"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	got := []string{o.cfg.FQDNLeader, o.cfg.SyncAddr, o.cfg.KeySync.Advertise, o.cfg.KeySync.HeartbeatInterval.String()}
	want := []string{"leader.internal", ":4444", "10.0.0.2", "5s"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestAppURLH2C: -app-url takes h2c://HOST:PORT and h2c+unix:///path (an
// app that speaks HTTP/2 without TLS, such as a gRPC server).
func TestAppURLH2C(t *testing.T) {
	for _, u := range []string{"h2c://127.0.0.1:50051", "h2c+unix:///run/app.sock"} {
		var stderr bytes.Buffer
		o, err := parse([]string{"-app-url", u}, &stderr)
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		if o.cfg.AppURL == nil || o.cfg.AppURL.String() != u {
			t.Errorf("%s: AppURL %v", u, o.cfg.AppURL)
		}
	}
	var stderr bytes.Buffer
	if code := run([]string{"-app-url", "h2://127.0.0.1:1"}, &stderr); code != 2 || !strings.Contains(stderr.String(), "h2c://HOST:PORT") {
		t.Errorf("h2://: exit %d, %q", code, stderr.String())
	}
}

// TestAdmissionDefaults: without -queue, quench-enclave queues 8 requests
// per in-flight slot for up to 200 ms (package proxy refuses at once).
func TestAdmissionDefaults(t *testing.T) {
	perCPU := proxy.DefaultMaxInFlightPerCPU * runtime.GOMAXPROCS(0)
	for _, tc := range []struct {
		name      string
		args      []string
		limit     int
		queue     int
		queueWait time.Duration
		streams   int
	}{
		{"defaults", nil, 0, 8 * perCPU, 200 * time.Millisecond, 0},
		{"limit given", []string{"-max-in-flight", "10"}, 10, 80, 200 * time.Millisecond, 0},
		{"no limit", []string{"-max-in-flight", "-1"}, -1, 0, 200 * time.Millisecond, 0},
		{"refuse at once", []string{"-queue", "0"}, 0, 0, 200 * time.Millisecond, 0},
		{"all given", []string{"-max-in-flight", "4", "-queue", "3", "-queue-timeout", "1s", "-max-streams", "9"}, 4, 3, time.Second, 9},
		{"streams keep their slots", []string{"-max-streams", "-1"}, 0, 8 * perCPU, 200 * time.Millisecond, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			o, err := parse(append([]string{"-app-url", "http://127.0.0.1:1"}, tc.args...), &stderr)
			if err != nil {
				t.Fatal(err)
			}
			got := []any{o.cfg.Proxy.MaxInFlight, o.cfg.Proxy.QueueSize, o.cfg.Proxy.QueueTimeout, o.cfg.Proxy.MaxStreams}
			if diff := cmp.Diff([]any{tc.limit, tc.queue, tc.queueWait, tc.streams}, got); diff != "" {
				t.Errorf("MaxInFlight, QueueSize, QueueTimeout, MaxStreams (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAppTimeout: -app-timeout sets the proxy's UpstreamTimeout; 0 is
// none (the proxy's -1), the default the proxy's.
func TestAppTimeout(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want time.Duration
	}{
		{nil, proxy.DefaultUpstreamTimeout},
		{[]string{"-app-timeout", "10m"}, 10 * time.Minute},
		{[]string{"-app-timeout", "0"}, -1},
	} {
		var stderr bytes.Buffer
		o, err := parse(append([]string{"-app-url", "http://127.0.0.1:1"}, tc.args...), &stderr)
		if err != nil {
			t.Fatal(err)
		}
		if got := o.cfg.Proxy.UpstreamTimeout; got != tc.want {
			t.Errorf("%v: UpstreamTimeout %s, want %s", tc.args, got, tc.want)
		}
	}
}

// TestLoopbackOnlyFlags: the internal server (and pprof, with or without
// serving) must stay on the enclave's loopback, no -forward target or
// -app-url may lead the host to it, and -pprof excludes key sync.
func TestLoopbackOnlyFlags(t *testing.T) {
	app := []string{"-app-url", "http://127.0.0.1:1"}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"internal on all addresses", append(app, "-internal-addr", ":8080"), []string{"-internal-addr", "loopback"}},
		{"internal unspecified", append(app, "-internal-addr", "0.0.0.0:8080"), []string{"-internal-addr", "loopback"}},
		{"internal localhost", append(app, "-internal-addr", "localhost:8080"), []string{"-internal-addr", "loopback"}},
		{"pprof without serving", []string{"-pprof", "-internal-addr", "0.0.0.0:6060"}, []string{"-internal-addr", "loopback"}},
		{"app url is internal", []string{"-app-url", "http://127.0.0.1:8080"}, []string{"-app-url", "-internal-addr"}},
		{"forward to internal", append(app, "-forward", "vsock://:8080=127.0.0.1:8080"), []string{"-forward", "-internal-addr"}},
		{"forward to internal localhost", append(app, "-internal-addr", "127.0.0.1:9000", "-forward", "vsock://:8080=localhost:9000"), []string{"-forward", "-internal-addr"}},
		{"pprof and key sync", append(app, "-pprof", "-fqdn-leader", "leader.internal"), []string{"-pprof", "-fqdn-leader"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := run(tc.args, &stderr); code != 2 {
				t.Errorf("exit code %d, want 2 (stderr %q)", code, stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr %q does not contain %q", stderr.String(), w)
				}
			}
		})
	}
}

// TestMaxConnsFlag: -max-conns reaches Config.MaxConns, with -app-url or
// with forwards alone (which it caps too); 0 (not given) leaves the
// default to package enclave, -1 turns the limit off.
func TestMaxConnsFlag(t *testing.T) {
	for _, base := range [][]string{
		{"-app-url", "http://127.0.0.1:1"},
		{"-forward", "vsock://:8080=127.0.0.1:80"},
	} {
		for _, tc := range []struct {
			args []string
			want int
		}{{nil, 0}, {[]string{"-max-conns", "500"}, 500}, {[]string{"-max-conns", "-1"}, -1}} {
			var stderr bytes.Buffer
			args := append(append([]string(nil), base...), tc.args...)
			o, err := parse(args, &stderr)
			if err != nil {
				t.Fatalf("%v: %v", args, err)
			}
			if o.cfg.MaxConns != tc.want {
				t.Errorf("%v: MaxConns %d, want %d", args, o.cfg.MaxConns, tc.want)
			}
		}
	}
}

// TestAllowFlag: -allow rules, repeatable, become Config.Egress in both
// network modes; without -allow there is no policy (allow all).
func TestAllowFlag(t *testing.T) {
	for _, base := range [][]string{
		nil, // TAP, networking only
		{"-network", "userspace", "-app-url", "http://127.0.0.1:1"},
		{"-network", "userspace", "-forward", "vsock://:8080=127.0.0.1:80"},
	} {
		var stderr bytes.Buffer
		o, err := parse(base, &stderr)
		if err != nil {
			t.Fatalf("%v: %v", base, err)
		}
		if o.cfg.Egress != nil {
			t.Errorf("%v: Egress %v without -allow, want nil", base, o.cfg.Egress)
		}
		args := append(append([]string(nil), base...), "-allow", "*.amazonaws.com:443", "-allow", "10.0.0.0/8:5432/tcp", "-allow", "192.168.127.254:9000")
		if o, err = parse(args, &stderr); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		p := o.cfg.Egress
		if p == nil {
			t.Fatalf("%v: no Egress", args)
		}
		if diff := cmp.Diff([]string{"*.amazonaws.com:443", "10.0.0.0/8:5432/tcp", "192.168.127.254:9000"}, p.Rules()); diff != "" {
			t.Errorf("%v: rules (-want +got):\n%s", args, diff)
		}
		for _, c := range []struct {
			network string
			ip      string
			port    uint16
			names   []string
			want    bool
		}{
			{"tcp", "10.1.2.3", 5432, nil, true},
			{"udp", "10.1.2.3", 5432, nil, false},
			{"tcp", "192.168.127.254", 9000, nil, true},
			{"tcp", "192.168.127.254", 9001, nil, false},
			{"tcp", "52.1.2.3", 443, []string{"s3.amazonaws.com"}, true},
			{"tcp", "52.1.2.3", 443, []string{"example.com"}, false},
		} {
			if got := p.Allow(c.network, netip.MustParseAddr(c.ip), c.port, c.names); got != c.want {
				t.Errorf("%v: Allow(%s, %s:%d, %v) = %v, want %v", args, c.network, c.ip, c.port, c.names, got, c.want)
			}
		}
	}
}

// TestHelpPlaceholders: flag takes the first backquoted text of a usage
// string as the value's name in --help; every one must be a name, not a
// phrase.
func TestHelpPlaceholders(t *testing.T) {
	var buf bytes.Buffer
	_, _ = parse([]string{"-h"}, &buf)
	n := 0
	for _, line := range strings.Split(buf.String(), "\n") {
		if !strings.HasPrefix(line, "  -") {
			continue
		}
		n++
		if f := strings.Fields(line); len(f) > 2 {
			t.Errorf("flag line %q: the value's name is not one word", line)
		}
	}
	if n < 20 {
		t.Fatalf("found %d flag lines in --help:\n%s", n, buf.String())
	}
}

// TestLogToAnnotation: with -log-to, /enclave/config names where the logs
// go (clients see that they leave the enclave); without it, nothing.
func TestLogToAnnotation(t *testing.T) {
	o, err := parse([]string{"-app-url", "http://127.0.0.1:1", "-log-to", "vsock://3:1025"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := o.cfg.Annotations["logs_to_host"]; got != "vsock://3:1025" {
		t.Errorf("logs_to_host = %q, want vsock://3:1025", got)
	}
	o, err = parse([]string{"-app-url", "http://127.0.0.1:1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := o.cfg.Annotations["logs_to_host"]; ok {
		t.Errorf("logs_to_host without -log-to: %v", o.cfg.Annotations)
	}
}

// TestMetricsWithoutAppURL: -metrics serves the network's collectors with
// only -forward (it was dropped without a word when not serving), and
// -log-to adds the shipper's.
func TestMetricsWithoutAppURL(t *testing.T) {
	o, err := parse([]string{"-forward", "vsock://:8080=127.0.0.1:3000", "-metrics", ":9090", "-log-to", "vsock://3:1025"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.MetricsAddr != ":9090" {
		t.Errorf("MetricsAddr = %q, want :9090", o.cfg.MetricsAddr)
	}
	if len(o.cfg.MetricsCollectors) != 1 {
		t.Errorf("MetricsCollectors = %v, want the log shipper's", o.cfg.MetricsCollectors)
	}
}

// TestRunRefusesToStartInTests: the default flags (TAP mode) pass, and run
// stops there in this package's tests instead of taking the test
// machine's network (a bad-flag case once passed by mistake and did).
func TestRunRefusesToStartInTests(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(nil, &stderr); code != exitWouldStart || !strings.Contains(stderr.String(), "not starting") {
		t.Fatalf("run with the default flags: exit %d, %q", code, stderr.String())
	}
}
