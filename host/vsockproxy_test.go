package host_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/testutil"
)

func TestParseVSockProxy(t *testing.T) {
	good := map[string]host.VSockProxy{
		"8000:kms.us-east-1.amazonaws.com:443": {Port: 8000, Target: "kms.us-east-1.amazonaws.com:443"},
		"8001:10.0.0.5:5432":                   {Port: 8001, Target: "10.0.0.5:5432"},
		"8002:[2001:db8::1]:443":               {Port: 8002, Target: "[2001:db8::1]:443"},
		"4294967294:localhost:1":               {Port: 4294967294, Target: "localhost:1"},
		"8003:kms.example.1a:443":              {Port: 8003, Target: "kms.example.1a:443"},
	}
	for s, want := range good {
		got, err := host.ParseVSockProxy(s)
		if err != nil || got != want {
			t.Errorf("ParseVSockProxy(%q) = %+v, %v; want %+v", s, got, err, want)
		}
		if got.String() != s {
			t.Errorf("%+v.String() = %q, want %q", got, got.String(), s)
		}
	}
	bad := map[string]string{
		"":                            "want VSOCKPORT:HOST:PORT",
		"8000":                        "want VSOCKPORT:HOST:PORT",
		"kms:443":                     "VSOCK port",
		"0:kms:443":                   "VSOCK port",
		"4294967295:kms:443":          "VSOCK port",
		"-1:kms:443":                  "VSOCK port",
		"8000:kms":                    "want HOST:PORT",
		"8000::443":                   "no host",
		"8000:kms:0":                  "port",
		"8000:kms:65536":              "port",
		"8000:kms:https":              "port",
		"8000:2001:db8::1:443":        "IPv6 address in brackets",
		"8000:::1:443":                "IPv6 address in brackets",
		"8000:kms\x07:443":            "neither a name nor an address",
		"8000:kms example.com:443":    "neither a name nor an address",
		"8000:fe80::1%eth0:443":       "want HOST:PORT",
		"8000:[fe80::1%25eth0]:443":   "neither a name nor an address",
		"8000:unix:///run/x.sock:443": "want HOST:PORT",
		"8000:0.0.0.0:443":            "unspecified",
		"8000:[::]:443":               "unspecified",
		"8000:[::ffff:0.0.0.0]:443":   "unspecified",
		// inet_aton's forms: getaddrinfo (Go's cgo resolver) reads them as
		// addresses other than the one they seem to name (010.0.0.1 is
		// 8.0.0.1; 127.1 and 2130706433 are 127.0.0.1).
		"8000:010.0.0.1:443":  "not an address as written",
		"8000:127.1:443":      "not an address as written",
		"8000:2130706433:443": "not an address as written",
		"8000:0x7f.1:443":     "not an address as written",
		"8000:[127.1]:443":    "not an address as written",
		"8000:10.0.0.1.:443":  "not an address as written",
		"8000:kms.0X1F:443":   "not an address as written",
	}
	for s, want := range bad {
		p, err := host.ParseVSockProxy(s)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseVSockProxy(%q) = %+v, %v; want an error with %q", s, p, err, want)
		}
	}
}

// proxyTarget is a TCP server standing in for a vsock-proxy target: it
// answers each connection with "hello\n", then echoes until EOF, then
// writes the SHA-256 of what it read and half-closes (so that both
// directions and the half-close through the proxy are checked).
func proxyTarget(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.ServeConnsWait(t, ln, func(c net.Conn) {
		_, _ = io.WriteString(c, "hello\n")
		h := sha256.New()
		_, _ = io.Copy(io.MultiWriter(c, h), c)
		_, _ = c.Write(h.Sum(nil))
		_ = c.(*net.TCPConn).CloseWrite()
		_, _ = io.Copy(io.Discard, c)
	})
	return ln.Addr().String()
}

// serveProxy runs h.ServeVSockProxy on a unix socket standing in for the
// host's VSOCK port and returns the socket's path.
func serveProxy(t *testing.T, h *host.Host, p host.VSockProxy) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), fmt.Sprintf("vsock-3-%d.sock", p.Port))
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.ServeVSockProxy(ln, p) }()
	t.Cleanup(func() {
		_ = ln.Close()
		if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("ServeVSockProxy: %v", err)
		}
	})
	return path
}

