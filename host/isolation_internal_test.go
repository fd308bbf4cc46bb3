package host

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/quenchnet/quench/tap"
	"github.com/quenchnet/quench/tap/taptest"
)

// benchSwitch returns a switch with one attached port whose peer discards
// everything, and the port.
func benchSwitch(b *testing.B) (*switchEndpoint, *port) {
	b.Helper()
	e := newSwitch(tap.DefaultMTU, DefaultGatewayMAC, nil, -1, slog.New(slog.DiscardHandler))
	a, z := net.Pipe()
	go func() { _, _ = io.Copy(io.Discard, z) }()
	c, err := tap.NewConn(a, tap.Config{})
	if err != nil {
		b.Fatal(err)
	}
	p := e.attach(c, "bench")
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.serve(p)
	}()
	b.Cleanup(func() {
		_ = c.Close()
		_ = z.Close()
		<-done
	})
	return e, p
}

// BenchmarkSwitchToEnclave measures the stack-to-enclave path of one
// enclave (WritePacket, the port's queue and its batched writer).
func BenchmarkSwitchToEnclave(b *testing.B) {
	e, p := benchSwitch(b)
	enclave := tcpip.LinkAddress(DefaultEnclaveMAC)
	e.mu.Lock()
	e.macs[enclave] = p
	e.mu.Unlock()
	payload := make([]byte, 1400)
	b.SetBytes(int64(len(payload) + header.EthernetMinimumSize))
	b.ReportAllocs()
	for b.Loop() {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
			ReserveHeaderBytes: header.EthernetMinimumSize,
			Payload:            buffer.MakeWithData(payload),
		})
		pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
		header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize)).Encode(&header.EthernetFields{
			SrcAddr: e.LinkAddress(), DstAddr: enclave, Type: header.IPv4ProtocolNumber,
		})
		for e.WritePacket(pkt) != nil {
			// queue full: let the writer catch up
		}
		pkt.DecRef()
	}
}

// BenchmarkSwitchFromEnclave measures the enclave-to-stack path of one
// frame through rx (without a stack: delivery fails and is counted).
func BenchmarkSwitchFromEnclave(b *testing.B) {
	e, p := benchSwitch(b)
	f := taptest.UDPv4Frame(DefaultGatewayMAC, DefaultEnclaveMAC,
		netip.MustParseAddrPort("192.168.127.2:40000"), netip.MustParseAddrPort("192.168.127.254:53"), make([]byte, 1400))
	b.SetBytes(int64(len(f)))
	b.ReportAllocs()
	for b.Loop() {
		e.rx(p, f)
	}
}

// TestIsolationMACTableBounded: the switch learned every source MAC an
// enclave stream sent from and forgot them only when the stream ended: one
// stream sending from 200000 made-up MACs grew the table to 200000 entries.
// Now a stream may use at most MaxMACsPerEnclave MACs; frames from more are
// dropped and counted.
func TestIsolationMACTableBounded(t *testing.T) {
	const macs = 20000
	h, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	path := filepath.Join(t.TempDir(), "h.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = h.Serve(ln) }()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tap.NewConn(nc, tap.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.ClientHandshake(); err != nil {
		t.Fatal(err)
	}
	batch := make([][]byte, 0, 256)
	for i := range macs {
		f := make([]byte, 60)
		copy(f[0:6], DefaultGatewayMAC)
		f[6], f[7], f[8], f[9], f[10], f[11] = 0x02, 0, byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		f[12], f[13] = 0x88, 0xb5
		batch = append(batch, f)
		if len(batch) == cap(batch) {
			if _, err := c.WriteFrames(batch, 0); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if _, err := c.WriteFrames(batch, 0); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); h.Stats().FramesIn < macs; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d frames arrived", h.Stats().FramesIn, macs)
		}
	}
	h.sw.mu.RLock()
	n := len(h.sw.macs)
	h.sw.mu.RUnlock()
	st := h.Stats()
	t.Logf("MAC table: %d entries for 1 stream; %d frames dropped over the limit", n, st.FramesDroppedOverLimit)
	if n > defaultMaxMACsPerStream {
		t.Errorf("one enclave stream made the switch learn %d MACs; want at most %d", n, defaultMaxMACsPerStream)
	}
	if want := uint64(macs - n); st.FramesDroppedOverLimit != want {
		t.Errorf("FramesDroppedOverLimit = %d, want %d", st.FramesDroppedOverLimit, want)
	}
}

// TestIsolationStreamLimits checks admitStream's bounds: per peer, in total
// and for handshakes, and that slots come back.
func TestIsolationStreamLimits(t *testing.T) {
	h, err := New(Config{MaxEnclaveStreams: 4, MaxEnclaveStreamsPerPeer: 2, MaxEnclaveHandshakes: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	admit := func(peer string, want bool) func() {
		t.Helper()
		r := h.admitStream(peer)
		if (r != nil) != want {
			t.Fatalf("admitStream(%q) admitted %v, want %v", peer, r != nil, want)
		}
		return r
	}
	a1 := admit("vsock:16", true)
	admit("vsock:16", true)
	admit("vsock:16", false) // per peer
	admit("vsock:17", true)
	admit("vsock:18", false) // handshakes: 3 in progress
	h.handshakes.Add(-3)     // their handshakes completed
	admit("vsock:18", true)
	admit("vsock:19", false) // in total
	a1()
	h.handshakes.Add(-1)
	admit("vsock:16", true) // a slot came back
	if got := h.Stats().EnclaveStreamsRefused; got != 3 {
		t.Errorf("EnclaveStreamsRefused = %d, want 3", got)
	}
}

// TestIsolationPeerID checks the peer identity of a unix-socket stream: the
// peer's user id.
func TestIsolationPeerID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, want := peerID(s), fmt.Sprintf("unix:uid=%d", os.Getuid()); got != want {
		t.Errorf("peerID = %q, want %q", got, want)
	}
}

// TestClientAddrIPv6Prefix: MaxPortConnsPerClient counts an IPv6 client
// per /64, so one client cannot pass the cap by using more of its
// addresses; IPv4 (mapped or not) per address.
func TestClientAddrIPv6Prefix(t *testing.T) {
	conn := func(ip string) net.Conn {
		return fakeRemoteConn{remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 1}}
	}
	if clientAddr(conn("2001:db8:1:2::1")) != clientAddr(conn("2001:db8:1:2:ffff::9")) {
		t.Error("two addresses of one IPv6 /64 count as different clients")
	}
	if clientAddr(conn("2001:db8:1:2::1")) == clientAddr(conn("2001:db8:1:3::1")) {
		t.Error("two IPv6 /64s count as one client")
	}
	if clientAddr(conn("::ffff:192.0.2.1")) != clientAddr(conn("192.0.2.1")) || clientAddr(conn("192.0.2.1")) == clientAddr(conn("192.0.2.2")) {
		t.Error("IPv4 clients are not counted per address")
	}
}

// fakeRemoteConn is a net.Conn with only a remote address (its other
// methods are not called).
type fakeRemoteConn struct {
	net.Conn
	remote net.Addr
}

func (f fakeRemoteConn) RemoteAddr() net.Addr { return f.remote }
