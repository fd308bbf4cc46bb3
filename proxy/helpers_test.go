package proxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fronts are the front ends: net/http's server with the Proxy as handler,
// Serve on its event loops (Linux), Serve with a goroutine per connection,
// Serve given TLSServer connections whose handshake is done (on the event
// loops on Linux), as an HTTPS front door does, and Serve on a
// NewTLSListener (Serve does the handshakes).
var fronts = []string{"handler", "serve", "serve-goroutines", "serve-tls", "serve-tls-listener"}

// testEnv is an upstream, a Proxy in front of it and a client.
type testEnv struct {
	upstream *httptest.Server
	proxy    *Proxy
	url      string // the proxy's base URL
	client   *http.Client
	logs     *syncBuffer
	metrics  *countMetrics
}

// newEnv starts upstream (if h is not nil), a Proxy with cfg in front of
// it served by front, and a client. Everything is closed in t.Cleanup.
func newEnv(t testing.TB, front string, h http.Handler, cfg Config) *testEnv {
	t.Helper()
	var up *httptest.Server
	target := "http://" + closedAddr(t)
	if h != nil {
		up = httptest.NewServer(h)
		t.Cleanup(up.Close)
		target = up.URL
	}
	env := newTargetEnv(t, front, target, cfg)
	env.upstream = up
	return env
}

// newTargetEnv is newEnv for an upstream at target that runs elsewhere (an
// app). The proxy's log is shown when the test fails.
func newTargetEnv(t testing.TB, front, target string, cfg Config) *testEnv {
	t.Helper()
	env := &testEnv{logs: &syncBuffer{}, metrics: &countMetrics{}}
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(env.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if cfg.Metrics == nil {
		cfg.Metrics = env.metrics
	}
	p, err := New(u, cfg)
	if err != nil {
		t.Fatal(err)
	}
	env.proxy = p
	env.url = serveFront(t, p, front)
	tr := &http.Transport{MaxIdleConnsPerHost: 100, DisableCompression: true, TLSClientConfig: testClientTLS()}
	env.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", env.logs.String())
		}
	})
	return env
}

// serveFront serves p on a new loopback listener and returns its URL.
func serveFront(t testing.TB, p *Proxy, front string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, p, front, ln)
}

func serveOn(t testing.TB, p *Proxy, front string, ln net.Listener) string {
	t.Helper()
	done := make(chan struct{})
	switch front {
	case "handler":
		srv := NewServer(p, ServerConfig{})
		go func() { defer close(done); _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close(); <-done; _ = p.Close() })
	case "serve", "serve-goroutines":
		if front == "serve-goroutines" {
			p.cfg.EventLoops = -1 // before the first Serve
		}
		go func() { defer close(done); _ = p.Serve(ln) }()
		t.Cleanup(func() { _ = p.Close(); <-done })
	case "serve-tls", "serve-tls-goroutines":
		if front == "serve-tls-goroutines" {
			p.cfg.EventLoops = -1
		}
		hl := newHandshakeListener(ln, testServerTLS(t))
		go func() { defer close(done); _ = p.Serve(hl) }()
		t.Cleanup(func() { _ = p.Close(); <-done; hl.wait() })
		return "https://" + ln.Addr().String()
	case "serve-tls-listener":
		cfg := testServerTLS(t)
		cfg.NextProtos = []string{"h2", "http/1.1"} // NewTLSListener keeps http/1.1 only
		go func() { defer close(done); _ = p.Serve(NewTLSListener(ln, cfg)) }()
		t.Cleanup(func() { _ = p.Close(); <-done })
		return "https://" + ln.Addr().String()
	default:
		t.Fatalf("unknown front %q", front)
	}
	return "http://" + ln.Addr().String()
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// countMetrics is a Metrics that counts.
type countMetrics struct {
	inFlight, requests, refused, upstreamErrors atomic.Int64
	mu                                          sync.Mutex
	codes                                       map[int]int
}

func (m *countMetrics) InFlight(d int) { m.inFlight.Add(int64(d)) }
func (m *countMetrics) Request(code int, _ time.Duration) {
	m.requests.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.codes == nil {
		m.codes = make(map[int]int)
	}
	m.codes[code]++
}
func (m *countMetrics) Refused()       { m.refused.Add(1) }
func (m *countMetrics) UpstreamError() { m.upstreamErrors.Add(1) }

