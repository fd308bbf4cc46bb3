package netstack

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestTimeWaitShort has the host open connections that the enclave's app
// closes first, as an HTTP server does after a "Connection: close"
// request: each leaves a gVisor endpoint in TIME-WAIT, about 10 KB, with no
// cap on their number (Linux has tcp_max_tw_buckets and keeps a small
// struct). For gVisor's default of 60 s, a host opening a few thousand
// connections a second held gigabytes of them.
func TestTimeWaitShort(t *testing.T) {
	p := newPair(t, wireDirect, nil)
	serveB80(t, p, func(c net.Conn) {
		_, _ = c.Read(make([]byte, 1))
		c.Close()
	})
	const conns = 500
	for range conns {
		c, err := p.a.Dial(context.Background(), "tcp", "192.168.127.2:80")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, c)
		c.Close()
	}
	expectStateDrains(t, p.b.stack, tcp.StateTimeWait, conns, 5*time.Second)
}

// TestFinWait2Short: the host takes the FIN of connections the enclave's
// app closed but never sends its own. Each stays a whole gVisor endpoint
// in FIN-WAIT-2 for the linger timeout (gVisor's default: 60 s), with no
// cap on their number, as in TIME-WAIT; Linux turns them into small
// TIME-WAIT structs.
func TestFinWait2Short(t *testing.T) {
	p := newPair(t, wireDirect, nil)
	serveB80(t, p, func(c net.Conn) { c.Close() })
	const conns = 200
	for range conns {
		c, err := p.a.Dial(context.Background(), "tcp", "192.168.127.2:80")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The enclave's FIN: the host's side is at EOF and stays open.
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatal(err)
		}
	}
	expectStateDrains(t, p.b.stack, tcp.StateFinWait2, conns, 15*time.Second)
}

// expectStateDrains checks that some of the conns connections the enclave
// closed are in state on s now (else the test does not test), and that none
// is any more within the given time.
func expectStateDrains(t *testing.T, s *stack.Stack, state tcp.EndpointState, conns int, within time.Duration) {
	t.Helper()
	count := func() int {
		n := 0
		for _, te := range s.RegisteredEndpoints() {
			if ep, ok := te.(tcpip.Endpoint); ok && tcp.EndpointState(ep.State()) == state {
				n++
			}
		}
		return n
	}
	if count() == 0 {
		t.Fatalf("no connection in %v: the test does not test", state)
	}
	deadline := time.Now().Add(within)
	for count() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := count(); n > 0 {
		t.Fatalf("%d of %d connections the enclave closed are still in %v after %v", n, conns, state, within)
	}
}

// serveB80 listens on port 80 of p's second stack and hands every
// connection to handle, until the test ends.
func serveB80(t *testing.T, p *pair, handle func(net.Conn)) {
	t.Helper()
	ln, err := p.b.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			handle(c)
		}
	}()
}
