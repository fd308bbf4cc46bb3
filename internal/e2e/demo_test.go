package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/internal/testutil"
)

// httpsClient skips certificate checks: the attestation document binds the
// self-signed certificate.
func httpsClient(t *testing.T) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func getBody(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %q", resp.Status, b)
	}
	return string(b), nil
}

// TestDemo is `make demo` as a test: quench-host with the VSOCK stand-in,
// quench-enclave (TAP mode) in a namespace with the development attester
// and the Python example app; an HTTPS request through the published port,
// `quench verify` with the development root, a bounded burst of requests, a
// host restart the enclave survives, and SIGTERM ending everything with the
// app's exit code.
func TestDemo(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "python3")
	bin := testutil.Binaries(t)
	ns := testutil.NewNS(t)
	dir := t.TempDir()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	port := testutil.FreePort(t)
	env := append(os.Environ(), endpoint.EnvVSockDir+"="+dir)
	hostArgs := []string{"-listen", "vsock://:1024", "-publish", fmt.Sprintf("127.0.0.1:%d:443", port), "-log-level", "debug", "-enclave-logs", "vsock://:1025"}
	startHost := func(name string) *testutil.Process {
		cmd := exec.Command(filepath.Join(bin, "quench-host"), hostArgs...)
		cmd.Env = env
		p := testutil.Start(t, name, cmd)
		testutil.WaitFor(t, 10*time.Second, name+" listening", func() error {
			c, err := net.Dial("unix", endpoint.StandInPath(dir, endpoint.ParentCID, 1024))
			if err != nil {
				return err
			}
			return c.Close()
		})
		return p
	}
	hostProc := startHost("quench-host")

	devRoot := filepath.Join(dir, "dev-root.pem")
	// The app runs as nobody, as in the demo: its file where nobody can
	// read it.
	appDir := filepath.Join(dir, "app")
	app, err := os.ReadFile(filepath.Join(root, "examples/sidecar/app.py"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(appDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(appDir, "app.py"), app, 0o644); err != nil {
		t.Fatal(err)
	}
	// Debian's python3 first: one under /root (pyenv) is not nobody's to
	// run; if none is, the app runs as root, as the demo then does.
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		py = "python3"
	}
	appUser := []string{"-app-user", "nobody"}
	if err := exec.Command("runuser", "-u", "nobody", "--", py, "-c", "").Run(); err != nil {
		t.Logf("%s cannot run as nobody (%v): the app runs as root", py, err)
		appUser = nil
	}
	cmd := ns.Command(filepath.Join(bin, "quench-enclave"),
		"-host", "vsock://3:1024", "-resolv-conf", filepath.Join(dir, "resolv.conf"),
		"-app-url", "http://127.0.0.1:8081", "-wait-for-app",
		"-dev-attester", "-dev-root-out", devRoot, "-log-level", "debug", "-log-to", "vsock://3:1025",
		"-allow", fmt.Sprintf("%s:%d/tcp", hostLoopback, port))
	cmd.Args = append(append(cmd.Args, appUser...), "--", py, filepath.Join(appDir, "app.py"))
	cmd.Env = env
	encl := testutil.Start(t, "quench-enclave", cmd)

	base := fmt.Sprintf("https://127.0.0.1:%d", port)
	c := httpsClient(t)
	testutil.WaitFor(t, 30*time.Second, "enclave healthy through the published port", func() error {
		_, err := getBody(c, base+"/enclave/health")
		return err
	})
	body, err := getBody(c, base+"/")
	if err != nil || !strings.Contains(body, "hello from a Python app in the enclave") {
		t.Fatalf("app through the host: %q, %v", body, err)
	}

	// quench verify with the development root, as the demo shows it.
	out, err := exec.Command(filepath.Join(bin, "quench"), "verify", base,
		"--roots", devRoot, "--insecure-skip-tls-verify", "--max-age", "1m").CombinedOutput()
	if err != nil {
		t.Fatalf("quench verify: %v\n%s", err, out)
	}
	for _, want := range []string{"tls_cert_hash", "app_key_sha256"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("quench verify output lacks %q:\n%s", want, out)
		}
	}
	// The attested configuration, as the demo shows it: the policy and
	// the app's sandbox, bound by the document.
	out, err = exec.Command(filepath.Join(bin, "quench"), "verify", "--config", base,
		"--roots", devRoot, "--insecure-skip-tls-verify", "--max-age", "1m").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "public_key") || !strings.Contains(string(out), `"egress": [`) || !strings.Contains(string(out), `"logs_to_host": "vsock://3:1025"`) || !strings.Contains(string(out), `"app_sandbox": "seccomp"`) || (appUser != nil && !strings.Contains(string(out), `"app_user": "65534:65534"`)) {
		t.Errorf("quench verify --config: %v\n%s", err, out)
	}
	// Against the AWS root, the development document must fail.
	if out, err := exec.Command(filepath.Join(bin, "quench"), "verify", base, "--insecure-skip-tls-verify").CombinedOutput(); err == nil {
		t.Errorf("quench verify accepted a development document with the AWS root:\n%s", out)
	}

	// quench fetch, as the demo shows it: the app's answer with the
	// image pinned (the development attester's PCR0 is zero, which only
	// --any-image accepts), nothing with another PCR0.
	zero := strings.Repeat("0", 96)
	out, err = exec.Command(filepath.Join(bin, "quench"), "fetch", base+"/", "--pcr", "0="+zero, "--any-image",
		"--roots", devRoot, "--insecure-skip-tls-verify", "-v").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hello from a Python app in the enclave") || !strings.Contains(string(out), "quench fetch: verified") {
		t.Errorf("quench fetch: %v\n%s", err, out)
	}
	out, err = exec.Command(filepath.Join(bin, "quench"), "fetch", base+"/", "--pcr", "0="+zero[1:]+"1",
		"--roots", devRoot, "--insecure-skip-tls-verify").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "PCR0 mismatch") {
		t.Errorf("quench fetch with another PCR0: %v\n%s", err, out)
	}

	// The egress policy, as the demo shows it: from the enclave, the
	// allowed port of the host's loopback is reached; another port there
	// is refused at once; a name no rule allows gets NXDOMAIN.
	err = ns.Do(func() error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(hostLoopback, strconv.Itoa(port)), 5*time.Second)
		if err != nil {
			return fmt.Errorf("allowed port: %v", err)
		}
		_ = c.Close()
		if c, err := net.DialTimeout("tcp", net.JoinHostPort(hostLoopback, "22"), 5*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			if c != nil {
				_ = c.Close()
			}
			return fmt.Errorf("port 22 of the host: %v, want connection refused", err)
		}
		if got, err := testutil.QueryA("192.168.127.1:53", "leak.example.com"); err == nil || !strings.Contains(err.Error(), "RCodeNameError") {
			return fmt.Errorf("leak.example.com: %v, %v; want NXDOMAIN", got, err)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}

	// A bounded burst (the demo uses bombardier; here 8 × 25 requests).
	burst := func() {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < 25; j++ {
					if _, err := getBody(c, base+"/"); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("burst: %v", err)
		}
	}
	burst()

	// The app's output as the parent sees it (-log-to, -enclave-logs).
	if out := hostProc.Output(); !strings.Contains(out, `msg=enclave enclave="unix:uid=0" stream=stdout line="app: listening on`) {
		t.Errorf("the app's first line is not in the host's log:\n%s", out)
	}

	// The host restarts; the enclave reconnects and serves again.
	hostProc.Kill()
	hostProc = startHost("quench-host (restarted)")
	c.Transport.(*http.Transport).CloseIdleConnections()
	testutil.WaitFor(t, 30*time.Second, "enclave serving after the host restart", func() error {
		_, err := getBody(c, base+"/")
		return err
	})
	burst()

	// SIGTERM: drain, pass the signal to the app, exit with its code (0).
	if err := encl.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-encl.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("quench-enclave did not exit on SIGTERM")
	}
	if code := encl.Cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("quench-enclave exit code %d, want the app's 0\n%s", code, encl.Output())
	}
	if !strings.Contains(encl.Output(), "app: signal 15") {
		t.Errorf("the app did not get SIGTERM:\n%s", encl.Output())
	}
	// Its last words reached the restarted host before quench-enclave
	// exited.
	if out := hostProc.Output(); !strings.Contains(out, `stream=stdout line="app: signal 15 - exiting"`) {
		t.Errorf("the app's last line is not in the restarted host's log:\n%s", out)
	}
	_ = hostProc.Stop(5 * time.Second)
}

