package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestLoopLargeBodies sends a large request body and reads a large
// response slowly through both Serve front ends: the event loop keeps what
// a socket cannot take and stops reading the other side meanwhile, and not
// a byte is lost or reordered.
func TestLoopLargeBodies(t *testing.T) {
	const size = 16 << 20 // more than the socket buffers hold
	body := make([]byte, size)
	for i := range body {
		body[i] = byte(i * 7)
	}
	want := sha256.Sum256(body)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			h := sha256.New()
			time.Sleep(100 * time.Millisecond) // let the proxy's upstream socket fill
			n, _ := io.Copy(h, r.Body)
			fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(size))
		_, _ = w.Write(body)
	})
	for _, front := range serveFronts {
		t.Run(front, func(t *testing.T) {
			checkGoroutines(t)
			env := newEnv(t, front, up, Config{})
			resp, err := env.client.Post(env.url+"/up", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if w := fmt.Sprintf("%d %x", size, want); string(got) != w {
				t.Errorf("upload: upstream saw %q, want %q", got, w)
			}

			// Download, read slowly in small pieces.
			d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
				// A small window from the start (not set after the
				// handshake, which would stall on silly-window avoidance).
				return rc.Control(func(fd uintptr) {
					_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10)
				})
			}}
			c, err := d.Dial("tcp", strings.TrimPrefix(strings.TrimPrefix(env.url, "http://"), "https://"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if strings.HasPrefix(env.url, "https://") {
				c = tls.Client(c, testClientTLS())
			}
			_, _ = io.WriteString(c, "GET /down HTTP/1.1\r\nHost: x\r\n\r\n")
			br := bufio.NewReader(c)
			r2, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			buf := make([]byte, 64<<10)
			var n int64
			for i := 0; ; i++ {
				k, err := r2.Body.Read(buf)
				h.Write(buf[:k])
				n += int64(k)
				if err != nil {
					break
				}
				if i < 20 {
					time.Sleep(10 * time.Millisecond) // let the proxy's socket fill
				}
			}
			if n != size || !bytes.Equal(h.Sum(nil), want[:]) {
				t.Errorf("download: %d bytes, checksum match %v", n, bytes.Equal(h.Sum(nil), want[:]))
			}
		})
	}
}

// TestLoopHandOffMidConnection sends, in one write, a request the event
// loop forwards, then one it hands to the goroutine front end (a chunked
// body), then a plain one: all three are answered, in order.
func TestLoopHandOffMidConnection(t *testing.T) {
	checkGoroutines(t)
	env := newEnv(t, "serve", http.HandlerFunc(echoHandler), Config{})
	req := "GET /a HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" +
		"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	reply := rawRequest(t, strings.TrimPrefix(env.url, "http://"), req, 5*time.Second)
	checkReply(t, reply, []string{"X-Uri: /a", "X-Uri: /b", "abc", "X-Uri: /c"}, nil)
}

// TestLoopClosesEverything checks that Close leaves no descriptor behind:
// idle client connections, busy ones and pooled upstream connections.
func TestLoopClosesEverything(t *testing.T) {
	fds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skip("no /proc/self/fd")
		}
		return len(ents)
	}
	release := make(chan struct{})
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	}))
	defer close(release)
	before := fds()
	p := newProxy(t, up)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Serve(ln) }()
	addr := ln.Addr().String()
	var conns []net.Conn
	for i := range 6 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		path := "/fast"
		if i%2 == 1 {
			path = "/slow"
		}
		_, _ = io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
		if path == "/fast" {
			if _, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	eventually(t, 2*time.Second, "slow requests in flight", func() bool { return p.InFlight() == 3 })
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	<-done
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Errorf("client connection not closed by Close: %v", err)
		}
		_ = c.Close()
	}
	eventually(t, 2*time.Second, "descriptors released", func() bool { return fds() <= before })
}

// FuzzFrontEnds sends the same bytes to Serve on its event loops and with
// goroutines, in front of the same upstream, and compares the answers:
// status lines and bodies, in order. The event loop parses requests its own
// way on its fast path; this holds it to the goroutine front end.
func FuzzFrontEnds(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a?b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\nHEAD /h HTTP/1.1\r\nHost: y\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /q HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
		"GET http://x/abs HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"BAD\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-A\r\nX-A: 1\r\n\r\n",
		// Smuggling and spoofing attempts (smuggling_test.go).
		"POST /p HTTP/1.1\r\nHost: x\r\nX-Pad : 1\r\nContent-Length: 30\r\n\r\nGET /s HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\nX_A: 1\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /q HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /p HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabcGET /q HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\nabcGET /q HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		f.Add(s)
	}
	up := newUpstream(f, http.HandlerFunc(echoHandler))
	var addrs []string
	for _, front := range serveFronts {
		p := newProxy(f, up)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			f.Fatal(err)
		}
		addrs = append(addrs, serveOn(f, p, front, ln))
	}
	f.Fuzz(func(t *testing.T, req string) {
		// A last request that closes the connection, so that a reply ends
		// without waiting for the timeout.
		req += "GET /end HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
		got := make([]string, len(addrs))
		for i, addr := range addrs {
			got[i] = summarize(rawRequest(t, addr, req, time.Second))
		}
		if strings.Contains(strings.Join(got, ""), "Bad Request: ") {
			// net/http's server in the upstream refused what the proxy
			// forwarded and closed the connection; whether the proxy
			// reads its end as EOF or as a reset is a race.
			t.Skip("the upstream refused the request")
		}
		// A front end that refuses a request closes the connection with the
		// client's later bytes unread, and the reset that sends may destroy
		// the refusal on its way (as with any server without a lingering
		// close): compare up to the first refusal.
		for i, g := range got {
			if j := strings.Index(g, "[4"); j >= 0 {
				got[i] = g[:j]
			}
		}
		// Either front end may close a connection early (after a
		// response that raced its request body's end, say), which HTTP
		// allows: what both answered must agree.
		for i := 1; i < len(got); i++ {
			if n := min(len(got[0]), len(got[i])); got[0][:n] != got[i][:n] {
				t.Fatalf("request %q:\n%s: %s\n%s: %s", req, serveFronts[0], got[0], serveFronts[i], got[i])
			}
		}
	})
}

