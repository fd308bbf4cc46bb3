package proxy

// Tests for request smuggling, response mix-ups and header spoofing
// between the proxy and its upstream: each names the bug it guards
// against. Tests that speak to Python's http.server or wsgiref (the
// parsers that real enclave apps often run) skip without python3.

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/quenchnet/quench/internal/testutil"
)

// rawUp is an upstream that parses requests with net/http and answers
// each with whatever respond returns for it (written as given, possibly in
// several writes with pauses: "" parts in the slice mean "sleep 50ms").
// It records the raw bytes it received.
type rawUp struct {
	ln      net.Listener
	mu      sync.Mutex
	raw     strings.Builder
	respond func(r *http.Request) []string
}

// newRawUp serves respond on a loopback TCP listener.
func newRawUp(t *testing.T, respond func(r *http.Request) []string) *rawUp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveRawUp(t, ln, respond)
}

// serveRawUp serves respond on ln.
func serveRawUp(t *testing.T, ln net.Listener, respond func(r *http.Request) []string) *rawUp {
	t.Helper()
	u := &rawUp{ln: ln, respond: respond}
	testutil.ServeConnsWait(t, ln, u.serve)
	return u
}

type recReader struct {
	u *rawUp
	r io.Reader
}

func (rr recReader) Read(p []byte) (int, error) {
	n, err := rr.r.Read(p)
	rr.u.mu.Lock()
	rr.u.raw.Write(p[:n])
	rr.u.mu.Unlock()
	return n, err
}

func (u *rawUp) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(recReader{u, c})
	for {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		for _, part := range u.respond(r) {
			if part == "" {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			if _, err := io.WriteString(c, part); err != nil {
				return
			}
		}
	}
}

// received returns every byte the upstream has read so far.
func (u *rawUp) received() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.raw.String()
}

func (u *rawUp) url() *url.URL { return &url.URL{Scheme: "http", Host: u.ln.Addr().String()} }

// startProxy serves a Proxy for target with cfg on a loopback listener
// and returns its address.
func startProxy(t *testing.T, target *url.URL, cfg Config) string {
	t.Helper()
	_, addr := startProxyP(t, target, cfg)
	return addr
}

func startProxyP(t *testing.T, target *url.URL, cfg Config) (*Proxy, string) {
	t.Helper()
	p, err := New(target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Serve(ln) }()
	t.Cleanup(func() { _ = p.Close(); <-done })
	return p, ln.Addr().String()
}