// proxyExchange sends data through the proxy at path and checks the
// target's greeting, the echo and the digest that follows the half-close.
func proxyExchange(path string, data []byte) error {
	c, err := net.Dial("unix", path)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil || line != "hello\n" {
		return fmt.Errorf("greeting %q, %v", line, err)
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.UnixConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("read: %v", err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %v", err)
	}
	sum := sha256.Sum256(data)
	want := append(append([]byte(nil), data...), sum[:]...)
	if !bytes.Equal(got, want) {
		return fmt.Errorf("got %d bytes back, want %d (echo and digest)", len(got), len(want))
	}
	return nil
}

// TestVSockProxy relays connections to a TCP target on both relays
// (event loops and goroutines): bytes both ways, the half-close each way,
// the name given to Config.Dial as written (resolved per connection), and
// the counters of VSockProxies and the control API.
func TestVSockProxy(t *testing.T) {
	for _, goroutines := range []bool{false, true} {
		t.Run(fmt.Sprintf("goroutines=%v", goroutines), func(t *testing.T) {
			target := proxyTarget(t)
			_, port, _ := net.SplitHostPort(target)
			var mu sync.Mutex
			var dialled []string
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				mu.Lock()
				dialled = append(dialled, network+" "+addr)
				mu.Unlock()
				var d net.Dialer
				return d.DialContext(ctx, network, strings.Replace(addr, "target.test", "127.0.0.1", 1))
			}
			h, _ := startHost(t, host.Config{Dial: dial, GoroutineRelay: goroutines})
			p := host.VSockProxy{Port: 8000, Target: "target.test:" + port}
			path := serveProxy(t, h, p)

			big := make([]byte, 3<<20)
			_, _ = rand.Read(big)
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for i := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					data := big
					if i%2 == 1 {
						data = []byte("one line\n")
					}
					errs <- proxyExchange(path, data)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
			mu.Lock()
			if len(dialled) != 8 || dialled[0] != "tcp target.test:"+port {
				t.Errorf("dialled %q, want 8 × tcp target.test:%s", dialled, port)
			}
			mu.Unlock()

			waitFor(t, func() bool { st := h.VSockProxies(); return len(st) == 1 && st[0].Active == 0 })
			st := h.VSockProxies()[0]
			wantIn := int64(4*len(big) + 4*len("one line\n"))
			wantOut := wantIn + 8*int64(len("hello\n")+sha256.Size)
			if st.Proxy != p || st.Accepted != 8 || st.Failed != 0 || st.Refused != 0 || st.BytesIn != wantIn || st.BytesOut != wantOut {
				t.Errorf("status %+v; want 8 accepted, %d bytes in, %d out", st, wantIn, wantOut)
			}
			var cs host.ControlStatus
			newControl(t, h).do("GET", "/v1/status", nil, 200, &cs)
			if len(cs.Proxies) != 1 || cs.Proxies[0].VSockPort != 8000 || cs.Proxies[0].Target != p.Target || cs.Proxies[0].Accepted != 8 || cs.Proxies[0].BytesIn != wantIn {
				t.Errorf("control status vsock_proxies %+v", cs.Proxies)
			}
			if n := gatherCollector(t, h)["quench_host_vsock_proxy_connections_total"]; n != 3 {
				t.Errorf("quench_host_vsock_proxy_connections_total has %d series, want 3 (accepted, failed, refused)", n)
			}
		})
	}
}

// TestVSockProxyTargetDown: a target that refuses ends the enclave's
// connection at once, without a byte, and counts it as failed.
func TestVSockProxyTargetDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	_ = ln.Close()
	h, _ := startHost(t, host.Config{})
	path := serveProxy(t, h, host.VSockProxy{Port: 8000, Target: target})
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read from a proxy whose target is down: %d, %v; want EOF", n, err)
	}
	waitFor(t, func() bool { st := h.VSockProxies()[0]; return st.Failed == 1 && st.Active == 0 })
}

// TestVSockProxyLimits: connections past MaxVSockProxyConnsPerPeer (the
// stand-in's peers are user ids: one peer here) and MaxVSockProxyConns
// are closed at once and counted; a slot given back serves the next one.
func TestVSockProxyLimits(t *testing.T) {
	for _, tc := range []struct {
		name            string
		total, perPeer  int
		wantLimitStatus uint64
	}{
		{"total", 2, -1, 2},
		{"per-peer", 10, 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := proxyTarget(t)
			h, _ := startHost(t, host.Config{MaxVSockProxyConns: tc.total, MaxVSockProxyConnsPerPeer: tc.perPeer})
			path := serveProxy(t, h, host.VSockProxy{Port: 8000, Target: target})
			open := func() (net.Conn, *bufio.Reader) {
				c, err := net.Dial("unix", path)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = c.Close() })
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				return c, bufio.NewReader(c)
			}
			var held []net.Conn
			for range 2 {
				c, r := open()
				if line, err := r.ReadString('\n'); line != "hello\n" {
					t.Fatalf("connection within the limit: %q, %v", line, err)
				}
				held = append(held, c)
			}
			_, r := open()
			if n, err := r.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("connection past the limit: %d, %v; want EOF", n, err)
			}
			st := h.VSockProxies()[0]
			ls := h.LimitStats()
			if st.Refused != 1 || ls.ProxyConnsRefused != 1 || ls.ProxyConns != tc.wantLimitStatus {
				t.Errorf("refused %d (limit stats: %d refused, %d held); want 1, 1, %d", st.Refused, ls.ProxyConnsRefused, ls.ProxyConns, tc.wantLimitStatus)
			}
			_ = held[0].Close()
			waitFor(t, func() bool { return h.LimitStats().ProxyConns == 1 })
			_, r = open()
			if line, err := r.ReadString('\n'); line != "hello\n" {
				t.Fatalf("connection after a slot was given back: %q, %v", line, err)
			}
		})
	}
}

