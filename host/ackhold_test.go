package host

import (
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/quenchnet/quench/tap"
)

// seg describes a TCP segment from the gateway to an enclave for tcpFrame.
type seg struct {
	sport, dport uint16 // 0: 80 and 40000
	flags        header.TCPFlags
	seq, ack     uint32
	wnd          uint16 // 0: 1000
	zeroWnd      bool
	ts, sack     bool // timestamps option; one SACK block
	mss          bool // MSS option
	payload      int
	fragment     bool
}

var (
	testGatewayIP = tcpip.AddrFrom4([4]byte{192, 168, 127, 1})
	testEnclaveIP = tcpip.AddrFrom4([4]byte{192, 168, 127, 2})
	testEnclave   = tcpip.LinkAddress(DefaultEnclaveMAC)
)

// tcpFrame builds an Ethernet frame holding s.
func tcpFrame(s seg) []byte {
	if s.sport == 0 {
		s.sport = 80
	}
	if s.dport == 0 {
		s.dport = 40000
	}
	if s.wnd == 0 && !s.zeroWnd {
		s.wnd = 1000
	}
	var opts []byte
	if s.mss {
		o := make([]byte, 4)
		header.EncodeMSSOption(1460, o)
		opts = append(opts, o...)
	}
	if s.ts {
		o := make([]byte, 12)
		n := header.EncodeNOP(o)
		n += header.EncodeNOP(o[n:])
		header.EncodeTSOption(1, 2, o[n:])
		opts = append(opts, o...)
	}
	if s.sack {
		o := make([]byte, 12)
		n := header.EncodeNOP(o)
		n += header.EncodeNOP(o[n:])
		header.EncodeSACKBlocks([]header.SACKBlock{{Start: 10, End: 20}}, o[n:])
		opts = append(opts, o...)
	}
	tcpLen := header.TCPMinimumSize + len(opts)
	total := header.IPv4MinimumSize + tcpLen + s.payload
	f := make([]byte, header.EthernetMinimumSize+total)
	header.Ethernet(f).Encode(&header.EthernetFields{
		SrcAddr: tcpip.LinkAddress(DefaultGatewayMAC), DstAddr: testEnclave, Type: header.IPv4ProtocolNumber,
	})
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	ipf := &header.IPv4Fields{
		TotalLength: uint16(total), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: testGatewayIP, DstAddr: testEnclaveIP,
	}
	if s.fragment {
		ipf.Flags = header.IPv4FlagMoreFragments
	}
	ip.Encode(ipf)
	t := header.TCP(ip[header.IPv4MinimumSize:])
	t.Encode(&header.TCPFields{
		SrcPort: s.sport, DstPort: s.dport, SeqNum: s.seq, AckNum: s.ack,
		DataOffset: uint8(tcpLen), Flags: s.flags, WindowSize: s.wnd,
	})
	copy(t[header.TCPMinimumSize:], opts)
	return f
}

func TestParseFrame(t *testing.T) {
	ack := header.TCPFlagAck
	for _, tc := range []struct {
		name    string
		frame   []byte
		tcp     bool
		pureAck bool
	}{
		{"ack", tcpFrame(seg{flags: ack, ack: 5}), true, true},
		{"ack with timestamps", tcpFrame(seg{flags: ack, ack: 5, ts: true}), true, true},
		{"ack with SACK block", tcpFrame(seg{flags: ack, ack: 5, ts: true, sack: true}), true, false},
		{"ack with MSS option", tcpFrame(seg{flags: ack, ack: 5, mss: true}), true, false},
		{"zero window", tcpFrame(seg{flags: ack, ack: 5, zeroWnd: true}), true, false},
		{"data", tcpFrame(seg{flags: ack | header.TCPFlagPsh, ack: 5, payload: 10}), true, false},
		{"data without PSH", tcpFrame(seg{flags: ack, ack: 5, payload: 1}), true, false},
		{"FIN", tcpFrame(seg{flags: ack | header.TCPFlagFin, ack: 5}), true, false},
		{"SYN-ACK", tcpFrame(seg{flags: ack | header.TCPFlagSyn, ack: 5}), true, false},
		{"RST", tcpFrame(seg{flags: ack | header.TCPFlagRst, ack: 5}), true, false},
		{"ECE", tcpFrame(seg{flags: ack | header.TCPFlagEce, ack: 5}), true, false},
		{"fragment", tcpFrame(seg{flags: ack, ack: 5, fragment: true}), false, false},
		{"truncated", tcpFrame(seg{flags: ack, ack: 5})[:header.EthernetMinimumSize+header.IPv4MinimumSize+10], false, false},
		{"runt", []byte{1, 2, 3}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := parseFrame(tc.frame)
			if s.tcp != tc.tcp || s.pureAck != tc.pureAck {
				t.Errorf("tcp, pureAck = %v, %v; want %v, %v", s.tcp, s.pureAck, tc.tcp, tc.pureAck)
			}
			if s.tcp && s.ack != 5 {
				t.Errorf("ack = %d, want 5", s.ack)
			}
		})
	}
}

