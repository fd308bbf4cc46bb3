package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// frame builders for hand-made input.

func ethFrame(dst, src net.HardwareAddr, typ tcpip.NetworkProtocolNumber, payload []byte) []byte {
	b := make([]byte, header.EthernetMinimumSize+len(payload))
	header.Ethernet(b).Encode(&header.EthernetFields{
		DstAddr: tcpip.LinkAddress(dst), SrcAddr: tcpip.LinkAddress(src), Type: typ,
	})
	copy(b[header.EthernetMinimumSize:], payload)
	return b
}

func arpRequest(src net.HardwareAddr, srcIP, targetIP [4]byte) []byte {
	b := make([]byte, header.ARPSize)
	h := header.ARP(b)
	h.SetIPv4OverEthernet()
	h.SetOp(header.ARPRequest)
	copy(h.HardwareAddressSender(), src)
	copy(h.ProtocolAddressSender(), srcIP[:])
	copy(h.ProtocolAddressTarget(), targetIP[:])
	return ethFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, src, header.ARPProtocolNumber, b)
}

func ipv4Packet(src, dst [4]byte, proto uint8, id uint16, flagsFrag uint16, l4 []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+len(l4))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), ID: id, TTL: 64, Protocol: proto,
		SrcAddr: tcpip.AddrFrom4(src), DstAddr: tcpip.AddrFrom4(dst),
		Flags: uint8(flagsFrag >> 13), FragmentOffset: flagsFrag & 0x1fff << 3,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(b[header.IPv4MinimumSize:], l4)
	return b
}

func tcpSegment(src, dst [4]byte, sport, dport uint16, flags header.TCPFlags, payload []byte) []byte {
	return tcpSegmentWith(src, dst, header.TCPFields{
		SrcPort: sport, DstPort: dport, SeqNum: 1000, Flags: flags, WindowSize: 65535,
	}, nil, payload)
}

// tcpSegmentWith builds a TCP segment from f (DataOffset and Checksum are
// computed), options padded to 4 bytes, and payload.
func tcpSegmentWith(src, dst [4]byte, f header.TCPFields, opts, payload []byte) []byte {
	hlen := header.TCPMinimumSize + (len(opts)+3)&^3
	b := make([]byte, hlen+len(payload))
	f.DataOffset = uint8(hlen)
	t := header.TCP(b)
	t.Encode(&f)
	copy(b[header.TCPMinimumSize:], opts)
	copy(b[hlen:], payload)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, tcpip.AddrFrom4(src), tcpip.AddrFrom4(dst), uint16(len(b)))
	xsum = checksum.Checksum(payload, xsum)
	t.SetChecksum(^t.CalculateChecksum(xsum))
	return b
}

func udpDatagram(sport, dport uint16, payload []byte) []byte {
	b := make([]byte, header.UDPMinimumSize+len(payload))
	u := header.UDP(b)
	u.Encode(&header.UDPFields{SrcPort: sport, DstPort: dport, Length: uint16(len(b))})
	copy(b[header.UDPMinimumSize:], payload)
	return b
}

var (
	gwIP   = [4]byte{192, 168, 127, 1}
	selfIP = [4]byte{192, 168, 127, 2}
	hostMA = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd}
	selfMA = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee}
)

