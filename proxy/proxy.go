package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards HTTP requests to one upstream. It implements
// [http.Handler]; serve it with [NewServer] or any [http.Server]. Close
// must be called when the Proxy is no longer needed, to close its upstream
// connections.
type Proxy struct {
	cfg         Config
	defaultHost string // Host header for requests that came without one
	pathPrefix  string // target path without a trailing slash; "" for none
	rawPrefix   string // target path as given
	pool        connPool
	h2c         *h2cUpstream // set for h2c and h2c+unix targets, which pool is not used for
	lim         *limiter
	bufs        sync.Pool    // *[]byte of cfg.BufferSize
	smallBufs   sync.Pool    // *[]byte of smallBufSize, for idle tunnels
	retryAfter  []string     // Retry-After header value, shared by all refusals
	refusals    [3][2][]byte // Serve's whole 503 responses, by refusalKeep/Close/Keep10 and HEAD
	log         *slog.Logger
	metrics     Metrics

	aliveCheckAfter time.Duration // aliveCheckAfter; tests change it
	clientCheck     time.Duration // clientCheckInterval; tests change it

	ctx    context.Context // cancelled by Close; the context of Serve's exchanges
	cancel context.CancelFunc

	shuttingDown atomic.Bool // set by Shutdown: Serve's connections close when idle

	mu      sync.Mutex
	closed  bool                 // guarded by mu
	tunnels map[*tunnel]struct{} // guarded by mu
	// upgrades counts the upgrade requests being forwarded or tunnelled
	// (Config.MaxTunnels), each from before it is forwarded until it ends.
	upgrades atomic.Int64
	loops    atomic.Pointer[loopSet] // Serve's event loops, started by the first Serve that can use them
	noLoops  bool                    // the event loops could not start; guarded by mu
	closers  map[closer]struct{}     // listeners and connections of Serve; guarded by mu
	wg       sync.WaitGroup          // one count per tunnel and per connection of Serve
}

var _ http.Handler = (*Proxy)(nil)

// smallBufSize is the buffer an upgraded connection reads into while its
// traffic is light; it moves to a BufferSize buffer when a read fills the
// small one, and back when reads get small again, so idle WebSocket
// connections hold 4 KiB per direction instead of 32 KiB.
const smallBufSize = 4 << 10

// aliveCheckAfter is how long an upstream connection may sit idle before it
// is checked, with one non-blocking peek, for having been closed by the
// upstream. Servers with short keep-alive timeouts (Node.js: 5 s) close idle
// connections; a request sent on one would fail. Connections reused sooner
// skip the check, which costs a syscall.
const aliveCheckAfter = time.Second

