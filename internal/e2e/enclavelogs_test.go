package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/internal/testutil"
)

// TestEnclaveLogs runs quench-enclave -log-to against quench-host
// -enclave-logs on the VSOCK stand-in (userspace mode: no root): the app's
// standard output and error and quench-enclave's own log reach the host's
// log with their streams, a control character is quoted there, a line
// written while the host is restarting arrives at the new one (which
// writes JSON: -log-format json), and the
// app's exit code is quench-enclave's.
func TestEnclaveLogs(t *testing.T) {
	bin := testutil.Binaries(t)
	dir := t.TempDir()
	vsockDir := t.TempDir() // the VSOCK stand-in's sockets
	hostSock := filepath.Join(dir, "host.sock")
	startHost := func(extra ...string) *testutil.Process {
		p := testutil.Start(t, "quench-host", exec.Command(filepath.Join(bin, "quench-host"), append([]string{
			"-vsock-dir", vsockDir, "-listen", "unix://" + hostSock, "-enclave-logs", "vsock://:1025", "-log-level", "warn"}, extra...)...))
		testutil.WaitForFile(t, endpoint.StandInPath(vsockDir, endpoint.ParentCID, 1025), 10*time.Second)
		return p
	}
	host := startHost()

	goOn := filepath.Join(dir, "go-on")
	app := fmt.Sprintf(`echo first; echo "to stderr $((6*7))" >&2; printf 'bell\a and \033[2Jclear\n'; `+
		`while [ ! -e %s ]; do sleep 0.05; done; echo second; exit 3`, goOn)
	encl := testutil.Start(t, "quench-enclave", exec.Command(filepath.Join(bin, "quench-enclave"),
		"-vsock-dir", vsockDir, "-host", "unix://"+hostSock, "-network", "userspace",
		"-forward", "vsock://16:8080=127.0.0.1:1", "-log-to", "vsock://3:1025", "--", "sh", "-c", app))

	has := func(p *testutil.Process, want ...string) func() error {
		return func() error {
			out := p.Output()
			for _, w := range want {
				if !strings.Contains(out, w) {
					return fmt.Errorf("no %q in:\n%s", w, out)
				}
			}
			return nil
		}
	}
	// -log-level warn on the host: the enclave's lines are shown anyway.
	testutil.WaitFor(t, 20*time.Second, "the app's lines on the host", has(host,
		"msg=enclave enclave=",
		"stream=stdout line=first",
		`stream=stderr line="to stderr 42"`,
		`stream=stdout line="bell\a and \x1b[2Jclear"`,
		`stream=quench line="time=`, // quench-enclave's own log
		"app started",
	))
	if out := host.Output(); strings.ContainsAny(out, "\a\x1b") {
		t.Fatalf("a control character reached the host's log raw:\n%q", out)
	}
	// Locally too, as before.
	if err := has(encl, "first", "to stderr 42", "app started")(); err != nil {
		t.Fatal(err)
	}

	// The host restarts; the next line reaches the new one.
	if err := host.Stop(10 * time.Second); err != nil {
		t.Fatalf("quench-host: %v", err)
	}
	host = startHost("-log-format", "json") // for log pipelines
	if err := os.WriteFile(goOn, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, "the line after the restart", has(host, `"msg":"enclave","enclave":"unix:uid=`, `"stream":"stdout","line":"second"}`))

	select {
	case <-encl.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("quench-enclave did not exit after the app")
	}
	if code := encl.Cmd.ProcessState.ExitCode(); code != 3 {
		t.Fatalf("quench-enclave exit code %d, want the app's 3", code)
	}
	// Its last words (the app's exit) were delivered before it exited.
	if err := has(host, "app exited; shutting down")(); err != nil {
		t.Fatal(err)
	}
}
