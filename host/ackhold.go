package host

import (
	"encoding/binary"
	"math"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Delayed ACKs on the gateway's link.
//
// gVisor's TCP has no delayed ACK: after every batch of segments it
// receives, it sends a pure ACK at once. On a published port that doubles
// the frames sent to the enclave per request: the enclave's response is
// acknowledged by a frame of its own, and a moment later the client's next
// request carries the same acknowledgment again. The switch therefore holds
// a pure ACK for a short while (Config.AckDelay); if the same connection
// sends anything that acknowledges as much before then, the held ACK is
// dropped, otherwise it is sent when its time is up.
//
// Only ACKs that are safe to hold are held: exactly the ACK flag, no payload,
// a non-zero window, no TCP option but timestamps (so never SACK blocks),
// and an acknowledgment number that advanced over the last one this
// connection sent, which rules out duplicate ACKs (fast retransmit counts
// them) and pure window updates. A connection has at most one ACK held; a
// second pure ACK supersedes the first and is sent at once, so a bulk
// receiver still acknowledges at least every other time, as Linux does. A
// held ACK is dropped only for a later segment of the same connection that
// carries the ACK flag, neither SYN nor RST, and an acknowledgment number at
// least as large; before any other segment of its connection it is sent
// first, so a connection's segments are never reordered. A connection whose
// peer sends more data right after a held ACK reached it (Nagle's algorithm
// waiting for the ACK, or a sender out of window) has its ACKs never held
// again.
//
// The delay decides the gain: a held ACK is only saved if the client's next
// request arrives within it. With wrk -c100 on a 2-core machine a
// connection's request cycle is about 6 ms, so 1 ms saves ~7 % of the
// frames to the enclave and 10 ms ~49 % (2.02 -> 1.04 frames per request).

// DefaultAckDelay is how long the gateway holds a pure TCP ACK bound for an
// enclave (Config.AckDelay). It is far below any retransmission or
// tail-loss-probe timeout (Linux delays its own ACKs up to 40 ms), and
// above the time an HTTP client usually takes to send its next request on a
// busy connection.
const DefaultAckDelay = time.Millisecond

const (
	// maxHeldAcks bounds the ACKs held per enclave stream; past it, pure
	// ACKs are sent at once.
	maxHeldAcks = 1024
	// ackSlots is the size of the direct-mapped table that remembers the
	// last acknowledgment number per connection. A connection that lost
	// its slot to another has its next pure ACK sent at once.
	ackSlotBits = 11
	ackSlots    = 1 << ackSlotBits
)

// flowKey identifies one direction of a TCP connection: the IPv4 source
// and destination addresses, then the source and destination ports, as
// they appear in the segment.
type flowKey [12]byte

func (k *flowKey) slot() int {
	a := binary.LittleEndian.Uint64(k[0:8])
	b := uint64(binary.LittleEndian.Uint32(k[8:12]))
	h := (a ^ b<<29 ^ b) * 0x9e3779b97f4a7c15
	return int(h >> (64 - ackSlotBits))
}

// segment is what the ACK hold needs to know of an outgoing frame.
type segment struct {
	tcp     bool // an unfragmented IPv4 TCP segment; the fields below are set
	key     flowKey
	flags   header.TCPFlags
	ack     uint32
	pureAck bool // the shape of an ACK that may be held; see the comment above
}

// parseSegment reads the IPv4 header ip, the TCP header (with options) tcp
// and the payload length of one segment. Anything else gives a segment
// with tcp false.
func parseSegment(ip, tcp []byte, payload int) segment {
	var s segment
	if len(ip) < header.IPv4MinimumSize || len(tcp) < header.TCPMinimumSize {
		return s
	}
	h := header.IPv4(ip)
	if h.Protocol() != uint8(header.TCPProtocolNumber) || h.More() || h.FragmentOffset() != 0 {
		return s
	}
	t := header.TCP(tcp)
	off := int(t.DataOffset())
	if off < header.TCPMinimumSize || off > len(tcp) {
		return s
	}
	s.tcp = true
	copy(s.key[0:8], ip[12:20])
	copy(s.key[8:12], tcp[0:4])
	s.flags = t.Flags()
	s.ack = t.AckNumber()
	s.pureAck = s.flags == header.TCPFlagAck && payload == 0 && t.WindowSize() != 0 && onlyTimestamps(tcp[header.TCPMinimumSize:off])
	return s
}

// parseFrame parses an Ethernet frame holding an IPv4 packet.
func parseFrame(frame []byte) segment {
	if len(frame) < header.EthernetMinimumSize+header.IPv4MinimumSize ||
		header.Ethernet(frame).Type() != header.IPv4ProtocolNumber {
		return segment{}
	}
	ip := frame[header.EthernetMinimumSize:]
	h := header.IPv4(ip)
	ihl, total := int(h.HeaderLength()), int(h.TotalLength())
	if ihl < header.IPv4MinimumSize || total < ihl || total > len(ip) {
		return segment{}
	}
	tcp := ip[ihl:total]
	if len(tcp) < header.TCPMinimumSize {
		return segment{}
	}
	off := int(header.TCP(tcp).DataOffset())
	if off > len(tcp) {
		return segment{}
	}
	return parseSegment(ip[:ihl], tcp[:off], len(tcp)-off)
}

// parsePacket parses one of the stack's outgoing packets.
func parsePacket(pkt *stack.PacketBuffer) segment {
	if pkt.NetworkProtocolNumber != header.IPv4ProtocolNumber || pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return segment{}
	}
	return parseSegment(pkt.NetworkHeader().Slice(), pkt.TransportHeader().Slice(), pkt.Data().Size())
}

