package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLoopServesTLS checks that a TLSServer connection whose handshake is
// done is served on an event loop, keep-alive, request after request.
func TestLoopServesTLS(t *testing.T) {
	checkGoroutines(t)
	env := newEnv(t, "serve-tls", http.HandlerFunc(echoHandler), Config{})
	c := dialFront(t, env.url)
	defer c.Close()
	br := bufio.NewReader(c)
	for i := range 3 {
		postEcho(t, c, br, fmt.Sprintf("/n%d", i), "hello")
		if n := env.proxy.eventLoops().conns.Load(); n != 1 {
			t.Fatalf("request %d: %d connections on the loops, want 1", i, n)
		}
	}
}

// TestLoopTLSTakeRefuses checks which TLS connections stay off the loops:
// a handshake not done, HTTP/2 chosen, tls.Server's own connections.
func TestLoopTLSTakeRefuses(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(echoHandler))
	p := newProxy(t, up)
	defer p.Close()
	ls := p.eventLoops()
	if ls == nil {
		t.Fatal("no event loops")
	}
	handshake := func(srv *tls.Conn, protos []string) {
		t.Helper()
		cc := tls.Client(srv.NetConn().(*tlsBase).Conn.(*pipeEnd).peer, &tls.Config{InsecureSkipVerify: true, NextProtos: protos})
		errc := make(chan error, 1)
		go func() { errc <- cc.Handshake() }()
		if err := srv.Handshake(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	cfg := testServerTLS(t)
	cfg.NextProtos = []string{"h2", "http/1.1"}

	a := newPipe()
	if ls.take(TLSServer(a, cfg)) {
		t.Error("took a connection before its handshake")
	}
	b := newPipe()
	h2 := TLSServer(b, cfg)
	handshake(h2, []string{"h2"})
	if ls.take(h2) {
		t.Error("took an HTTP/2 connection")
	}
	// A pipe has no socket: refused after the checks, left open.
	d := newPipe()
	h1 := TLSServer(d, cfg)
	handshake(h1, []string{"http/1.1"})
	if ls.take(h1) {
		t.Error("took a connection without a socket")
	}
	if n := ls.conns.Load(); n != 0 {
		t.Errorf("%d connections on the loops", n)
	}
}

// pipeEnd is one end of net.Pipe that knows the other.
type pipeEnd struct {
	net.Conn
	peer net.Conn
}

func newPipe() *pipeEnd {
	a, b := net.Pipe()
	return &pipeEnd{Conn: a, peer: b}
}

// TestLoopTLSHandOff sends, on one TLS connection, a request the loop
// forwards, one that Config.Intercept claims (handed to the goroutine front
// end with the tls.Conn and its buffered records), and another: all are
// answered in order, and the intercepted request sees the TLS state and the
// client's address.
func TestLoopTLSHandOff(t *testing.T) {
	checkGoroutines(t)
	local := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "local tls=%v remote=%s", r.TLS != nil && r.TLS.HandshakeComplete, r.RemoteAddr)
	})
	env := newEnv(t, "serve-tls", http.HandlerFunc(echoHandler), Config{Intercept: func(r *http.Request) http.Handler {
		if strings.HasPrefix(r.URL.Path, "/local") {
			return local
		}
		return nil
	}})
	c := dialFront(t, env.url)
	defer c.Close()
	req := "GET /a HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /local HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	checkReply(t, string(b), []string{"X-Uri: /a", "local tls=true remote=" + c.LocalAddr().String(), "X-Uri: /c"}, nil)
}

// TestLoopTLSBadRecords writes garbage after the handshake: the loop closes
// the connection (after a TLS alert) and serves the next one.
func TestLoopTLSBadRecords(t *testing.T) {
	checkGoroutines(t)
	env := newEnv(t, "serve-tls", http.HandlerFunc(echoHandler), Config{})
	for _, junk := range []string{
		"\x17\x03\x03\x00\x20" + strings.Repeat("x", 32), // an application record that does not decrypt
		"\x17\x03\x03\xff\xff",                           // a length over the limit
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",              // plaintext
	} {
		raw, err := net.Dial("tcp", strings.TrimPrefix(env.url, "https://"))
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(raw, testClientTLS())
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "the connection on a loop", func() bool { return env.proxy.eventLoops().conns.Load() == 1 })
		if _, err := io.WriteString(raw, junk); err != nil {
			t.Fatal(err)
		}
		_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, raw); err != nil && !isReset(err) {
			t.Fatalf("%q: %v, want the connection closed", junk, err)
		}
		raw.Close()
		eventually(t, 5*time.Second, "the connection closed", func() bool { return env.proxy.eventLoops().conns.Load() == 0 })
	}
	resp, err := env.client.Get(env.url + "/after")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("X-Uri"); got != "/after" {
		t.Errorf("after the bad connections: X-Uri %q", got)
	}
}