func FuzzParseFrame(f *testing.F) {
	f.Add(tcpFrame(seg{flags: header.TCPFlagAck, ack: 5, ts: true}))
	f.Add(tcpFrame(seg{flags: header.TCPFlagAck, ack: 5, sack: true, payload: 3}))
	f.Fuzz(func(t *testing.T, frame []byte) {
		s := parseFrame(frame)
		if s.pureAck && (!s.tcp || s.flags != header.TCPFlagAck) {
			t.Fatalf("pure ACK with tcp=%v flags=%v", s.tcp, s.flags)
		}
	})
}

// holdStep feeds one segment to h and records what a sender would do.
type holdLog struct {
	sent, dropped []int
}

func (l *holdLog) offer(h *ackHold[int], item int, s seg, now time.Duration) (held bool) {
	prev, act, held, _ := h.offer(item, parseFrame(tcpFrame(s)), now)
	switch act {
	case holdSendFirst:
		l.sent = append(l.sent, prev)
	case holdDrop:
		l.dropped = append(l.dropped, prev)
	}
	if !held {
		l.sent = append(l.sent, item)
	}
	return held
}

func TestAckHold(t *testing.T) {
	const d = time.Millisecond
	ack, psh, fin, syn, rst := header.TCPFlagAck, header.TCPFlagPsh, header.TCPFlagFin, header.TCPFlagSyn, header.TCPFlagRst
	type step struct {
		s   seg
		at  time.Duration
		now bool // expire at this step's time before offering
	}
	for _, tc := range []struct {
		name    string
		steps   []step
		expire  time.Duration // expire at this time after all steps (0: no)
		sent    []int         // items in the order sent; item i is steps[i]
		dropped []int
		held    int // still held at the end
	}{{
		name: "data supersedes held ACK",
		steps: []step{
			{s: seg{flags: ack | psh, ack: 100, payload: 10}},
			{s: seg{flags: ack, ack: 200, ts: true}},
			{s: seg{flags: ack | psh, seq: 10, ack: 200, payload: 10}},
		},
		sent: []int{0, 2}, dropped: []int{1},
	}, {
		name: "held ACK flushed after the delay",
		steps: []step{
			{s: seg{flags: ack | psh, ack: 100, payload: 10}},
			{s: seg{flags: ack, ack: 200}},
		},
		expire: d,
		sent:   []int{0, 1},
	}, {
		name: "not flushed before the delay",
		steps: []step{
			{s: seg{flags: ack | psh, ack: 100, payload: 10}},
			{s: seg{flags: ack, ack: 200}},
		},
		expire: d - 1,
		sent:   []int{0}, held: 1,
	}, {
		name: "other connection does not touch it",
		steps: []step{
			{s: seg{flags: ack | psh, ack: 100, payload: 10}},
			{s: seg{flags: ack, ack: 200}},
			{s: seg{sport: 81, flags: ack | psh, ack: 500, payload: 10}},
			{s: seg{dport: 40001, flags: ack | fin, ack: 500}},
		},
		sent: []int{0, 2, 3}, held: 1,
	}, {
		name: "first ACK of an unknown connection is sent",
		steps: []step{
			{s: seg{flags: ack, ack: 200}},
		},
		sent: []int{0},
	}, {
		name: "duplicate ACKs are sent",
		steps: []step{
			{s: seg{flags: ack | psh, ack: 100, payload: 10}},
			{s: seg{flags: ack, ack: 100}},
			{s: seg{flags: ack, ack: 100}},
			{s: seg{flags: ack, ack: 100}},
		},
		sent: []int{0, 1, 2, 3},
	}, {
		name: "second pure ACK supersedes the first and is sent",
		steps: []step{
			{s: seg{flags: ack | psh, ack: 100, payload: 10}},
			{s: seg{flags: ack, ack: 200}},
			{s: seg{flags: ack, ack: 300}},
			{s: seg{flags: ack, ack: 400}},
		},
		sent: []int{0, 2}, dropped: []int{1}, held: 1,
	}, {
		name: "window update after held ACK supersedes it",
		steps: []step{
			{s: seg{flags: ack | psh, ack: 100, payload: 10}},
			{s: seg{flags: ack, ack: 200, wnd: 10}},
			{s: seg{flags: ack, ack: 200, wnd: 5000}},
		},
		sent: []int{0, 2}, dropped: []int{1},
	}, {
		name: "RST goes after the held ACK",
		steps: []step{
			{s: seg{flags: ack | psh, ack: 100, payload: 10}},
			{s: seg{flags: ack, ack: 200}},
			{s: seg{flags: ack | rst, seq: 10, ack: 200}},
		},
		sent: []int{0, 1, 2},
	}, {
		name: "segment without the ACK flag goes after the held ACK",
		steps: []step{
			{s: seg{flags: ack | psh, ack: 100, payload: 10}},
			{s: seg{flags: ack, ack: 200}},
			{s: seg{flags: psh, ack: 300, payload: 5}}, // no ACK flag
		},
		sent: []int{0, 1, 2},
	}, {
		name: "FIN supersedes",
		steps: []step{
			{s: seg{flags: ack | psh, ack: 100, payload: 10}},
			{s: seg{flags: ack, ack: 200}},
			{s: seg{flags: ack | fin, seq: 10, ack: 200}},
		},
		sent: []int{0, 2}, dropped: []int{1},
	}, {
		name: "never held: payload, FIN, SYN, RST, zero window, SACK",
		steps: []step{
			{s: seg{flags: ack | psh, ack: 100, payload: 10}},
			{s: seg{flags: ack, ack: 110, payload: 1}},
			{s: seg{flags: ack | fin, ack: 120}},
			{s: seg{flags: ack | syn, ack: 130}},
			{s: seg{flags: ack | rst, ack: 140}},
			{s: seg{flags: ack, ack: 150, zeroWnd: true}},
			{s: seg{flags: ack, ack: 160, sack: true}},
		},
		sent: []int{0, 1, 2, 3, 4, 5, 6},
	}, {
		name: "Nagle: peer sends right after the delayed ACK, so the connection is not held again",
		steps: []step{
			{s: seg{flags: ack | psh, ack: 100, payload: 10}},
			{s: seg{flags: ack, ack: 200}},
			{s: seg{flags: ack, ack: 300}, at: d + 50*time.Microsecond, now: true},
			{s: seg{flags: ack | psh, ack: 300, payload: 10}, at: 5 * d},
			{s: seg{flags: ack, ack: 400}, at: 6 * d},
		},
		sent: []int{0, 1, 2, 3, 4},
	}, {
		name: "request long after a delayed ACK: still held",
		steps: []step{
			{s: seg{flags: ack | psh, ack: 100, payload: 10}},
			{s: seg{flags: ack, ack: 200}},
			{s: seg{flags: ack | psh, ack: 200, payload: 10}, at: d + 50*time.Microsecond, now: true},
			{s: seg{flags: ack, ack: 300}, at: d + 60*time.Microsecond},
		},
		sent: []int{0, 1, 2}, held: 1,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			h := &ackHold[int]{delay: d}
			var l holdLog
			for i, st := range tc.steps {
				if st.now {
					l.sent = h.expire(st.at, l.sent)
				}
				l.offer(h, i, st.s, st.at)
			}
			if tc.expire != 0 {
				l.sent = h.expire(tc.expire, l.sent)
			}
			if diff := cmp.Diff(tc.sent, l.sent); diff != "" {
				t.Errorf("sent (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.dropped, l.dropped); diff != "" {
				t.Errorf("dropped (-want +got):\n%s", diff)
			}
			if got := h.len(); got != tc.held {
				t.Errorf("held %d, want %d", got, tc.held)
			}
		})
	}
}