// onlyTimestamps reports whether the TCP options opts hold nothing but
// padding and the timestamps option.
func onlyTimestamps(opts []byte) bool {
	for i := 0; i < len(opts); {
		switch opts[i] {
		case header.TCPOptionEOL:
			return true
		case header.TCPOptionNOP:
			i++
		case header.TCPOptionTS:
			if i+1 >= len(opts) || opts[i+1] != header.TCPOptionTSLength {
				return false
			}
			i += header.TCPOptionTSLength
		default:
			return false
		}
	}
	return true
}

// seqLess reports whether sequence number a comes before b (RFC 1982).
func seqLess(a, b uint32) bool { return int32(a-b) < 0 }

// holdAction says what to do with a connection's held ACK when the
// connection sends another segment.
type holdAction uint8

const (
	holdNone      holdAction = iota // the connection had no ACK held
	holdSendFirst                   // send the held ACK before the new segment
	holdDrop                        // the new segment supersedes the held ACK: release it unsent
)

// ackHold holds pure ACKs of one enclave stream; T is the frame (the
// switch's *stack.PacketBuffer; plain values in tests). It is not safe for
// concurrent use. Times are monotonic durations from any fixed origin.
//
// Every operation is O(1) (amortized): the held ACKs wait in a ring in the
// order they were held, which is also the order they are due, and a
// connection finds its held ACK through its slot in the table of last
// acknowledgment numbers. A slot whose connection has an ACK held is never
// taken over by another connection, whose ACKs are then not held.
type ackHold[T any] struct {
	delay      time.Duration // <= 0: hold nothing
	ring       []heldAck[T]  // maxHeldAcks entries, allocated on first use
	head, tail uint32        // ring[head%maxHeldAcks : tail%maxHeldAcks] is in use
	last       [ackSlots]lastAck
}

type heldAck[T any] struct {
	item T
	ack  uint32
	slot uint16
	live bool // false once taken: the entry only waits to leave the ring
	due  time.Duration
}

// lastAck is the last acknowledgment number a connection sent, and where
// its held ACK is.
type lastAck struct {
	key     flowKey
	ack     uint32
	ok      bool
	holding bool          // the connection has an ACK held, at ring position pos
	quick   bool          // never hold this connection's ACKs (see offer)
	pos     uint32        // ring position (head <= pos < tail)
	expired time.Duration // when the connection's last held ACK was sent unsuperseded; 0: not since its last other segment
}

