package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// pipeUpstream is an upstream reached over net.Pipe: DialContext hands the
// Proxy one end and serve runs on the other.
type pipeUpstream struct {
	serve func(net.Conn)
	wg    sync.WaitGroup
}

func (u *pipeUpstream) dial(context.Context, string, string) (net.Conn, error) {
	c, s := net.Pipe()
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(2 * time.Second))
		u.serve(s)
	}()
	return c, nil
}

// FuzzUpstreamResponse feeds arbitrary bytes to the proxy as the upstream's
// response: the decoder of the bytes quench trusts least after the
// client's. The proxy must answer something or abort, never hang or panic
// otherwise.
func FuzzUpstreamResponse(f *testing.F) {
	for _, seed := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
		"HTTP/1.1 200 OK\r\nConnection: X-A, close\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 999 Weird\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON",
		"garbage\r\n\r\n",
		"",
	} {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	f.Fuzz(func(t *testing.T, response string, upgrade bool) {
		up := &pipeUpstream{serve: func(c net.Conn) {
			br := bufio.NewReader(c)
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			_, _ = io.WriteString(c, response)
		}}
		p, err := New(&url.URL{Scheme: "http", Host: "app"}, Config{DialContext: up.dial, UpstreamTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer up.wg.Wait()
		defer p.Close()
		req := httptest.NewRequest("GET", "/", nil)
		if upgrade {
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
		}
		rec := httptest.NewRecorder()
		func() {
			defer func() {
				if v := recover(); v != nil && v != http.ErrAbortHandler {
					t.Fatalf("panic: %v", v)
				}
			}()
			p.ServeHTTP(rec, req)
		}()
		if rec.Code < 100 || rec.Code > 999 {
			t.Errorf("status %d", rec.Code)
		}
	})
}

// FuzzServeRequest feeds arbitrary bytes to Serve as a client connection.
func FuzzServeRequest(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
		"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"GET http://other/x HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nX-Pad : 1\r\nContent-Length: 30\r\n\r\nGET /s HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n",
		"POST /p HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
		"\x00\x01\x02",
		// Intercepted: served on the connection by a local handler.
		"GET /i/flush HTTP/1.1\r\nHost: a\r\n\r\nHEAD /i HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /i/read HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\n0123456789abcdefghij",
		"POST /i HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"GET /i/read HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		up := &pipeUpstream{serve: func(c net.Conn) {
			br := bufio.NewReader(c)
			for {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
					return
				}
			}
		}}
		p, err := New(&url.URL{Scheme: "http", Host: "app"}, Config{
			DialContext:       up.dial,
			UpstreamTimeout:   time.Second,
			ReadHeaderTimeout: 50 * time.Millisecond,
			IdleTimeout:       20 * time.Millisecond,
			TransferTimeout:   50 * time.Millisecond,
			Intercept: func(r *http.Request) http.Handler {
				if !strings.HasPrefix(r.URL.Path, "/i") {
					return nil
				}
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if strings.Contains(r.URL.Path, "read") {
						b := make([]byte, 8)
						_, _ = io.ReadFull(r.Body, b)
					}
					_, _ = io.WriteString(w, r.URL.Path)
					if strings.Contains(r.URL.Path, "flush") {
						w.(http.Flusher).Flush()
						_, _ = io.WriteString(w, strings.Repeat("x", 5000))
					}
				})
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer up.wg.Wait()
		defer p.Close()
		client, server := net.Pipe()
		defer client.Close()
		cc := newClientConn(p, server)
		if !p.track(cc) {
			t.Fatal("closed")
		}
		done := make(chan struct{})
		go func() { defer close(done); cc.serve() }()
		_ = client.SetDeadline(time.Now().Add(5 * time.Second))
		var out bytes.Buffer
		readDone := make(chan struct{})
		go func() { defer close(readDone); _, _ = out.ReadFrom(client) }()
		_, _ = io.WriteString(client, in)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("connection not done 5s after the client stopped sending")
		}
		<-readDone
		if out.Len() > 0 && !strings.HasPrefix(out.String(), "HTTP/1.1 ") {
			t.Errorf("reply does not start with a status line: %q", out.String())
		}
	})
}
