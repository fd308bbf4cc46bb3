package main

import (
	"strings"
	"testing"
	"time"
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