// take removes the ACK held for s's connection, if any, and says whether s
// supersedes it (holdDrop) or it must be sent before s (holdSendFirst).
func (h *ackHold[T]) take(s segment) (prev T, act holdAction) {
	if !s.tcp {
		return prev, holdNone
	}
	l := &h.last[s.key.slot()]
	if !l.holding || l.key != s.key {
		return prev, holdNone
	}
	e := &h.ring[l.pos%maxHeldAcks]
	prev, ack := e.item, e.ack
	var zero T
	e.item, e.live = zero, false
	l.holding = false
	if s.flags&header.TCPFlagAck != 0 && s.flags&(header.TCPFlagSyn|header.TCPFlagRst) == 0 && !seqLess(s.ack, ack) {
		return prev, holdDrop
	}
	return prev, holdSendFirst
}

// offer is called for every outgoing frame item, with its parsed segment s,
// in the order the frames are sent. It first settles the connection's
// held ACK, as take does; then, if item is an ACK that may be held and
// there is room, it holds item until now+delay and reports held: the
// caller must not send it. arm reports that item is now the first ACK
// due: the caller must have expire called at its due time (now+delay).
func (h *ackHold[T]) offer(item T, s segment, now time.Duration) (prev T, act holdAction, held, arm bool) {
	if !s.tcp {
		return prev, holdNone, false, false
	}
	prev, act = h.take(s)
	slot := s.key.slot()
	l := &h.last[slot]
	if l.holding { // another connection's ACK is held in this slot
		return prev, act, false, false
	}
	advanced := l.ok && l.key == s.key && seqLess(l.ack, s.ack)
	if s.flags&header.TCPFlagAck != 0 {
		if !l.ok || l.key != s.key || s.flags&header.TCPFlagSyn != 0 {
			*l = lastAck{key: s.key, ok: true} // a new connection in this slot
		}
		l.ack = s.ack
	}
	if !s.pureAck || !advanced || act != holdNone || h.delay <= 0 {
		if l.key == s.key && !s.pureAck {
			l.expired = 0
		}
		return prev, act, false, false
	}
	// The peer waited for our delayed ACK: it sent more data right after
	// the held ACK reached it, without anything else from us in between.
	// That is Nagle's algorithm (a response written in pieces) or a sender
	// out of window: holding this connection's ACKs only slows it down.
	if l.expired != 0 && now-l.expired < h.delay/2 {
		l.quick = true
	}
	l.expired = 0
	if l.quick {
		return prev, act, false, false
	}
	h.popTaken()
	if h.tail-h.head >= maxHeldAcks {
		return prev, act, false, false
	}
	if h.ring == nil {
		h.ring = make([]heldAck[T], maxHeldAcks)
	}
	arm = h.head == h.tail
	h.ring[h.tail%maxHeldAcks] = heldAck[T]{item: item, ack: s.ack, slot: uint16(slot), live: true, due: now + h.delay}
	l.holding, l.pos = true, h.tail
	h.tail++
	return prev, act, true, arm
}

// popTaken drops taken entries from the head of the ring.
func (h *ackHold[T]) popTaken() {
	for h.head != h.tail && !h.ring[h.head%maxHeldAcks].live {
		h.head++
	}
}

// next returns when the first held ACK is due, and false if none is held.
func (h *ackHold[T]) next() (time.Duration, bool) {
	h.popTaken()
	if h.head == h.tail {
		return 0, false
	}
	return h.ring[h.head%maxHeldAcks].due, true
}

// expire appends the held ACKs due at now to out, in the order they were
// held, and returns it.
func (h *ackHold[T]) expire(now time.Duration, out []T) []T {
	var zero heldAck[T]
	for h.head != h.tail {
		e := &h.ring[h.head%maxHeldAcks]
		if e.live {
			if e.due > now {
				break
			}
			out = append(out, e.item)
			l := &h.last[e.slot]
			l.holding, l.expired = false, max(now, 1)
		}
		*e = zero
		h.head++
	}
	return out
}

// drain appends every held ACK to out and returns it.
func (h *ackHold[T]) drain(out []T) []T {
	return h.expire(math.MaxInt64, out)
}

// len reports how many ACKs are held (for tests: it walks the ring).
func (h *ackHold[T]) len() int {
	n := 0
	for i := h.head; i != h.tail; i++ {
		if h.ring[i%maxHeldAcks].live {
			n++
		}
	}
	return n
}
