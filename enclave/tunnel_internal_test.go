package enclave

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
	"github.com/quenchnet/quench/tap"
)

// TestTunnelStopsOnDeviceFailure: once the pump's device has failed, every
// Run fails at once; the tunnel must stop instead of reconnecting to the
// host in a loop.
func TestTunnelStopsOnDeviceFailure(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "host.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	streams := testutil.ServeConnsWait(t, ln, func(c net.Conn) { // a host that keeps the stream and reads it
		if tc, err := tap.NewConn(c, tap.Config{}); err == nil && tc.ServerHandshake() == nil {
			_, _ = io.Copy(io.Discard, c)
		}
	})

	e, err := New(Config{
		DialHost:        testutil.DialUnix(sock),
		HandshakeSettle: -1,
		ReconnectMin:    time.Millisecond,
		ReconnectMax:    10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.net.device().Close(); err != nil { // the device fails
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.Status().Connected || e.Status().LastError == "" {
		if time.Now().After(deadline) {
			t.Fatalf("the tunnel did not notice the device failure: %+v", e.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := streams.Load()
	time.Sleep(500 * time.Millisecond)
	if n := streams.Load() - before; n > 0 {
		t.Errorf("%d streams to the host in 500 ms after the device failed; want none (status %+v)", n, e.Status())
	}
	t.Logf("status %+v", e.Status())
}
