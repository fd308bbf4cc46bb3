package enclave_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/pires/go-proxyproto"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/internal/testutil"
)

func ingressListener(t *testing.T, cfg enclave.IngressConfig) *enclave.IngressListener {
	t.Helper()
	return ingressListenerOn(t, cfg, nil)
}

// ingressListenerOn is ingressListener with the unix listener passed
// through wrap (if not nil) first.
func ingressListenerOn(t *testing.T, cfg enclave.IngressConfig, wrap func(net.Listener) net.Listener) *enclave.IngressListener {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "ingress.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		ln = wrap(ln)
	}
	il := enclave.ListenIngress(ln, cfg)
	t.Cleanup(func() { _ = il.Close() })
	return il
}

// dialIngress connects to il with a PROXY v2 header from 192.0.2.1:1234
// and returns both ends, closed at the end of the test.
func dialIngress(t *testing.T, il *enclave.IngressListener) (client, server net.Conn) {
	t.Helper()
	c, err := net.Dial("unix", il.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if _, err := c.Write(v2Header(t, "192.0.2.1:1234", "192.0.2.2:80")); err != nil {
		t.Fatal(err)
	}
	sc, err := il.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sc.Close() })
	return c, sc
}

func v2Header(t *testing.T, src, dst string) []byte {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(mustAP(src)), net.TCPAddrFromAddrPort(mustAP(dst)))
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestIngressHeaders(t *testing.T) {
	local := proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	localBytes, err := local.Format()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		policy     enclave.IngressPolicy
		send       []byte
		wantRemote string // "" = refused
		wantLocal  string
	}{
		{name: "v2 IPv4", send: v2Header(t, "203.0.113.9:51000", "10.0.0.5:443"), wantRemote: "203.0.113.9:51000", wantLocal: "10.0.0.5:443"},
		{name: "v2 IPv6", send: v2Header(t, "[2001:db8::9]:51000", "[2001:db8::1]:443"), wantRemote: "[2001:db8::9]:51000", wantLocal: "[2001:db8::1]:443"},
		{name: "v1", send: []byte("PROXY TCP4 198.51.100.1 10.0.0.5 40000 443\r\n"), wantRemote: "198.51.100.1:40000", wantLocal: "10.0.0.5:443"},
		{name: "missing, required", send: []byte("GET / HTTP/1.1\r\n\r\n")},
		{name: "missing, optional", policy: enclave.IngressOptional, send: []byte("GET / HTTP/1.1\r\n\r\n"), wantRemote: "@", wantLocal: "@"},
		{name: "malformed v2", send: append(append([]byte{}, proxyproto.SIGV2...), 0x21, 0x11, 0xff, 0xff, 1, 2, 3)},
		{name: "malformed v2, optional", policy: enclave.IngressOptional, send: append(append([]byte{}, proxyproto.SIGV2...), 0x99, 0x11, 0, 0)},
		{name: "malformed v1", send: []byte("PROXY TCP4 not-an-ip 10.0.0.5 1 2\r\n")},
		{name: "LOCAL, required", send: localBytes},
		{name: "silent", send: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			il := ingressListener(t, enclave.IngressConfig{Policy: tt.policy, HeaderTimeout: 300 * time.Millisecond})
			c, err := net.Dial("unix", il.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			payload := []byte("payload after the header")
			if _, err := c.Write(append(append([]byte{}, tt.send...), payload...)); err != nil {
				t.Fatal(err)
			}
			type res struct {
				c   net.Conn
				err error
			}
			ch := make(chan res, 1)
			go func() { c, err := il.Accept(); ch <- res{c, err} }()
			var got res
			select {
			case got = <-ch:
			case <-time.After(2 * time.Second):
			}
			if tt.wantRemote == "" {
				if got.c != nil {
					t.Fatalf("accepted a connection from %v; want refused", got.c.RemoteAddr())
				}
				// The client sees its connection closed.
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				if _, err := c.Read(make([]byte, 1)); err == nil {
					t.Error("refused connection still open")
				}
				if st := il.Stats(); st.Refused != 1 || st.Accepted != 0 {
					t.Errorf("stats %+v, want 1 refused", st)
				}
				return
			}
			if got.err != nil || got.c == nil {
				t.Fatalf("Accept: %v", got.err)
			}
			defer got.c.Close()
			if diff := cmp.Diff([]string{tt.wantRemote, tt.wantLocal}, []string{got.c.RemoteAddr().String(), got.c.LocalAddr().String()}); diff != "" && tt.wantRemote != "@" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
			want := payload
			if tt.policy == enclave.IngressOptional && tt.wantRemote == "@" {
				want = append(append([]byte{}, tt.send...), payload...)
			}
			buf := make([]byte, len(want))
			_ = got.c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := io.ReadFull(got.c, buf); err != nil || !bytes.Equal(buf, want) {
				t.Fatalf("read %q, %v; want %q", buf, err, want)
			}
			if st := il.Stats(); st.Accepted != 1 || st.Refused != 0 {
				t.Errorf("stats %+v, want 1 accepted", st)
			}
		})
	}
}