// New returns a Proxy that forwards to target: an http or https URL whose
// path, if any, is prefixed to every request path, or a unix URL
// (unix:///path/to/socket) naming a socket that serves plain HTTP.
// An h2c URL (h2c://host:port, with an optional path prefix) or h2c+unix
// URL (h2c+unix:///path/to/socket) names an upstream that speaks HTTP/2
// in cleartext with prior knowledge, such as a gRPC server; see the
// package documentation, section "HTTP/2 upstreams (h2c)".
// New does no I/O and starts no goroutines.
func New(target *url.URL, cfg Config) (*Proxy, error) {
	if target == nil {
		return nil, errors.New("proxy: nil target")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if target.User != nil || target.RawQuery != "" || target.Fragment != "" {
		return nil, fmt.Errorf("proxy: target %q: user info, query and fragment are not supported", target.Redacted())
	}
	p := &Proxy{
		cfg:        cfg,
		lim:        newLimiter(cfg.MaxInFlight, cfg.QueueSize, cfg.QueueTimeout, cfg.MaxStreams),
		retryAfter: []string{strconv.FormatInt(int64((cfg.RetryAfter+time.Second-1)/time.Second), 10)},
		log:        cfg.Logger,
		metrics:    cfg.Metrics,
		tunnels:    make(map[*tunnel]struct{}),
		closers:    make(map[closer]struct{}),

		aliveCheckAfter: aliveCheckAfter,
		clientCheck:     clientCheckInterval,
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.buildRefusals()
	switch target.Scheme {
	case "http", "https", "h2c":
		if target.Host == "" {
			return nil, fmt.Errorf("proxy: target %q has no host", target.Redacted())
		}
		port := target.Port()
		if port == "" {
			port = "80"
			if target.Scheme == "https" {
				port = "443"
			}
		}
		p.pool.network, p.pool.addr = "tcp", net.JoinHostPort(target.Hostname(), port)
		p.defaultHost = target.Host
		p.rawPrefix = target.EscapedPath()
		p.pathPrefix = strings.TrimSuffix(p.rawPrefix, "/")
		if target.Scheme == "https" {
			tc := &tls.Config{}
			if cfg.TLSClientConfig != nil {
				tc = cfg.TLSClientConfig.Clone()
			}
			if tc.ServerName == "" {
				tc.ServerName = target.Hostname()
			}
			tc.NextProtos = []string{"http/1.1"}
			p.pool.tlsConfig = tc
		}
	case "unix", "h2c+unix":
		path := target.Path
		if target.Host != "" || path == "" {
			return nil, fmt.Errorf("proxy: target %q: want %s:///path/to/socket", target.Redacted(), target.Scheme)
		}
		p.pool.network, p.pool.addr = "unix", path
		p.defaultHost = "localhost"
	default:
		return nil, fmt.Errorf("proxy: target %q: scheme must be http, https, unix, h2c or h2c+unix", target.Redacted())
	}
	p.pool.dial = cfg.DialContext
	if p.pool.dial == nil {
		d := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
		p.pool.dial = d.DialContext
	}
	p.pool.dialTimeout = cfg.DialTimeout
	if target.Scheme == "h2c" || target.Scheme == "h2c+unix" {
		p.h2c = newH2CUpstream(cfg, p.pool.dial, p.pool.network, p.pool.addr)
	}
	p.pool.idleTimeout = cfg.IdleConnTimeout
	if cfg.MaxIdleConns > 0 {
		p.pool.idle = make(chan *upConn, cfg.MaxIdleConns)
	}
	if cfg.MaxConns > 0 {
		p.pool.slots = make(chan struct{}, cfg.MaxConns)
	}
	size := cfg.BufferSize
	p.bufs.New = func() any { b := make([]byte, size); return &b }
	p.smallBufs.New = func() any { b := make([]byte, smallBufSize); return &b }
	return p, nil
}

// Close closes the idle upstream connections, every upgraded connection
// (WebSocket and others) the Proxy is relaying, and the listeners and
// connections of [Proxy.Serve], and waits for the goroutines that served
// them. Requests that ServeHTTP is
// forwarding finish; their upstream connections are closed rather than
// reused, and later requests get 503. A second Close returns an error
// wrapping [net.ErrClosed].
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return fmt.Errorf("proxy: %w", net.ErrClosed)
	}
	p.closed = true
	p.cancel()
	for t := range p.tunnels {
		t.close()
	}
	for c := range p.closers {
		_ = c.Close()
		if cc, ok := c.(*clientConn); ok {
			if uc := cc.up.Load(); uc != nil {
				uc.abort() // do not wait for the next client check
			}
		}
	}
	p.mu.Unlock()
	p.pool.close()
	if p.h2c != nil {
		p.h2c.tr.CloseIdleConnections()
	}
	p.wg.Wait()
	if p.h2c != nil {
		p.h2c.closeAll() // no exchange uses them any more
	}
	return nil
}

