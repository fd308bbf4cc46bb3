package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/quenchnet/quench/internal/testutil"
)

// startH2CUpstream serves h with HTTP/2 in cleartext, prior knowledge
// only (as a gRPC server does), on loopback TCP (unix false) or a unix
// socket, and returns its h2c:// or h2c+unix:// URL.
func startH2CUpstream(t testing.TB, h http.Handler, unix bool) *url.URL {
	t.Helper()
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &protos}
	var ln net.Listener
	var err error
	var u *url.URL
	if unix {
		path := filepath.Join(t.TempDir(), "app.sock")
		ln, err = net.Listen("unix", path)
		u = &url.URL{Scheme: "h2c+unix", Path: path}
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		if err == nil {
			u = &url.URL{Scheme: "h2c", Host: ln.Addr().String()}
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return u
}

// h2cEnv is a Proxy to an h2c upstream, behind NewServer with TLS
// (HTTP/2 clients), with a client that speaks HTTP/2 only.
type h2cEnv struct {
	proxy   *Proxy
	addr    string // the TLS front's address
	client  *http.Client
	logs    *syncBuffer
	metrics *countMetrics
}

func newH2CEnv(t testing.TB, target *url.URL, cfg Config) *h2cEnv {
	t.Helper()
	env := &h2cEnv{logs: &syncBuffer{}, metrics: &countMetrics{}}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(env.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if cfg.Metrics == nil {
		cfg.Metrics = env.metrics
	}
	p, err := New(target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	env.proxy = p
	srv := NewServer(p, ServerConfig{TLSConfig: testServerTLS(t)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close(); <-done; _ = p.Close() })
	env.addr = ln.Addr().String()
	var protos http.Protocols
	protos.SetHTTP2(true)
	tr := &http.Transport{
		Protocols:          &protos,
		TLSClientConfig:    &tls.Config{InsecureSkipVerify: true},
		DisableCompression: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	env.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	return env
}

func (env *h2cEnv) url(path string) string { return "https://" + env.addr + path }

// TestH2CUnaryTrailers: a gRPC-style unary call (HTTP/2 client, POST with
// te: trailers) reaches the h2c upstream over HTTP/2 with te: trailers,
// the forwarding fields and the body, and the response's body and
// trailers, announced (Trailer) and not (TrailerPrefix), come back.
func TestH2CUnaryTrailers(t *testing.T) {
	for _, unix := range []bool{false, true} {
		t.Run(fmt.Sprintf("unix=%v", unix), func(t *testing.T) {
			var problems atomic.Value
			problems.Store("")
			up := startH2CUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				var bad []string
				if r.ProtoMajor != 2 {
					bad = append(bad, "proto "+r.Proto)
				}
				if v := r.Header.Get("Te"); v != "trailers" {
					bad = append(bad, "te "+v)
				}
				if v := r.Header.Get("Proxy-Authorization"); v != "" {
					bad = append(bad, "proxy-authorization forwarded")
				}
				if v := r.Header.Get("X-Forwarded-For"); v != "127.0.0.1" {
					bad = append(bad, "x-forwarded-for "+v)
				}
				if v := r.Header.Get("X-Forwarded-Proto"); v != "https" {
					bad = append(bad, "x-forwarded-proto "+v)
				}
				if v := r.Header.Get("Forwarded"); !strings.Contains(v, "proto=https") {
					bad = append(bad, "forwarded "+v)
				}
				if v := r.Header.Get("User-Agent"); v != "grpc-go-test" {
					bad = append(bad, "user-agent "+v)
				}
				if r.URL.Path != "/pkg.Svc/Method" {
					bad = append(bad, "path "+r.URL.Path)
				}
				b, _ := io.ReadAll(r.Body)
				if string(b) != "hello" {
					bad = append(bad, "body "+string(b))
				}
				problems.Store(strings.Join(bad, "; "))
				w.Header().Set("Content-Type", "application/grpc")
				w.Header().Set("Trailer", "Grpc-Status")
				w.WriteHeader(200)
				_, _ = io.WriteString(w, "world")
				w.Header().Set("Grpc-Status", "0")
				w.Header().Set(http.TrailerPrefix+"Grpc-Message", "fine")
			}), unix)
			env := newH2CEnv(t, up, Config{})
			req, _ := http.NewRequest("POST", env.url("/pkg.Svc/Method"), strings.NewReader("hello"))
			req.Header.Set("Te", "trailers")
			req.Header.Set("Content-Type", "application/grpc")
			req.Header.Set("User-Agent", "grpc-go-test")
			req.Header.Set("Proxy-Authorization", "Basic eDp5")
			resp, err := env.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.ProtoMajor != 2 || resp.StatusCode != 200 || string(body) != "world" {
				t.Fatalf("got %s %d %q, want HTTP/2 200 world", resp.Proto, resp.StatusCode, body)
			}
			if p := problems.Load().(string); p != "" {
				t.Errorf("upstream saw: %s", p)
			}
			if g, m := resp.Trailer.Get("Grpc-Status"), resp.Trailer.Get("Grpc-Message"); g != "0" || m != "fine" {
				t.Errorf("trailers %v, want Grpc-Status 0 and Grpc-Message fine", resp.Trailer)
			}
		})
	}
}

// h2RawResponse sends a request with the given fields (END_STREAM on the
// HEADERS frame, or on a DATA frame with data after it) to the TLS front
// at addr and returns the fields of the response HEADERS frame and whether
// it ended the stream; any other first frame fails the test.
func h2RawResponse(t *testing.T, addr string, fields [][2]string, data []byte) (map[string]string, bool) {
	t.Helper()
	f, err := testutil.H2First(t, addr, fields, data, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if f.Kind != "HEADERS" {
		t.Fatalf("first frame %v, want the response HEADERS", f)
	}
	return f.Fields, f.EndStream
}

// TestH2CTrailersOnly: a gRPC trailers-only response (one HEADERS frame
// with END_STREAM, grpc-status in it, as a gRPC server sends an error)
// reaches the client as one HEADERS frame with END_STREAM too. Sent as
// HEADERS, then an empty DATA frame ending the stream, gRPC clients find
// no trailers and fail the call with Internal.
func TestH2CTrailersOnly(t *testing.T) {
	up := startH2CUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "12")
		w.Header().Set("Grpc-Message", "unimplemented")
		w.WriteHeader(200)
	}), false)
	env := newH2CEnv(t, up, Config{})
	fields, ended := h2RawResponse(t, env.addr, [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":authority", "app"}, {":path", "/pkg.Svc/Missing"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	}, []byte("\x00\x00\x00\x00\x00")) // a gRPC request: an empty message
	if fields[":status"] != "200" || fields["grpc-status"] != "12" || fields["grpc-message"] != "unimplemented" {
		t.Errorf("response header %v, want 200 with grpc-status 12", fields)
	}
	if !ended {
		t.Errorf("the response HEADERS frame did not end the stream: not a trailers-only response")
	}
}

