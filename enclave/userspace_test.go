package enclave_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/net/nettest"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/testutil"
)

// These tests run an in-process quench-host (package host) and an enclave
// in userspace mode, joined by a unix socket standing in for VSOCK. They
// need no privileges.

// usHost starts a Host serving enclave streams on the unix socket path,
// publishing the given ports (host.ParsePublish syntax), with a fake
// upstream DNS server. Close is registered with tb.Cleanup; callers may
// close it earlier.
func usHost(tb testing.TB, path string, publish ...string) *host.Host {
	tb.Helper()
	return startTestHost(tb, path, host.Config{DNSUpstream: []string{usFakeUpstreamDNS(tb)}}, publish...)
}

// startTestHost starts a Host with cfg serving enclave streams on the unix
// socket path and publishing the given ports; Close is registered with
// tb.Cleanup.
func startTestHost(tb testing.TB, path string, cfg host.Config, publish ...string) *host.Host {
	tb.Helper()
	for _, p := range publish {
		pp, err := host.ParsePublish(p)
		if err != nil {
			tb.Fatal(err)
		}
		cfg.Publish = append(cfg.Publish, pp)
	}
	h, err := host.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		_ = h.Close()
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.Serve(ln)
	}()
	tb.Cleanup(func() {
		_ = h.Close()
		<-done
	})
	return h
}

// usUpstreamZone is what usFakeUpstreamDNS knows.
var usUpstreamZone = map[string][4]byte{
	"localhost.":                    {127, 0, 0, 1}, // as a system resolver says
	"upstream.quench-test.example.": {10, 9, 9, 9},
}

// usFakeUpstreamDNS serves DNS on 127.0.0.1 for a Host's names outside its
// zone (AAAA queries for names inside it go there too), so that tests send
// nothing beyond loopback: the A records of usUpstreamZone, and for every
// other name an answer with no records.
func usFakeUpstreamDNS(tb testing.TB) string {
	tb.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	zone := map[string]netip.Addr{}
	for name, a := range usUpstreamZone {
		zone[name] = netip.AddrFrom4(a)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		testutil.ServeDNSUnknown(pc, zone, dnsmessage.RCodeSuccess)
	}()
	tb.Cleanup(func() {
		_ = pc.Close()
		<-done
	})
	return pc.LocalAddr().String()
}

// usEnclave starts an enclave in userspace mode that dials the unix socket
// path of a real Host, and waits until the tunnel carries traffic both
// ways. Close is registered with tb.Cleanup.
func usEnclave(tb testing.TB, path string, mod func(*enclave.Config)) *enclave.Enclave {
	tb.Helper()
	e := usStartEnclave(tb, path, mod)
	usReady(tb, e)
	return e
}

// usReady waits until a DNS query to the host succeeds. Start returns once
// the enclave has sent its handshake; until the host has read it, frames
// the host sends to the enclave are lost. A host ARP request lost so is
// retried only after a second, which would skew benchmarks that connect
// into the enclave at once.
func usReady(tb testing.TB, e *enclave.Enclave) {
	tb.Helper()
	r, err := e.Resolver()
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		qctx, qcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := r.LookupHost(qctx, "gateway.quench.internal")
		qcancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			tb.Fatalf("the enclave cannot reach the host's DNS: %v", err)
		}
	}
}

// usStartEnclave starts an enclave in userspace mode that dials the unix
// socket path. Close is registered with tb.Cleanup.
func usStartEnclave(tb testing.TB, path string, mod func(*enclave.Config)) *enclave.Enclave {
	tb.Helper()
	cfg := enclave.Config{
		Network:      enclave.NetworkUserspace,
		DialHost:     testutil.DialUnix(path),
		ReconnectMin: 10 * time.Millisecond,
		ReconnectMax: 200 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	return startEnclave(tb, cfg)
}

// usServeHTTP serves h on ln until the test ends.
func usServeHTTP(tb testing.TB, ln net.Listener, h http.Handler) {
	tb.Helper()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	tb.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
}

func usSocket(tb testing.TB) string {
	return filepath.Join(tb.TempDir(), "host.sock")
}

// usGet fetches url with c and returns the body.
func usGet(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

func hello(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "hello from %s", r.Host)
}

// usHostHTTP starts an HTTP server on the host's 127.0.0.1 and returns its
// port.
func usHostHTTP(tb testing.TB, body string) int {
	tb.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	}))
	tb.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port
}