func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}

// TestLsockMaxWrite checks that a socket's writes stay within maxWrite
// (VSOCK's 32 KiB): on a SEQPACKET pair every write is one message.
func TestLsockMaxWrite(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	s := lsock{fd: fds[0], writable: true, maxWrite: 1000}
	b := make([]byte, 4500)
	for i := range b {
		b[i] = byte(i)
	}
	n, err := s.write(b)
	if err != nil || n != len(b) {
		t.Fatalf("write: %d, %v", n, err)
	}
	var sizes []int
	var got []byte
	buf := make([]byte, 8192)
	for {
		k, err := unix.Read(fds[1], buf)
		if err != nil {
			break
		}
		sizes = append(sizes, k)
		got = append(got, buf[:k]...)
	}
	if fmt.Sprint(sizes) != "[1000 1000 1000 1000 500]" || string(got) != string(b) {
		t.Errorf("messages %v, bytes equal %v", sizes, string(got) == string(b))
	}
}

// TestLoopTLSRecordShapes feeds the loop TLS records in awkward shapes:
// each record's bytes in 3-byte pieces (crypto/tls keeps the partial
// record across would-block reads), many records in one segment (records
// read ahead stay in tls.Conn, with no readiness event to come), and TLS
// 1.2 as well as 1.3.
func TestLoopTLSRecordShapes(t *testing.T) {
	checkGoroutines(t)
	env := newEnv(t, "serve-tls", http.HandlerFunc(echoHandler), Config{})
	addr := strings.TrimPrefix(env.url, "https://")
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			cfg := testClientTLS()
			cfg.MaxVersion = version

			// Pieces.
			raw, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			pc := &shapedConn{Conn: raw}
			tc := tls.Client(pc, cfg)
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			if v := tc.ConnectionState().Version; v != version {
				t.Fatalf("negotiated %x, want %x", v, version)
			}
			pc.piece = 3
			br := bufio.NewReader(tc)
			for i := range 3 {
				postEcho(t, tc, br, fmt.Sprintf("/p%d", i), "0123456789")
			}
			tc.Close()

			// Many records in one segment: each request its own record.
			raw, err = net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			pc = &shapedConn{Conn: raw}
			tc = tls.Client(pc, cfg)
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			pc.hold = true
			const n = 40
			for i := range n {
				conn := ""
				if i == n-1 {
					conn = "Connection: close\r\n"
				}
				fmt.Fprintf(tc, "GET /r%d HTTP/1.1\r\nHost: x\r\n%s\r\n", i, conn)
			}
			if err := pc.flush(); err != nil {
				t.Fatal(err)
			}
			_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(tc)
			tc.Close()
			var want []string
			for i := range n {
				want = append(want, fmt.Sprintf("X-Uri: /r%d\r\n", i))
			}
			checkReply(t, string(b), want, nil)
		})
	}
}

// shapedConn is a client connection whose writes go out in pieces of
// piece bytes (if > 0), or are held until flush (hold).
type shapedConn struct {
	net.Conn
	piece int
	hold  bool
	held  []byte
}

func (c *shapedConn) Write(b []byte) (int, error) {
	switch {
	case c.hold:
		c.held = append(c.held, b...)
		return len(b), nil
	case c.piece > 0:
		for i := 0; i < len(b); i += c.piece {
			if _, err := c.Conn.Write(b[i:min(len(b), i+c.piece)]); err != nil {
				return i, err
			}
			time.Sleep(100 * time.Microsecond) // separate segments
		}
		return len(b), nil
	}
	return c.Conn.Write(b)
}

func (c *shapedConn) flush() error {
	_, err := c.Conn.Write(c.held)
	c.held, c.hold = nil, false
	return err
}