// TestH2CBidiStream: a bidirectional stream, the client sending message
// N+1 only once it has reply N, works only if the request body streams up
// while the response streams back, each part flushed at once.
func TestH2CBidiStream(t *testing.T) {
	up := startH2CUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		testutil.EchoLines(w, r, "re: ")
	}), false)
	env := newH2CEnv(t, up, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(ctx, "POST", env.url("/pkg.Svc/Chat"), pr)
	// net/http's client gives up on ctx only once its body read returns.
	defer context.AfterFunc(ctx, func() { pw.CloseWithError(ctx.Err()) })()
	req.Header.Set("Te", "trailers")
	req.Header.Set("Content-Type", "application/grpc")
	// Do returns with the response header, which the server sends
	// before it reads a message: the proxy must flush it at once.
	resp, err := env.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(pw, "msg 0\n"); err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	const rounds = 20
	for i := range rounds {
		// Bounded by ctx: a reply that waits in a buffer fails the test
		// at the deadline rather than hanging it.
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if want := fmt.Sprintf("re: msg %d\n", i); line != want {
			t.Fatalf("reply %d: %q, want %q", i, line, want)
		}
		if i+1 < rounds {
			if _, err := fmt.Fprintf(pw, "msg %d\n", i+1); err != nil {
				t.Fatal(err)
			}
		}
	}
	_ = pw.Close()
	if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
		t.Fatalf("after the last reply: %q, %v", rest, err)
	}
	if g := resp.Trailer.Get("Grpc-Status"); g != "0" {
		t.Errorf("Grpc-Status trailer %q, want 0", g)
	}
}

