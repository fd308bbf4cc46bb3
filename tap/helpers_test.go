package tap_test

import (
	"bytes"
	"fmt"

	"encoding/binary"
	"github.com/google/go-cmp/cmp"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quenchnet/quench/tap"
	"github.com/quenchnet/quench/tap/taptest"
)

// Addresses of the test network (gvproxy's defaults).
var (
	enclaveMAC = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee}
	gatewayMAC = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd}
	enclaveIP  = netip.MustParseAddr("192.168.127.2")
	gatewayIP  = netip.MustParseAddr("192.168.127.1")
)

// realFrames returns an ARP request, a UDP datagram and a TCP SYN.
func realFrames() [][]byte {
	return [][]byte{
		taptest.ARPRequest(enclaveMAC, enclaveIP, gatewayIP),
		taptest.UDPv4Frame(gatewayMAC, enclaveMAC,
			netip.AddrPortFrom(enclaveIP, 40000), netip.AddrPortFrom(gatewayIP, 53), []byte("\x12\x34 a DNS query")),
		taptest.TCPv4Frame(gatewayMAC, enclaveMAC, taptest.TCPSegment{
			Src: netip.AddrPortFrom(enclaveIP, 40001), Dst: netip.AddrPortFrom(gatewayIP, 443),
			Seq: 0x01020304, Flags: taptest.TCPFlagSYN,
		}),
	}
}

// randomFrames returns n frames with lengths in [minLen, maxLen] and
// random contents, deterministically from seed.
func randomFrames(seed uint64, n, minLen, maxLen int) [][]byte {
	r := rand.New(rand.NewPCG(seed, seed))
	frames := make([][]byte, n)
	for i := range frames {
		f := make([]byte, minLen+r.IntN(maxLen-minLen+1))
		for j := range f {
			f[j] = byte(r.Uint32())
		}
		frames[i] = f
	}
	return frames
}

// sizedFrames returns n frames of exactly size bytes.
func sizedFrames(n, size int) [][]byte { return randomFrames(uint64(size), n, size, size) }

// encode returns frames in the wire format, independently of tap.Conn.
func encode(frames ...[]byte) []byte {
	var b []byte
	for _, f := range frames {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b
}

// prefix returns a bare length prefix.
func prefix(n int) []byte { return binary.LittleEndian.AppendUint16(nil, uint16(n)) }

// wireSize is the number of bytes frames take on the stream.
func wireSize(frames [][]byte) int {
	n := 0
	for _, f := range frames {
		n += tap.LengthPrefixSize + len(f)
	}
	return n
}

// goHandshake is what gvforwarder writes: http.NewRequest("POST",
// "/connect", nil) followed by req.Write.
const goHandshake = "POST /connect HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 0\r\n\r\n"

type pairFunc func(testing.TB) (net.Conn, net.Conn)

// transports are the streams the codec is tested over.
var transports = []struct {
	name string
	pair pairFunc
}{
	{"pipe", pipePair},
	{"unix", unixPair},
}

func pipePair(tb testing.TB) (net.Conn, net.Conn) {
	a, b := net.Pipe()
	tb.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// unixPair returns both ends of a unix stream connection under
// tb.TempDir(), the VSOCK stand-in.
func unixPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	ln, err := net.Listen("unix", filepath.Join(tb.TempDir(), "s"))
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		ch <- result{c, err}
	}()
	a, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		a.Close()
		tb.Fatal(r.err)
	}
	tb.Cleanup(func() { a.Close(); r.c.Close() })
	return a, r.c
}

func newConn(tb testing.TB, c net.Conn, cfg tap.Config) *tap.Conn {
	tb.Helper()
	tc, err := tap.NewConn(c, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return tc
}

// fakeConn is a net.Conn whose reads come from r (io.EOF if nil) and whose
// writes go to w (discarded if nil). It records the size of every Write.
type fakeConn struct {
	r io.Reader
	w io.Writer

	mu     sync.Mutex
	writes []int
}

func (c *fakeConn) Read(p []byte) (int, error) {
	if c.r == nil {
		return 0, io.EOF
	}
	return c.r.Read(p)
}

func (c *fakeConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, len(p))
	c.mu.Unlock()
	if c.w == nil {
		return len(p), nil
	}
	return c.w.Write(p)
}

func (c *fakeConn) writeSizes() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int(nil), c.writes...)
}

func (c *fakeConn) Close() error                     { return nil }
func (c *fakeConn) LocalAddr() net.Addr              { return fakeAddr{} }
func (c *fakeConn) RemoteAddr() net.Addr             { return fakeAddr{} }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

type fakeAddr struct{}

func (fakeAddr) Network() string { return "fake" }
func (fakeAddr) String() string  { return "fake" }

// discardConn is a fakeConn whose writes are discarded without recording,
// for allocation tests and benchmarks.
type discardConn struct{ fakeConn }

func (*discardConn) Write(p []byte) (int, error) { return len(p), nil }

// loopReader returns data over and over, filling every Read completely,
// like a socket that always has plenty buffered.
type loopReader struct {
	data []byte
	off  int
}

func (r *loopReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := copy(p[n:], r.data[r.off:])
		n += k
		r.off = (r.off + k) % len(r.data)
	}
	return n, nil
}

// checkNoPumpGoroutines fails tb if a Pump goroutine is still running after
// a grace period.
func checkNoPumpGoroutines(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "tap.(*Pump)") {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("Pump goroutines still running:\n%s", stacks)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// diffFrames is cmp.Diff for frame lists, fast on megabytes: it reports
// the count and the first frame that differs, or "" if equal.
func diffFrames(want, got [][]byte) string {
	if len(want) != len(got) {
		return fmt.Sprintf("got %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(want[i], got[i]) {
			if len(want[i]) < 200 && len(got[i]) < 200 {
				return fmt.Sprintf("frame %d (-want +got):\n%s", i, cmp.Diff(want[i], got[i]))
			}
			return fmt.Sprintf("frame %d differs: %d bytes, want %d", i, len(got[i]), len(want[i]))
		}
	}
	return ""
}