// TestIngressHalfCloseAndSlowPeer: a silent peer does not block others, and
// CloseWrite reaches the client.
func TestIngressHalfCloseAndSlowPeer(t *testing.T) {
	il := ingressListener(t, enclave.IngressConfig{HeaderTimeout: 5 * time.Second})
	silent, err := net.Dial("unix", il.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	c, sc := dialIngress(t, il)
	if got := sc.RemoteAddr().String(); got != "192.0.2.1:1234" {
		t.Fatalf("RemoteAddr %s", got)
	}
	if _, err := sc.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	if err := sc.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "bye" {
		t.Fatalf("client read %q, %v", b, err)
	}
}

// TestIngressRidesOutEMFILE: accept failing for want of file descriptors
// (a connection flood) must not stop the listener for good; the next
// connection is served. net.Error's Timeout is false for EMFILE, which the
// listener used to take for a fatal error.
func TestIngressRidesOutEMFILE(t *testing.T) {
	var fl *testutil.FailingListener
	il := ingressListenerOn(t, enclave.IngressConfig{}, func(ln net.Listener) net.Listener {
		fl = testutil.FailAccepts(ln, syscall.EMFILE, 3)
		return fl
	})
	_, sc := dialIngress(t, il)
	if got := sc.RemoteAddr().String(); got != "192.0.2.1:1234" {
		t.Fatalf("RemoteAddr %s", got)
	}
	if fl.Left() != 0 {
		t.Fatalf("%d accept failures never happened", fl.Left())
	}
}

func TestIngressClose(t *testing.T) {
	il := ingressListener(t, enclave.IngressConfig{})
	pending, err := net.Dial("unix", il.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer pending.Close()
	errc := make(chan error, 1)
	go func() { _, err := il.Accept(); errc <- err }()
	time.Sleep(20 * time.Millisecond)
	if err := il.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
	// The connection whose header was pending is closed.
	_ = pending.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := pending.Read(make([]byte, 1)); err == nil {
		t.Error("pending connection still open")
	}
}

// FuzzIngressHeader feeds arbitrary bytes to the header reader: it must
// never panic, and never accept without a header under the default policy.
func FuzzIngressHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 198.51.100.1 10.0.0.5 40000 443\r\nhello"))
	f.Add(append(append([]byte{}, proxyproto.SIGV2...), 0x21, 0x11, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	dir := f.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "f.sock"))
	if err != nil {
		f.Fatal(err)
	}
	il := enclave.ListenIngress(ln, enclave.IngressConfig{HeaderTimeout: 50 * time.Millisecond})
	defer il.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		for {
			sc, err := il.Accept()
			if err != nil {
				return
			}
			accepted <- sc
		}
	}()
	f.Fuzz(func(t *testing.T, data []byte) {
		before := il.Stats()
		c, err := net.Dial("unix", il.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = c.Write(data)
		_ = c.(*net.UnixConn).CloseWrite()
		deadline := time.Now().Add(5 * time.Second)
		for {
			st := il.Stats()
			if st.Refused > before.Refused {
				return
			}
			if st.Accepted > before.Accepted {
				sc := <-accepted
				defer sc.Close()
				if sc.(*enclave.IngressConn).ProxyHeader() == nil {
					t.Fatalf("accepted %q without a header", data)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("connection neither accepted nor refused")
			}
			time.Sleep(time.Millisecond)
		}
	})
}

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// sizeListener's connections record the largest single Write.
type sizeListener struct {
	net.Listener
	max chan int
}

func (l sizeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &sizeConn{Conn: c, max: l.max}, nil
}

type sizeConn struct {
	net.Conn
	max     chan int
	largest int
}

func (c *sizeConn) Write(b []byte) (int, error) {
	c.largest = max(c.largest, len(b))
	return c.Conn.Write(b)
}

func (c *sizeConn) Close() error {
	select {
	case c.max <- c.largest:
	default:
	}
	return c.Conn.Close()
}

// TestIngressWriteSplit: writes from the enclave to VSOCK stay within
// MaxWrite (32 KiB by default, the Nitro limit), and nothing is lost.
func TestIngressWriteSplit(t *testing.T) {
	for _, tc := range []struct {
		name     string
		maxWrite int
		want     int
	}{{"default", 0, 32 << 10}, {"custom", 1000, 1000}, {"unbounded", -1, 100 << 10}} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "ingress.sock"))
			if err != nil {
				t.Fatal(err)
			}
			sl := sizeListener{Listener: ln, max: make(chan int, 1)}
			il := enclave.ListenIngress(sl, enclave.IngressConfig{MaxWrite: tc.maxWrite})
			defer il.Close()
			c, sc := dialIngress(t, il)
			data := bytes.Repeat([]byte("0123456789"), 10<<10) // 100 KiB
			errc := make(chan error, 1)
			go func() {
				n, err := sc.Write(data)
				if err == nil && n != len(data) {
					err = io.ErrShortWrite
				}
				_ = sc.Close()
				errc <- err
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("client read %d bytes, %v; want %d", len(got), err, len(data))
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if largest := <-sl.max; largest != tc.want {
				t.Errorf("largest write %d, want %d", largest, tc.want)
			}
		})
	}
}