// TestH2CHTTP1Clients: HTTP/1.1 clients, on every front end (net/http's
// server and Serve's, which must not take the connection onto its
// HTTP/1.1-only event loops), are forwarded to the h2c upstream: TE:
// trailers goes through, the hop-by-hop fields (and the fields Connection
// names, and an h2c upgrade) do not, and a streamed response comes back
// chunked, with its trailers.
func TestH2CHTTP1Clients(t *testing.T) {
	var problems atomic.Value
	up := startH2CUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var bad []string
		if r.ProtoMajor != 2 {
			bad = append(bad, "proto "+r.Proto)
		}
		if v := r.Header.Get("Te"); v != "trailers" {
			bad = append(bad, "te "+v)
		}
		for _, k := range []string{"X-Hop", "Keep-Alive", "Proxy-Authorization", "Upgrade", "Http2-Settings", "Connection"} {
			if v, ok := r.Header[k]; ok {
				bad = append(bad, k+" forwarded: "+strings.Join(v, ","))
			}
		}
		if v := r.Header.Get("X-End"); v != "1" {
			bad = append(bad, "x-end "+v)
		}
		if v := r.Header.Get("X-Forwarded-For"); v != "127.0.0.1" {
			bad = append(bad, "x-forwarded-for "+v)
		}
		b, _ := io.ReadAll(r.Body)
		if string(b) != "ping" {
			bad = append(bad, "body "+string(b))
		}
		problems.Store(strings.Join(bad, "; "))
		w.Header().Set("Trailer", "Grpc-Status")
		_, _ = io.WriteString(w, "po")
		http.NewResponseController(w).Flush()
		_, _ = io.WriteString(w, "ng")
		w.Header().Set("Grpc-Status", "0")
	}), false)
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			problems.Store("not reached")
			c := dialNewFront(t, up, front)
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			for i := range 2 { // the connection carries a second request
				fmt.Fprint(c, "POST /x HTTP/1.1\r\nHost: app\r\nConnection: X-Hop, keep-alive, TE, Upgrade, HTTP2-Settings\r\n"+
					"X-Hop: 1\r\nX-End: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eDp5\r\n"+
					"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 4\r\n\r\nping")
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				body, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				if resp.StatusCode != 200 || string(body) != "pong" {
					t.Fatalf("request %d: %d %q, want 200 pong", i, resp.StatusCode, body)
				}
				if p := problems.Load().(string); p != "" {
					t.Errorf("request %d: upstream saw: %s", i, p)
				}
				if g := resp.Trailer.Get("Grpc-Status"); g != "0" {
					t.Errorf("request %d: trailers %v, want Grpc-Status 0", i, resp.Trailer)
				}
			}
		})
	}
}

// startRawH2CUpstream is an h2c server that answers every request with
// one HEADERS frame ending the stream, :status 200 and grpc-status 5, and
// no content-length, as a gRPC server sends a trailers-only response
// (net/http's server adds content-length: 0).
func startRawH2CUpstream(t *testing.T) *url.URL {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				preface := make([]byte, len(http2.ClientPreface))
				if _, err := io.ReadFull(c, preface); err != nil {
					return
				}
				fr := http2.NewFramer(c, c)
				fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
				_ = fr.WriteSettings()
				for {
					f, err := fr.ReadFrame()
					if err != nil {
						return
					}
					switch f := f.(type) {
					case *http2.SettingsFrame:
						if !f.IsAck() {
							_ = fr.WriteSettingsAck()
						}
					case *http2.PingFrame:
						if !f.IsAck() {
							_ = fr.WritePing(true, f.Data)
						}
					case *http2.MetaHeadersFrame:
						var hb bytes.Buffer
						enc := hpack.NewEncoder(&hb)
						_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
						_ = enc.WriteField(hpack.HeaderField{Name: "grpc-status", Value: "5"})
						_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
					}
				}
			}()
		}
	}()
	return &url.URL{Scheme: "h2c", Host: ln.Addr().String()}
}

