package netstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/nettest"

	"github.com/quenchnet/quench/internal/testutil"
)

func TestConfigDefaults(t *testing.T) {
	tests := []struct {
		name    string
		in      Config
		want    Config
		wantErr string
	}{
		{
			name: "zero",
			want: Config{
				MTU: 65520, MAC: net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee},
				Address: netip.MustParsePrefix("192.168.127.2/24"), Gateway: netip.MustParseAddr("192.168.127.1"),
				DNS: []netip.Addr{netip.MustParseAddr("192.168.127.1")}, BatchSize: 128, QueueLen: DefaultQueueLen,
			},
		},
		{
			name: "own subnet gets first address as gateway",
			in:   Config{Address: netip.MustParsePrefix("10.0.0.9/24"), MTU: 1500},
			want: Config{
				MTU: 1500, MAC: net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee},
				Address: netip.MustParsePrefix("10.0.0.9/24"), Gateway: netip.MustParseAddr("10.0.0.1"),
				DNS: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, BatchSize: 128, QueueLen: DefaultQueueLen,
			},
		},
		{name: "mtu too small", in: Config{MTU: 100}, wantErr: "MTU 100 out of range"},
		{name: "mtu too large", in: Config{MTU: 65522}, wantErr: "MTU 65522 out of range"},
		{name: "ipv6", in: Config{Address: netip.MustParsePrefix("fd00::2/64")}, wantErr: "only IPv4"},
		{name: "gateway outside", in: Config{Gateway: netip.MustParseAddr("10.0.0.1")}, wantErr: "outside"},
		{name: "gateway is self", in: Config{Gateway: netip.MustParseAddr("192.168.127.2")}, wantErr: "both"},
		{name: "short MAC", in: Config{MAC: net.HardwareAddr{1, 2, 3}}, wantErr: "6-byte"},
		{name: "multicast MAC", in: Config{MAC: net.HardwareAddr{1, 2, 3, 4, 5, 6}}, wantErr: "multicast"},
		{name: "ipv6 DNS", in: Config{DNS: []netip.Addr{netip.MustParseAddr("::1")}}, wantErr: "DNS server"},
		{name: "batch", in: Config{BatchSize: -1}, wantErr: "BatchSize"},
		{name: "queue", in: Config{QueueLen: -1}, wantErr: "QueueLen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.in.withDefaults()
			if tt.wantErr != "" {
				if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tt.wantErr)) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.Logger = nil
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
				cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }), cmp.AllowUnexported(Config{})); diff != "" {
				t.Errorf("withDefaults (-want +got):\n%s", diff)
			}
		})
	}
}

// echo accepts connections on ln and echoes them until ln is closed.
//
// Each connection's reads wait for its writes (io.Copy on one connection):
// the pattern that gVisor's zero-window bug deadlocks under full-duplex load
// unless the link works around it (ethlink.ZeroWindowACKs;
// docs/bench/userspace.md, "Full-duplex stall"). TestTCP's streams at MTU
// 1500 hit it about once in a hundred runs.
func echo(t *testing.T, ln net.Listener) {
	t.Helper()
	testutil.Echo(t, ln)
}

func TestTCP(t *testing.T) {
	tests := []struct {
		kind wireKind
		mtu  int
		gso  bool
	}{
		{wireDirect, 0, true},
		{wireStream, 0, true},
		{wireStream, 1500, true},
		{wireStream, 1500, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/mtu=%d/gso=%v", tt.kind, tt.mtu, tt.gso), func(t *testing.T) {
			p := newPair(t, tt.kind, func(c *Config) { c.MTU = tt.mtu; c.noSoftwareGSO = !tt.gso })
			traceTCP(t, p)
			ln, err := p.b.Listen("tcp", ":7")
			if err != nil {
				t.Fatal(err)
			}
			echo(t, ln)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := p.a.Dial(ctx, "tcp", "192.168.127.2:7")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got, want := c.RemoteAddr().String(), "192.168.127.2:7"; got != want {
				t.Errorf("RemoteAddr = %s, want %s", got, want)
			}
			if got := c.LocalAddr().(*net.TCPAddr).IP.String(); got != "192.168.127.1" {
				t.Errorf("LocalAddr = %s, want 192.168.127.1:*", c.LocalAddr())
			}
			// More than a window's worth, so flow control and the queue
			// are exercised.
			msg := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
			// A stall fails here within a minute instead of holding the
			// whole run to its timeout, and traceTCP logs why. (The
			// stall seen before the link's workaround, a gVisor bug, is
			// described in docs/bench/userspace.md, "Full-duplex stall".)
			if err := c.SetDeadline(time.Now().Add(time.Minute)); err != nil {
				t.Fatal(err)
			}
			if err := testutil.EchoRoundTrip(c, msg); err != nil {
				t.Fatal(err)
			}
			t.Logf("ACKs fixed by the links: %d (dialer), %d (echo server)", p.a.Stats().ZeroWindowACKsFixed, p.b.Stats().ZeroWindowACKsFixed)
			if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("Read after peer's close = %d, %v; want 0, io.EOF", n, err)
			}
		})
	}
}

