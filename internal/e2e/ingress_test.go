package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/internal/testutil"
)

// fastPathEnv runs quench-host with the VSOCK stand-in and an "enclave"
// HTTP app behind enclave.ListenIngress on the stand-in's socket for
// vsock://16:PORT. No namespace is needed: the fast path carries no frames.
type fastPathEnv struct {
	t        *testing.T
	bin      string
	vsockDir string
	control  string
	host     *testutil.Process
}

func newFastPathEnv(t *testing.T, vsockPorts ...uint32) *fastPathEnv {
	t.Helper()
	env := &fastPathEnv{t: t, bin: testutil.Binaries(t), vsockDir: t.TempDir()}
	env.control = filepath.Join(env.vsockDir, "control.sock")
	for _, port := range vsockPorts {
		ln, err := net.Listen("unix", endpoint.StandInPath(env.vsockDir, 16, port))
		if err != nil {
			t.Fatal(err)
		}
		il := enclave.ListenIngress(ln, enclave.IngressConfig{})
		srv := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/slow" {
					time.Sleep(500 * time.Millisecond)
				}
				fmt.Fprintf(w, "port %d; you are %s", port, r.RemoteAddr)
			}),
			ReadHeaderTimeout: 5 * time.Second,
		}
		go func() { _ = srv.Serve(il) }()
		t.Cleanup(func() { _ = srv.Close() })
	}
	return env
}

func (env *fastPathEnv) startHost(extra ...string) {
	env.t.Helper()
	args := append([]string{
		"-listen", "unix://" + filepath.Join(env.vsockDir, "tunnel.sock"),
		"-vsock-dir", env.vsockDir,
		"-enclave-cid", "16",
		"-control", env.control,
		"-log-level", "debug",
	}, extra...)
	env.host = testutil.Start(env.t, "quench-host", exec.Command(filepath.Join(env.bin, "quench-host"), args...))
	testutil.WaitForFile(env.t, env.control, 10*time.Second)
}

func (env *fastPathEnv) ctl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(env.bin, "quench-host"), append([]string{"ctl", "-control", env.control}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// get fetches url on a fresh connection (no keep-alive) and returns the body
// and the client's local address.
func get(ctx context.Context, url string) (body, local string, err error) {
	var localAddr atomic.Value
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err == nil {
				localAddr.Store(c.LocalAddr().String())
			}
			return c, err
		},
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return "", "", err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", "", err
	}
	if resp.StatusCode != 200 {
		return "", "", fmt.Errorf("%s: %s", resp.Status, b)
	}
	l, _ := localAddr.Load().(string)
	return string(b), l, nil
}

// TestIngressClientAddress: the enclave app sees the client's address, not
// the host's, through the fast path.
func TestIngressClientAddress(t *testing.T) {
	env := newFastPathEnv(t, 8443)
	port := testutil.FreePort(t)
	env.startHost("-publish-vsock", fmt.Sprintf("127.0.0.1:%d:8443", port))
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	testutil.WaitFor(t, 10*time.Second, "fast path up", func() error { _, _, err := get(context.Background(), url); return err })
	for range 3 {
		body, local, err := get(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		if want := "port 8443; you are " + local; body != want {
			t.Fatalf("body %q, want %q", body, want)
		}
	}
}

// TestForwardTAP: a TAP-mode enclave (quench-enclave in a namespace)
// relays the host's fast path to a plain HTTP server on its port 8080 with
// -forward; the published tunnel port keeps working beside it, and the
// forward reaches the server again after the host daemon restarts.
func TestForwardTAP(t *testing.T) {
	env := newEnclaveEnv(t)
	vs := filepath.Join(env.dir, "vsock")
	if err := os.Mkdir(vs, 0o700); err != nil {
		t.Fatal(err)
	}
	fast := testutil.FreePort(t)
	env.startHost("-vsock-dir", vs, "-enclave-cid", "16", "-publish-vsock", fmt.Sprintf("127.0.0.1:%d:8081", fast))
	env.startEnclave("-vsock-dir", vs, "-forward", "vsock://16:8081=127.0.0.1:8080")
	url := fmt.Sprintf("http://127.0.0.1:%d/", fast)
	check := func() error {
		body, _, err := get(context.Background(), url)
		if err != nil {
			return err
		}
		// Without ,proxy-header the server sees the forwarder's loopback address.
		if want := "hello from the enclave; you are 127.0.0.1:"; !strings.HasPrefix(body, want) {
			return fmt.Errorf("body %q, want it to start with %q", body, want)
		}
		return nil
	}
	testutil.WaitFor(t, 10*time.Second, "forward up", check)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := env.checkInbound(ctx); err != nil {
		t.Fatalf("tunnel port beside the forward: %v", err)
	}
	env.restartHost()
	testutil.WaitFor(t, 10*time.Second, "forward after the host restarted", check)
}
