package proxy

import (
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLoopStaleUpstreamBytesAfterLengthBody: an upstream response whose
// body is followed by more bytes than its Content-Length announced,
// arriving after the head (in the read that completes the body). The event
// loop read exactly the announced length and kept the connection (its
// "readable" flag stayed set, but respDone and connect checked only
// eof/hup), and the extra bytes were parsed as the response to the next
// request - another client's.
func TestLoopStaleUpstreamBytesAfterLengthBody(t *testing.T) {
	up := newRawUp(t, func(r *http.Request) []string {
		if r.URL.Path == "/evil" {
			return []string{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "", "hello" + poison}
		}
		return []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
	})
	for _, front := range []string{"serve", "serve-tls"} {
		t.Run(front, func(t *testing.T) {
			addr := startFront(t, up.url(), Config{EventLoops: 1}, front)
			if code, body := oneRequest(t, addr, "GET /evil HTTP/1.1\r\nHost: x\r\n\r\n", "GET"); code != 200 || body != "hello" {
				t.Fatalf("attacker: %d %q", code, body)
			}
			time.Sleep(50 * time.Millisecond)
			code, body := oneRequest(t, addr, "GET /victim HTTP/1.1\r\nHost: x\r\n\r\n", "GET")
			if body != "ok" {
				t.Fatalf("victim on another connection got %d %q, want the upstream's answer \"ok\"", code, body)
			}
		})
	}
}

// TestLoopUnreadResponseClosed: once the last bytes of a response were
// queued for a client that does not read them, respDone set the deadline
// to 0 and run returned before readRequest set the idle one: the
// connection (and its pending buffer) stayed open forever, whatever
// TransferTimeout, IdleTimeout and ReadHeaderTimeout said. The same
// happened to a refusal (503) or a 502 the client did not read.
func TestLoopUnreadResponseClosed(t *testing.T) {
	body := strings.Repeat("x", 60000)
	up := newRawUp(t, func(r *http.Request) []string {
		return []string{"HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n\r\n" + body}
	})
	const d = 100 * time.Millisecond
	for _, tc := range []struct {
		name   string
		cfg    Config
		refuse bool
	}{
		{"response", Config{TransferTimeout: d}, false},
		{"transfer-timeout-off", Config{TransferTimeout: -1, IdleTimeout: d}, false},
		{"refusal", Config{TransferTimeout: d, MaxInFlight: 1}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.EventLoops = 1
			target := up.url()
			if tc.refuse {
				// The only in-flight slot is held by a request to an
				// upstream that never answers: every other is refused.
				hold, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer hold.Close()
				target.Host = hold.Addr().String()
			}
			p, addr := startProxyP(t, target, cfg)
			if tc.refuse {
				h, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer h.Close()
				_, _ = io.WriteString(h, "GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
				eventually(t, 2*time.Second, "the held request", func() bool { return p.InFlight() == 1 })
			}
			conns := &p.eventLoops().conns
			before := conns.Load()
			dialer := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
				return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
			}}
			c, err := dialer.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			eventually(t, 2*time.Second, "the connection on a loop", func() bool { return conns.Load() > before })
			// Pipelined requests, never reading a byte of the answers. (The
			// writes block once the proxy stops reading; closing ends them.)
			go func() { _, _ = io.WriteString(c, strings.Repeat("GET /big HTTP/1.1\r\nHost: x\r\n\r\n", 20000)) }()
			eventually(t, 3*time.Second, "the connection to close", func() bool { return conns.Load() == before })
		})
	}
}
