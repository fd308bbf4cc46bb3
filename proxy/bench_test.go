package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
)

// The benchmarks use a raw upstream and raw clients that allocate nothing
// per request, so that allocs/op is the proxy's own.

const cannedResponse = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	"Date: Mon, 23 Nov 2026 09:00:00 GMT\r\nContent-Length: 13\r\n\r\nHello, world!"

// rawUpstream answers every request head it reads with cannedResponse.
func rawUpstream(tb testing.TB) *url.URL {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	var mu sync.Mutex
	var conns []net.Conn
	tb.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				resp := []byte(cannedResponse)
				for {
					if err := skipHead(br); err != nil {
						return
					}
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return &url.URL{Scheme: "http", Host: ln.Addr().String()}
}

// skipHead reads up to the end of a message head.
func skipHead(br *bufio.Reader) error {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 && (len(line) == 1 || line[0] == '\r') {
			return nil
		}
	}
}

// discardWriter is an http.ResponseWriter that keeps nothing.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }

// benchHandler runs GET requests through h, called directly, so that only
// the upstream half of the proxy (its forwarding path) is measured.
func benchHandler(b *testing.B, h http.Handler) {
	req, err := http.NewRequest("GET", "http://enclave.example/hello", nil)
	if err != nil {
		b.Fatal(err)
	}
	req.RequestURI = "/hello"
	req.RemoteAddr = "192.0.2.1:1234"
	w := &discardWriter{h: make(http.Header)}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, req)
		if w.code != 200 {
			b.Fatalf("status %d", w.code)
		}
	}
}

// BenchmarkForward compares the forwarding paths on their own: quench's
// against httputil.ReverseProxy with net/http's Transport, stock and with
// nitriding's tuning.
func BenchmarkForward(b *testing.B) {
	target := rawUpstream(b)
	b.Run("quench", func(b *testing.B) {
		p, err := New(target, Config{})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		benchHandler(b, p)
	})
	b.Run("httputil-stock", func(b *testing.B) {
		rp := httputil.NewSingleHostReverseProxy(target)
		tr := http.DefaultTransport.(*http.Transport).Clone()
		defer tr.CloseIdleConnections()
		rp.Transport = tr
		benchHandler(b, rp)
	})
	b.Run("httputil-nitriding", func(b *testing.B) {
		rp := httputil.NewSingleHostReverseProxy(target)
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 1000, 1000
		defer tr.CloseIdleConnections()
		rp.Transport = tr
		rp.BufferPool = benchBufPool{&sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
		benchHandler(b, rp)
	})
}

type benchBufPool struct{ p *sync.Pool }

func (p benchBufPool) Get() []byte  { return *p.p.Get().(*[]byte) }
func (p benchBufPool) Put(b []byte) { p.p.Put(&b) }

// BenchmarkFrontEnds measures whole requests through each front end, over
// loopback TCP, one keep-alive client connection. serve-tls-goroutines is
// serve-tls with the event loops off, for comparison.
func BenchmarkFrontEnds(b *testing.B) {
	target := rawUpstream(b)
	for _, front := range append(fronts, "serve-tls-goroutines", "serve-tls-intercept-paths") {
		b.Run(front, func(b *testing.B) {
			var cfg Config
			if front == "serve-tls-intercept-paths" {
				// As the enclave's front door: its own endpoints claimed,
				// the rest forwarded on the loops' fast path.
				front = "serve-tls"
				cfg.Intercept = func(*http.Request) http.Handler { return http.NotFoundHandler() }
				cfg.InterceptPaths = []string{"/enclave"}
			}
			p, err := New(target, cfg)
			if err != nil {
				b.Fatal(err)
			}
			base := serveFront(b, p, front)
			c := dialFront(b, base)
			defer c.Close()
			req := []byte("GET /hello HTTP/1.1\r\nHost: enclave.example\r\n\r\n")
			br := bufio.NewReader(c)
			roundTrip := func() {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				if err := skipHead(br); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(br, make13[:]); err != nil {
					b.Fatal(err)
				}
				if !bytes.Equal(make13[:], []byte("Hello, world!")) {
					b.Fatalf("body %q", make13[:])
				}
			}
			roundTrip()
			b.ReportAllocs()
			for b.Loop() {
				roundTrip()
			}
		})
	}
}

var make13 [13]byte

// benchClient sends req on one keep-alive connection to addr and reads a
// response with a body of bodyLen bytes, for each iteration.
func benchClient(b *testing.B, addr, req string, bodyLen int) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	body := make([]byte, bodyLen)
	roundTrip := func() {
		if _, err := io.WriteString(c, req); err != nil {
			b.Fatal(err)
		}
		if err := skipHead(br); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(br, body); err != nil {
			b.Fatal(err)
		}
	}
	roundTrip()
	b.ReportAllocs()
	for b.Loop() {
		roundTrip()
	}
}

// BenchmarkIntercept measures a small handler served through
// Config.Intercept on Proxy.Serve's front end, against the same handler
// behind net/http's server.
func BenchmarkIntercept(b *testing.B) {
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "Hello, world!")
	})
	const req = "GET /hello HTTP/1.1\r\nHost: enclave.example\r\n\r\n"
	b.Run("serve", func(b *testing.B) {
		p, err := New(&url.URL{Scheme: "http", Host: closedAddr(b)}, Config{
			Intercept: func(*http.Request) http.Handler { return hello },
		})
		if err != nil {
			b.Fatal(err)
		}
		base := serveFront(b, p, "serve")
		benchClient(b, base[len("http://"):], req, 13)
	})
	b.Run("net-http", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := NewServer(hello, ServerConfig{})
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(ln) }()
		defer func() { _ = srv.Close(); <-done }()
		benchClient(b, ln.Addr().String(), req, 13)
	})
}

// BenchmarkRefusal measures a request refused with 503 by Proxy.Serve
// (MaxInFlight reached), over one keep-alive connection.
func BenchmarkRefusal(b *testing.B) {
	// An upstream that reads requests and never answers holds the only slot.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	defer ln.Close()
	p, err := New(&url.URL{Scheme: "http", Host: ln.Addr().String()}, Config{MaxInFlight: 1})
	if err != nil {
		b.Fatal(err)
	}
	base := serveFront(b, p, "serve")
	hold, err := net.Dial("tcp", base[len("http://"):])
	if err != nil {
		b.Fatal(err)
	}
	defer hold.Close()
	if _, err := io.WriteString(hold, "GET /held HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		b.Fatal(err)
	}
	up := <-accepted
	defer up.Close()
	benchClient(b, base[len("http://"):], "GET /hello HTTP/1.1\r\nHost: enclave.example\r\n\r\n", len("503 Service Unavailable\n"))
}
