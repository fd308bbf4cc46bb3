package taptest_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/quenchnet/quench/tap"
	"github.com/quenchnet/quench/tap/taptest"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

var (
	macA = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee}
	macB = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd}
	ipA  = netip.MustParseAddr("192.168.127.2")
	ipB  = netip.MustParseAddr("192.168.127.1")
)

// TestFramesAgainstGVisor checks the builders with gVisor's header parsers,
// which the host's network stack uses.
func TestFramesAgainstGVisor(t *testing.T) {
	src, dst := netip.AddrPortFrom(ipA, 40000), netip.AddrPortFrom(ipB, 53)
	for _, payload := range [][]byte{nil, []byte("x"), []byte("even"), bytes.Repeat([]byte{0xff}, 1471)} {
		t.Run("UDP", func(t *testing.T) {
			f := taptest.UDPv4Frame(macB, macA, src, dst, payload)
			eth := header.Ethernet(f)
			if eth.Type() != header.IPv4ProtocolNumber || eth.SourceAddress() != tcpip.LinkAddress(macA) || eth.DestinationAddress() != tcpip.LinkAddress(macB) {
				t.Fatalf("Ethernet header %x", f[:14])
			}
			ip := header.IPv4(f[14:])
			if !ip.IsValid(len(ip)) || !ip.IsChecksumValid() || ip.TransportProtocol() != header.UDPProtocolNumber {
				t.Fatal("bad IPv4 header")
			}
			u := header.UDP(ip.Payload())
			if !u.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(u.Payload(), 0)) {
				t.Fatal("bad UDP checksum")
			}
			if u.SourcePort() != 40000 || u.DestinationPort() != 53 || !bytes.Equal(u.Payload(), payload) {
				t.Fatalf("UDP %d -> %d %q", u.SourcePort(), u.DestinationPort(), u.Payload())
			}
			got, err := taptest.ParseUDPv4(f)
			if err != nil {
				t.Fatal(err)
			}
			if got.Src != src || got.Dst != dst || !bytes.Equal(got.Payload, payload) {
				t.Fatalf("ParseUDPv4 = %+v", got)
			}
		})
		t.Run("TCP", func(t *testing.T) {
			f := taptest.TCPv4Frame(macB, macA, taptest.TCPSegment{Src: src, Dst: dst, Seq: 7, Ack: 9,
				Flags: taptest.TCPFlagSYN | taptest.TCPFlagACK, Payload: payload})
			ip := header.IPv4(f[14:])
			if !ip.IsValid(len(ip)) || !ip.IsChecksumValid() || ip.TransportProtocol() != header.TCPProtocolNumber {
				t.Fatal("bad IPv4 header")
			}
			tc := header.TCP(ip.Payload())
			if !tc.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(tc.Payload(), 0), uint16(len(tc.Payload()))) {
				t.Fatal("bad TCP checksum")
			}
			if tc.SequenceNumber() != 7 || tc.AckNumber() != 9 || tc.Flags() != header.TCPFlagSyn|header.TCPFlagAck || tc.WindowSize() != 0xffff {
				t.Fatalf("TCP header %x", []byte(tc)[:20])
			}
		})
	}
}

func TestARP(t *testing.T) {
	req := taptest.ARPRequest(macA, ipA, ipB)
	a := header.ARP(req[14:])
	if !a.IsValid() || a.Op() != header.ARPRequest || !bytes.Equal(req[:6], taptest.BroadcastMAC) {
		t.Fatalf("bad ARP request %x", req)
	}
	got, err := taptest.ParseARP(req)
	if err != nil {
		t.Fatal(err)
	}
	want := taptest.ARP{Op: 1, SrcMAC: macA, SrcIP: ipA, DstMAC: make(net.HardwareAddr, 6), DstIP: ipB}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("ParseARP(request) (-want +got):\n%s", diff)
	}
	rep := taptest.ARPReply(macB, ipB, macA, ipA)
	if a := header.ARP(rep[14:]); !a.IsValid() || a.Op() != header.ARPReply || !bytes.Equal(rep[:6], macA) {
		t.Fatalf("bad ARP reply %x", rep)
	}
	if _, err := taptest.ParseARP(taptest.UDPv4Frame(macA, macB, netip.AddrPortFrom(ipA, 1), netip.AddrPortFrom(ipB, 2), nil)); err == nil {
		t.Error("ParseARP accepted a UDP frame")
	}
}

func TestParseUDPv4Rejects(t *testing.T) {
	good := taptest.UDPv4Frame(macA, macB, netip.AddrPortFrom(ipA, 1), netip.AddrPortFrom(ipB, 2), []byte("data"))
	corrupt := func(i int) []byte { f := bytes.Clone(good); f[i] ^= 0x40; return f }
	tests := []struct {
		name  string
		frame []byte
	}{
		{"ARP", taptest.ARPRequest(macA, ipA, ipB)},
		{"short", good[:30]},
		{"IP checksum", corrupt(14 + 8)},
		{"UDP payload", corrupt(len(good) - 1)},
		{"truncated datagram", good[:len(good)-2]},
	}
	for _, tt := range tests {
		if _, err := taptest.ParseUDPv4(tt.frame); err == nil {
			t.Errorf("%s: ParseUDPv4 = nil error", tt.name)
		}
	}
}

func TestChannelDevice(t *testing.T) {
	d := taptest.NewChannelDevice(1500)
	if d.MTU() != 1500 || d.BatchSize() != tap.IdealBatchSize || d.Name() == "" {
		t.Fatalf("MTU, BatchSize, Name = %d, %d, %q", d.MTU(), d.BatchSize(), d.Name())
	}
	frames := [][]byte{[]byte("one"), []byte("two"), []byte("three")}
	for _, f := range frames {
		d.Outbound <- f
	}
	const offset = 4
	bufs, sizes := make([][]byte, 8), make([]int, 8)
	for i := range bufs {
		bufs[i] = make([]byte, offset+1514)
	}
	n, err := d.Read(bufs, sizes, offset)
	if err != nil || n != 3 {
		t.Fatalf("Read = %d, %v; want all 3 queued frames", n, err)
	}
	for i := range n {
		if got := bufs[i][offset : offset+sizes[i]]; !bytes.Equal(got, frames[i]) {
			t.Errorf("frame %d = %q, want %q", i, got, frames[i])
		}
	}

	// Write copies.
	w := [][]byte{[]byte("hdr-AAAA"), []byte("hdr-BBBB")}
	if n, err := d.Write(w, 4); err != nil || n != 2 {
		t.Fatalf("Write = %d, %v", n, err)
	}
	w[0][4] = 'X'
	if got := <-d.Inbound; string(got) != "AAAA" {
		t.Errorf("Inbound = %q, want AAAA", got)
	}
	<-d.Inbound

	// Too small a buffer.
	d.Outbound <- make([]byte, 2000)
	if _, err := d.Read(bufs, sizes, offset); !errors.Is(err, io.ErrShortBuffer) {
		t.Errorf("Read of oversized frame = %v, want io.ErrShortBuffer", err)
	}

	// Close unblocks a pending Read.
	errc := make(chan error, 1)
	go func() {
		_, err := d.Read(bufs, sizes, 0)
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond)
	d.Close()
	d.Close()
	if err := <-errc; !errors.Is(err, os.ErrClosed) {
		t.Errorf("Read after Close = %v, want os.ErrClosed", err)
	}
	if _, err := d.Write(w, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close = %v, want os.ErrClosed", err)
	}
}