// dialNewFront serves a new Proxy for target on front and returns a
// connection to it (TLS for the TLS fronts).
func dialNewFront(t *testing.T, target *url.URL, front string) net.Conn {
	t.Helper()
	p, err := New(target, Config{})
	if err != nil {
		t.Fatal(err)
	}
	base := serveFront(t, p, front)
	addr := strings.TrimPrefix(strings.TrimPrefix(base, "http://"), "https://")
	c := dialFront(t, addr)
	if strings.HasPrefix(base, "https://") {
		c = tls.Client(c, testClientTLS())
	}
	return c
}

// TestH2CEmptyResponseHTTP1: an upstream response with no body (END_STREAM
// on its HEADERS frame, no content-length) reaches an HTTP/1.1 client
// with a length, so that the client need not wait for the connection to
// close, and the connection carries the next request.
func TestH2CEmptyResponseHTTP1(t *testing.T) {
	up := startRawH2CUpstream(t)
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			c := dialNewFront(t, up, front)
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			br := bufio.NewReader(c)
			for i := range 2 {
				fmt.Fprint(c, "GET /x HTTP/1.1\r\nHost: app\r\n\r\n")
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				body, err := io.ReadAll(resp.Body)
				if err != nil || resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get("Grpc-Status") != "5" {
					t.Fatalf("request %d: %d %q %v %v", i, resp.StatusCode, body, resp.Header, err)
				}
			}
		})
	}
}

