package netstack

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestZeroNetSourceDropped sends datagrams from 0.0.0.0 and another address
// of 0.0.0.0/8 ("this network": never a peer's address, and Linux drops it
// as a martian source). gVisor accepted them, and an app answering the
// sender, as servers do (and as enclave.Config.Egress allows for peers
// that wrote first), sent to 0.0.0.0, which the stack delivers to itself:
// the host could reach the enclave's loopback UDP services, from
// 127.0.0.1. The sources gVisor drops itself are checked too: the stack's
// own address, loopback, broadcast and multicast.
func TestZeroNetSourceDropped(t *testing.T) {
	n := newRawNet(t)
	defer drain(n)()
	pc, err := n.ListenPacket("udp", ":53")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	local, err := n.ListenPacket("udp", "127.0.0.1:8125")
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()

	datagram := func(src [4]byte, payload string) []byte {
		return ethFrame(selfMA, hostMA, header.IPv4ProtocolNumber,
			ipv4Packet(src, selfIP, uint8(header.UDPProtocolNumber), 1, 0, udpDatagram(8125, 53, []byte(payload))))
	}
	// The spoofed datagrams, then one from the gateway: the socket queues
	// them in order, so the first one read is the gateway's unless the
	// spoofed ones got in.
	frames := [][]byte{
		datagram([4]byte{0, 0, 0, 0}, "zero"), datagram([4]byte{0, 1, 2, 3}, "zeronet"),
		// gVisor drops these itself; keep it so.
		datagram(selfIP, "self"), datagram([4]byte{127, 0, 0, 1}, "loopback"),
		datagram([4]byte{192, 168, 127, 255}, "subnet broadcast"), datagram([4]byte{255, 255, 255, 255}, "broadcast"),
		datagram([4]byte{224, 0, 0, 1}, "multicast"),
		datagram(gwIP, "gateway"),
	}
	if _, err := n.Device().Write(frames, 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	for {
		_ = pc.SetReadDeadline(time.Now().Add(10 * time.Second))
		k, from, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		if string(buf[:k]) == "gateway" {
			break
		}
		t.Errorf("datagram %q from %v delivered", buf[:k], from)
		// Answer it, as a server would, and see where the answer goes.
		if _, err := pc.WriteTo([]byte("answer"), from); err != nil {
			continue
		}
		_ = local.SetReadDeadline(time.Now().Add(time.Second))
		if k, lfrom, err := local.ReadFrom(buf); err == nil {
			t.Errorf("the answer to %v reached the enclave's own 127.0.0.1:8125 (%q from %v)", from, buf[:k], lfrom)
		}
	}
}