// eventLoops returns Serve's event loops, starting them on first use, or
// nil when connections are served by goroutines (Config.EventLoops < 0,
// an https or h2c target, a platform without epoll).
func (p *Proxy) eventLoops() *loopSet {
	if ls := p.loops.Load(); ls != nil {
		return ls
	}
	if p.cfg.EventLoops < 0 || p.pool.tlsConfig != nil || p.h2c != nil {
		// The loops speak HTTP/1.1 upstream themselves.
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.noLoops {
		return nil
	}
	if ls := p.loops.Load(); ls != nil {
		return ls
	}
	ls, err := newLoopSet(p, p.cfg.EventLoops)
	if err != nil {
		p.noLoops = true
		p.log.LogAttrs(p.ctx, slog.LevelWarn, "proxy: event loops unavailable; serving a goroutine per connection", slog.Any("err", err))
		return nil
	}
	p.closers[ls] = struct{}{}
	p.loops.Store(ls)
	return ls
}

// InFlight returns the number of requests being forwarded now that hold
// an in-flight slot (Config.MaxInFlight).
func (p *Proxy) InFlight() int { return p.lim.inFlight() }

// slotToStream moves an admitted request's in-flight slot to the streams
// (limiter.toStream), recording it for metrics, and reports whether it
// did; giveBack(true) then ends the stream.
func (p *Proxy) slotToStream() bool {
	if !p.lim.toStream() {
		return false
	}
	if m := p.metrics; m != nil {
		m.InFlight(-1)
	}
	return true
}

// giveBack returns an admitted request's in-flight slot, or ends its
// stream if slotToStream made one.
func (p *Proxy) giveBack(stream bool) {
	if stream {
		p.lim.endStream()
		return
	}
	p.lim.release()
	if m := p.metrics; m != nil {
		m.InFlight(-1)
	}
}

// Streams returns the number of responses being streamed now that gave
// back their in-flight slot (Config.MaxStreams).
func (p *Proxy) Streams() int { return int(p.lim.streams.Load()) }

// interceptable reports whether Config.Intercept is asked about a request
// for path (Config.InterceptPaths).
func (p *Proxy) interceptable(path string) bool {
	return p.cfg.InterceptPaths == nil || underPaths(p.cfg.InterceptPaths, path)
}

// underPaths reports whether path is one of paths or lies below one,
// without allocating.
func underPaths[T string | []byte](paths []string, path T) bool {
	for _, ip := range paths {
		if len(path) >= len(ip) && string(path[:len(ip)]) == ip && (len(path) == len(ip) || path[len(ip)] == '/') {
			return true
		}
	}
	return false
}

func (p *Proxy) getBuf() *[]byte { return p.bufs.Get().(*[]byte) }

// putBuf gives b back to the pool. A buffer that is not whole (a
// reslice left in it) is dropped instead: its next user would read into
// fewer bytes, or none, for ever.
func (p *Proxy) putBuf(b *[]byte) {
	if len(*b) != p.cfg.BufferSize {
		return
	}
	p.bufs.Put(b)
}

// ServeHTTP forwards r to the upstream and copies the response to w.
// A handler that Config.Intercept returns for r serves it instead.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if ic := p.cfg.Intercept; ic != nil && p.interceptable(r.URL.Path) {
		if h := ic(r); h != nil {
			h.ServeHTTP(w, r)
			return
		}
	}
	if r.Method == http.MethodConnect {
		writeStatus(w, http.StatusMethodNotAllowed, nil)
		return
	}
	if !validRequestLine(r) {
		writeStatus(w, http.StatusBadRequest, nil)
		return
	}
	if !p.lim.acquire(r.Context()) {
		p.refused()
		writeStatus(w, http.StatusServiceUnavailable, p.retryAfterHeader())
		return
	}
	// One allocation for both halves.
	he := &struct {
		ex exchange
		hs handlerSide
	}{hs: handlerSide{w: w, r: r}}
	ex := &he.ex
	*ex = exchange{p: p, cs: &he.hs, r: r, ctx: r.Context(), code: http.StatusBadGateway}
	ex.admitted()
	defer ex.release()
	ex.serve()
	if !he.hs.answered {
		// The client went away before a response (over HTTP/1.1 it may
		// only have shut its side, and still read): returning would make
		// net/http send 200 with an empty body for a request that was
		// never answered. Abort: the connection closes (HTTP/2: the
		// stream is reset).
		panic(http.ErrAbortHandler)
	}
}

// refused records a refusal.
func (p *Proxy) refused() {
	if p.metrics != nil {
		p.metrics.Refused()
	}
}

// retryAfterHeader returns the extra header of 503 refusals.
func (p *Proxy) retryAfterHeader() http.Header {
	return http.Header{"Retry-After": p.retryAfter}
}

var (
	textPlain = []string{"text/plain; charset=utf-8"}
	nosniff   = []string{"nosniff"}
)

// statusBody returns the body of a short error response.
func statusBody(code int) string {
	return strconv.Itoa(code) + " " + http.StatusText(code) + "\n"
}

// writeStatus writes a short plain-text response with the status text and
// the headers in extra.
func writeStatus(w http.ResponseWriter, code int, extra http.Header) {
	h := w.Header()
	h["Content-Type"] = textPlain
	h["X-Content-Type-Options"] = nosniff
	for k, v := range extra {
		h[k] = v
	}
	w.WriteHeader(code)
	_, _ = io.WriteString(w, statusBody(code))
}

// handlerSide is the client side of an exchange served through an
// http.ResponseWriter.
type handlerSide struct {
	w  http.ResponseWriter
	r  *http.Request
	rc *http.ResponseController // made on first use
	// wrote is set once part of the body has been written.
	wrote bool
	// answered is set once a final response head is written, or the
	// connection hijacked.
	answered bool
	// wdlSet is set while a write deadline the Proxy set runs;
	// wdlStopped once none runs, not even the server's WriteTimeout
	// (idle).
	wdlSet, wdlStopped bool
}

var _ clientSide = (*handlerSide)(nil)

func (hs *handlerSide) ctl() *http.ResponseController {
	if hs.rc == nil {
		hs.rc = http.NewResponseController(hs.w)
	}
	return hs.rc
}

func (hs *handlerSide) beforeBody() {
	// Made here, before the body copy starts: that goroutine sets read
	// deadlines while this one writes, and both go through hs.rc.
	hs.ctl()
	if hs.r.ProtoMajor == 1 {
		// Let the response stream back while the body still streams up.
		_ = hs.ctl().EnableFullDuplex()
	}
}