// TestH2CClientCancel: a client that goes away mid-stream (an HTTP/2 client
// cancelling, an HTTP/1.1 client closing its connection) cancels the
// upstream handler's context.
func TestH2CClientCancel(t *testing.T) {
	started := make(chan struct{}, 1)
	cancelled := make(chan struct{}, 1)
	up := startH2CUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "first\n")
		http.NewResponseController(w).Flush()
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			cancelled <- struct{}{}
		case <-time.After(10 * time.Second):
		}
	}), false)
	wait := func(t *testing.T) {
		t.Helper()
		select {
		case <-cancelled:
		case <-time.After(4 * time.Second):
			t.Fatal("the upstream handler's context was not cancelled")
		}
	}
	t.Run("h2", func(t *testing.T) {
		env := newH2CEnv(t, up, Config{})
		ctx, cancel := context.WithCancel(context.Background())
		pr, pw := io.Pipe()
		defer pw.Close()
		req, _ := http.NewRequestWithContext(ctx, "POST", env.url("/stream"), pr)
		resp, err := env.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		<-started
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || line != "first\n" {
			t.Fatalf("%q %v", line, err)
		}
		cancel()
		// net/http's client resets the stream once its body read returns.
		pw.CloseWithError(context.Canceled)
		wait(t)
	})
	for _, front := range []string{"handler", "serve-goroutines", "serve-tls"} {
		t.Run(front, func(t *testing.T) {
			p, err := New(up, Config{})
			if err != nil {
				t.Fatal(err)
			}
			p.clientCheck = 50 * time.Millisecond
			base := serveFront(t, p, front)
			addr := strings.TrimPrefix(strings.TrimPrefix(base, "http://"), "https://")
			c := dialFront(t, addr)
			if strings.HasPrefix(base, "https://") {
				c = tls.Client(c, testClientTLS())
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprint(c, "GET /stream HTTP/1.1\r\nHost: app\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			<-started
			if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "first\n" {
				t.Fatalf("%q %v", line, err)
			}
			_ = c.Close()
			wait(t)
		})
	}
}

// TestH2CUpstreamDown: an h2c upstream that cannot be dialled gets 502,
// a log line and an upstream error in the metrics.
func TestH2CUpstreamDown(t *testing.T) {
	env := newH2CEnv(t, &url.URL{Scheme: "h2c", Host: closedAddr(t)}, Config{})
	resp, err := env.client.Post(env.url("/pkg.Svc/Method"), "application/grpc", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status %d, want 502", resp.StatusCode)
	}
	if n := env.metrics.upstreamErrors.Load(); n != 1 {
		t.Errorf("%d upstream errors recorded, want 1", n)
	}
	if logs := env.logs.String(); !strings.Contains(logs, "proxy: upstream error") || !strings.Contains(logs, "status=502") {
		t.Errorf("no upstream error logged:\n%s", logs)
	}
}

// TestH2CUpstreamTimeout: an upstream that sends no response header
// within UpstreamTimeout gets 504; one that stops sending mid-body has
// its response aborted.
func TestH2CUpstreamTimeout(t *testing.T) {
	up := startH2CUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/body" {
			// A stream silent for longer than UpstreamTimeout (a gRPC
			// watch stream between events): its connection's liveness is
			// HTTP/2's pings, not a bound on the silence.
			_, _ = io.WriteString(w, "part")
			http.NewResponseController(w).Flush()
			time.Sleep(600 * time.Millisecond)
			_, _ = io.WriteString(w, "rest")
			return
		}
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}), false)
	env := newH2CEnv(t, up, Config{UpstreamTimeout: 200 * time.Millisecond})
	resp, err := env.client.Get(env.url("/head"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("status %d, want 504", resp.StatusCode)
	}
	resp, err = env.client.Get(env.url("/body"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(b) != "partrest" {
		t.Errorf("body %q, error %v; want partrest: a silent stream was cut", b, err)
	}
}

// TestH2CInFlightLimit: each stream holds an in-flight slot: past
// MaxInFlight a request is refused with 503 and Retry-After, even on the
// same HTTP/2 connection, and is not forwarded.
// TestH2CInFlightLimit: a request waiting for its response header holds
// its in-flight slot; a stream whose header has come (a gRPC server
// stream, SSE over h2c) gives it back, up to MaxStreams, and holds it past
// that.
func TestH2CInFlightLimit(t *testing.T) {
	for _, maxStreams := range []int{0, -1} {
		t.Run(fmt.Sprintf("MaxStreams=%d", maxStreams), func(t *testing.T) {
			var reached atomic.Int64
			release := make(chan struct{})
			up := startH2CUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				reached.Add(1)
				if r.URL.Path == "/stream" {
					w.WriteHeader(200)
					http.NewResponseController(w).Flush()
				}
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}), false)
			var once sync.Once
			stop := func() { once.Do(func() { close(release) }) }
			defer stop()
			env := newH2CEnv(t, up, Config{MaxInFlight: 1, MaxStreams: maxStreams})
			get := func(path string) *http.Response {
				t.Helper()
				resp, err := env.client.Get(env.url(path))
				if err != nil {
					t.Fatal(err)
				}
				return resp
			}
			refused := func(path string) {
				t.Helper()
				resp := get(path)
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
					t.Errorf("%s: %d, Retry-After %q; want 503 with Retry-After", path, resp.StatusCode, resp.Header.Get("Retry-After"))
				}
			}
			resp := get("/stream")
			defer resp.Body.Close()
			wantReached, wantRefused := int64(1), int64(0)
			if maxStreams < 0 {
				refused("/second")
				wantRefused++
			} else {
				eventually(t, 5*time.Second, "the stream's slot back", func() bool { return env.proxy.InFlight() == 0 })
				if n := env.proxy.Streams(); n != 1 {
					t.Errorf("Streams %d, want 1", n)
				}
				held := make(chan *http.Response, 1)
				go func() {
					resp, err := env.client.Get(env.url("/held"))
					if err != nil {
						t.Error(err)
						resp = nil
					}
					held <- resp
				}()
				wantReached++
				eventually(t, 5*time.Second, "the held request at the upstream", func() bool { return reached.Load() == wantReached })
				refused("/third")
				wantRefused++
				defer func() {
					stop()
					if resp := <-held; resp != nil {
						resp.Body.Close()
					}
				}()
			}
			if n := reached.Load(); n != wantReached {
				t.Errorf("%d requests reached the upstream, want %d", n, wantReached)
			}
			if n := env.metrics.refused.Load(); n != wantRefused {
				t.Errorf("%d refusals recorded, want %d", n, wantRefused)
			}
			if n := env.proxy.InFlight(); n != 1 {
				t.Errorf("InFlight %d, want 1", n)
			}
		})
	}
}