func TestAckHoldDisabled(t *testing.T) {
	h := &ackHold[int]{delay: -1}
	var l holdLog
	l.offer(h, 0, seg{flags: header.TCPFlagAck | header.TCPFlagPsh, ack: 100, payload: 10}, 0)
	if l.offer(h, 1, seg{flags: header.TCPFlagAck, ack: 200}, 0) {
		t.Fatal("held with a negative delay")
	}
}

func TestAckHoldBounded(t *testing.T) {
	h := &ackHold[int]{delay: time.Millisecond}
	var l holdLog
	held := 0
	for i := range 2 * maxHeldAcks {
		port := uint16(1000 + i)
		l.offer(h, -1, seg{dport: port, flags: header.TCPFlagAck | header.TCPFlagPsh, ack: 100, payload: 1}, 0)
		if l.offer(h, i, seg{dport: port, flags: header.TCPFlagAck, ack: 200}, 0) {
			held++
		}
	}
	if held > maxHeldAcks || h.len() != held {
		t.Fatalf("held %d (len %d), bound %d", held, h.len(), maxHeldAcks)
	}
	if held < maxHeldAcks/2 {
		t.Fatalf("held only %d of %d connections' ACKs", held, 2*maxHeldAcks)
	}
	out := h.drain(nil)
	if len(out) != held || h.len() != 0 {
		t.Fatalf("drained %d, want %d; %d left", len(out), held, h.len())
	}
}