// startFront serves a Proxy for target with cfg on front (see fronts) and
// returns its URL, for rawRequest and dialFront.
func startFront(t *testing.T, target *url.URL, cfg Config, front string) string {
	t.Helper()
	p, err := New(target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return serveFront(t, p, front)
}

// oneRequest sends req on a new connection and returns the first response
// (status and body).
func oneRequest(t *testing.T, addr, req, method string) (int, string) {
	t.Helper()
	c := dialFront(t, addr)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// poison is a whole response that an upstream sends where none belongs.
const poison = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"

// pyUpstream is Python's http.server (protocol HTTP/1.1, keep-alive): each
// request is answered with its method and path and logged, one line each,
// with the X-Forwarded-For and Content-Length it saw.
const pyUpstream = `
import sys, http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def answer(self):
        n = int(self.headers.get("Content-Length", 0))
        self.rfile.read(n)
        sys.stdout.write("%s %s xff=%s cl=%s\n" % (self.command, self.path, self.headers.get("X-Forwarded-For"), self.headers.get("Content-Length")))
        sys.stdout.flush()
        out = ("%s %s\n" % (self.command, self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = answer
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
s = S(("127.0.0.1", 0), H)
sys.stdout.write("PORT %d\n" % s.server_address[1])
sys.stdout.flush()
s.serve_forever()
`

// wsgiUpstream is Python's wsgiref server: it answers with the
// HTTP_X_FORWARDED_FOR and HTTP_X_FORWARDED_HOST the application sees.
const wsgiUpstream = `
import sys
from wsgiref.simple_server import make_server, WSGIRequestHandler
class Q(WSGIRequestHandler):
    def log_message(self, *a): pass
def app(env, start):
    out = ("xff=%s xfh=%s" % (env.get("HTTP_X_FORWARDED_FOR"), env.get("HTTP_X_FORWARDED_HOST"))).encode()
    start("200 OK", [("Content-Length", str(len(out)))])
    return [out]
s = make_server("127.0.0.1", 0, app, handler_class=Q)
sys.stdout.write("PORT %d\n" % s.server_port)
sys.stdout.flush()
s.serve_forever()
`

// startPython runs script, which prints "PORT n" first, and returns the
// URL of the server it starts and what it prints after. It skips t
// without python3.
func startPython(t *testing.T, script string) (*url.URL, func() string) {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	cmd := exec.Command(py, "-c", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Skipf("python3: %v", err)
	}
	var mu sync.Mutex
	var log strings.Builder
	logged := make(chan struct{})
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-logged; _ = cmd.Wait() })
	br := bufio.NewReader(out)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "PORT ") {
		close(logged)
		t.Skipf("python3 did not start the server: %q %v", line, err)
	}
	go func() {
		defer close(logged)
		for {
			l, err := br.ReadString('\n')
			mu.Lock()
			log.WriteString(l)
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	u := &url.URL{Scheme: "http", Host: "127.0.0.1:" + strings.TrimSpace(strings.TrimPrefix(line, "PORT "))}
	return u, func() string { mu.Lock(); defer mu.Unlock(); return log.String() }
}

// TestSpaceBeforeColonSmuggling: a request field with whitespace between
// its name and the colon ("X-Pad : 1"), which RFC 9112 section 5.1 says a
// server MUST answer with 400, was accepted (net/http's parser tolerates
// it, go.dev/issue/34540; the loop's fast parser declines it and falls
// back to net/http) and forwarded as it came. Python's http.server
// (email.feedparser) takes such a line for the end of the header section,
// so it lost every field after it, including the Content-Length and
// X-Forwarded-For the proxy appends at the end: the request body was read
// as a second request, with a client-chosen X-Forwarded-For.
func TestSpaceBeforeColonSmuggling(t *testing.T) {
	target, pylog := startPython(t, pyUpstream)
	smuggled := "GET /admin HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\nContent-Length: 0\r\n\r\n"
	req := "POST /upload HTTP/1.1\r\nHost: x\r\nX-Pad : 1\r\nContent-Length: " + strconv.Itoa(len(smuggled)) + "\r\n\r\n" + smuggled
	for _, front := range serveFronts {
		t.Run(front, func(t *testing.T) {
			addr := startFront(t, target, Config{}, front)
			before := len(pylog())
			code, body := oneRequest(t, addr, req, "POST")
			time.Sleep(100 * time.Millisecond)
			seen := pylog()[before:]
			if code != http.StatusBadRequest {
				t.Errorf("got %d %q, want 400 for whitespace before the colon (RFC 9112 section 5.1)", code, body)
			}
			if seen != "" {
				t.Errorf("the upstream served:\n%s", seen)
			}
		})
	}
}

// TestInvalidHeaderFieldRefused: every Serve front end refuses, with 400
// and without forwarding it, a request with a field name or value that
// net/http's server refuses (httpguts.ValidHeaderFieldName and
// ValidHeaderFieldValue), though http.ReadRequest parses it.
func TestInvalidHeaderFieldRefused(t *testing.T) {
	up := newRawUp(t, func(r *http.Request) []string {
		return []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
	})
	for i, field := range []string{
		"X-Pad : 1",
		"X-Pad\t: 1",
		"X-Pad  :1",
		"X-A: a\x01b",
		"X-A: a\x7fb",
		"X-A: a\x00b",
		"X-A: a\x1bb",
	} {
		for _, front := range serveFronts {
			t.Run(fmt.Sprintf("%s/%q", front, field), func(t *testing.T) {
				addr := startFront(t, up.url(), Config{}, front)
				for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
					path := fmt.Sprintf("/%s/%d/%s", front, i, proto)
					reply := rawRequest(t, addr, "GET "+path+" "+proto+"\r\nHost: x\r\n"+field+"\r\nContent-Length: 0\r\n\r\n", 2*time.Second)
					if !strings.HasPrefix(reply, "HTTP/1.1 400 ") {
						t.Errorf("%s: reply %q, want 400", proto, reply)
					}
					if strings.Contains(up.received(), path) {
						t.Errorf("%s: forwarded", proto)
					}
				}
			})
		}
	}
}