// seedFrames are well-formed and malformed frames for a stack at
// 192.168.127.2 with the default MAC.
func seedFrames() [][]byte {
	ip := func(proto uint8, l4 []byte) []byte {
		return ethFrame(selfMA, hostMA, header.IPv4ProtocolNumber, ipv4Packet(gwIP, selfIP, proto, 1, 0, l4))
	}
	syn := ip(uint8(header.TCPProtocolNumber), tcpSegment(gwIP, selfIP, 40000, 80, header.TCPFlagSyn, nil))
	frag1 := ethFrame(selfMA, hostMA, header.IPv4ProtocolNumber,
		ipv4Packet(gwIP, selfIP, uint8(header.UDPProtocolNumber), 7, 1<<13|0, make([]byte, 64)))
	frag2 := ethFrame(selfMA, hostMA, header.IPv4ProtocolNumber,
		ipv4Packet(gwIP, selfIP, uint8(header.UDPProtocolNumber), 7, 8, make([]byte, 64)))
	badLen := ip(uint8(header.UDPProtocolNumber), udpDatagram(1, 53, []byte("x")))
	binary.BigEndian.PutUint16(badLen[header.EthernetMinimumSize+2:], 9000) // IP total length beyond the frame
	return [][]byte{
		arpRequest(hostMA, gwIP, selfIP),
		syn,
		ip(uint8(header.TCPProtocolNumber), tcpSegment(gwIP, selfIP, 40000, 80, header.TCPFlagAck|header.TCPFlagPsh, []byte("data"))),
		ip(uint8(header.UDPProtocolNumber), udpDatagram(1, 53, []byte("query"))),
		ip(uint8(header.ICMPv4ProtocolNumber), []byte{8, 0, 0, 0, 0, 1, 0, 1}),
		frag1, frag2, badLen,
		syn[:30],                              // truncated IP header
		ethFrame(selfMA, hostMA, 0x86dd, nil), // IPv6, not served
		ethFrame(net.HardwareAddr{2, 0, 0, 0, 0, 1}, hostMA, header.IPv4ProtocolNumber, syn[14:]), // another station
		ethFrame(selfMA, selfMA, header.IPv4ProtocolNumber, syn[14:]),                             // our own source MAC
		{1, 2, 3},
		{},
	}
}

// drain reads n's device until it is closed.
func drain(n *Net) (wait func()) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d := n.Device()
		bufs := make([][]byte, d.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, d.MTU()+14)
		}
		sizes := make([]int, len(bufs))
		for {
			if _, err := d.Read(bufs, sizes, 0); err != nil {
				return
			}
		}
	}()
	return func() {
		_ = n.Device().Close()
		wg.Wait()
	}
}

