package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
)

// appProbe prints the user the app runs as and the errno (0: opened) of
// the sockets that would take it past the enclave's egress policy: VSOCK
// (straight to the host), packet and raw.
const appProbe = `
import os, socket
def probe(*args):
    try:
        socket.socket(*args).close()
        return 0
    except OSError as e:
        return e.errno
print("probe uid=%d vsock=%d packet=%d raw=%d tcp=%d" % (os.getuid(),
    probe(socket.AF_VSOCK, socket.SOCK_STREAM),
    probe(socket.AF_PACKET, socket.SOCK_RAW),
    probe(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP),
    probe(socket.AF_INET, socket.SOCK_STREAM)), flush=True)
`

// TestEnclaveAppSandbox runs quench-enclave -allow with an app (the real
// binary, so its own second run installs the filter) and checks what the
// app may open, with -app-user and without the sandbox.
func TestEnclaveAppSandbox(t *testing.T) {
	testutil.RequireCommand(t, "python3")
	env := newEnclaveEnv(t)
	env.startHost()
	// The user must be able to run python3: not a copy under /root.
	python := "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		python = "python3"
	}
	run := func(extra ...string) string {
		t.Helper()
		args := append([]string{"-allow", "*", "-app-url", "http://127.0.0.1:8081", "-internal-addr", "127.0.0.1:8079", "-dev-attester"}, extra...)
		env.startEnclave(append(args, "--", python, "-c", appProbe)...)
		select {
		case <-env.enclave.Done():
		case <-time.After(30 * time.Second):
			t.Fatalf("quench-enclave did not exit with its app:\n%s", env.enclave.Output())
		}
		for _, line := range strings.Split(env.enclave.Output(), "\n") {
			if strings.HasPrefix(line, "probe ") {
				return strings.TrimSpace(line)
			}
		}
		t.Fatalf("no probe output (quench-enclave: %v)", env.enclave.Cmd.ProcessState)
		return ""
	}
	// EPERM is 1; the kernel's own answers without the filter vary (no
	// VSOCK here: EAFNOSUPPORT), but are not EPERM for root.
	if got, want := run(), "probe uid=0 vsock=1 packet=1 raw=1 tcp=0"; got != want {
		t.Errorf("sandboxed (with -allow): %q, want %q", got, want)
	}
	if got, want := run("-app-user", "65534:65534"), "probe uid=65534 vsock=1 packet=1 raw=1 tcp=0"; got != want {
		t.Errorf("sandboxed, -app-user: %q, want %q", got, want)
	}
	got := run("-app-sandbox", "off")
	if !strings.HasPrefix(got, "probe uid=0 ") || strings.Contains(got, "vsock=1 ") || strings.Contains(got, "packet=1 ") {
		t.Errorf("-app-sandbox off: %q, want VSOCK and packet sockets not refused with EPERM", got)
	}
}