// TestValidHeaderMatchesHTTPGuts holds the proxy's table-driven field
// checks to the net/http server's.
func TestValidHeaderMatchesHTTPGuts(t *testing.T) {
	for c := range 256 {
		b := string([]byte{byte(c)})
		for _, s := range []string{b, b + "a", "a" + b, "X-" + b + "-Y"} {
			if got, want := validFieldName(s), httpguts.ValidHeaderFieldName(s); got != want {
				t.Errorf("validFieldName(%q) = %v, httpguts says %v", s, got, want)
			}
			if got, want := validFieldValue(s), httpguts.ValidHeaderFieldValue(s); got != want {
				t.Errorf("validFieldValue(%q) = %v, httpguts says %v", s, got, want)
			}
		}
		if got, want := isTokenChar(byte(c)), httpguts.IsTokenRune(rune(c)); got != want {
			t.Errorf("isTokenChar(%#x) = %v, want %v", c, got, want)
		}
	}
	if validFieldName("") || !validFieldValue("") {
		t.Errorf("empty name valid or empty value invalid")
	}
	if validHeader(http.Header{"X-A": {"1"}, "X-B ": {"2"}}) || !validHeader(http.Header{"X-A": {"1", "\tok é"}}) {
		t.Errorf("validHeader")
	}
}

// TestGoroutineStaleUpstreamBytesAfterHEAD: the goroutine front end (TLS
// connections not on loops, EventLoops < 0, non-Linux, and every
// connection handed off from a loop: HTTP/1.0, chunked bodies, Expect...)
// pooled an upstream connection whose bufio.Reader still held bytes the
// upstream sent after the response (a body sent in answer to HEAD). The
// next request on that connection - any client's - got them as its
// response.
func TestGoroutineStaleUpstreamBytesAfterHEAD(t *testing.T) {
	up := newRawUp(t, func(r *http.Request) []string {
		if r.URL.Path == "/evil" {
			// An app that writes a body for HEAD, as do_HEAD = do_GET does.
			return []string{"HTTP/1.1 200 OK\r\nContent-Length: 39\r\n\r\n" + poison}
		}
		return []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
	})
	for _, tc := range []struct {
		name string
		cfg  Config
		req  string
	}{
		{"goroutines", Config{EventLoops: -1}, "HEAD /evil HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"loop-handoff-http10", Config{EventLoops: 1}, "HEAD /evil HTTP/1.0\r\nHost: x\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startProxy(t, up.url(), tc.cfg)
			if code, _ := oneRequest(t, addr, tc.req, "HEAD"); code != 200 {
				t.Fatalf("attacker: %d", code)
			}
			// The victim's request goes the same way (the goroutine front end).
			victim := strings.Replace(tc.req, "HEAD /evil", "GET /victim", 1)
			code, body := oneRequest(t, addr, victim, "GET")
			if body != "ok" {
				t.Fatalf("victim on another connection got %d %q, want \"ok\"", code, body)
			}
		})
	}
}

// TestStaleUpstreamBytesAfterHEADLate: a body sent for HEAD in a write of
// its own, after the response was complete and the connection pooled. An
// idle connection on a loop is closed on its readiness event; the
// goroutine front end peeks before reusing a connection whose last
// response had no body by rule, however briefly it was idle.
func TestStaleUpstreamBytesAfterHEADLate(t *testing.T) {
	up := newRawUp(t, func(r *http.Request) []string {
		if r.URL.Path == "/evil" {
			return []string{"HTTP/1.1 200 OK\r\nContent-Length: 39\r\n\r\n", "", poison}
		}
		return []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
	})
	for _, front := range serveFronts {
		t.Run(front, func(t *testing.T) {
			addr := startFront(t, up.url(), Config{}, front)
			if code, _ := oneRequest(t, addr, "HEAD /evil HTTP/1.1\r\nHost: x\r\n\r\n", "HEAD"); code != 200 {
				t.Fatalf("attacker: %d", code)
			}
			time.Sleep(150 * time.Millisecond)
			code, body := oneRequest(t, addr, "GET /victim HTTP/1.1\r\nHost: x\r\n\r\n", "GET")
			if body != "ok" {
				t.Fatalf("victim on another connection got %d %q, want \"ok\"", code, body)
			}
		})
	}
}

// TestGoroutineStaleUpstreamBytesAfterLengthBody: the same with a body
// longer than its Content-Length, in answer to GET.
func TestGoroutineStaleUpstreamBytesAfterLengthBody(t *testing.T) {
	up := newRawUp(t, func(r *http.Request) []string {
		if r.URL.Path == "/evil" {
			return []string{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + poison}
		}
		return []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
	})
	addr := startProxy(t, up.url(), Config{EventLoops: -1})
	if code, body := oneRequest(t, addr, "GET /evil HTTP/1.1\r\nHost: x\r\n\r\n", "GET"); code != 200 || body != "hello" {
		t.Fatalf("attacker: %d %q", code, body)
	}
	code, body := oneRequest(t, addr, "GET /victim HTTP/1.1\r\nHost: x\r\n\r\n", "GET")
	if body != "ok" {
		t.Fatalf("victim on another connection got %d %q, want \"ok\"", code, body)
	}
}