func (k wireKind) String() string {
	if k == wireDirect {
		return "direct"
	}
	return "stream"
}

func TestLoopbackAndOwnAddress(t *testing.T) {
	p := newPair(t, wireDirect, nil)
	ln, err := p.b.Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	echo(t, ln)
	for _, addr := range []string{"127.0.0.1:8080", "localhost:8080", "192.168.127.2:8080", ":8080"} {
		t.Run(addr, func(t *testing.T) {
			c, err := p.b.Dial(context.Background(), "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("got %q, %v", buf, err)
			}
		})
	}
}

func TestNetTestConn(t *testing.T) {
	for _, kind := range []wireKind{wireDirect, wireStream} {
		t.Run(kind.String(), func(t *testing.T) {
			p := newPair(t, kind, nil)
			nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
				ln, err := p.b.Listen("tcp", "192.168.127.2:0")
				if err != nil {
					return nil, nil, nil, err
				}
				defer ln.Close()
				type res struct {
					c   net.Conn
					err error
				}
				ch := make(chan res, 1)
				go func() {
					c, err := ln.Accept()
					ch <- res{c, err}
				}()
				c1, err = p.a.Dial(context.Background(), "tcp", ln.Addr().String())
				if err != nil {
					return nil, nil, nil, err
				}
				r := <-ch
				if r.err != nil {
					c1.Close()
					return nil, nil, nil, r.err
				}
				return c1, r.c, func() { c1.Close(); r.c.Close() }, nil
			})
		})
	}
}