// summarize reduces a raw reply to what its responses say of the requests
// the upstream echoed (status, method, target, body length), in order:
// field order differs between the front ends.
func summarize(reply string) string {
	var out strings.Builder
	for _, part := range strings.Split(reply, "HTTP/1.1 ")[1:] {
		status, _, _ := strings.Cut(part, "\r\n")
		fmt.Fprintf(&out, "[%s", status)
		for _, k := range []string{"X-Method", "X-Uri", "X-Body-Len"} {
			if _, v, ok := strings.Cut(part, "\r\n"+k+": "); ok {
				v, _, _ = strings.Cut(v, "\r\n")
				fmt.Fprintf(&out, " %s", v)
			}
		}
		out.WriteString("]")
	}
	return out.String()
}

// TestLoopLingeringClose sends a malformed request followed by more: the
// proxy answers 400, shuts its side and keeps reading (dropping) what the
// client still sends instead of closing at once, whose reset could destroy
// the 400 in the client's receive buffer. So the client reads the whole
// 400 and an EOF, and can still write without a reset for a while.
func TestLoopLingeringClose(t *testing.T) {
	checkGoroutines(t)
	c := dialEcho(t)
	_, _ = io.WriteString(c, "NOT A REQUEST\r\n\r\nmore bytes")
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	reply, err := io.ReadAll(c)
	if err != nil || !strings.Contains(string(reply), "400 Bad Request") {
		t.Fatalf("reply %q (err %v), want a 400 and EOF", reply, err)
	}
	for i := range 3 {
		time.Sleep(20 * time.Millisecond)
		if _, err := io.WriteString(c, "still sending"); err != nil {
			t.Fatalf("write %d after the 400: %v (the proxy reset the connection)", i, err)
		}
	}
}

// TestLoopHeadInPieces sends request heads a few bytes at a time, with
// bare-LF and CRLF line ends: each is found where it ends, once.
func TestLoopHeadInPieces(t *testing.T) {
	checkGoroutines(t)
	c := dialEcho(t)
	req := "GET /one HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\nGET /two HTTP/1.1\nHost: x\nConnection: close\n\n"
	for i := 0; i < len(req); i += 3 {
		if _, err := io.WriteString(c, req[i:min(i+3, len(req))]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply, _ := io.ReadAll(c)
	checkReply(t, string(reply), []string{"X-Uri: /one", "X-Uri: /two"}, nil)
}

// dialEcho connects to a Proxy served on the event loops in front of
// echoHandler; everything is closed in t.Cleanup.
func dialEcho(t *testing.T) net.Conn {
	t.Helper()
	env := newEnv(t, "serve", http.HandlerFunc(echoHandler), Config{})
	c, err := dialFrontErr(t, env.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestLoopMaxConnsAcrossLoops runs clients on two loops with two upstream
// connections for all of them: connections are handed from
// loop to loop to whoever waits first, every request is answered, and the
// upstream never sees more than MaxConns.
func TestLoopMaxConnsAcrossLoops(t *testing.T) {
	checkGoroutines(t)
	var open, peak atomic.Int32
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Millisecond)
	}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			n := open.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	up.Start()
	defer up.Close()
	target, _ := url.Parse(up.URL)
	p, err := New(target, Config{MaxConns: 2, EventLoops: 2, DialTimeout: 10 * time.Second, MaxInFlight: -1})
	if err != nil {
		t.Fatal(err)
	}
	base := serveFront(t, p, "serve")
	const clients = 136
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	conns := make([]net.Conn, clients)
	for i := range conns { // all connected first, so that both loops get some
		c, err := dialFrontErr(t, base)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			br := bufio.NewReader(c)
			for range 3 {
				if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
					errs <- err
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					errs <- err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("status %d", resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := peak.Load(); n > 2 {
		t.Errorf("peak upstream connections %d, want <= 2 (MaxConns)", n)
	}
}
