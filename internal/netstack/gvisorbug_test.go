package netstack

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestGVisorShrinkingWindowBug reproduces, step by step, the gVisor TCP bug
// behind the full-duplex stall (docs/bench/userspace.md, "Full-duplex
// stall"), with a hand-driven peer at the frame level:
//
//  1. gVisor announces a window; the peer fills all of it but one byte.
//  2. The stack's next ACK announces what is left unrounded internally but
//     0 on the wire (left >> window scale), and from then on it tests
//     incoming segments against that rounded 0: the last byte of the window
//     it announced before is refused.
//  3. The peer's pure ACK, whose sequence number is now past the stack's
//     RcvNxt, is dropped without its acknowledgement field being read.
//
// It asserts the bug, with segments handed to gVisor past quench's link, and
// that the link's workaround (ethlink.ZeroWindowACKs) gets the ACK read. If
// the first part fails, gVisor's behaviour changed: check whether the bug is
// fixed, then update the docs, README and the workaround.
func TestGVisorShrinkingWindowBug(t *testing.T) {
	n := newRawNet(t)
	var (
		probeMu sync.Mutex
		sndUna  seqnum.Value
		probed  int
	)
	n.stack.AddTCPProbe(func(s *stack.TCPEndpointState) {
		if s.ID.LocalPort != 7 {
			return
		}
		probeMu.Lock()
		sndUna = s.Sender.SndUna
		probed++
		probeMu.Unlock()
	})
	ln, err := n.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()

	p := newRawPeer(t, n)

	// Handshake: the peer offers window scaling, no timestamps, no SACK.
	const iss = 1000
	opts := make([]byte, 8)
	header.EncodeMSSOption(1460, opts)
	header.EncodeNOP(opts[4:])
	header.EncodeWSOption(7, opts[5:])
	p.send(header.TCPFields{SeqNum: iss, Flags: header.TCPFlagSyn, WindowSize: 65535}, opts, nil)
	synAck := p.next(func(s rawSeg) bool { return s.flags.Contains(header.TCPFlagSyn | header.TCPFlagAck) })
	ws := synAck.ws
	if ws < 1 {
		t.Fatalf("stack offered window scale %d; the bug needs scaling", ws)
	}
	p.sndNxt, p.rcvNxt = iss+1, synAck.seq+1
	p.send(header.TCPFields{SeqNum: uint32(p.sndNxt), AckNum: uint32(p.rcvNxt), Flags: header.TCPFlagAck, WindowSize: 65535}, nil, nil)
	var c net.Conn
	select {
	case c = <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("no connection accepted")
	}
	defer c.Close()

	// Fill the window until the stack's app-unread buffer closes it.
	var last rawSeg
	for {
		last = p.fillTo(p.edge(synAck))
		synAck = last
		if last.win == 0 {
			break
		}
	}
	// The app reads a little; the stack reopens the window.
	buf := make([]byte, 64<<10)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	upd := p.next(func(s rawSeg) bool { return s.win > 0 })
	edge := p.edge(upd)
	if !p.sndNxt.LessThan(edge) {
		t.Fatalf("window update announces nothing: edge %d, sndNxt %d", edge, p.sndNxt)
	}

	// 1. Fill all but the last byte of the announced window. Once the
	// stack's buffer stops it from growing the window, its ACK for that
	// announces the rest (1 byte plus what rounding hid) as 0 on the wire.
	for tries := 0; ; tries++ {
		last = p.fillTo(edge - 1)
		if last.win == 0 {
			break
		}
		if tries == 50 {
			t.Fatalf("the stack keeps announcing %d << %d beyond %d", last.win, ws, last.ack)
		}
		edge = p.edge(last)
	}
	t.Logf("window scale %d; after filling to one byte short of %d, the stack acks %d with window 0", ws, edge, last.ack)
	p.quiet()

	// 2. The last byte of the window announced before is refused.
	p.send(header.TCPFields{SeqNum: uint32(p.sndNxt), AckNum: uint32(p.rcvNxt), Flags: header.TCPFlagAck | header.TCPFlagPsh, WindowSize: 65535}, nil, []byte{'x'})
	p.sndNxt++
	reply := p.next(func(rawSeg) bool { return true })
	if reply.ack == p.sndNxt {
		t.Fatalf("gVisor accepted the last byte of the window it announced (ack %d): the bug may be fixed; see the test's comment", reply.ack)
	}
	if reply.ack != p.sndNxt-1 {
		t.Fatalf("reply acks %d, want %d (the refused byte's sequence number)", reply.ack, p.sndNxt-1)
	}
	t.Logf("the byte at %d, inside the window announced up to %d, is refused (reply acks %d)", p.sndNxt-1, edge, reply.ack)

	// 3. The stack sends data; the peer's pure ACK for it (sequence number
	// past the refused byte, as any sender's would be) is dropped.
	if _, err := c.Write([]byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	data := p.next(func(s rawSeg) bool { return s.payload > 0 })
	p.rcvNxt = data.seq.Add(seqnum.Size(data.payload))
	// sndUnaAfter sends a pure ACK at seq, straight to gVisor (raw) or
	// through quench's link, and returns the stack's SndUna once it has
	// handled it.
	sndUnaAfter := func(seq seqnum.Value, raw bool) seqnum.Value {
		probeMu.Lock()
		before := probed
		probeMu.Unlock()
		f := header.TCPFields{SeqNum: uint32(seq), AckNum: uint32(p.rcvNxt), Flags: header.TCPFlagAck, WindowSize: 65535}
		if raw {
			p.deliverRaw(f)
		} else {
			p.send(f, nil, nil)
		}
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			probeMu.Lock()
			done, una := probed > before, sndUna
			probeMu.Unlock()
			if done {
				return una
			}
		}
		t.Fatal("the stack never handled the ACK")
		return 0
	}
	if una := sndUnaAfter(p.sndNxt, true); una != data.seq {
		if una == p.rcvNxt {
			t.Fatalf("gVisor processed the ACK (SndUna %d): the bug may be fixed; see the test's comment", una)
		}
		t.Fatalf("SndUna = %d, want %d (the ACK ignored)", una, data.seq)
	}
	t.Logf("gVisor ignores the ACK of %d..%d at seq %d: SndUna stays %d", data.seq, p.rcvNxt, p.sndNxt, data.seq)
	// Control: the same ACK at the stack's RcvNxt is processed, so the
	// probe does see acknowledgements (the assertion above can fail).
	// Through quench's link (ethlink.ZeroWindowACKs), the ACK past RcvNxt
	// is processed too: the workaround.
	for _, tc := range []struct {
		name string
		seq  seqnum.Value
		raw  bool
	}{
		{"at RcvNxt, raw", p.sndNxt - 1, true},
		{"past RcvNxt, through the link", p.sndNxt, false},
	} {
		// Make the stack send more, so that there is something new to
		// acknowledge.
		if _, err := c.Write([]byte("0123456789")); err != nil {
			t.Fatal(err)
		}
		data = p.next(func(s rawSeg) bool { return s.payload > 0 })
		p.rcvNxt = data.seq.Add(seqnum.Size(data.payload))
		if una := sndUnaAfter(tc.seq, tc.raw); una != p.rcvNxt {
			t.Fatalf("ACK %s: SndUna = %d, want %d", tc.name, una, p.rcvNxt)
		}
	}
	if got := n.Stats().ZeroWindowACKsFixed; got != 1 {
		t.Errorf("link fixed %d ACKs, want 1", got)
	}
}