func (hs *handlerSide) setReadDeadline(t time.Time) { _ = hs.ctl().SetReadDeadline(t) }

// readDone stops, over HTTP/2, the read deadline of the body read that
// returned: the HTTP/2 server runs it as a timer that fails the body when
// it fires, read or not, and the Proxy now writes what it read upstream,
// which may wait as long as the app takes to read it (UpstreamTimeout
// bounds that). The next read sets a deadline of its own. Over HTTP/1.1 a
// deadline only bounds reads.
func (hs *handlerSide) readDone() {
	if hs.r.ProtoMajor == 2 {
		_ = hs.ctl().SetReadDeadline(time.Time{})
	}
}
func (hs *handlerSide) setWriteDeadline(t time.Time) {
	_ = hs.ctl().SetWriteDeadline(t)
	hs.wdlSet, hs.wdlStopped = !t.IsZero(), t.IsZero()
}

func (hs *handlerSide) writeInformational(resp *http.Response) {
	h := hs.w.Header()
	copyResponseHeader(h, resp.Header)
	hs.w.WriteHeader(resp.StatusCode)
	for k := range resp.Header { // 1xx headers must not leak into the final response
		delete(h, k)
	}
}

func (hs *handlerSide) writeHead(resp *http.Response, bodyPending bool) {
	h := hs.w.Header()
	copyResponseHeader(h, resp.Header)
	if _, ok := h["Content-Type"]; !ok {
		// A response without a type goes out without one, as Serve sends
		// it: net/http would sniff one from the first bytes (text/html for
		// a user's upload that starts with "<html>"), and the app may have
		// left it out on purpose (X-Content-Type-Options: nosniff).
		h["Content-Type"] = nil
	}
	if resp.StatusCode == http.StatusNoContent {
		// Forbidden in a 204 (RFC 9110 section 8.6), which has no body:
		// HTTP/1.1 clients ignore it, nghttp2's HTTP/2 clients reset the
		// stream for a non-zero one.
		delete(h, "Content-Length")
	}
	if bodyPending && hs.r.ProtoMajor == 1 {
		// Stopping the body read (finishBody) cancels net/http's
		// connection context: the connection must not serve another
		// request.
		h["Connection"] = connectionClose
	}
	hs.answered = true
	hs.w.WriteHeader(resp.StatusCode)
}

var connectionClose = []string{"close"}

func (hs *handlerSide) write(p []byte) error {
	hs.wrote = true
	_, err := hs.w.Write(p)
	return err
}

func (hs *handlerSide) flush() error { return hs.ctl().Flush() }

// idle stops, over HTTP/2, the stream's write deadline: the one the Proxy
// set for the last write, or, for a stream (a response of unknown length),
// net/http's server's WriteTimeout, which runs from the start of the
// stream. The HTTP/2 server runs it as a timer that resets the stream when
// it fires, whether a write is waiting or not, and the Proxy is about to
// wait for the upstream, which may pause within UpstreamTimeout, or stay
// silent as long as a stream lives (server-sent events, gRPC streams). The
// next write sets a deadline of its own. Over HTTP/1.1 a deadline only
// bounds writes.
func (hs *handlerSide) idle(stream bool) {
	if hs.r.ProtoMajor != 2 || hs.wdlStopped || !(hs.wdlSet || stream) {
		return
	}
	_ = hs.ctl().SetWriteDeadline(time.Time{})
	hs.wdlSet, hs.wdlStopped = false, true
}

func (hs *handlerSide) endBody(trailer http.Header) error {
	if len(trailer) > 0 {
		h := hs.w.Header()
		for k, vv := range trailer {
			h[http.TrailerPrefix+k] = vv
		}
	}
	if hs.rc != nil {
		// Deadlines moved for a long response must not outlive it: the
		// server may not reset them before the next request. Without a
		// body there is nothing to flush, and a flush would split an
		// HTTP/2 response that the handler's return sends as one
		// HEADERS frame ending the stream (a gRPC trailers-only
		// response) into HEADERS and an empty DATA frame.
		if hs.wrote {
			if err := hs.rc.Flush(); err != nil {
				return err
			}
		}
		_ = hs.rc.SetWriteDeadline(time.Time{})
	}
	return nil
}

func (hs *handlerSide) writeStatus(code int, h http.Header) {
	hs.answered = true
	writeStatus(hs.w, code, h)
}

func (hs *handlerSide) hijack() (net.Conn, *bufio.Reader, *bufio.Writer, error) {
	c, brw, err := hs.ctl().Hijack()
	if err != nil {
		return nil, nil, nil, err
	}
	hs.answered = true
	return c, brw.Reader, brw.Writer, nil
}

func (hs *handlerSide) alive() bool { return hs.r.Context().Err() == nil }
