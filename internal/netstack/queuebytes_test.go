package netstack

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestQueueBytesBounded: a host that stops reading the tunnel and sends
// maximal pings (one 64 KiB frame each at the default MTU) gets a maximal
// reply queued for each, until the queue is full: at 4096 packets, 256 MiB
// of the enclave's memory held for as long as the host likes.
func TestQueueBytesBounded(t *testing.T) {
	n, err := New(Config{}) // MTU 65520
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// Teach the stack the gateway's MAC (its reply to this ARP is the first
	// packet queued), so that replies need no ARP.
	if _, err := n.Device().Write([][]byte{arpRequest(hostMA, gwIP, selfIP)}, 0); err != nil {
		t.Fatal(err)
	}
	icmp := make([]byte, n.Device().MTU()-header.IPv4MinimumSize)
	h := header.ICMPv4(icmp)
	h.SetType(header.ICMPv4Echo)
	h.SetChecksum(^checksum.Checksum(icmp, 0))
	ping := ethFrame(selfMA, hostMA, header.IPv4ProtocolNumber,
		ipv4Packet(gwIP, selfIP, uint8(header.ICMPv4ProtocolNumber), 1, 0, icmp))
	const pings = 1024 // 64 MiB of replies
	for range pings {
		if _, err := n.Device().Write([][]byte{ping}, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Count what is queued: read until the queue is empty (Read returns
	// what is queued; the stack sends nothing else meanwhile).
	d := n.Device()
	bufs := make([][]byte, d.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, d.MTU()+header.EthernetMinimumSize)
	}
	sizes := make([]int, len(bufs))
	queued, frames := 0, 0
	for frames < 1+pings && n.ep.q.len() > 0 {
		k, err := d.Read(bufs, sizes, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range sizes[:k] {
			queued += s
		}
		frames += k
	}
	const limit = 40 << 20
	if queued > limit {
		t.Fatalf("%d frames (%d MiB) queued for a host that does not read; want at most %d MiB", frames, queued>>20, limit>>20)
	}
	if s := n.Stats(); s.DroppedOut == 0 {
		t.Fatalf("%d frames (%d MiB) queued and none dropped", frames, queued>>20)
	}
}