// TestIngressConnSocket: the socket is exposed (for proxy.Serve's event
// loops) only once no bytes read past the header are left, with the write
// bound.
func TestIngressConnSocket(t *testing.T) {
	il := ingressListener(t, enclave.IngressConfig{})
	c, err := net.Dial("unix", il.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(append(v2Header(t, "192.0.2.1:1234", "192.0.2.2:80"), "early"...)); err != nil {
		t.Fatal(err)
	}
	sc, err := il.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	sysc, ok := sc.(syscall.Conn)
	if !ok {
		t.Fatalf("%T is not a syscall.Conn", sc)
	}
	if _, err := sysc.SyscallConn(); err == nil {
		t.Error("SyscallConn with bytes buffered past the header: no error")
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(sc, b); err != nil || string(b) != "early" {
		t.Fatalf("read %q, %v", b, err)
	}
	if _, err := sysc.SyscallConn(); err != nil {
		t.Errorf("SyscallConn once drained: %v", err)
	}
	if mw := sc.(interface{ MaxWrite() int }).MaxWrite(); mw != 32<<10 {
		t.Errorf("MaxWrite %d, want %d", mw, 32<<10)
	}
}

// TestIngressBoundedWithoutAccept: while nobody calls Accept (say, before
// the app is ready), the listener takes at most MaxPending connections off
// the underlying listener; the rest wait in the kernel's backlog, without
// a goroutine or a descriptor in the process, and are all served once
// Accept is called.
func TestIngressBoundedWithoutAccept(t *testing.T) {
	const maxPending, conns = 8, 2000
	il := ingressListener(t, enclave.IngressConfig{MaxPending: maxPending})
	hdr := v2Header(t, "192.0.2.1:1234", "192.0.2.2:80")
	goroutines := runtime.NumGoroutine()
	clients := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range clients {
			_ = c.Close()
		}
	}()
	for range conns {
		c, err := net.Dial("unix", il.Addr().String())
		if err != nil {
			t.Fatalf("dial %d: %v", len(clients), err)
		}
		clients = append(clients, c)
		if _, err := c.Write(hdr); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // let the listener take what it will
	grew := runtime.NumGoroutine() - goroutines
	st := il.Stats()
	t.Logf("without Accept: %d connections taken, %d goroutines more", st.Accepted, grew)
	if st.Accepted > maxPending+2 {
		t.Errorf("%d connections taken off the listener with MaxPending %d and no Accept", st.Accepted, maxPending)
	}
	if grew > maxPending+10 {
		t.Errorf("%d goroutines more with MaxPending %d and no Accept", grew, maxPending)
	}
	for i := range conns {
		c, err := il.Accept()
		if err != nil {
			t.Fatalf("Accept %d: %v", i, err)
		}
		_ = c.Close()
	}
	if st := il.Stats(); st.Accepted != conns || st.Refused != 0 {
		t.Errorf("stats %+v, want %d accepted", st, conns)
	}
}