// rawSeg is a TCP segment the stack sent to the raw peer.
type rawSeg struct {
	seq, ack seqnum.Value
	win      int // as on the wire, unscaled
	ws       int // window scale offered in a SYN, or -1
	flags    header.TCPFlags
	payload  int
}

// rawPeer is a TCP peer driven by hand at the frame level, from
// 192.168.127.1:40000 to the stack's port 7.
type rawPeer struct {
	t              *testing.T
	n              *Net
	segs           chan rawSeg
	sndNxt, rcvNxt seqnum.Value
	ws             int // the stack's window scale
}

// newRawNet returns a Net (closed when the test ends) that knows the
// gateway's MAC, for a rawPeer to stand in for it.
func newRawNet(t *testing.T) *Net {
	t.Helper()
	n, err := New(Config{MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if terr := n.stack.AddStaticNeighbor(nicLink, ipv4.ProtocolNumber, tcpip.AddrFrom4(gwIP), tcpip.LinkAddress(hostMA)); terr != nil {
		t.Fatal(terr)
	}
	return n
}

// newRawPeer returns a rawPeer on n that reads n's frames.
func newRawPeer(t *testing.T, n *Net) *rawPeer {
	p := &rawPeer{t: t, n: n, segs: make(chan rawSeg, 4096)}
	go p.readFrames()
	return p
}

func (p *rawPeer) readFrames() {
	d := p.n.Device()
	bufs := [][]byte{make([]byte, d.MTU()+header.EthernetMinimumSize)}
	sizes := []int{0}
	for {
		if _, err := d.Read(bufs, sizes, 0); err != nil {
			close(p.segs)
			return
		}
		f := bufs[0][:sizes[0]]
		if len(f) < header.EthernetMinimumSize+header.IPv4MinimumSize || header.Ethernet(f).Type() != header.IPv4ProtocolNumber {
			continue
		}
		ip := header.IPv4(f[header.EthernetMinimumSize:])
		if ip.Protocol() != uint8(header.TCPProtocolNumber) {
			continue
		}
		tcp := header.TCP(ip.Payload())
		s := rawSeg{
			seq: seqnum.Value(tcp.SequenceNumber()), ack: seqnum.Value(tcp.AckNumber()),
			win: int(tcp.WindowSize()), ws: -1, flags: tcp.Flags(),
			payload: len(tcp) - int(tcp.DataOffset()),
		}
		if s.flags.Contains(header.TCPFlagSyn) {
			s.ws = header.ParseSynOptions(tcp.Options(), true).WS
		}
		p.segs <- s
	}
}

// next returns the first segment (skipping others) for which ok is true.
func (p *rawPeer) next(ok func(rawSeg) bool) rawSeg {
	p.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case s, open := <-p.segs:
			if !open {
				p.t.Fatal("device closed")
			}
			if s.ws >= 0 {
				p.ws = s.ws
			}
			if ok(s) {
				return s
			}
		case <-timeout:
			p.t.Fatal("no matching segment from the stack within 10 s")
		}
	}
}