// TestAckHoldRandom checks the invariants on random traffic: every frame is
// sent or dropped exactly once; a connection's sent frames keep their order;
// a dropped ACK was followed, in its connection, by an ACK at least as
// large; and only pure ACKs are ever dropped.
func TestAckHoldRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	h := &ackHold[int]{delay: 100 * time.Microsecond}
	type rec struct {
		conn int
		s    segment
	}
	var (
		recs    []rec
		l       holdLog
		now     time.Duration
		nextAck [4]uint32
	)
	for i := range 20000 {
		conn := r.IntN(len(nextAck))
		if r.IntN(3) > 0 {
			nextAck[conn] += uint32(r.IntN(3)) // sometimes a duplicate ACK
		}
		s := seg{dport: uint16(40000 + conn), flags: header.TCPFlagAck, ack: nextAck[conn]}
		switch r.IntN(10) {
		case 0:
			s.flags |= header.TCPFlagPsh
			s.payload = 10
		case 1:
			s.flags |= header.TCPFlagRst
		case 2:
			s.ack -= 5 // acknowledges less than the held ACK
		case 3:
			s.sack = true
		}
		recs = append(recs, rec{conn, parseFrame(tcpFrame(s))})
		now += time.Duration(r.IntN(40)) * time.Microsecond
		if r.IntN(4) == 0 {
			l.sent = h.expire(now, l.sent)
		}
		l.offer(h, i, s, now)
	}
	l.sent = h.drain(l.sent)
	seen := map[int]bool{}
	last := map[int]int{}
	for _, i := range l.sent {
		if seen[i] {
			t.Fatalf("frame %d sent twice", i)
		}
		seen[i] = true
		c := recs[i].conn
		if j, ok := last[c]; ok && j > i {
			t.Fatalf("connection %d: frame %d sent after %d", c, j, i)
		}
		last[c] = i
	}
	for _, i := range l.dropped {
		if seen[i] {
			t.Fatalf("frame %d sent and dropped", i)
		}
		seen[i] = true
		if !recs[i].s.pureAck {
			t.Fatalf("frame %d dropped but not a pure ACK", i)
		}
		// The next frame of its connection supersedes it.
		for j := i + 1; ; j++ {
			if j == len(recs) {
				t.Fatalf("frame %d dropped but nothing followed", i)
			}
			if recs[j].conn != recs[i].conn {
				continue
			}
			if f := recs[j].s.flags; f&header.TCPFlagAck == 0 || f&header.TCPFlagRst != 0 || seqLess(recs[j].s.ack, recs[i].s.ack) {
				t.Fatalf("frame %d (ack %d) dropped for frame %d (flags %v, ack %d)", i, recs[i].s.ack, j, recs[j].s.flags, recs[j].s.ack)
			}
			break
		}
	}
	if len(seen) != len(recs) {
		t.Fatalf("%d frames accounted for, want %d", len(seen), len(recs))
	}
	if len(l.dropped) == 0 {
		t.Fatal("nothing dropped: the test exercises nothing")
	}
}

