package enclave_test

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/internal/testutil"
	"github.com/quenchnet/quench/tap"
)

// dropHost listens on sock as a host that reads each stream's /connect
// request and closes the stream at once. It returns the count of streams
// it accepted.
func dropHost(t *testing.T, sock string) *atomic.Int64 {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	return testutil.ServeConnsWait(t, ln, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if tc, err := tap.NewConn(c, tap.Config{}); err == nil {
			_ = tc.ServerHandshake()
		}
	})
}

// TestReconnectBackoff: a host that drops every stream right after the
// handshake must not make the enclave reconnect in a tight loop; the
// backoff between attempts carries across streams that die young.
func TestReconnectBackoff(t *testing.T) {
	for _, tc := range []struct {
		name   string
		settle time.Duration
	}{
		{"default settle", 0},
		{"no settle", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := usSocket(t)
			n := dropHost(t, sock)
			e := usStartEnclave(t, sock, func(c *enclave.Config) {
				c.ReconnectMin = 50 * time.Millisecond
				c.ReconnectMax = time.Second
				c.HandshakeSettle = tc.settle
			})
			start := n.Load()
			time.Sleep(3 * time.Second)
			got := n.Load() - start
			t.Logf("%d attempts in 3 s; status %+v", got, e.Status())
			// 50, 100, 200, 400, 800 ms, then 1 s: 7 within 3 s.
			if got > 8 {
				t.Errorf("%d attempts in 3 s with ReconnectMin 50ms, ReconnectMax 1s; want at most 8", got)
			}
		})
	}
}

// TestReconnectAfterStall: a host that sends part of a frame and then
// neither reads, writes nor closes is detected after StallTimeout; the
// enclave drops the stream and reconnects.
func TestReconnectAfterStall(t *testing.T) {
	sock := usSocket(t)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	streams := make(chan struct{}, 100)
	stop := make(chan struct{})
	testutil.ServeConnsWait(t, ln, func(c net.Conn) {
		tc, err := tap.NewConn(c, tap.Config{})
		if err != nil || tc.ServerHandshake() != nil {
			return
		}
		streams <- struct{}{}
		// 12 bytes of a 1000-byte frame, then nothing.
		if _, err := c.Write(append([]byte{0xe8, 0x03}, make([]byte, 10)...)); err != nil {
			return
		}
		<-stop
	})
	t.Cleanup(func() { close(stop) }) // before ServeConnsWait's cleanup
	e := usStartEnclave(t, sock, func(c *enclave.Config) {
		c.StallTimeout = 300 * time.Millisecond
		c.HandshakeSettle = -1
	})
	for i := range 2 {
		select {
		case <-streams:
		case <-time.After(5 * time.Second):
			t.Fatalf("stream %d: the enclave did not reconnect after the host stalled; status %+v", i+1, e.Status())
		}
	}
	st := e.Status()
	t.Logf("status %+v", st)
	if !strings.Contains(st.LastError, "stalled") {
		t.Errorf("LastError = %q, want the stall", st.LastError)
	}
}