func TestUserspaceHTTPIn(t *testing.T) {
	sock := usSocket(t)
	h := usHost(t, sock, "127.0.0.1:0:80")
	e := usEnclave(t, sock, nil)
	ln, err := e.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	usServeHTTP(t, ln, http.HandlerFunc(hello))

	url := "http://" + h.Published()[0].String() + "/"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := &http.Client{Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	for i := range 3 { // a few, over one kept-alive connection
		got, err := usGet(ctx, c, url)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if want := "hello from " + h.Published()[0].String(); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

func TestUserspaceHTTPOut(t *testing.T) {
	sock := usSocket(t)
	usHost(t, sock)
	e := usEnclave(t, sock, nil)
	port := usHostHTTP(t, "from the host")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := e.HTTPClient()
	defer c.CloseIdleConnections()
	for _, hostname := range []string{"192.168.127.254", "host.quench.internal"} {
		got, err := usGet(ctx, c, fmt.Sprintf("http://%s:%d/", hostname, port))
		if err != nil {
			t.Fatal(err)
		}
		if got != "from the host" {
			t.Fatalf("%s: got %q", hostname, got)
		}
	}
}

func TestUserspaceDNS(t *testing.T) {
	sock := usSocket(t)
	usHost(t, sock)
	e := usEnclave(t, sock, nil)
	r, err := e.Resolver()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, want := range map[string]string{
		"host.quench.internal":     "192.168.127.254",
		"gateway.quench.internal.": "192.168.127.1",
	} {
		got, err := r.LookupHost(ctx, name)
		if err != nil {
			t.Fatalf("LookupHost(%s): %v", name, err)
		}
		if !slices.Equal(got, []string{want}) {
			t.Errorf("LookupHost(%s) = %v, want [%s]", name, got, want)
		}
	}
	// localhost comes from the hosts file or, failing that, from the host's
	// upstream DNS (here the fake one); either way it is a loopback address.
	got, err := r.LookupNetIP(ctx, "ip4", "localhost")
	if err != nil {
		t.Fatalf("LookupNetIP(localhost): %v", err)
	}
	if len(got) == 0 || !got[0].IsLoopback() {
		t.Errorf("localhost = %v, want a loopback address", got)
	}
	// Names outside the host's zone go to its upstream servers.
	up, err := r.LookupNetIP(ctx, "ip4", "upstream.quench-test.example")
	if err != nil || len(up) != 1 || up[0] != netip.AddrFrom4([4]byte{10, 9, 9, 9}) {
		t.Errorf("upstream name = %v, %v; want [10.9.9.9]", up, err)
	}
	if _, err := r.LookupHost(ctx, "missing.quench.internal"); err == nil {
		t.Error("a missing name in the host's zone resolved")
	}
}

// usUDPEcho echoes datagrams on pc until it is closed.
func usUDPEcho(tb testing.TB, pc net.PacketConn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	tb.Cleanup(func() {
		_ = pc.Close()
		<-done
	})
}

// usUDPRoundTrip sends msg on c and waits for the echo, resending a few
// times: UDP may lose the first datagram while a NAT entry or ARP resolves.
func usUDPRoundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	buf := make([]byte, 1500)
	for try := 0; try < 10; try++ {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil {
			if string(buf[:n]) != msg {
				t.Fatalf("echo = %q, want %q", buf[:n], msg)
			}
			return
		}
		if !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
			t.Fatal(err)
		}
	}
	t.Fatal("no UDP echo after 10 tries")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestUserspaceUDP(t *testing.T) {
	sock := usSocket(t)
	h := usHost(t, sock, "127.0.0.1:0:5353/udp")
	e := usEnclave(t, sock, nil)

	t.Run("in", func(t *testing.T) {
		pc, err := e.ListenPacket("udp", ":5353")
		if err != nil {
			t.Fatal(err)
		}
		usUDPEcho(t, pc)
		c, err := net.Dial("udp", h.Published()[0].String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		usUDPRoundTrip(t, c, "ping into the enclave")
	})
	t.Run("out", func(t *testing.T) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		usUDPEcho(t, pc)
		port := pc.LocalAddr().(*net.UDPAddr).Port
		c, err := e.Dial(context.Background(), "udp", fmt.Sprintf("192.168.127.254:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		usUDPRoundTrip(t, c, "ping out of the enclave")
	})
}

func TestUserspaceHostRestart(t *testing.T) {
	sock := usSocket(t)
	h1 := usHost(t, sock)
	e := usEnclave(t, sock, nil)
	port := usHostHTTP(t, "ok")
	url := fmt.Sprintf("http://192.168.127.254:%d/", port)
	c := e.HTTPClient()
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := usGet(ctx, c, url); err != nil {
		t.Fatal(err)
	}

	if err := h1.Close(); err != nil {
		t.Fatal(err)
	}
	usHost(t, sock) // a new host on the same path
	var lastErr error
	for {
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		got, err := usGet(rctx, c, url)
		rcancel()
		if err == nil && got == "ok" {
			break
		}
		lastErr = err
		if ctx.Err() != nil {
			t.Fatalf("no successful request after the host restarted: %v (status %+v)", lastErr, e.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := e.Status(); st.Reconnects < 1 || !st.Connected {
		t.Errorf("Status = %+v; want connected after at least one reconnect", st)
	}
}

func TestUserspaceNetTestConn(t *testing.T) {
	sock := usSocket(t)
	h := usHost(t, sock, "127.0.0.1:0:9000")
	e := usEnclave(t, sock, nil)

	// accept1 accepts one conn on ln, or fails.
	accept1 := func(ln net.Listener) <-chan net.Conn {
		ch := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				close(ch)
				return
			}
			ch <- c
		}()
		return ch
	}

	t.Run("accepted", func(t *testing.T) {
		// c1: a host-side client of the published port; c2: the conn the
		// enclave's listener accepts.
		ln, err := e.Listen("tcp", ":9000")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
			ch := accept1(ln)
			c1, err = net.Dial("tcp", h.Published()[0].String())
			if err != nil {
				return nil, nil, nil, err
			}
			select {
			case c2 = <-ch:
			case <-time.After(10 * time.Second):
			}
			if c2 == nil {
				c1.Close()
				return nil, nil, nil, errors.New("enclave accepted nothing")
			}
			return c2, c1, func() { c1.Close(); c2.Close() }, nil
		})
	})
	t.Run("dialled", func(t *testing.T) {
		// c1: a conn from e.Dial through NAT to the host's loopback; c2:
		// the host-side server's conn.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		addr := fmt.Sprintf("192.168.127.254:%d", ln.Addr().(*net.TCPAddr).Port)
		nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
			ch := accept1(ln)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c1, err = e.Dial(ctx, "tcp", addr)
			if err != nil {
				return nil, nil, nil, err
			}
			select {
			case c2 = <-ch:
			case <-ctx.Done():
			}
			if c2 == nil {
				c1.Close()
				return nil, nil, nil, errors.New("host accepted nothing")
			}
			return c1, c2, func() { c1.Close(); c2.Close() }, nil
		})
	})
}

func TestUserspaceCloseNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		sock := filepath.Join(t.TempDir(), "host.sock")
		h, err := host.New(host.Config{Publish: []host.Publish{{Network: "tcp", Host: netip.MustParseAddrPort("127.0.0.1:0"), EnclavePort: 80}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); _ = h.Serve(ln) }()
		defer func() { _ = h.Close(); wg.Wait() }()

		e, err := enclave.New(enclave.Config{
			Network:  enclave.NetworkUserspace,
			DialHost: testutil.DialUnix(sock),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Start(ctx); err != nil {
			t.Fatal(err)
		}
		eln, err := e.Listen("tcp", ":80")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(hello), ReadHeaderTimeout: time.Second}
		go func() { _ = srv.Serve(eln) }()
		hc := &http.Client{Transport: &http.Transport{}}
		if _, err := usGet(ctx, hc, "http://"+h.Published()[0].String()+"/"); err != nil {
			t.Fatal(err)
		}
		hc.CloseIdleConnections()
		// A conn still open at Close, and a blocked Read on it.
		c, err := e.Dial(ctx, "tcp", "192.168.127.1:53")
		if err != nil {
			t.Fatal(err)
		}
		readErr := make(chan error, 1)
		go func() { _, err := c.Read(make([]byte, 1)); readErr <- err }()

		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-readErr:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("Read blocked at Close returned %v; want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Close did not unblock a Read")
		}
		if _, err := e.Dial(ctx, "tcp", "192.168.127.1:53"); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Dial after Close = %v; want net.ErrClosed", err)
		}
		_ = srv.Close()
	}()
	usCheckGoroutines(t, before)
}

// usCheckGoroutines waits for the goroutine count to drop to before.
func usCheckGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines: %d before, %d after Close:\n%s", before, runtime.NumGoroutine(), buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
