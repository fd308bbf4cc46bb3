package netstack

import (
	"context"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestUnacceptedConnsBounded opens connections to a listener whose app
// does not call Accept, as a hostile host can. Each one the stack holds has
// a receive buffer the host can fill (ethlink.TCPBufDefault, 1 MiB), and no
// memory limit of the stack's covers them all, as Linux's tcp_mem does: at
// a backlog of 4096 (up to twice that held, handshakes in progress
// included) the host could make one listener hold 4 to 8 GiB. At 128, at
// most 255 are held.
func TestUnacceptedConnsBounded(t *testing.T) {
	p := newPair(t, wireDirect, nil)
	ln, err := p.b.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	const dials, limit = 500, 300
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range dials {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The dialler's side is established once the SYN-ACK
			// arrives; past the backlog the listener drops the SYN and
			// the dial times out.
			if c, err := p.a.Dial(ctx, "tcp", "192.168.127.2:80"); err == nil {
				t.Cleanup(func() { c.Close() })
			}
		}()
	}
	wg.Wait()

	// Count the listener's established, unaccepted connections once the
	// last ACKs are in (bounded wait: the count only grows).
	count := func() (n, rcvBuf int) {
		for _, te := range p.b.stack.RegisteredEndpoints() {
			ep, ok := te.(tcpip.Endpoint)
			if !ok {
				continue
			}
			info, ok := ep.Info().(*stack.TransportEndpointInfo)
			if ok && info.TransProto == header.TCPProtocolNumber && info.ID.LocalPort == 80 && info.ID.RemotePort != 0 {
				n++
				rcvBuf = int(ep.SocketOptions().GetReceiveBufferSize())
			}
		}
		return n, rcvBuf
	}
	held, rcvBuf := count()
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if n, _ := count(); n > held {
			held = n
		}
	}
	if held > limit {
		t.Fatalf("a listener nobody accepts from holds %d connections, each with a %d KiB receive buffer the host can fill (%d MiB); want at most %d",
			held, rcvBuf>>10, held*rcvBuf>>20, limit)
	}
	t.Logf("%d held", held)
}
