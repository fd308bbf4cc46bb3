package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"sync/atomic"
	"time"
)

// h2cUpstream is the upstream of a Proxy whose target is h2c:// or
// h2c+unix://: HTTP/2 with prior knowledge over cleartext, spoken by
// net/http's Transport, which multiplexes the requests in flight as
// streams on a connection or a few.
type h2cUpstream struct {
	tr   *http.Transport
	host string // URL host the Transport keys its connections by; the dial ignores it

	mu    sync.Mutex
	conns map[*h2cConn]struct{} // open connections, for closeAll
}

// h2cConn is an upstream connection of the Transport, known to closeAll.
type h2cConn struct {
	net.Conn
	u    *h2cUpstream
	once sync.Once
}

func (c *h2cConn) Close() error {
	c.once.Do(func() {
		c.u.mu.Lock()
		delete(c.u.conns, c)
		c.u.mu.Unlock()
	})
	return c.Conn.Close()
}

// closeAll closes every upstream connection. CloseIdleConnections is not
// enough once the exchanges are over: a connection whose streams the
// proxy reset (clients that left server streams) is not idle until the
// upstream has acknowledged a PING, and would stay open, with its read
// goroutine, after Close.
func (u *h2cUpstream) closeAll() {
	u.tr.CloseIdleConnections()
	u.mu.Lock()
	conns := make([]*h2cConn, 0, len(u.conns))
	for c := range u.conns {
		conns = append(conns, c)
	}
	u.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// newH2CUpstream returns the h2c upstream of p, which dials network and
// addr with dial. New has set the rest of p.cfg.
func newH2CUpstream(cfg Config, dial func(ctx context.Context, network, addr string) (net.Conn, error), network, addr string) *h2cUpstream {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	u := &h2cUpstream{conns: make(map[*h2cConn]struct{})}
	tr := &http.Transport{
		Protocols: &protos,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
			defer cancel()
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			hc := &h2cConn{Conn: c, u: u}
			u.mu.Lock()
			u.conns[hc] = struct{}{}
			u.mu.Unlock()
			return hc, nil
		},
		// The client's Accept-Encoding goes through as it is, and the
		// body comes back as the upstream sent it.
		DisableCompression: true,
		IdleConnTimeout:    cfg.IdleConnTimeout,
		MaxConnsPerHost:    cfg.MaxConns,
		HTTP2:              &http.HTTP2Config{},
	}
	if cfg.MaxIdleConns > 0 {
		tr.MaxIdleConns, tr.MaxIdleConnsPerHost = cfg.MaxIdleConns, cfg.MaxIdleConns
	} else {
		tr.DisableKeepAlives = true
	}
	if t := cfg.UpstreamTimeout; t > 0 {
		// From the end of the request body: a stream whose body is still
		// open (gRPC client and bidirectional streams) may wait for its
		// response header as long as it sends.
		tr.ResponseHeaderTimeout = t
		// A connection that takes no byte of a request for this long is
		// closed.
		tr.HTTP2.WriteByteTimeout = t
		// A response may stay silent as long as its stream lives (gRPC
		// server and watch streams wait for events); whether the upstream
		// is still there is asked with a PING after this much silence on
		// the connection, which is closed if the PING goes unanswered.
		tr.HTTP2.SendPingTimeout = t
		tr.HTTP2.PingTimeout = min(t, 15*time.Second)
	}
	host := addr
	if network == "unix" {
		host = "localhost"
	}
	u.tr, u.host = tr, host
	return u
}

