package ethlink

import (
	"bytes"
	"encoding/binary"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

var (
	stackIP = tcpip.AddrFrom4([4]byte{192, 168, 127, 2})
	peerIP  = tcpip.AddrFrom4([4]byte{192, 168, 127, 1})
)

const (
	stackPort = 7
	peerPort  = 40000
)

// sentPacket is a TCP segment as the stack hands it to its link.
func sentPacket(flags header.TCPFlags, ack uint32, win uint16) *stack.PacketBuffer {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{ReserveHeaderBytes: 64})
	tcp := header.TCP(pkt.TransportHeader().Push(header.TCPMinimumSize))
	tcp.Encode(&header.TCPFields{SrcPort: stackPort, DstPort: peerPort, SeqNum: 1, AckNum: ack,
		DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: win})
	ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
	ip.Encode(&header.IPv4Fields{TotalLength: header.IPv4MinimumSize + header.TCPMinimumSize, TTL: 64,
		Protocol: uint8(header.TCPProtocolNumber), SrcAddr: stackIP, DstAddr: peerIP})
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	pkt.TransportProtocolNumber = header.TCPProtocolNumber
	return pkt
}

// peerFrame is an Ethernet frame from the peer to the stack, with valid
// checksums.
func peerFrame(sport uint16, flags header.TCPFlags, seq uint32, payload []byte) []byte {
	tl := header.IPv4MinimumSize + header.TCPMinimumSize + len(payload)
	b := make([]byte, header.EthernetMinimumSize+tl)
	header.Ethernet(b).Encode(&header.EthernetFields{SrcAddr: "\x5a\x94\xef\xe4\x0c\xdd", DstAddr: "\x5a\x94\xef\xe4\x0c\xee", Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(b[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(tl), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: peerIP, DstAddr: stackIP})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(ip[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{SrcPort: sport, DstPort: stackPort, SeqNum: seq, AckNum: 99,
		DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 1000})
	copy(tcp[header.TCPMinimumSize:], payload)
	tcp.SetChecksum(^tcp.CalculateChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, peerIP, stackIP, uint16(len(tcp)))))
	return b
}

func tcpOf(frame []byte) header.TCP {
	return header.TCP(frame[header.EthernetMinimumSize+header.IPv4MinimumSize:])
}

func TestZeroWindowACKs(t *testing.T) {
	const rcvNxt = 5000
	var z ZeroWindowACKs
	ack := peerFrame(peerPort, header.TCPFlagAck, rcvNxt+1, nil)
	if got := z.Fix(ack); &got[0] != &ack[0] {
		t.Fatal("Fix changed a frame with nothing recorded")
	}

	z.Sent(sentPacket(header.TCPFlagAck, rcvNxt, 0))
	orig := bytes.Clone(ack)
	got := z.Fix(ack)
	if !bytes.Equal(ack, orig) {
		t.Fatal("Fix modified its argument")
	}
	tcp := tcpOf(got)
	if tcp.SequenceNumber() != rcvNxt {
		t.Fatalf("fixed seq = %d, want %d", tcp.SequenceNumber(), rcvNxt)
	}
	if !tcp.IsChecksumValid(peerIP, stackIP, 0, 0) {
		t.Fatal("fixed segment's checksum is invalid")
	}
	if d := diffOffsets(ack, got); len(d) == 0 || d[0] < 38 || d[len(d)-1] > 51 {
		t.Fatalf("bytes changed at %v, want only the sequence number and the checksum", d)
	}
	if z.Fixed() != 1 {
		t.Fatalf("Fixed = %d, want 1", z.Fixed())
	}

	untouched := map[string][]byte{
		"at RcvNxt":           peerFrame(peerPort, header.TCPFlagAck, rcvNxt, nil),
		"keepalive":           peerFrame(peerPort, header.TCPFlagAck, rcvNxt-1, nil),
		"too far ahead":       peerFrame(peerPort, header.TCPFlagAck, rcvNxt+maxZeroWindowLead, nil),
		"data":                peerFrame(peerPort, header.TCPFlagAck, rcvNxt+1, []byte("x")),
		"ACK and PSH":         peerFrame(peerPort, header.TCPFlagAck|header.TCPFlagPsh, rcvNxt+1, nil),
		"FIN":                 peerFrame(peerPort, header.TCPFlagAck|header.TCPFlagFin, rcvNxt+1, nil),
		"another connection":  peerFrame(peerPort+1, header.TCPFlagAck, rcvNxt+1, nil),
		"truncated":           ack[:40],
		"runt":                ack[:10],
		"IP length too large": func() []byte { b := bytes.Clone(ack); binary.BigEndian.PutUint16(b[16:], 9000); return b }(),
	}
	for name, f := range untouched {
		if got := z.Fix(f); &got[0] != &f[0] {
			t.Errorf("%s: Fix changed the frame", name)
		}
	}

	// The window reopens: nothing is fixed any more.
	z.Sent(sentPacket(header.TCPFlagAck, rcvNxt, 4))
	if got := z.Fix(ack); &got[0] != &ack[0] {
		t.Fatal("Fix changed a frame after the window reopened")
	}
	if z.n.Load() != 0 {
		t.Fatalf("%d connections remembered, want 0", z.n.Load())
	}
	// A reset with window 0 is not a zero window.
	z.Sent(sentPacket(header.TCPFlagRst|header.TCPFlagAck, rcvNxt, 0))
	if z.n.Load() != 0 {
		t.Fatal("a RST was remembered")
	}
}

func TestZeroWindowACKsBounded(t *testing.T) {
	var z ZeroWindowACKs
	for i := range maxZeroWindowFlows + 10 {
		pkt := sentPacket(header.TCPFlagAck, 1, 0)
		header.TCP(pkt.TransportHeader().Slice()).SetDestinationPort(uint16(i))
		z.Sent(pkt)
	}
	if n := int(z.n.Load()); n > maxZeroWindowFlows || n != len(z.m) {
		t.Fatalf("%d connections remembered (map %d), bound %d", n, len(z.m), maxZeroWindowFlows)
	}
}

func diffOffsets(a, b []byte) []int {
	var d []int
	for i := range a {
		if a[i] != b[i] {
			d = append(d, i)
		}
	}
	return d
}

// FuzzZeroWindowFix feeds arbitrary frames to Fix with a connection at zero
// window: it must not panic, and what it returns is the frame itself or a
// copy that differs only in the TCP sequence number and checksum.
func FuzzZeroWindowFix(f *testing.F) {
	f.Add(peerFrame(peerPort, header.TCPFlagAck, 5001, nil))
	f.Add(peerFrame(peerPort, header.TCPFlagAck, 5000, []byte("data")))
	f.Add([]byte{1, 2, 3})
	var z ZeroWindowACKs
	z.Sent(sentPacket(header.TCPFlagAck, 5000, 0))
	f.Fuzz(func(t *testing.T, frame []byte) {
		orig := bytes.Clone(frame)
		got := z.Fix(frame)
		if !bytes.Equal(frame, orig) {
			t.Fatal("Fix modified its argument")
		}
		if len(frame) == 0 || &got[0] == &frame[0] {
			return
		}
		if len(got) != len(frame) {
			t.Fatalf("fixed frame is %d bytes, want %d", len(got), len(frame))
		}
		hl := int(header.IPv4(frame[header.EthernetMinimumSize:]).HeaderLength())
		seqAt := header.EthernetMinimumSize + hl + 4
		xsumAt := header.EthernetMinimumSize + hl + 16
		for _, i := range diffOffsets(frame, got) {
			if !(i >= seqAt && i < seqAt+4) && !(i >= xsumAt && i < xsumAt+2) {
				t.Fatalf("byte %d changed", i)
			}
		}
		if s := header.TCP(got[header.EthernetMinimumSize+hl:]).SequenceNumber(); s != 5000 {
			t.Fatalf("fixed seq = %d, want 5000", s)
		}
	})
}

// BenchmarkZeroWindowACKs measures the per-frame cost on the common path:
// no connection at zero window, one segment sent and one frame received.
func BenchmarkZeroWindowACKs(b *testing.B) {
	var z ZeroWindowACKs
	pkt := sentPacket(header.TCPFlagAck, 1, 1000)
	defer pkt.DecRef()
	frame := peerFrame(peerPort, header.TCPFlagAck, 2, nil)
	b.ReportAllocs()
	for b.Loop() {
		z.Sent(pkt)
		_ = z.Fix(frame)
	}
}

func BenchmarkZeroWindowACKsSent(b *testing.B) {
	var z ZeroWindowACKs
	pkt := sentPacket(header.TCPFlagAck, 1, 1000)
	defer pkt.DecRef()
	for b.Loop() {
		z.Sent(pkt)
	}
}