// TestHelloUserspace runs examples/hello in userspace mode (no root): an
// in-process quench-host on the VSOCK stand-in publishes 127.0.0.1:0 to the
// enclave's :443, and another port over the ingress fast path to its
// -ingress listener; the test GETs through both (the fast path keeps the
// client's address) and verifies an attestation document with the
// development root the example wrote.
func TestHelloUserspace(t *testing.T) {
	if testing.Short() {
		t.Skip("builds examples/hello")
	}
	dir := t.TempDir()
	exe := filepath.Join(dir, "hello")
	if out, err := exec.Command("go", "build", "-o", exe, "github.com/quenchnet/quench/examples/hello").CombinedOutput(); err != nil {
		t.Fatalf("go build examples/hello: %v\n%s", err, out)
	}
	pub, err := host.ParsePublish("127.0.0.1:0:443")
	if err != nil {
		t.Fatal(err)
	}
	fast, err := host.ParsePublishVSock("127.0.0.1:0:8443")
	if err != nil {
		t.Fatal(err)
	}
	var logMu sync.Mutex
	var logLines []string
	h, err := host.New(host.Config{
		Publish: []host.Publish{pub, fast},
		EnclaveLog: func(_, stream string, line []byte) {
			logMu.Lock()
			logLines = append(logLines, stream+": "+string(line))
			logMu.Unlock()
		},
		DialEnclave: func(ctx context.Context, port uint32) (net.Conn, error) {
			return endpoint.Dial(ctx, endpoint.Addr{Scheme: "vsock", CID: 16, Port: port}, endpoint.Options{VSockDir: dir})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := endpoint.Listen(endpoint.Addr{Scheme: "vsock", CID: endpoint.AnyCID, Port: 1024},
		endpoint.Options{VSockDir: dir, LocalCID: endpoint.ParentCID})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = h.Serve(ln) }()
	// Its log, shipped with package logship (-log-to), on the parent.
	lln, err := endpoint.Listen(endpoint.Addr{Scheme: "vsock", CID: endpoint.AnyCID, Port: 1025},
		endpoint.Options{VSockDir: dir, LocalCID: endpoint.ParentCID})
	if err != nil {
		t.Fatal(err)
	}
	logsServed := make(chan struct{})
	go func() { defer close(logsServed); _ = h.ServeEnclaveLogs(lln) }()
	t.Cleanup(func() { _ = h.Close(); <-served; <-logsServed })

	devRoot := filepath.Join(dir, "dev-root.pem")
	cmd := exec.Command(exe, "-network", "userspace", "-dev-attester", "-dev-root-out", devRoot, "-ingress", "vsock://16:8443", "-log-to", "vsock://3:1025")
	cmd.Env = append(os.Environ(), endpoint.EnvVSockDir+"="+dir)
	p := testutil.Start(t, "hello", cmd)

	base := "https://" + h.Published()[0].String()
	c := httpsClient(t)
	testutil.WaitFor(t, 20*time.Second, "hello serving", func() error {
		_, err := getBody(c, base+"/enclave/health")
		return err
	})
	body, err := getBody(c, base+"/")
	if err != nil || !strings.Contains(body, "hello from the enclave (userspace mode)") {
		t.Fatalf("GET /: %q, %v", body, err)
	}
	body, err = getBody(c, "https://"+h.Published()[1].String()+"/")
	if err != nil || !strings.Contains(body, "hello from the enclave (userspace mode); you are 127.0.0.1:") {
		t.Fatalf("GET / over the ingress fast path: %q, %v", body, err)
	}
	roots, err := attestation.LoadRoots(devRoot)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := attestation.VerifyRemote(ctx, base, attestation.RemoteConfig{
		Options:   attestation.Options{Time: time.Now(), Roots: roots, MaxAge: time.Minute},
		TLSConfig: &tls.Config{InsecureSkipVerify: true},
	}); err != nil {
		t.Fatalf("VerifyRemote: %v", err)
	}
	if err := p.Stop(10 * time.Second); err != nil {
		t.Errorf("hello on SIGINT: %v\n%s", err, p.Output())
	}
	// Its lines up to the last reached the host before it exited.
	logMu.Lock()
	defer logMu.Unlock()
	all := strings.Join(logLines, "\n")
	if !strings.Contains(all, "app: ") || !strings.Contains(all, `msg=serving`) || !strings.Contains(all, `msg="shutting down"`) {
		t.Errorf("hello's log on the host:\n%s", all)
	}
}
