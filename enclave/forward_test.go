package enclave_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/testutil"
	"github.com/quenchnet/quench/tap"
)

// lineServer serves on a kernel TCP port of 127.0.0.1: it writes
// "you are ADDR\n", echoes lines until EOF, writes "bye" and half-closes.
// With proxyHeader it reads a PROXY header first (ADDR is then the
// client's address from it).
func lineServer(t *testing.T, proxyHeader bool) string {
	t.Helper()
	return lineServerOn(t, "tcp", proxyHeader)
}

// lineServerOn is lineServer on network "tcp" or "unix" (a socket in a
// temporary directory); it returns the forward's target for it.
func lineServerOn(t *testing.T, network string, proxyHeader bool) string {
	t.Helper()
	ln := listenLocal(t, network)
	addr := ln.Addr().String()
	if network == "unix" {
		addr = "unix://" + addr
	}
	if proxyHeader {
		ln = &proxyproto.Listener{Listener: ln, Policy: func(net.Addr) (proxyproto.Policy, error) { return proxyproto.REQUIRE, nil }}
	}
	testutil.ServeConns(t, ln, func(c net.Conn) {
		fmt.Fprintf(c, "you are %s\n", c.RemoteAddr())
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				break
			}
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
		_, _ = io.WriteString(c, "bye")
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = c.(*proxyproto.Conn).Raw().(interface{ CloseWrite() error }).CloseWrite()
		}
		_, _ = io.Copy(io.Discard, c)
	})
	return addr
}

// sinkServer reads each connection to its end and answers with the
// SHA-256 of what it read, then with n bytes of pattern.
func sinkServer(t *testing.T, n int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.ServeConns(t, ln, func(c net.Conn) {
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			return
		}
		_, _ = c.Write(h.Sum(nil))
		_, _ = c.Write(pattern(n))
	})
	return ln.Addr().String()
}

// listenLocal listens on a kernel TCP port of 127.0.0.1 ("tcp") or on a
// unix socket in a temporary directory ("unix").
func listenLocal(t *testing.T, network string) net.Listener {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s.sock")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + i>>9)
	}
	return b
}

// forwardEnclave starts a host and a userspace-mode enclave with fwds; each
// forward's Listen is a unix socket in dir named after its index.
func forwardEnclave(t *testing.T, fwds ...enclave.Forward) (dir string, e *enclave.Enclave) {
	t.Helper()
	dir = t.TempDir()
	sock := filepath.Join(dir, "host.sock")
	usHost(t, sock)
	for i := range fwds {
		path := filepath.Join(dir, fmt.Sprintf("fw%d.sock", i))
		fwds[i].Listen = func() (net.Listener, error) { return net.Listen("unix", path) }
	}
	e = usEnclave(t, sock, func(c *enclave.Config) {
		c.Forwards = fwds
		c.DrainTimeout = 200 * time.Millisecond
	})
	return dir, e
}

// dialForward connects to forward i as quench-host does, sending hdr (and
// early, in the same write) first.
func dialForward(t *testing.T, dir string, i int, hdr *proxyproto.Header, early string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", filepath.Join(dir, fmt.Sprintf("fw%d.sock", i)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	var b []byte
	if hdr != nil {
		if b, err = hdr.Format(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Write(append(b, early...)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

func clientHeader(client string) *proxyproto.Header {
	src, _ := net.ResolveTCPAddr("tcp", client)
	dst, _ := net.ResolveTCPAddr("tcp", "10.1.2.3:443")
	return &proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv4, SourceAddr: src, DestinationAddr: dst}
}

// TestForwardLines relays the line protocol through two forwards, one
// passing the client's address on in a PROXY header, with bytes that came
// in the same write as the header, and half-closes both ways; to servers
// on TCP ports and on unix sockets.
func TestForwardLines(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) { testForwardLines(t, network) })
	}
}

func testForwardLines(t *testing.T, network string) {
	plain, withHdr := lineServerOn(t, network, false), lineServerOn(t, network, true)
	dir, e := forwardEnclave(t, enclave.Forward{Target: plain}, enclave.Forward{Target: withHdr, ProxyHeader: true})
	local := "127.0.0.1:" // a unix socket's peer has no address
	if network == "unix" {
		local = ""
	}
	for i, wantYou := range []string{local, "203.0.113.7:40001\n"} {
		c := dialForward(t, dir, i, clientHeader("203.0.113.7:40001"), "early\n")
		r := bufio.NewReader(c)
		you, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(you, "you are "+wantYou) {
			t.Fatalf("forward %d: greeting %q, %v; want it to start with %q", i, you, err, "you are "+wantYou)
		}
		if i == 0 && strings.Contains(you, "203.0.113.7") {
			t.Fatalf("forward 0 passed the client address on: %q", you)
		}
		if line, err := r.ReadString('\n'); err != nil || line != "early\n" {
			t.Fatalf("forward %d: echo of the early bytes %q, %v", i, line, err)
		}
		fmt.Fprintf(c, "ping\n")
		if line, err := r.ReadString('\n'); err != nil || line != "ping\n" {
			t.Fatalf("forward %d: echo %q, %v", i, line, err)
		}
		_ = c.(*net.UnixConn).CloseWrite()
		if rest, err := io.ReadAll(r); err != nil || string(rest) != "bye" {
			t.Fatalf("forward %d: after half-close %q, %v", i, rest, err)
		}
	}
	st := e.ForwardStats()
	if len(st) != 2 || st[0].Accepted != 1 || st[1].Accepted != 1 || st[0].DialErrors != 0 || st[0].Target != plain {
		t.Errorf("stats %+v", st)
	}
}

