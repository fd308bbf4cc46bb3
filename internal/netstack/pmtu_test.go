package netstack

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

// fragNeeded returns an ICMPv4 "fragmentation needed" from the gateway
// with next-hop MTU mtu, quoting the first bytes of a segment the stack
// sent from port 7 to the peer's port 40000.
func fragNeeded(mtu uint16) []byte {
	quoted := ipv4Packet(selfIP, gwIP, uint8(header.TCPProtocolNumber), 1, 0,
		tcpSegment(selfIP, gwIP, 7, 40000, header.TCPFlagAck, make([]byte, 1000)))
	icmp := make([]byte, header.ICMPv4MinimumSize+header.IPv4MinimumSize+8)
	h := header.ICMPv4(icmp)
	h.SetType(header.ICMPv4DstUnreachable)
	h.SetCode(header.ICMPv4FragmentationNeeded)
	h.SetMTU(mtu)
	copy(icmp[header.ICMPv4MinimumSize:], quoted)
	h.SetChecksum(^checksum.Checksum(icmp, 0))
	return ethFrame(selfMA, hostMA, header.IPv4ProtocolNumber,
		ipv4Packet(gwIP, selfIP, uint8(header.ICMPv4ProtocolNumber), 2, 0, icmp))
}

// TestTinyPathMTUIgnored: the host may send "fragmentation needed" for any
// connection, with any MTU. gVisor took MTUs below IPv4's minimum (68) as 0
// and then sent 1-byte segments, and 68 as 28-byte ones (Linux never goes
// below 552): the host could make the enclave spend a packet on every byte
// or few it sends, a thousandfold the work at MTU 1500. MTUs below 576 (the
// smallest a quench link has) are now ignored: 4000 bytes take at most 10
// segments.
func TestTinyPathMTUIgnored(t *testing.T) {
	for _, mtu := range []uint16{0, 67, 68, 200, 575} {
		t.Run("", func(t *testing.T) {
			n := newRawNet(t)
			p := newRawPeer(t, n)
			ln, err := n.Listen("tcp", ":7")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			p.sndNxt = 100
			p.send(header.TCPFields{SeqNum: uint32(p.sndNxt), Flags: header.TCPFlagSyn, WindowSize: 65535}, nil, nil)
			synAck := p.next(func(s rawSeg) bool { return s.flags.Contains(header.TCPFlagSyn | header.TCPFlagAck) })
			p.sndNxt++
			p.rcvNxt = synAck.seq + 1
			p.send(header.TCPFields{SeqNum: uint32(p.sndNxt), AckNum: uint32(p.rcvNxt), Flags: header.TCPFlagAck, WindowSize: 65535}, nil, nil)
			c, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()

			if _, err := n.Device().Write([][]byte{fragNeeded(mtu)}, 0); err != nil {
				t.Fatal(err)
			}
			const size = 4000
			go func() { _, _ = c.Write(make([]byte, size)) }()
			// Count the segments that carry the 4000 bytes, ACKing as
			// they come.
			segs, got := 0, 0
			for got < size {
				s := p.next(func(s rawSeg) bool { return s.payload > 0 && s.seq == p.rcvNxt })
				segs++
				got += s.payload
				p.rcvNxt = s.seq.Add(seqnum.Size(s.payload))
				p.send(header.TCPFields{SeqNum: uint32(p.sndNxt), AckNum: uint32(p.rcvNxt), Flags: header.TCPFlagAck, WindowSize: 65535}, nil, nil)
				if segs > 10 {
					t.Fatalf("MTU %d from the host: %d segments for the first %d of %d bytes (%d bytes in the last)", mtu, segs, got, size, s.payload)
				}
			}
		})
	}
}