// TestGoroutineStaleUpstreamBytesAfterLongBody: the same with a body that
// ends where a read filled the connection's buffer (two of its 4 KiB),
// the extra bytes following in the same write: they are still in the
// socket (or, for an https upstream, in the tls.Conn), not in the buffer.
func TestGoroutineStaleUpstreamBytesAfterLongBody(t *testing.T) {
	long := strings.Repeat("x", 2*upstreamBufSize)
	respond := func(r *http.Request) []string {
		if r.URL.Path == "/evil" {
			return []string{"HTTP/1.1 200 OK\r\nContent-Length: " + strconv.Itoa(len(long)) + "\r\n\r\n", "", long + poison}
		}
		return []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
	}
	for _, scheme := range []string{"http", "https"} {
		t.Run(scheme, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			cfg := Config{EventLoops: -1, MaxIdleConns: 1}
			if scheme == "https" {
				sc := testServerTLS(t)
				sc.DynamicRecordSizingDisabled = true // body and extra bytes in one record
				ln = tls.NewListener(ln, sc)
				cfg.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
			}
			up := serveRawUp(t, ln, respond)
			target := up.url()
			target.Scheme = scheme
			addr := startProxy(t, target, cfg)
			if code, body := oneRequest(t, addr, "GET /evil HTTP/1.1\r\nHost: x\r\n\r\n", "GET"); code != 200 || body != long {
				t.Fatalf("attacker: %d, %d bytes", code, len(body))
			}
			code, body := oneRequest(t, addr, "GET /victim HTTP/1.1\r\nHost: x\r\n\r\n", "GET")
			if body != "ok" {
				t.Fatalf("victim on another connection got %d %q, want \"ok\"", code, body)
			}
		})
	}
}

// TestConnectionNamesContentLength: an upstream response that lists
// Content-Length in its Connection field. Every front end dropped the
// Content-Length field (as a Connection option) but still framed the body
// by it and kept the client connection: the client got a response with
// neither Content-Length nor Transfer-Encoding on a kept-alive connection,
// so it read the next response as part of this body (RFC 9112 section
// 6.3: no framing means until close). Framing fields are never dropped
// for being named in Connection.
func TestConnectionNamesContentLength(t *testing.T) {
	up := newRawUp(t, func(r *http.Request) []string {
		switch r.URL.Path {
		case "/a":
			return []string{"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello"}
		case "/c":
			return []string{"HTTP/1.1 200 OK\r\nConnection: X-A, content-length, Transfer-Encoding\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello"}
		}
		return []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
	})
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			addr := startFront(t, up.url(), Config{}, front)
			for _, path := range []string{"/a", "/c"} {
				c := dialFront(t, addr)
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				_, _ = io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				if string(b) != "hello" || resp.ContentLength != 5 || resp.Header.Get("X-A") != "" {
					t.Fatalf("%s: first response body %q (ContentLength %d, X-A %q), want \"hello\" (5, none)",
						path, b, resp.ContentLength, resp.Header.Get("X-A"))
				}
				resp, err = http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				if b, _ := io.ReadAll(resp.Body); string(b) != "ok" {
					t.Fatalf("%s: second response body %q, want \"ok\"", path, b)
				}
			}
		})
	}
}

// TestConnectionNamesContentLengthRequest: a request that lists
// Content-Length in its Connection field still reaches the upstream with
// its body framed.
func TestConnectionNamesContentLengthRequest(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(echoHandler))
	target, _ := url.Parse(up.URL)
	for _, front := range serveFronts {
		t.Run(front, func(t *testing.T) {
			addr := startFront(t, target, Config{}, front)
			reply := rawRequest(t, addr, "POST /p HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\nabc"+
				"GET /q HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 2*time.Second)
			checkReply(t, reply, []string{"X-Body-Len: 3", "abc", "X-Uri: /q"}, nil)
		})
	}
}