// TestH2CIntercept: the requests Intercept claims are served by its
// handler, over HTTP/2 and HTTP/1.1, and never reach the h2c upstream.
func TestH2CIntercept(t *testing.T) {
	var reached atomic.Int64
	up := startH2CUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		_, _ = io.WriteString(w, "app")
	}), false)
	cfg := Config{
		InterceptPaths: []string{"/enclave"},
		Intercept: func(r *http.Request) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "enclave") })
		},
	}
	env := newH2CEnv(t, up, cfg)
	for path, want := range map[string]string{"/enclave/attestation": "enclave", "/app": "app"} {
		resp, err := env.client.Get(env.url(path))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != want {
			t.Errorf("%s: %q, want %q", path, b, want)
		}
	}
	p, err := New(up, cfg)
	if err != nil {
		t.Fatal(err)
	}
	base := serveFront(t, p, "serve")
	if reply := rawRequest(t, strings.TrimPrefix(base, "http://"), "GET /enclave/attestation HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n", 3*time.Second); !strings.HasSuffix(reply, "enclave") {
		t.Errorf("HTTP/1.1 intercepted request: %q", reply)
	}
	if n := reached.Load(); n != 1 {
		t.Errorf("%d requests reached the upstream, want 1 (/app)", n)
	}
}

// TestH2CTargets: the h2c target forms New accepts and refuses.
func TestH2CTargets(t *testing.T) {
	for _, s := range []string{"h2c://127.0.0.1:50051", "h2c://app", "h2c://127.0.0.1:50051/prefix", "h2c+unix:///run/app.sock"} {
		u, _ := url.Parse(s)
		p, err := New(u, Config{})
		if err != nil {
			t.Errorf("%s: %v", s, err)
			continue
		}
		if p.h2c == nil {
			t.Errorf("%s: not an h2c upstream", s)
		}
		_ = p.Close()
	}
	for _, s := range []string{"h2c:///nohost", "h2c+unix://host/path", "h2c+unix://", "h2://127.0.0.1:1"} {
		u, _ := url.Parse(s)
		if p, err := New(u, Config{}); err == nil {
			_ = p.Close()
			t.Errorf("%s: accepted", s)
		}
	}
}

// BenchmarkH2CUpstream: a small POST from an HTTP/2 client over TLS (as
// gRPC clients send through quench-enclave) through NewServer to the same
// handler served over h2c and over HTTP/1.1, side by side: what the h2c
// path costs per request against the HTTP/1.1 one (client, proxy and
// upstream in the benchmark's process).
func BenchmarkH2CUpstream(b *testing.B) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "hello")
	})
	for _, kind := range []string{"h2c", "http1"} {
		b.Run(kind, func(b *testing.B) {
			var target *url.URL
			if kind == "h2c" {
				target = startH2CUpstream(b, h, false)
			} else {
				up := httptest.NewServer(h)
				b.Cleanup(up.Close)
				target, _ = url.Parse(up.URL)
			}
			env := newH2CEnv(b, target, Config{})
			u := env.url("/svc/Method")
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := env.client.Post(u, "application/grpc", strings.NewReader("request"))
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

// TestH2CTrailersOnlyNoContentLength: as TestH2CTrailersOnly, but the
// upstream's HEADERS frame ending the stream has no content-length, as
// grpc-go's server sends an error (net/http's server adds content-length:
// 0, which hid the difference). The client must get one HEADERS frame
// ending the stream, not HEADERS and an empty DATA frame ending it, which
// gRPC clients fail with "server closed the stream without sending
// trailers" (Internal).
func TestH2CTrailersOnlyNoContentLength(t *testing.T) {
	env := newH2CEnv(t, startRawH2CUpstream(t), Config{})
	fields, ended := h2RawResponse(t, env.addr, [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":authority", "app"}, {":path", "/pkg.Svc/Missing"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	}, []byte("\x00\x00\x00\x00\x00"))
	if fields[":status"] != "200" || fields["grpc-status"] != "5" {
		t.Errorf("response header %v, want 200 with grpc-status 5", fields)
	}
	if !ended {
		t.Errorf("the response HEADERS frame did not end the stream: not a trailers-only response (fields %v)", fields)
	}
}
