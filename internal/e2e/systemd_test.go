package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
)

// TestHostSystemdNotify: run as a Type=notify unit (NOTIFY_SOCKET), quench-host
// says READY=1 only once its published ports accept connections, pings the
// watchdog (WatchdogSec=, WATCHDOG_USEC) with its status, and says
// STOPPING=1 when SIGTERM starts the drain.
func TestHostSystemdNotify(t *testing.T) {
	bin := testutil.Binaries(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify.sock")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	port := testutil.FreePort(t)
	cmd := exec.Command(filepath.Join(bin, "quench-host"), "-listen", "unix://"+filepath.Join(dir, "host.sock"),
		"-publish", fmt.Sprintf("127.0.0.1:%d:8080", port), "-drain-timeout", "1s")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=200000")
	p := testutil.Start(t, "quench-host", cmd)

	next := func(what string) string {
		t.Helper()
		_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 4096)
		n, err := nc.Read(buf)
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		return string(buf[:n])
	}
	ready := next("READY=1")
	if !strings.Contains(ready, "READY=1") || !strings.Contains(ready, "STATUS=0 enclave(s) connected, 1 port(s) published") {
		t.Fatalf("first notification %q", ready)
	}
	// Ready means the published port is up.
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	if err != nil {
		t.Fatalf("READY=1 before the published port listens: %v", err)
	}
	c.Close()
	for i := range 3 {
		if m := next("WATCHDOG=1"); !strings.Contains(m, "WATCHDOG=1") || !strings.Contains(m, "STATUS=") {
			t.Fatalf("notification %d after ready: %q", i, m)
		}
	}
	_ = p.Cmd.Process.Signal(os.Interrupt)
	for {
		m := next("STOPPING=1")
		if strings.Contains(m, "STOPPING=1") {
			break
		}
	}
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("quench-host did not exit after SIGINT")
	}
	if !strings.Contains(p.Output(), "systemd watchdog") {
		t.Errorf("no log line about the watchdog:\n%s", p.Output())
	}
}
