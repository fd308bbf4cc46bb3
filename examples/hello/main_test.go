package main

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quenchnet/quench/host"
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
	var mu sync.Mutex
	var got []string
	h, err := host.New(host.Config{EnclaveLog: func(enclave, stream string, line []byte) {
		mu.Lock()
		got = append(got, stream+": "+string(line))
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	logSock := filepath.Join(dir, "logs.sock")
	ln, err := net.Listen("unix", logSock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = h.ServeEnclaveLogs(ln) }()
	defer func() { _ = h.Close(); <-served }()

	// Fails before any network: the development root cannot be written.
	err = run([]string{"-network", "userspace", "-host", "unix://" + filepath.Join(dir, "none.sock"),
		"-log-to", "unix://" + logSock, "-dev-attester", "-dev-root-out", filepath.Join(dir, "no", "such", "dir", "root.pem")})
	if err == nil {
		t.Fatal("run succeeded")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, l := range got {
		if strings.Contains(l, "root.pem") && strings.Contains(l, "hello:") {
			return
		}
	}
	t.Fatalf("run: %v; the log host got %q", err, got)
}