func TestUDP(t *testing.T) {
	p := newPair(t, wireDirect, nil)
	pc, err := p.b.ListenPacket("udp", ":5353")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := p.a.Dial(context.Background(), "udp", "192.168.127.2:5353")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(net.PacketConn); !ok {
		t.Error("a UDP conn from Dial is not a net.PacketConn (the Go resolver needs it)")
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "hello" || from.String() != c.LocalAddr().String() {
		t.Fatalf("ReadFrom = %q from %v; want hello from %v", buf[:n], from, c.LocalAddr())
	}
	// Reply to a 16-byte form of the address: the standard library accepts
	// it, and gonet would take it for IPv6.
	ua := from.(*net.UDPAddr)
	reply := &net.UDPAddr{IP: ua.IP.To16(), Port: ua.Port}
	if _, err := pc.WriteTo([]byte("world"), reply); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err = c.Read(buf)
	if err != nil || string(buf[:n]) != "world" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	// Addresses gonet would panic on.
	for _, addr := range []net.Addr{nil, (*net.UDPAddr)(nil), &net.TCPAddr{IP: net.IPv4(1, 2, 3, 4), Port: 1}, &net.UDPAddr{Port: 1}} {
		if _, err := pc.WriteTo([]byte("x"), addr); err == nil {
			t.Errorf("WriteTo(%#v) succeeded", addr)
		}
	}
	// A conn from Dial sends only to its peer, as the standard library's.
	if _, err := c.(net.PacketConn).WriteTo([]byte("x"), from); !errors.Is(err, net.ErrWriteToConnected) {
		t.Errorf("WriteTo on a dialled conn = %v, want ErrWriteToConnected", err)
	}
}

func TestErrors(t *testing.T) {
	p := newPair(t, wireDirect, nil)
	ctx := context.Background()
	var oe *net.OpError

	t.Run("refused", func(t *testing.T) {
		_, err := p.a.Dial(ctx, "tcp", "192.168.127.2:1")
		if !errors.As(err, &oe) || !errors.Is(err, syscall.ECONNREFUSED) || oe.Op != "dial" {
			t.Fatalf("err = %#v; want *net.OpError dial wrapping ECONNREFUSED", err)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := p.a.Dial(cctx, "tcp", "192.168.127.2:1")
		if !errors.As(err, &oe) || !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v; want *net.OpError wrapping context.Canceled", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		// Nobody answers ARP for .3, so the connection never completes.
		tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_, err := p.a.Dial(tctx, "tcp", "192.168.127.3:80")
		var ne net.Error
		if !errors.As(err, &oe) || !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("err = %v; want a timeout *net.OpError wrapping context.DeadlineExceeded", err)
		}
	})
	t.Run("unknown network", func(t *testing.T) {
		for _, nw := range []string{"tcp6", "unix", "ip"} {
			_, err := p.a.Dial(ctx, nw, "192.168.127.2:1")
			var une net.UnknownNetworkError
			if !errors.As(err, &une) {
				t.Errorf("Dial(%s): err = %v; want net.UnknownNetworkError", nw, err)
			}
		}
		if _, err := p.a.Listen("udp", ":1"); err == nil {
			t.Error("Listen(udp) succeeded")
		}
		if _, err := p.a.ListenPacket("tcp", ":1"); err == nil {
			t.Error("ListenPacket(tcp) succeeded")
		}
	})
	t.Run("ipv6", func(t *testing.T) {
		if _, err := p.a.Dial(ctx, "tcp", "[::1]:80"); err == nil {
			t.Error("Dial to IPv6 succeeded")
		}
		if _, err := p.a.Listen("tcp", "[fd00::1]:80"); err == nil {
			t.Error("Listen on IPv6 succeeded")
		}
	})
	t.Run("address in use", func(t *testing.T) {
		ln, err := p.a.Listen("tcp", ":9000")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		_, err = p.a.Listen("tcp", ":9000")
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("second Listen: err = %v; want EADDRINUSE", err)
		}
	})
	t.Run("closed listener", func(t *testing.T) {
		ln, err := p.a.Listen("tcp", ":0")
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() {
			_, err := ln.Accept()
			errc <- err
		}()
		time.Sleep(10 * time.Millisecond) // let Accept block (not an assertion)
		if err := ln.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			if !errors.Is(err, net.ErrClosed) || !errors.As(err, &oe) {
				t.Fatalf("Accept after Close: %v; want *net.OpError wrapping net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not unblock Accept")
		}
		if err := ln.Close(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("second Close = %v; want net.ErrClosed", err)
		}
	})
	t.Run("closed conn", func(t *testing.T) {
		ln, err := p.b.Listen("tcp", ":0")
		if err != nil {
			t.Fatal(err)
		}
		echo(t, ln)
		c, err := p.a.Dial(ctx, "tcp", "192.168.127.2:"+fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 10))
			errc <- err
		}()
		time.Sleep(10 * time.Millisecond)
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("blocked Read after Close: %v; want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not unblock Read")
		}
		for name, f := range map[string]func() error{
			"Read":        func() error { _, err := c.Read(make([]byte, 1)); return err },
			"Write":       func() error { _, err := c.Write([]byte("x")); return err },
			"Close":       c.Close,
			"SetDeadline": func() error { return c.SetDeadline(time.Now()) },
		} {
			if err := f(); !errors.Is(err, net.ErrClosed) || !errors.As(err, &oe) {
				t.Errorf("%s after Close = %v; want *net.OpError wrapping net.ErrClosed", name, err)
			}
		}
	})
	t.Run("deadline", func(t *testing.T) {
		pc, err := p.a.ListenPacket("udp", ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		_ = pc.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		_, _, err = pc.ReadFrom(make([]byte, 10))
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &oe) || !oe.Timeout() {
			t.Fatalf("err = %v; want *net.OpError wrapping os.ErrDeadlineExceeded", err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		ln, err := p.b.Listen("tcp", ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := p.a.Dial(ctx, "tcp", "192.168.127.2:"+fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("unread")); err != nil {
			t.Fatal(err)
		}
		// Wait for the data to arrive, then close with it unread: RST.
		deadline := time.Now().Add(5 * time.Second)
		_ = s.SetReadDeadline(time.Now())
		for time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
			if p.b.Stats().FramesIn > 3 {
				break
			}
		}
		s.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 10))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("Read after RST: %v; want ECONNRESET", err)
		}
	})
}

func TestCloseNet(t *testing.T) {
	before := runtime.NumGoroutine()
	p := newPair(t, wireDirect, nil)
	ln, err := p.b.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	echo(t, ln)
	c, err := p.a.Dial(context.Background(), "tcp", "192.168.127.2:80")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := p.a.ListenPacket("udp", ":53")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 2)
	go func() { _, err := c.Read(make([]byte, 1)); errc <- err }()
	go func() { _, _, err := pc.ReadFrom(make([]byte, 1)); errc <- err }()
	if err := p.a.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case err := <-errc:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("blocked call after Net.Close: %v; want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Net.Close did not unblock a Read")
		}
	}
	if err := p.a.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v; want net.ErrClosed", err)
	}
	if _, err := p.a.Dial(context.Background(), "tcp", "192.168.127.2:80"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Dial after Close = %v; want net.ErrClosed", err)
	}
	if _, err := p.a.Listen("tcp", ":81"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Listen after Close = %v; want net.ErrClosed", err)
	}
	if _, err := p.a.Device().Read(make([][]byte, 1), make([]int, 1), 0); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Device.Read after Close = %v; want net.ErrClosed", err)
	}
	_ = ln.Close()
	_ = p.b.Close()
	checkGoroutinesAfter(t, before, p)
}

// checkGoroutinesAfter waits for p's wiring to stop (its devices are
// closed) and checks goroutines returned to before.
func checkGoroutinesAfter(t *testing.T, before int, p *pair) {
	t.Helper()
	_ = p.a.Device().Close()
	_ = p.b.Device().Close()
	checkGoroutines(t, before)
}
