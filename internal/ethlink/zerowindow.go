package ethlink

import (
	"encoding/binary"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// ZeroWindowACKs works around a gVisor TCP bug that can deadlock a
// connection under full-duplex load (docs/bench/userspace.md, "Full-duplex
// stall"; TestGVisorShrinkingWindowBug in internal/netstack reproduces it).
//
// When the window a gVisor endpoint has left is smaller than one unit of its
// window scale, it announces 0 and also tests incoming segments against 0:
// bytes the peer sent inside the window announced before are refused, and
// from then on the peer's pure ACKs, whose sequence number is past the
// endpoint's RcvNxt, are dropped without their acknowledgement being read.
// If the endpoint's reader is waiting for its own writes to be
// acknowledged, nothing reopens the window.
//
// A link that feeds a gVisor stack records, from the segments the stack
// sends, which connections last announced a zero window and at which
// RcvNxt (their acknowledgement number). An incoming pure ACK of such a
// connection whose sequence number is ahead of that RcvNxt by less than
// maxZeroWindowLead gets RcvNxt as its sequence number, so gVisor accepts it
// and reads its acknowledgement, as Linux would (it tests against the window
// it announced). A pure ACK carries no data, so its sequence number says
// nothing else; the refused bytes are retransmitted by the peer as usual.
// Segments behind RcvNxt (keepalives) or with any other flag are untouched.
//
// The zero value is ready. Sent and Fix may be called concurrently.
type ZeroWindowACKs struct {
	n  atomic.Int32 // len(m), read without the lock on every packet
	mu sync.Mutex
	m  map[flowKey]uint32 // guarded by mu: the stack's side of a connection → RcvNxt announced with window 0

	fixed atomic.Uint64
}

// maxZeroWindowLead bounds how far ahead of RcvNxt a pure ACK's sequence
// number may be to be fixed: the bytes refused are fewer than one unit of
// the window scale, at most 2^14 (RFC 7323).
const maxZeroWindowLead = 1 << 14

// maxZeroWindowFlows bounds the connections remembered; past it the table is
// emptied (a connection still at zero window is remembered again with the
// next segment it sends, which for a stuck one is its reply to the next
// refused ACK).
const maxZeroWindowFlows = 4096

// flowKey identifies a connection as the stack sees it: local address and
// port, remote address and port.
type flowKey [12]byte

// Sent records a packet the stack sends to the link.
func (z *ZeroWindowACKs) Sent(pkt *stack.PacketBuffer) {
	if pkt.NetworkProtocolNumber != header.IPv4ProtocolNumber || pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return
	}
	tcp := header.TCP(pkt.TransportHeader().Slice())
	if len(tcp) < header.TCPMinimumSize {
		return
	}
	zero := tcp.WindowSize() == 0 && tcp.Flags()&(header.TCPFlagRst|header.TCPFlagSyn|header.TCPFlagFin) == 0 && tcp.Flags().Contains(header.TCPFlagAck)
	if !zero && z.n.Load() == 0 {
		return // the common case: nothing to record or forget
	}
	ip := header.IPv4(pkt.NetworkHeader().Slice())
	if len(ip) < header.IPv4MinimumSize {
		return
	}
	var k flowKey
	copy(k[0:4], ip.SourceAddressSlice())
	binary.BigEndian.PutUint16(k[4:6], tcp.SourcePort())
	copy(k[6:10], ip.DestinationAddressSlice())
	binary.BigEndian.PutUint16(k[10:12], tcp.DestinationPort())
	z.mu.Lock()
	if zero {
		if z.m == nil || len(z.m) >= maxZeroWindowFlows {
			z.m = map[flowKey]uint32{}
		}
		z.m[k] = tcp.AckNumber()
	} else {
		delete(z.m, k)
	}
	z.n.Store(int32(len(z.m)))
	z.mu.Unlock()
}

// Fix returns frame, an Ethernet frame about to be delivered to the stack,
// or, if it is a pure ACK that gVisor would drop for the bug described
// above, a copy with the sequence number fixed (and the TCP checksum
// updated). frame itself is never modified.
func (z *ZeroWindowACKs) Fix(frame []byte) []byte {
	if z.n.Load() == 0 {
		return frame
	}
	if len(frame) < header.EthernetMinimumSize+header.IPv4MinimumSize || header.Ethernet(frame).Type() != header.IPv4ProtocolNumber {
		return frame
	}
	ip := header.IPv4(frame[header.EthernetMinimumSize:])
	hl := int(ip.HeaderLength())
	tl := int(ip.TotalLength())
	if ip.Protocol() != uint8(header.TCPProtocolNumber) || hl < header.IPv4MinimumSize || tl > len(ip) || hl+header.TCPMinimumSize > tl ||
		ip.More() || ip.FragmentOffset() != 0 {
		return frame
	}
	tcp := header.TCP(ip[hl:tl])
	if tcp.Flags() != header.TCPFlagAck || int(tcp.DataOffset()) != len(tcp) {
		return frame // not a pure ACK (a payload, another flag, or a bad header length)
	}
	var k flowKey // the stack's side first: the frame's destination
	copy(k[0:4], ip.DestinationAddressSlice())
	binary.BigEndian.PutUint16(k[4:6], tcp.DestinationPort())
	copy(k[6:10], ip.SourceAddressSlice())
	binary.BigEndian.PutUint16(k[10:12], tcp.SourcePort())
	z.mu.Lock()
	rcvNxt, ok := z.m[k]
	z.mu.Unlock()
	seq := tcp.SequenceNumber()
	if !ok || seq-rcvNxt == 0 || seq-rcvNxt >= maxZeroWindowLead {
		return frame
	}
	out := append([]byte(nil), frame...)
	tcp = header.TCP(out[header.EthernetMinimumSize+hl : header.EthernetMinimumSize+tl])
	// RFC 1624 incremental update: replace the two 16-bit words of seq.
	xsum := ^tcp.Checksum()
	xsum = checksum.Combine(xsum, ^uint16(seq>>16))
	xsum = checksum.Combine(xsum, ^uint16(seq))
	xsum = checksum.Combine(xsum, uint16(rcvNxt>>16))
	xsum = checksum.Combine(xsum, uint16(rcvNxt))
	tcp.SetSequenceNumber(rcvNxt)
	tcp.SetChecksum(^xsum)
	z.fixed.Add(1)
	return out
}

// Fixed returns how many ACKs Fix has rewritten.
func (z *ZeroWindowACKs) Fixed() uint64 { return z.fixed.Load() }
