package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/host/hosttest"
	"github.com/quenchnet/quench/internal/testutil"
	"github.com/quenchnet/quench/logship"
)

// shippingOptions returns options for superviseApp with -log-to set, to a
// host that never answers.
func shippingOptions(t *testing.T, app ...string) *options {
	t.Helper()
	sh, err := logship.New(logship.Config{Dial: func(context.Context) (net.Conn, error) {
		return nil, errors.New("no host")
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = sh.Close(ctx)
	})
	return &options{appArgs: app, logShip: sh, logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// TestLogShipExitCode: with -log-to the app's output goes through pipes;
// an app that exits 0 leaving a process behind that holds them (a daemon
// it started) must still give exit code 0, as without -log-to, not the 1
// of exec.ErrWaitDelay. Its own code passes as ever.
func TestLogShipExitCode(t *testing.T) {
	if code := runApp(t, shippingOptions(t, "sh", "-c", "sleep 4 & exit 0")); code != 0 {
		t.Errorf("app exited 0 leaving a child holding stdout: exit code %d, want 0", code)
	}
	if code := runApp(t, shippingOptions(t, "sh", "-c", "sleep 4 & exit 5")); code != 5 {
		t.Errorf("app exited 5 leaving a child holding stdout: exit code %d, want 5", code)
	}
	if code := runApp(t, shippingOptions(t, "sh", "-c", "echo hi; exit 0")); code != 0 {
		t.Errorf("app exited 0: exit code %d", code)
	}
}

// TestLogShipBrokenStdout: with -log-to, quench-enclave copies the app's
// standard output to its own. When that is a pipe nobody reads any more,
// the copy must fail quietly (the lines still go to the host, as logs.go's
// tee promises), not kill quench-enclave with SIGPIPE, as Go does for a
// write to a broken fd 1 or 2 unless SIGPIPE is notified: without -log-to
// only the app met the broken pipe.
func TestLogShipBrokenStdout(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	bin := testutil.Binaries(t)
	dir := t.TempDir()
	sock := hosttest.Serve(t, hosttest.Start(t, host.Config{}))

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close() // nobody reads quench-enclave's standard output
	defer w.Close()
	var stderr testutil.SyncBuffer
	cmd := exec.Command(filepath.Join(bin, "quench-enclave"),
		"-network", "userspace", "-host", "unix://"+sock, "-vsock-dir", dir,
		"-forward", "vsock://16:8080=127.0.0.1:1", "-log-to", "unix://"+filepath.Join(dir, "nobody.sock"),
		"--", "sh", "-c", "echo one; sleep 0.3; echo two; exit 4")
	cmd.Stdout, cmd.Stderr = w, &stderr
	if code := runToExit(t, cmd, &stderr); code != 4 {
		t.Fatalf("quench-enclave: %v (exit code %d), want the app's 4\n%s", cmd.ProcessState, code, stderr.String())
	}
}

// TestLogShipStartFailure: the enclave's network does not come up (no
// quench-host on -host, or a wrong one): the very case -log-to is for,
// since a production enclave has no console. The error quench-enclave
// exits with must reach the log host, not only its standard error.
func TestLogShipStartFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	bin := testutil.Binaries(t)
	dir := t.TempDir()
	var got hosttest.Lines
	logSock := hosttest.ServeLogs(t, hosttest.Start(t, host.Config{EnclaveLog: got.Add}))

	var stderr testutil.SyncBuffer
	cmd := exec.Command(filepath.Join(bin, "quench-enclave"),
		"-network", "userspace", "-host", "unix://"+filepath.Join(dir, "nobody.sock"), "-start-timeout", "500ms",
		"-forward", "vsock://16:8080=127.0.0.1:1", "-vsock-dir", dir, "-log-to", "unix://"+logSock,
		"--", "true")
	cmd.Stderr = &stderr
	if code := runToExit(t, cmd, &stderr); code != 1 {
		t.Fatalf("exit code %d, want 1\n%s", code, stderr.String())
	}
	for _, l := range got.All() {
		if strings.Contains(l, "connect to host") {
			return
		}
	}
	t.Fatalf("the log host got %q, not the start-up error\nstderr: %s", got.All(), stderr.String())
}

// TestExitErrorJSON: with -log-format json, the error quench-enclave exits
// with is a JSON record like the rest of its log (it was a plain line).
func TestExitErrorJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	bin := testutil.Binaries(t)
	dir := t.TempDir()
	var stderr testutil.SyncBuffer
	cmd := exec.Command(filepath.Join(bin, "quench-enclave"), "-log-format", "json",
		"-network", "userspace", "-host", "unix://"+filepath.Join(dir, "nobody.sock"), "-start-timeout", "500ms",
		"-forward", "vsock://16:8080=127.0.0.1:1", "-vsock-dir", dir)
	cmd.Stderr = &stderr
	if code := runToExit(t, cmd, &stderr); code != 1 {
		t.Fatalf("exit code %d, want 1\n%s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "{") || !strings.Contains(last, `"msg":"exiting"`) || !strings.Contains(last, "connect to host") {
		t.Fatalf("last line %q, want a JSON record of the exit error", last)
	}
}

// runToExit runs cmd (quench-enclave) and returns its exit code; it fails
// the test if cmd has not exited within 30 s.
func runToExit(t *testing.T, cmd *exec.Cmd, stderr *testutil.SyncBuffer) int {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("quench-enclave did not exit\n%s", stderr.String())
	}
	return cmd.ProcessState.ExitCode()
}