// syncBuffer is a bytes.Buffer safe for concurrent writes (log output).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// eventually retries cond until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkGoroutines fails t if, after cleanup, goroutines are left that were
// not there when it was called. Call it first, so that its cleanup runs last.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(3 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("%d goroutines before, %d after:\n%s", before, n, relevantStacks(buf))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func relevantStacks(all []byte) string {
	var out []string
	for _, g := range strings.Split(string(all), "\n\n") {
		if strings.Contains(g, "quench/proxy") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// rawRequest sends raw bytes to addr (host:port, or a front's URL) and
// returns the reply read until the connection closes or d passes.
func rawRequest(t testing.TB, addr, req string, d time.Duration) string {
	t.Helper()
	c := dialFront(t, addr)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(d))
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	_, _ = b.ReadFrom(c)
	return b.String()
}

// dialFront connects to a front: addr is host:port (plain TCP) or the
// front's URL (https: TLS, handshake done, no certificate check).
func dialFront(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := dialFrontErr(t, addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dialFrontErr is dialFront returning its error (for goroutines).
func dialFrontErr(_ testing.TB, addr string) (net.Conn, error) {
	if h, ok := strings.CutPrefix(addr, "https://"); ok {
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", h, testClientTLS())
	}
	return net.Dial("tcp", strings.TrimPrefix(addr, "http://"))
}

// testClientTLS is the client side of the serve-tls front: HTTP/1.1, any
// certificate.
func testClientTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}
}

var (
	testCertOnce sync.Once
	testCert     tls.Certificate
	testCertErr  error
)

// testServerTLS is the serve-tls front's configuration: a self-signed
// ECDSA certificate, made once.
func testServerTLS(t testing.TB) *tls.Config {
	t.Helper()
	testCertOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			testCertErr = err
			return
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1),
			Subject:      pkix.Name{CommonName: "proxy test"},
			DNSNames:     []string{"localhost"},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(24 * time.Hour),
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			testCertErr = err
			return
		}
		testCert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	})
	if testCertErr != nil {
		t.Fatal(testCertErr)
	}
	return &tls.Config{Certificates: []tls.Certificate{testCert}, NextProtos: []string{"http/1.1"}}
}

// handshakeListener returns TLSServer connections whose handshake is done,
// as an HTTPS front door that routes by ALPN hands them on.
type handshakeListener struct {
	net.Listener
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

func newHandshakeListener(ln net.Listener, cfg *tls.Config) *handshakeListener {
	hl := &handshakeListener{Listener: ln, ch: make(chan net.Conn), done: make(chan struct{})}
	hl.wg.Add(1)
	go func() {
		defer hl.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			hl.wg.Add(1)
			go func() {
				defer hl.wg.Done()
				tc := TLSServer(c, cfg)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if tc.HandshakeContext(ctx) != nil {
					_ = c.Close()
					return
				}
				select {
				case hl.ch <- tc:
				case <-hl.done:
					_ = c.Close()
				}
			}()
		}
	}()
	return hl
}

func (hl *handshakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-hl.ch:
		return c, nil
	case <-hl.done:
		return nil, net.ErrClosed
	}
}

func (hl *handshakeListener) Close() error {
	hl.once.Do(func() { close(hl.done) })
	return hl.Listener.Close()
}

// wait waits for the accept loop and the handshakes in progress.
func (hl *handshakeListener) wait() {
	_ = hl.Close()
	hl.wg.Wait()
}

func isCanceled(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// checkReply fails t unless reply contains every string of want, in order,
// and none of not.
func checkReply(t *testing.T, reply string, want, not []string) {
	t.Helper()
	rest := reply
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("reply lacks %q (in order):\n%s", w, reply)
		}
		rest = rest[i+len(w):]
	}
	for _, n := range not {
		if strings.Contains(reply, n) {
			t.Errorf("reply contains %q:\n%s", n, reply)
		}
	}
}

// serveFronts are the front ends of Serve: event loops, goroutines, TLS.
var serveFronts = []string{"serve", "serve-goroutines", "serve-tls", "serve-tls-listener"}

// newUpstream starts an upstream server, closed in tb.Cleanup.
func newUpstream(tb testing.TB, h http.Handler) *httptest.Server {
	tb.Helper()
	up := httptest.NewServer(h)
	tb.Cleanup(up.Close)
	return up
}

// newProxy returns a Proxy with the default Config in front of up.
func newProxy(tb testing.TB, up *httptest.Server) *Proxy {
	tb.Helper()
	target, _ := url.Parse(up.URL)
	p, err := New(target, Config{})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}
