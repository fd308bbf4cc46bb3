package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/internal/testutil"
)

// TestHostVSockProxy runs quench-host in AWS vsock-proxy's role with the
// VSOCK stand-in: a program in the enclave dials the parent's VSOCK port
// (vsock://3:8000, as kmstool does) and reaches an HTTPS-less stand-in for
// KMS on the host's network, named by host name; ctl status and the
// metrics count it. No root needed: nothing here uses a namespace.
func TestHostVSockProxy(t *testing.T) {
	bin := testutil.Binaries(t)
	dir := t.TempDir()
	vsockDir := t.TempDir() // the VSOCK stand-in's sockets
	control := filepath.Join(dir, "control.sock")
	metrics := testutil.FreePort(t)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, ln, "hello from the target")
	_, port, _ := net.SplitHostPort(ln.Addr().String())

	host := testutil.Start(t, "quench-host", exec.Command(filepath.Join(bin, "quench-host"),
		"-vsock-dir", vsockDir, "-listen", "unix://"+filepath.Join(dir, "host.sock"),
		"-vsock-proxy", "8000:localhost:"+port, "-control", control,
		"-metrics", fmt.Sprintf("127.0.0.1:%d", metrics), "-log-level", "debug"))
	sock := endpoint.StandInPath(vsockDir, endpoint.ParentCID, 8000)
	testutil.WaitForFile(t, sock, 10*time.Second)

	// The enclave's side: dial vsock://3:8000 through the stand-in.
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			a, _ := endpoint.Parse("vsock://3:8000")
			return endpoint.Dial(ctx, a, endpoint.Options{VSockDir: vsockDir})
		},
		DisableKeepAlives: true,
	}, Timeout: 10 * time.Second}
	for i := range 5 {
		resp, err := client.Get("http://kms.example/")
		if err != nil {
			t.Fatalf("request %d through the vsock proxy: %v\n%s", i, err, host.Output())
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.HasPrefix(string(body), "hello from the target") {
			t.Fatalf("request %d: %q", i, body)
		}
	}

	out, err := exec.Command(filepath.Join(bin, "quench-host"), "ctl", "-control", control, "status").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"vsock_port": 8000`) || !strings.Contains(string(out), `"accepted": 5`) {
		t.Errorf("ctl status: %v\n%s", err, out)
	}
	body, _, err := get(context.Background(), fmt.Sprintf("http://127.0.0.1:%d/metrics", metrics))
	want := fmt.Sprintf(`quench_host_vsock_proxy_connections_total{port="8000",result="accepted",target="localhost:%s"} 5`, port)
	if err != nil || !strings.Contains(body, want) {
		t.Errorf("metrics lack %s: %v\n%s", want, err, body)
	}
	if err := host.Stop(10 * time.Second); err != nil {
		t.Errorf("quench-host exit: %v\n%s", err, host.Output())
	}
}