// serveH2C forwards the request to an h2c upstream: the request body
// streams up while the response streams back, each part flushed to the
// client as it arrives, then the trailers. On return the response is
// complete or aborted, and nothing reads the request body any more.
func (ex *exchange) serveH2C() {
	p, r := ex.p, ex.r
	var tokens connTokens
	if c := r.Header["Connection"]; len(c) > 0 {
		tokens.parse(c)
	}
	hasBody := r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	ex.bodyRead = !hasBody
	ctx, cancel := context.WithCancelCause(ex.ctx)
	defer cancel(nil)

	var body *h2cBody
	if hasBody {
		body = &h2cBody{ex: ex, cancel: cancel}
		defer func() { ex.bodyRead = body.stop() }()
	}
	out, err := p.h2cRequest(r, &tokens, hasBody, body)
	if err != nil {
		ex.fail(err)
		return
	}
	trace := &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			// Early hints and the like; 100 Continue was the front end's
			// business (Expect is not forwarded).
			if code != http.StatusContinue && code != http.StatusSwitchingProtocols {
				ex.cs.writeInformational(&http.Response{StatusCode: code, Header: http.Header(h)})
			}
			return nil
		},
	}
	out = out.WithContext(httptrace.WithClientTrace(ctx, trace))
	if cc, ok := ex.cs.(*clientConn); ok && ex.watch {
		// Serve reads nothing from the connection while the exchange
		// runs, unless the body does: look for the client's end.
		defer ex.watchClient(cc.conn, cancel)()
	}
	if hasBody {
		ex.cs.beforeBody()
	}

	resp, err := p.h2c.tr.RoundTrip(out)
	if err != nil {
		err = fmt.Errorf("proxy: h2c round trip: %w", err)
		if ctx.Err() != nil {
			if cause := context.Cause(ctx); cause != ex.ctx.Err() {
				err = fmt.Errorf("%w (%w)", cause, err)
			}
		}
		if body != nil {
			var cre *clientReadError
			if errors.As(body.failure(), &cre) && ex.ctx.Err() == nil {
				// The client stopped sending: answer 400 as net/http
				// does for a bad body, as the HTTP/1.1 path does.
				ex.code = http.StatusBadRequest
				p.log.LogAttrs(ex.ctx, slog.LevelDebug, "proxy: client request body failed",
					slog.String("method", r.Method), slog.String("uri", r.RequestURI), slog.Any("err", cre.err))
				ex.cs.writeStatus(http.StatusBadRequest, nil)
				return
			}
		}
		ex.fail(err)
		return
	}
	defer resp.Body.Close() // before the end of the stream: RST_STREAM upstream

	ex.code = resp.StatusCode
	// The Transport reports a response whose HEADERS frame ended the
	// stream, or that declared content-length: 0, with ContentLength 0.
	empty := resp.ContentLength == 0
	if empty && r.ProtoMajor == 1 && r.Method != http.MethodHead &&
		bodyAllowedForStatus(resp.StatusCode) && resp.Header["Content-Length"] == nil {
		// To an HTTP/1.1 client, a response without a length would not
		// end until the connection does.
		resp.Header["Content-Length"] = []string{"0"}
	}
	ex.cs.writeHead(resp, body != nil && !body.eof.Load())
	if !empty {
		// The header goes out at once: a gRPC client may wait for it
		// before it sends the next message. An empty response is not
		// flushed: an HTTP/2 client gets its header with END_STREAM when
		// the handler returns, which is how a gRPC trailers-only
		// response must end.
		if err := ex.cs.flush(); err != nil {
			ex.clientGone(err)
			return
		}
		ex.toStream(resp)
	}
	rerr, werr := ex.copyH2C(ctx, resp)
	if rerr != nil {
		if ctx.Err() != nil && ex.ctx.Err() == nil {
			if cause := context.Cause(ctx); cause != nil {
				rerr = fmt.Errorf("%w (%w)", cause, rerr)
			}
		}
		if ex.ctx.Err() != nil || errors.Is(rerr, errClientGone) {
			ex.clientGone(rerr)
			return
		}
		// The status line is out: abort the response so that the client
		// cannot take it for a whole one.
		ex.upstreamFailed(fmt.Errorf("proxy: read response body: %w", rerr), resp.StatusCode)
		panic(http.ErrAbortHandler)
	}
	if werr != nil {
		ex.clientGone(werr)
		return
	}
	_ = ex.cs.endBody(resp.Trailer)
}

// clientGone logs a client that went away mid-response.
func (ex *exchange) clientGone(err error) {
	ex.p.log.LogAttrs(ex.ctx, slog.LevelDebug, "proxy: client went away mid-response",
		slog.String("method", ex.r.Method), slog.String("uri", ex.r.RequestURI), slog.Any("err", err))
}

// copyH2C copies an h2c response body to the client, flushing every part:
// gRPC messages must not wait in a buffer. A read waits as long as the
// stream lives: the client may end it, and the upstream's connection is
// checked with PINGs (newH2CUpstream), not by a bound on the silence.
func (ex *exchange) copyH2C(ctx context.Context, resp *http.Response) (rerr, werr error) {
	p, cs := ex.p, ex.cs
	bp := p.getBuf()
	defer p.putBuf(bp)
	buf := *bp
	tt := p.cfg.TransferTimeout
	var written int64
	for {
		if resp.ContentLength < 0 || written < resp.ContentLength {
			cs.idle(resp.ContentLength < 0)
		}
		n, err := resp.Body.Read(buf)
		written += int64(n)
		if n > 0 {
			if tt > 0 {
				cs.setWriteDeadline(time.Now().Add(tt))
			}
			if werr := cs.write(buf[:n]); werr != nil {
				return nil, werr
			}
			if werr := cs.flush(); werr != nil {
				return nil, werr
			}
		}
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return err, nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx), nil
		}
	}
}