// quiet discards segments until none has come for 50 ms.
func (p *rawPeer) quiet() {
	for {
		select {
		case <-p.segs:
		case <-time.After(50 * time.Millisecond):
			return
		}
	}
}

// edge returns the right edge of the window s announces.
func (p *rawPeer) edge(s rawSeg) seqnum.Value {
	if s.flags.Contains(header.TCPFlagSyn) {
		return s.ack.Add(seqnum.Size(s.win)) // a SYN's window is never scaled
	}
	return s.ack.Add(seqnum.Size(s.win << p.ws))
}

// frame builds the Ethernet frame of a segment from the peer to port 7.
func (p *rawPeer) frame(f header.TCPFields, opts, payload []byte) []byte {
	f.SrcPort, f.DstPort = 40000, 7
	return ethFrame(selfMA, hostMA, header.IPv4ProtocolNumber,
		ipv4Packet(gwIP, selfIP, uint8(header.TCPProtocolNumber), 1, 0, tcpSegmentWith(gwIP, selfIP, f, opts, payload)))
}

// send writes a segment to the stack's device, through quench's link.
func (p *rawPeer) send(f header.TCPFields, opts, payload []byte) {
	p.t.Helper()
	if _, err := p.n.Device().Write([][]byte{p.frame(f, opts, payload)}, 0); err != nil {
		p.t.Fatal(err)
	}
}

// deliverRaw hands a segment to gVisor as send does, but past quench's link
// and its workaround.
func (p *rawPeer) deliverRaw(f header.TCPFields) {
	p.t.Helper()
	if !p.n.ep.Deliver(p.frame(f, nil, nil), tcpip.PacketHost) {
		p.t.Fatal("frame not delivered")
	}
}

// fillTo sends data up to edge in segments of at most 1400 bytes and returns
// the stack's ACK of all of it.
func (p *rawPeer) fillTo(edge seqnum.Value) rawSeg {
	p.t.Helper()
	payload := make([]byte, 1400)
	for p.sndNxt.LessThan(edge) {
		k := min(len(payload), int(p.sndNxt.Size(edge)))
		p.send(header.TCPFields{SeqNum: uint32(p.sndNxt), AckNum: uint32(p.rcvNxt), Flags: header.TCPFlagAck, WindowSize: 65535}, nil, payload[:k])
		p.sndNxt = p.sndNxt.Add(seqnum.Size(k))
	}
	return p.next(func(s rawSeg) bool { return s.ack == p.sndNxt })
}
