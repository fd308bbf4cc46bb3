package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/host/hosttest"
)

// -log-to vsock://:1025 names no CID: the shipper would dial nothing for
// ever while /enclave/config names the destination (quench-enclave refuses
// it too). Userspace mode and a host that is not there: the test must never
// take the machine's network.
func TestLogToWithoutCID(t *testing.T) {
	done := make(chan error, 1)
	go func() {
		done <- run([]string{"-network", "userspace", "-host", "unix://" + t.TempDir() + "/none.sock",
			"-log-to", "vsock://:1025"})
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "CID") {
			t.Fatalf("run: %v, want an error about the missing CID", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("-log-to vsock://:1025 accepted: run is still trying to reach the host")
	}
}

// TestLogToRunError: the error hello exits with must reach the log host
// too, not only standard error: a production enclave has no console.
func TestLogToRunError(t *testing.T) {
	dir := t.TempDir()
	var got hosttest.Lines
	logSock := hosttest.ServeLogs(t, hosttest.Start(t, host.Config{EnclaveLog: got.Add}))

	// Fails before any network: the development root cannot be written.
	err := run([]string{"-network", "userspace", "-host", "unix://" + filepath.Join(dir, "none.sock"),
		"-log-to", "unix://" + logSock, "-dev-attester", "-dev-root-out", filepath.Join(dir, "no", "such", "dir", "root.pem")})
	if err == nil {
		t.Fatal("run succeeded")
	}
	for _, l := range got.All() {
		if strings.Contains(l, "root.pem") && strings.Contains(l, "hello:") {
			return
		}
	}
	t.Fatalf("run: %v; the log host got %q", err, got.All())
}