// TestContentLengthAndChunkedCloses: RFC 9112 section 6.1: a server that
// processes a request with both Transfer-Encoding and Content-Length by
// the former MUST close the connection after responding; so must one that
// gets Transfer-Encoding in HTTP/1.0. Both front ends kept the connection
// and served the next request on it.
func TestContentLengthAndChunkedCloses(t *testing.T) {
	up := newRawUp(t, func(r *http.Request) []string {
		return []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
	})
	for _, tc := range []struct{ name, req string }{
		{"cl-te", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
		{"te-cl", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
		{"http10-te", "POST /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc"},
	} {
		for _, front := range serveFronts {
			t.Run(tc.name+"/"+front, func(t *testing.T) {
				addr := startFront(t, up.url(), Config{}, front)
				reply := rawRequest(t, addr, tc.req+"GET /second HTTP/1.1\r\nHost: x\r\n\r\n", 2*time.Second)
				if strings.Count(reply, "HTTP/1.1 ") != 1 || !strings.Contains(reply, "Connection: close") {
					t.Fatalf("connection kept after a request with ambiguous framing:\n%q", reply)
				}
			})
		}
	}
	// Chunked alone, and HTTP/1.0 keep-alive without Transfer-Encoding,
	// keep the connection. (The upstream answers late, so that the
	// request bodies have surely ended: a response that beats the end of
	// its request's body closes the connection.)
	late := newRawUp(t, func(r *http.Request) []string {
		return []string{"", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
	})
	for _, front := range serveFronts {
		t.Run("kept/"+front, func(t *testing.T) {
			addr := startFront(t, late.url(), Config{}, front)
			reply := rawRequest(t, addr, "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"+
				"POST /b HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc"+
				"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 2*time.Second)
			if n := strings.Count(reply, "HTTP/1.1 200 "); n != 3 {
				t.Fatalf("%d responses, want 3:\n%q", n, reply)
			}
		})
	}
}

// TestUnderscoreForwardedForSpoof: the proxy dropped the client's
// X-Forwarded-For and X-Forwarded-Host but forwarded X_Forwarded_For and
// X_Forwarded_Host, which CGI/WSGI servers (wsgiref, werkzeug, mod_wsgi,
// PHP) map to the same HTTP_X_FORWARDED_FOR / HTTP_X_FORWARDED_HOST
// variables, ahead of the proxy's own values. nginx drops fields with
// underscores by default (underscores_in_headers off) for this reason.
func TestUnderscoreForwardedForSpoof(t *testing.T) {
	target, _ := startPython(t, wsgiUpstream)
	for _, allow := range []bool{false, true} {
		for _, front := range fronts {
			t.Run(fmt.Sprintf("%s/allow=%v", front, allow), func(t *testing.T) {
				addr := startFront(t, target, Config{AllowUnderscoreHeaders: allow}, front)
				_, body := oneRequest(t, addr, "GET / HTTP/1.1\r\nHost: real.example\r\nX_Forwarded_For: 6.6.6.6\r\n"+
					"x-forwarded_host: evil.example\r\nConnection: close\r\n\r\n", "GET")
				if want := "xff=127.0.0.1 xfh=real.example"; body != want {
					t.Fatalf("app sees %q, want %q", body, want)
				}
			})
		}
	}
}

// TestUnderscoreHeadersDropped: fields with an underscore in their name
// do not reach the upstream, on any front end, unless
// Config.AllowUnderscoreHeaders; even then the underscore spellings of
// the fields the proxy sets or drops do not.
func TestUnderscoreHeadersDropped(t *testing.T) {
	up := newRawUp(t, func(r *http.Request) []string {
		return []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
	})
	fields := "X_Api_Key: k\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded_Proto: https\r\nContent_Length: 9\r\nTransfer_Encoding: chunked\r\nX-Keep: 1\r\n"
	for _, allow := range []bool{false, true} {
		for _, front := range fronts {
			t.Run(fmt.Sprintf("%s/allow=%v", front, allow), func(t *testing.T) {
				addr := startFront(t, up.url(), Config{AllowUnderscoreHeaders: allow}, front)
				before := len(up.received())
				if code, _ := oneRequest(t, addr, "GET /u HTTP/1.1\r\nHost: x\r\n"+fields+"\r\n", "GET"); code != 200 {
					t.Fatalf("status %d", code)
				}
				got := strings.ToLower(up.received()[before:])
				for _, f := range []string{"x_forwarded_for", "x-forwarded_proto", "content_length", "transfer_encoding"} {
					if strings.Contains(got, f) {
						t.Errorf("upstream got %s:\n%s", f, got)
					}
				}
				if strings.Contains(got, "x_api_key") != allow {
					t.Errorf("X_Api_Key forwarded: %v, want %v:\n%s", !allow, allow, got)
				}
				if !strings.Contains(got, "x-keep: 1") {
					t.Errorf("X-Keep not forwarded:\n%s", got)
				}
			})
		}
	}
}
