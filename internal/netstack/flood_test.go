package netstack

import (
	"net"
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
	n, err := New(Config{MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	defer drain(n)()
	pc, err := n.ListenPacket("udp", ":9999")
	if err != nil {
		t.Fatal(err)
	}
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
