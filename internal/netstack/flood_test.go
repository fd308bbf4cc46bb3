package netstack

import (
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/waiter"
)

// stackEndpoint returns the stack's endpoint of transport proto bound to
// local port port.
func stackEndpoint(t *testing.T, n *Net, proto tcpip.TransportProtocolNumber, port uint16) tcpip.Endpoint {
	t.Helper()
	for _, te := range n.stack.RegisteredEndpoints() {
		ep, ok := te.(tcpip.Endpoint)
		if !ok {
			continue
		}
		info, ok := ep.Info().(*stack.TransportEndpointInfo)
		if ok && info.TransProto == proto && info.ID.LocalPort == port {
			return ep
		}
	}
	t.Fatalf("no endpoint of protocol %d on port %d", proto, port)
	return nil
}

// TestUDPFloodBounded floods a socket the application is not reading with
// empty datagrams, as a hostile host can: gVisor charges a datagram to the
// socket's receive buffer by its payload only, so empty ones were queued
// without limit (about 700 bytes of heap each: 210 MB for 300,000).
func TestUDPFloodBounded(t *testing.T) {
	n, pc := udpNet(t)
	defer pc.Close()

	const sent = 100_000
	f := ethFrame(selfMA, hostMA, header.IPv4ProtocolNumber,
		ipv4Packet(gwIP, selfIP, uint8(header.UDPProtocolNumber), 1, 0, udpDatagram(5000, 9999, nil)))
	batch := make([][]byte, 1000)
	for i := range batch {
		batch[i] = f
	}
	for range sent / len(batch) {
		if _, err := n.Device().Write(batch, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Whatever the stack still has to hand to the socket, let it (bounded:
	// a stack that keeps them all never gets there).
	ep := stackEndpoint(t, n, header.UDPProtocolNumber, 9999)
	for deadline := time.Now().Add(5 * time.Second); ep.Readiness(waiter.ReadableEvents) != 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}

	queued := 0
	buf := make([]byte, 16)
	for {
		_ = pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, _, err := pc.ReadFrom(buf); err != nil {
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				t.Fatal(err)
			}
			break
		}
		queued++
	}
	const limit = 4096
	if queued == 0 || queued > limit {
		t.Fatalf("%d empty datagrams sent to an unread socket, %d queued; want 1 to %d", sent, queued, limit)
	}
	t.Logf("%d of %d queued", queued, sent)
}

// TestUDPConcurrentReaders: several readers of one socket, with datagrams
// arriving while they read and while none waits, get every datagram once
// (the receive queue never fills here), and Close ends them.
func TestUDPConcurrentReaders(t *testing.T) {
	n, pc := udpNet(t)
	const total, batch, readers = 20_000, 100, 4
	var (
		mu   sync.Mutex
		seen = make(map[uint32]int, total)
		got  = make(chan struct{}, total)
		wg   sync.WaitGroup
	)
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 16)
			for {
				k, _, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				if k != 4 {
					t.Errorf("read %d bytes, want 4", k)
					continue
				}
				mu.Lock()
				seen[binary.BigEndian.Uint32(buf)]++
				mu.Unlock()
				got <- struct{}{}
			}
		}()
	}
	frames := make([][]byte, batch)
	for i := 0; i < total; i += batch {
		for j := range frames {
			frames[j] = ethFrame(selfMA, hostMA, header.IPv4ProtocolNumber,
				ipv4Packet(gwIP, selfIP, uint8(header.UDPProtocolNumber), 1, 0, udpDatagram(5000, 9999, binary.BigEndian.AppendUint32(nil, uint32(i+j)))))
		}
		if _, err := n.Device().Write(frames, 0); err != nil {
			t.Fatal(err)
		}
		// Let the readers keep up, so that nothing is dropped.
		for range batch {
			select {
			case <-got:
			case <-time.After(10 * time.Second):
				t.Fatalf("datagrams stopped arriving after about %d", i)
			}
		}
	}
	pc.Close()
	wg.Wait()
	if len(seen) != total {
		t.Errorf("%d distinct datagrams read, want %d", len(seen), total)
	}
	for k, c := range seen {
		if c != 1 {
			t.Errorf("datagram %d read %d times", k, c)
		}
	}
}

// udpNet is a stack (MTU 1500) whose device is drained, with a UDP socket
// on port 9999; both are closed when the test ends.
func udpNet(t *testing.T) (*Net, net.PacketConn) {
	t.Helper()
	n, err := New(Config{MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	stop := drain(n)
	t.Cleanup(stop)
	pc, err := n.ListenPacket("udp", ":9999")
	if err != nil {
		t.Fatal(err)
	}
	return n, pc
}