func FuzzDeviceWrite(f *testing.F) {
	for _, s := range seedFrames() {
		f.Add(s)
	}
	n, err := New(Config{})
	if err != nil {
		f.Fatal(err)
	}
	wait := drain(n)
	f.Cleanup(func() {
		_ = n.Close()
		wait()
	})
	ln, err := n.Listen("tcp", ":80")
	if err != nil {
		f.Fatal(err)
	}
	pc, err := n.ListenPacket("udp", ":53")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close(); pc.Close() })
	var mu sync.Mutex // Device.Write must not run concurrently with itself
	f.Fuzz(func(t *testing.T, frame []byte) {
		mu.Lock()
		defer mu.Unlock()
		if _, err := n.Device().Write([][]byte{frame}, 0); err != nil {
			t.Fatal(err)
		}
		// The same frame aimed at us, with an IPv4 EtherType, reaches
		// deeper into the stack.
		if len(frame) >= header.EthernetMinimumSize {
			g := append([]byte(nil), frame...)
			copy(g, selfMA)
			g[12], g[13] = 0x08, 0x00
			if _, err := n.Device().Write([][]byte{g}, 0); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestDeviceGarbage floods a stack with random frames addressed to it and
// checks it still serves TCP afterwards.
//
// Under the race detector the flood has no ARP frames: when a neighbour's
// resolution completes, gVisor (this version, stack/neighbor_entry.go,
// notifyCompletionLocked) reads the entry's link address in a deferred
// function without the entry's lock, and an ARP frame handled meanwhile
// writes it. The detector reports that race in gVisor about once in twenty
// runs; it is benign for Ethernet (both values are 6-byte strings, the
// string header's pointer is written in one word). Runs without -race, and
// the fuzz targets, keep the ARP frames.
func TestDeviceGarbage(t *testing.T) {
	p := newPair(t, wireDirect, nil)
	ln, err := p.b.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	echo(t, ln)
	g, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	wait := drain(g)
	defer func() { _ = g.Close(); wait() }()

	rng := rand.New(rand.NewPCG(1, 2))
	seeds := seedFrames()
	batch := make([][]byte, 64)
	const rounds = 400
	for range rounds {
		for i := range batch {
			var f []byte
			if rng.IntN(4) == 0 {
				f = append([]byte(nil), seeds[rng.IntN(len(seeds))]...)
				for raceEnabled && len(f) >= 14 && f[12] == 0x08 && f[13] == 0x06 {
					f = append(f[:0], seeds[rng.IntN(len(seeds))]...) // no ARP under -race (above)
				}
				for range rng.IntN(4) + 1 { // flip a few bytes
					if len(f) > 0 {
						f[rng.IntN(len(f))] ^= byte(rng.Uint32())
					}
				}
			} else {
				f = make([]byte, rng.IntN(1600))
				for j := range f {
					f[j] = byte(rng.Uint32())
				}
				if len(f) >= 14 {
					copy(f, selfMA)
					f[12], f[13] = 0x08, 0x00
					if len(f) >= 14+20 {
						f[14] = 0x45 // IPv4, 20-byte header
						copy(f[14+16:], selfIP[:])
					}
				}
			}
			batch[i] = f
		}
		if _, err := g.Device().Write(batch, 0); err != nil {
			t.Fatal(err)
		}
	}
	st := g.Stats()
	if st.FramesIn+st.DroppedIn != rounds*uint64(len(batch)) {
		t.Errorf("stats: %d in + %d dropped != %d written", st.FramesIn, st.DroppedIn, rounds*len(batch))
	}
	if st.DroppedIn == 0 || st.FramesIn == 0 {
		t.Errorf("stats %+v: want both delivered and dropped frames", st)
	}
	// The garbage-fed stack still works as a TCP peer on its own loopback,
	// and the wired pair is unaffected.
	for _, n := range []*Net{g, p.a} {
		addr := "192.168.127.2:80"
		if n == g {
			l2, err := g.Listen("tcp", "127.0.0.1:81")
			if err != nil {
				t.Fatal(err)
			}
			echo(t, l2)
			addr = "127.0.0.1:81"
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := n.Dial(ctx, "tcp", addr)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("ok")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}

func TestDeviceReadSmallBuffer(t *testing.T) {
	// A packet that does not fit the reader's buffer is dropped and
	// counted, never truncated.
	n, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	pc, err := n.Dial(context.Background(), "udp", "192.168.127.254:9")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	// The stack first ARPs for the destination (a 42-byte frame).
	if _, err := pc.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	small := [][]byte{make([]byte, 40)}
	sizes := make([]int, 1)
	errc := make(chan error, 1)
	go func() {
		_, err := n.Device().Read(small, sizes, 0)
		errc <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for n.Stats().DroppedOut == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n.Stats().DroppedOut == 0 {
		t.Fatal("oversized packet not counted as dropped")
	}
	_ = n.Device().Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v; want net.ErrClosed", err)
	}
}

func TestQueue(t *testing.T) {
	var q queue
	q.init(2)
	newPkt := func() *stack.PacketBuffer {
		return stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData([]byte("x"))})
	}
	var pkts []*stack.PacketBuffer
	for i := range 3 {
		p := newPkt()
		pkts = append(pkts, p)
		err := q.push(p)
		if want := i < 2; (err == nil) != want {
			t.Fatalf("push %d: err = %v", i, err)
		}
		if _, full := err.(*tcpip.ErrNoBufferSpace); i == 2 && !full {
			t.Fatalf("push to a full queue: %v; want ErrNoBufferSpace", err)
		}
	}
	dst := make([]*stack.PacketBuffer, 4)
	if n, err := q.pop(dst); n != 2 || err != nil || dst[0] != pkts[0] || dst[1] != pkts[1] {
		t.Fatalf("pop = %d, %v; want the two queued packets in order", n, err)
	}
	for _, p := range dst[:2] {
		p.DecRef() // the queue's references
	}
	// Wrap around the ring, then close with packets queued.
	for range 2 {
		if err := q.push(pkts[2]); err != nil {
			t.Fatal(err)
		}
	}
	q.close()
	if err := q.push(pkts[2]); err == nil {
		t.Error("push after close succeeded")
	}
	if _, err := q.pop(dst); !errors.Is(err, net.ErrClosed) {
		t.Errorf("pop after close: %v; want net.ErrClosed", err)
	}
	for _, p := range pkts {
		p.DecRef() // ours; a reference-count bug panics here
	}
}