// TestVSockProxyClose: Close ends ServeVSockProxy (nil) and the
// connections it relays; ServeVSockProxy after Close, before Start or
// with a bad target fails and closes the listener.
func TestVSockProxyClose(t *testing.T) {
	target := proxyTarget(t)
	h, err := host.New(host.Config{})
	if err != nil {
		t.Fatal(err)
	}
	listen := func() net.Listener {
		ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "p.sock"))
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	p := host.VSockProxy{Port: 8000, Target: target}
	ln := listen()
	if err := h.ServeVSockProxy(ln, p); err == nil || !strings.Contains(err.Error(), "before Start") {
		t.Errorf("ServeVSockProxy before Start: %v", err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("listener after a refused ServeVSockProxy: %v, want closed", err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := h.ServeVSockProxy(listen(), host.VSockProxy{Port: 8000, Target: "nowhere"}); err == nil || !strings.Contains(err.Error(), "want HOST:PORT") {
		t.Errorf("ServeVSockProxy with a bad target: %v", err)
	}
	ln = listen()
	done := make(chan error, 1)
	go func() { done <- h.ServeVSockProxy(ln, p) }()
	c, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); line != "hello\n" {
		t.Fatalf("greeting %q, %v", line, err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("ServeVSockProxy after Close: %v, want nil", err)
	}
	if n, err := r.Read(make([]byte, 1)); err == nil {
		t.Errorf("relayed connection after Close: read %d bytes, want it closed", n)
	}
	if err := h.ServeVSockProxy(listen(), p); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ServeVSockProxy after Close: %v, want ErrClosed", err)
	}
}

// TestVSockProxyServedOnce: VSockProxies lists the proxies being served
// only, and one VSOCK port is served once at a time (as on VSOCK, where a
// second listener fails with an address in use): a proxy served again
// after its ServeVSockProxy ended, or twice at once, would otherwise be
// two series with the same labels, which fail every /metrics scrape.
func TestVSockProxyServedOnce(t *testing.T) {
	target := proxyTarget(t)
	h, _ := startHost(t, host.Config{})
	p := host.VSockProxy{Port: 8000, Target: target}
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "first.sock"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.ServeVSockProxy(ln, p) }()
	waitFor(t, func() bool { return len(h.VSockProxies()) == 1 })
	_ = ln.Close() // the listener fails: ServeVSockProxy returns
	if err := <-done; err == nil {
		t.Fatal("ServeVSockProxy on a closed listener: nil error")
	}
	if st := h.VSockProxies(); len(st) != 0 {
		t.Errorf("VSockProxies after ServeVSockProxy returned: %+v, want none", st)
	}
	serveProxy(t, h, p) // served again
	waitFor(t, func() bool { return len(h.VSockProxies()) == 1 })
	if err := proxyExchange(h.VSockProxies()[0].Addr, []byte("again")); err != nil {
		t.Fatal(err)
	}
	second, err := net.Listen("unix", filepath.Join(t.TempDir(), "second.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.ServeVSockProxy(second, p); err == nil || !strings.Contains(err.Error(), "served already") {
		t.Errorf("the same VSOCK port served twice at once: %v, want an error", err)
	}
	if st := h.VSockProxies(); len(st) != 1 {
		t.Errorf("VSockProxies: %+v, want one", st)
	}
	if n := gatherCollector(t, h)["quench_host_vsock_proxy_connections_total"]; n != 3 {
		t.Errorf("quench_host_vsock_proxy_connections_total has %d series, want 3", n)
	}
}

// TestDefaultLimitsLeaveDescriptors: at every open-file limit, the default
// limits together (published ports 2 descriptors a connection, NAT TCP 1,
// NAT UDP 1 a flow, vsock-proxy 2) leave at least a sixteenth of the
// descriptors to enclave streams, listeners and the control API. With
// vsock-proxy's FileLimit/16 they took all of them at limits up to 8192
// (NAT UDP's share is a full eighth there), so hostile clients and
// enclaves at their limits left no descriptor for an enclave to reconnect.
func TestDefaultLimitsLeaveDescriptors(t *testing.T) {
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	for _, n := range []uint64{1024, 4096, 8192, 16384, 1 << 20} {
		if n > old.Max {
			continue
		}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: old.Max}); err != nil {
			t.Fatal(err)
		}
		h, err := host.New(host.Config{})
		if err != nil {
			t.Fatal(err)
		}
		c := h.Config()
		used := 2*c.MaxPortConns + c.MaxNATConns + c.MaxNATUDPFlows + 2*c.MaxVSockProxyConns
		if left := int(n) - used; left < int(n)/16 {
			t.Errorf("open-file limit %d: the default limits take %d descriptors, leaving %d (want at least %d)", n, used, left, n/16)
		}
		_ = h.Close()
	}
}