// watchClient cancels the exchange, with errClientGone, when a peek at the
// client's socket finds it closed (or, on Linux, the client has sent its
// FIN, after a TLS close_notify that a peek takes for data), checking
// every clientCheck. The returned func stops the watch and waits for it.
func (ex *exchange) watchClient(c net.Conn, cancel context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(ex.p.clientCheck)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if peekBusy(c) == peekClosed || peerClosed(c) {
					cancel(errClientGone)
					return
				}
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// h2cRequest returns the request to send upstream for r: its head is the
// one the HTTP/1.1 path would write (writeRequestHead: hop-by-hop fields
// dropped but TE: trailers, forwarding fields set, the target's path
// prefix), parsed back, so both paths forward the same fields.
func (p *Proxy) h2cRequest(r *http.Request, tokens *connTokens, hasBody bool, body *h2cBody) (*http.Request, error) {
	var buf bytes.Buffer
	bw := bufio.NewWriterSize(&buf, 2048)
	p.writeRequestHead(bw, r, tokens, "", hasBody && r.ContentLength < 0)
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	out, err := http.ReadRequest(bufio.NewReaderSize(&buf, 2048))
	if err != nil {
		return nil, fmt.Errorf("proxy: h2c request head: %w", err)
	}
	delete(out.Header, "Content-Length")
	if _, ok := out.Header["User-Agent"]; !ok {
		// Present and empty: the Transport adds none of its own.
		out.Header["User-Agent"] = nil
	}
	out.URL.Scheme, out.URL.Host = "http", p.h2c.host
	out.RequestURI = ""
	out.Close = false
	out.TransferEncoding = nil
	if hasBody {
		out.Body, out.ContentLength = body, r.ContentLength
	} else {
		out.Body, out.ContentLength = http.NoBody, 0
	}
	return out, nil
}

// h2cBody is the request body given to the Transport, which reads it on a
// goroutine of its own, possibly after RoundTrip has returned. stop ends
// that before the exchange returns: the client connection may carry
// another request by then.
type h2cBody struct {
	ex     *exchange
	cancel context.CancelCauseFunc

	mu      sync.Mutex // held during a read of the client's body
	stopped bool       // guarded by mu
	err     error      // the client read error; guarded by mu
	n       int64      // bytes read; guarded by mu
	eof     atomic.Bool
}

func (b *h2cBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return 0, errBodyAborted
	}
	if b.err != nil {
		return 0, b.err
	}
	tt := b.ex.p.cfg.TransferTimeout
	if tt > 0 {
		b.ex.cs.setReadDeadline(time.Now().Add(tt))
	}
	n, err := b.ex.r.Body.Read(p)
	b.n += int64(n)
	switch {
	case err == nil && tt > 0 && (b.ex.r.ContentLength < 0 || b.n < b.ex.r.ContentLength):
		b.ex.cs.readDone() // as in sendBody
	case err == io.EOF:
		b.eof.Store(true)
		if tt > 0 {
			b.ex.cs.setReadDeadline(time.Time{}) // leave none behind
		}
	case err != nil:
		b.err = &clientReadError{err}
		// The upstream has a truncated body: end the stream now.
		b.cancel(b.err)
		return n, b.err
	}
	return n, err
}

// Close is called by the Transport when it is done with the body, which
// may be before the end (the stream was reset or ended by the upstream):
// a read of the client's body in progress is unblocked. The exchange
// still stops the body (stop) before it returns.
func (b *h2cBody) Close() error {
	if !b.eof.Load() {
		b.ex.cs.setReadDeadline(aLongTimeAgo)
	}
	return nil
}

// failure returns the error of the client's body, if reading it failed.
func (b *h2cBody) failure() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// stop ends the reads of the client's body, unblocking one in progress,
// and reports whether the body was read to its end.
func (b *h2cBody) stop() (complete bool) {
	if !b.eof.Load() {
		b.ex.cs.setReadDeadline(aLongTimeAgo)
	}
	b.mu.Lock()
	b.stopped = true
	b.mu.Unlock()
	return b.eof.Load()
}

// bodyAllowedForStatus reports whether a response with status code may
// have a body (RFC 9110 sections 15.2, 15.3.5 and 15.4.5).
func bodyAllowedForStatus(code int) bool {
	switch {
	case code < 200: // informational (and no status yet)
		return false
	case code == http.StatusNoContent, code == http.StatusNotModified:
		return false
	}
	return true
}