// TestForwardBulk moves 8 MiB each way through a forward: on the relay loop
// (sockets), and on goroutines (connections without a descriptor), where
// the writes to the VSOCK side are seen to stay within 32 KiB.
func TestForwardBulk(t *testing.T) {
	for _, kind := range []string{"loop", "goroutines"} {
		t.Run(kind, func(t *testing.T) { testForwardBulk(t, kind == "goroutines") })
	}
}

func testForwardBulk(t *testing.T, wrap bool) {
	const n = 8 << 20
	largest := make(chan int, 1)
	var dir string
	if !wrap {
		dir, _ = forwardEnclave(t, enclave.Forward{Target: sinkServer(t, n)})
	} else {
		// Forward 0 behind a listener whose
		// connections hide their descriptor and record their largest
		// write (sizeListener, ingress_test.go).
		dir = t.TempDir()
		inner, err := net.Listen("unix", filepath.Join(dir, "fw0.sock"))
		if err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(t.TempDir(), "host.sock")
		usHost(t, sock)
		usEnclave(t, sock, func(c *enclave.Config) {
			c.Forwards = []enclave.Forward{{
				Listen: func() (net.Listener, error) { return sizeListener{Listener: inner, max: largest}, nil },
				Target: sinkServer(t, n),
			}}
		})
	}
	c := dialForward(t, dir, 0, clientHeader("203.0.113.7:40001"), "")
	data := pattern(n)
	go func() { _, _ = c.Write(data); _ = c.(*net.UnixConn).CloseWrite() }()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if len(got) != len(sum)+n || !bytes.Equal(got[:len(sum)], sum[:]) || !bytes.Equal(got[len(sum):], data) {
		t.Fatalf("got %d bytes (hash match %v); want the hash and %d bytes", len(got), len(got) >= len(sum) && bytes.Equal(got[:len(sum)], sum[:]), n)
	}
	if wrap {
		_ = c.Close()
		if l := <-largest; l == 0 || l > tap.DefaultMaxWrite {
			t.Errorf("largest write to the VSOCK side %d bytes; want at most %d", l, tap.DefaultMaxWrite)
		}
	}
}

// TestForwardRefusals: a bad header and an unreachable target close the
// client's connection and are counted.
func TestForwardRefusals(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()
	dir, e := forwardEnclave(t, enclave.Forward{Target: dead}, enclave.Forward{Target: lineServer(t, false)})
	for i, early := range []string{"", "GET / HTTP/1.1\r\n\r\n"} {
		var hdr *proxyproto.Header
		if i == 0 {
			hdr = clientHeader("203.0.113.7:40001")
		}
		c := dialForward(t, dir, i, hdr, early)
		if b, err := io.ReadAll(c); len(b) != 0 {
			t.Fatalf("forward %d: got %q, %v; want the connection closed", i, b, err)
		}
	}
	st := e.ForwardStats()
	if st[0].Accepted != 1 || st[0].DialErrors != 1 || st[1].Refused != 1 || st[1].Accepted != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestForwardCloseDrains: Close waits DrainTimeout for a relayed
// connection, then closes it.
func TestForwardCloseDrains(t *testing.T) {
	dir, e := forwardEnclave(t, enclave.Forward{Target: lineServer(t, false)})
	c := dialForward(t, dir, 0, clientHeader("203.0.113.7:40001"), "")
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if st := e.ForwardStats(); st[0].Active != 1 {
		t.Fatalf("active %d, want 1", st[0].Active)
	}
	t0 := time.Now()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d < 150*time.Millisecond {
		t.Errorf("Close took %v; want the 200ms drain", d)
	}
	if b, err := io.ReadAll(r); len(b) != 0 || err != nil {
		t.Errorf("after Close: %q, %v; want EOF", b, err)
	}
}

// TestForwardThroughHost runs the line protocol from a client through
// quench-host's -publish-vsock port and an enclave forward.
func TestForwardThroughHost(t *testing.T) {
	dir := t.TempDir()
	vs := filepath.Join(dir, "vsock-5000.sock")
	pub, err := host.ParsePublishVSock("127.0.0.1:0:5000")
	if err != nil {
		t.Fatal(err)
	}
	h := startTestHost(t, filepath.Join(dir, "host.sock"), host.Config{
		Publish: []host.Publish{pub},
		DialEnclave: func(ctx context.Context, port uint32) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", vs)
		},
	})
	target := lineServer(t, true)
	usEnclave(t, filepath.Join(dir, "host.sock"), func(c *enclave.Config) {
		c.Forwards = []enclave.Forward{{
			Listen:      func() (net.Listener, error) { return net.Listen("unix", vs) },
			Target:      target,
			ProxyHeader: true,
		}}
	})
	c, err := net.Dial("tcp", h.Published()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	if you, err := r.ReadString('\n'); err != nil || you != "you are "+c.LocalAddr().String()+"\n" {
		t.Fatalf("greeting %q, %v; want the client's address %s", you, err, c.LocalAddr())
	}
	fmt.Fprintf(c, "ping\n")
	if line, err := r.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo %q, %v", line, err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(r); err != nil || string(rest) != "bye" {
		t.Fatalf("after half-close %q, %v", rest, err)
	}
}