// switchPipe attaches one enclave stream to a new switch and returns the
// enclave's end.
func switchPipe(t *testing.T, ackDelay time.Duration) (*switchEndpoint, *tap.Conn) {
	t.Helper()
	e := newSwitch(1500, DefaultGatewayMAC, nil, ackDelay, slog.New(slog.NewTextHandler(io.Discard, nil)))
	a, b := net.Pipe()
	ca, err := tap.NewConn(a, tap.Config{MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	cb, err := tap.NewConn(b, tap.Config{MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	p := e.attach(ca, "test")
	e.learn(p, testEnclave)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.serve(p)
	}()
	t.Cleanup(func() {
		_ = cb.Close()
		<-done
	})
	return e, cb
}

func writeSeg(t *testing.T, e *switchEndpoint, s seg) {
	t.Helper()
	f := tcpFrame(s)
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
	defer pkt.DecRef()
	pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	pkt.NetworkHeader().Consume(header.IPv4MinimumSize)
	pkt.TransportHeader().Consume(int(header.TCP(f[header.EthernetMinimumSize+header.IPv4MinimumSize:]).DataOffset()))
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	pkt.TransportProtocolNumber = header.TCPProtocolNumber
	if err := e.WritePacket(pkt); err != nil {
		t.Fatalf("WritePacket: %v", err)
	}
}

// readAcks reads n frames and returns their acknowledgment numbers.
func readAcks(t *testing.T, c *tap.Conn, n int) []uint32 {
	t.Helper()
	_ = c.NetConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	var acks []uint32
	for range n {
		f, err := c.Next()
		if err != nil {
			t.Fatalf("after %v: %v", acks, err)
		}
		acks = append(acks, parseFrame(f).ack)
	}
	return acks
}

func TestSwitchAckHold(t *testing.T) {
	ack, psh := header.TCPFlagAck, header.TCPFlagPsh
	e, c := switchPipe(t, 20*time.Millisecond)
	writeSeg(t, e, seg{flags: ack | psh, ack: 100, payload: 10})
	writeSeg(t, e, seg{flags: ack, ack: 200})                            // held
	writeSeg(t, e, seg{sport: 81, flags: ack | psh, ack: 7, payload: 1}) // another connection
	writeSeg(t, e, seg{flags: ack | psh, ack: 300, payload: 10})         // supersedes the held ACK
	if diff := cmp.Diff([]uint32{100, 7, 300}, readAcks(t, c, 3)); diff != "" {
		t.Fatalf("frames (-want +got):\n%s", diff)
	}
	start := time.Now()
	writeSeg(t, e, seg{flags: ack, ack: 400}) // held, then sent when due
	if diff := cmp.Diff([]uint32{400}, readAcks(t, c, 1)); diff != "" {
		t.Fatalf("frames (-want +got):\n%s", diff)
	}
	if d := time.Since(start); d < 20*time.Millisecond*(ackSlack-1)/ackSlack {
		t.Errorf("held ACK sent after %v, want about 20ms", d)
	}
	if held, sup := e.stats.acksHeld.Load(), e.stats.acksSuperseded.Load(); held != 2 || sup != 1 {
		t.Errorf("held %d, superseded %d; want 2, 1", held, sup)
	}
}

func TestSwitchAckHoldOff(t *testing.T) {
	ack, psh := header.TCPFlagAck, header.TCPFlagPsh
	e, c := switchPipe(t, -1)
	writeSeg(t, e, seg{flags: ack | psh, ack: 100, payload: 10})
	writeSeg(t, e, seg{flags: ack, ack: 200})
	writeSeg(t, e, seg{flags: ack | psh, ack: 300, payload: 10})
	if diff := cmp.Diff([]uint32{100, 200, 300}, readAcks(t, c, 3)); diff != "" {
		t.Fatalf("frames (-want +got):\n%s", diff)
	}
}

func BenchmarkAckHoldOffer(b *testing.B) {
	h := &ackHold[int]{delay: time.Millisecond}
	var segs []segment
	for conn := range 100 {
		segs = append(segs,
			parseFrame(tcpFrame(seg{dport: uint16(40000 + conn), flags: header.TCPFlagAck | header.TCPFlagPsh, ack: 100, payload: 10})),
			parseFrame(tcpFrame(seg{dport: uint16(40000 + conn), flags: header.TCPFlagAck, ack: 200})))
	}
	var out []int
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		s := segs[i%len(segs)]
		s.ack += uint32(i / len(segs) * 200)
		if _, _, held, _ := h.offer(i, s, time.Duration(i)); !held {
			out = append(out[:0], i)
		}
		if i%64 == 0 {
			out = h.expire(time.Duration(i), out[:0])
		}
	}
}