// TestTLSListener checks Serve on a NewTLSListener: it offers http/1.1
// only, completes handshakes itself and serves on the loops; a client that
// never finishes its handshake is dropped after ReadHeaderTimeout; Close
// does not wait for handshakes in progress.
func TestTLSListener(t *testing.T) {
	checkGoroutines(t)
	env := newEnv(t, "serve-tls-listener", http.HandlerFunc(echoHandler), Config{ReadHeaderTimeout: 300 * time.Millisecond})
	addr := strings.TrimPrefix(env.url, "https://")

	cfg := testClientTLS()
	cfg.NextProtos = []string{"h2", "http/1.1"}
	tc, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if p := tc.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Fatalf("negotiated %q, want http/1.1", p)
	}
	fmt.Fprintf(tc, "GET /l HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("X-Uri"); got != "/l" {
		t.Fatalf("X-Uri %q", got)
	}
	if n := env.proxy.eventLoops().conns.Load(); n != 1 {
		t.Fatalf("%d connections on the loops, want 1", n)
	}

	// Silent client: closed within the handshake deadline.
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	_ = silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := silent.Read(make([]byte, 1)); err == nil {
		t.Fatal("read from a silent client's connection succeeded")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("silent client closed after %v", d)
	}

	// A handshake in progress does not hold Close (with a deadline far off).
	env2 := newEnv(t, "serve-tls-listener", http.HandlerFunc(echoHandler), Config{ReadHeaderTimeout: time.Minute})
	half, err := net.Dial("tcp", strings.TrimPrefix(env2.url, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	eventually(t, 5*time.Second, "the handshake started", func() bool {
		env2.proxy.mu.Lock()
		defer env2.proxy.mu.Unlock()
		for c := range env2.proxy.closers {
			if _, ok := c.(handshaking); ok {
				return true
			}
		}
		return false
	})
	done := make(chan struct{})
	go func() { _ = env2.proxy.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Close waits for a handshake")
	}
}

// postEcho sends POST path with body on c and checks that echoHandler's
// answer, read from br, names the path and returns the body.
func postEcho(t *testing.T, c io.Writer, br *bufio.Reader, path, body string) {
	t.Helper()
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", path, len(body), body)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := resp.Header.Get("X-Uri"); got != path || string(b) != body {
		t.Fatalf("POST %s: X-Uri %q, body %q", path, got, b)
	}
}

// detachListener wraps its connections in detachConns sharing its counts.
type detachListener struct {
	net.Listener
	detached, released, closed atomic.Int64
}

func (l *detachListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &detachConn{Conn: c, l: l}, nil
}

// detachConn is a connection under a limit, as the enclave's: its Close
// releases a slot unless Detach handed the release on.
type detachConn struct {
	net.Conn
	l        *detachListener
	detached atomic.Bool
}

func (c *detachConn) SyscallConn() (syscall.RawConn, error) {
	return c.Conn.(syscall.Conn).SyscallConn()
}

func (c *detachConn) Close() error {
	c.l.closed.Add(1)
	if !c.detached.Load() {
		c.l.released.Add(1)
	}
	return c.Conn.Close()
}

func (c *detachConn) Detach() func() {
	c.detached.Store(true)
	c.l.detached.Add(1)
	return func() { c.l.released.Add(1) }
}

// TestLoopTLSDetach: a connection the loop takes is Detached and closed at
// once, and its release comes exactly once when the connection really
// ends: closed on the loop, or after a hand-off to a goroutine.
func TestLoopTLSDetach(t *testing.T) {
	checkGoroutines(t)
	local := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "local") })
	up := newUpstream(t, http.HandlerFunc(echoHandler))
	target, _ := url.Parse(up.URL)
	p, err := New(target, Config{Intercept: func(r *http.Request) http.Handler {
		if r.URL.Path == "/local" {
			return local
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dl := &detachListener{Listener: ln}
	addr := serveOn(t, p, "serve-tls", dl)
	counts := func() string {
		return fmt.Sprintf("detached %d, closed %d, released %d", dl.detached.Load(), dl.closed.Load(), dl.released.Load())
	}
	get := func(c net.Conn, br *bufio.Reader, path string) {
		t.Helper()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for i, paths := range [][]string{{"/a", "/b"}, {"/a", "/local", "/b"}} {
		c := dialFront(t, addr)
		br := bufio.NewReader(c)
		for _, path := range paths {
			get(c, br, path)
		}
		if dl.detached.Load() != int64(i+1) || dl.closed.Load() != int64(i+1) || dl.released.Load() != int64(i) {
			t.Fatalf("connection %d (%v) open: %s; want it detached and closed, not released", i, paths, counts())
		}
		c.Close()
		eventually(t, 5*time.Second, "the release", func() bool { return dl.released.Load() == int64(i+1) })
	}
	_ = p.Close()
	if dl.released.Load() != 2 {
		t.Fatalf("after Close: %s; want 2 released", counts())
	}
}