func TestForwardConfigErrors(t *testing.T) {
	listen := func() (net.Listener, error) { return nil, nil }
	for _, f := range []enclave.Forward{
		{Target: "127.0.0.1:80"},
		{Listen: listen, Target: ""},
		{Listen: listen, Target: "127.0.0.1"},
		{Listen: listen, Target: "127.0.0.1:0"},
		{Listen: listen, Target: "127.0.0.1:http"},
		{Listen: listen, Target: ":80"},
		{Listen: listen, Target: "unix://"},
		{Listen: listen, Target: "127.0.0.1:80", DialTimeout: -1},
	} {
		if _, err := enclave.New(enclave.Config{Forwards: []enclave.Forward{f}}); err == nil {
			t.Errorf("New accepted Forward %+v", f)
		}
	}
	if _, err := enclave.New(enclave.Config{Forwards: []enclave.Forward{{Listen: listen, Target: "unix:///run/app.sock"}}}); err != nil {
		t.Errorf("unix target: %v", err)
	}
}

// TestForwardProxyHeaderRebuilt: with ProxyHeader, Target gets a fresh
// PROXY v2 header with the client's and the destination's addresses only:
// not the host's header as written, whose TLVs (a claim that a client
// certificate was verified, an authority) and version come from the
// untrusted host.
func TestForwardProxyHeaderRebuilt(t *testing.T) {
	type got struct {
		h   *proxyproto.Header
		err error
	}
	results := make(chan got, 4)
	ln := listenLocal(t, "tcp")
	testutil.ServeConns(t, ln, func(c net.Conn) {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		h, err := proxyproto.Read(bufio.NewReader(c))
		results <- got{h, err}
		_, _ = io.WriteString(c, "ok")
	})
	dir, _ := forwardEnclave(t, enclave.Forward{Target: ln.Addr().String(), ProxyHeader: true})

	withTLVs := clientHeader("203.0.113.7:40001")
	if err := withTLVs.SetTLVs([]proxyproto.TLV{
		{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte("admin.example.com")},
		{Type: proxyproto.PP2_TYPE_SSL, Value: []byte{0x07, 0, 0, 0, 0}}, // client cert verified
	}); err != nil {
		t.Fatal(err)
	}
	v1 := clientHeader("203.0.113.8:40002")
	v1.Version = 1
	for _, tc := range []struct {
		name string
		in   *proxyproto.Header
		src  string
	}{
		{"v2 with TLVs", withTLVs, "203.0.113.7:40001"},
		{"v1", v1, "203.0.113.8:40002"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialForward(t, dir, 0, tc.in, "")
			if b, err := io.ReadAll(io.LimitReader(c, 2)); err != nil || string(b) != "ok" {
				t.Fatalf("reply %q, %v", b, err)
			}
			var r got
			select {
			case r = <-results:
			case <-time.After(10 * time.Second):
				t.Fatal("the target got no connection")
			}
			if r.err != nil {
				t.Fatalf("target read the header: %v", r.err)
			}
			if r.h.Version != 2 {
				t.Errorf("target got a version %d header, want 2", r.h.Version)
			}
			if tlvs, err := r.h.TLVs(); err != nil || len(tlvs) != 0 {
				t.Errorf("target got TLVs %v (%v), want none", tlvs, err)
			}
			src, dst, ok := r.h.TCPAddrs()
			if !ok || src.String() != tc.src || dst.String() != "10.1.2.3:443" {
				t.Errorf("target got %v -> %v (TCP %v), want %s -> 10.1.2.3:443", src, dst, ok, tc.src)
			}
		})
	}
}
