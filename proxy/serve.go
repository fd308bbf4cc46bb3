package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Serve accepts connections from ln and serves HTTP/1.1 on them itself,
// forwarding every request as ServeHTTP does. It parses requests with
// net/http ([http.ReadRequest]) but skips net/http's server: no goroutine
// per request, no response buffering layer, no header map copy for the
// response; docs/bench/proxy.md measures the difference. It is the fast
// front end for plain HTTP/1.1 and for TLS listeners that offer only
// http/1.1; serve HTTP/2 clients through [NewServer] instead. TLS
// connections made with [TLSServer] and handshaken before Serve sees them
// are served on the event loops like plain ones.
//
// The connections are served with Config.ReadHeaderTimeout,
// Config.IdleTimeout and Config.MaxHeaderBytes. A PROXY protocol listener
// (github.com/pires/go-proxyproto) works: the client address comes from
// each connection's RemoteAddr.
//
// Serve returns when ln fails or the Proxy is closed; Close closes ln and
// every connection Serve accepted, and waits for their goroutines. The
// returned error is never nil; after Close it wraps [net.ErrClosed].
func (p *Proxy) Serve(ln net.Listener) error {
	if p.shuttingDown.Load() || !p.track(ln) {
		return fmt.Errorf("proxy: serve: %w", net.ErrClosed)
	}
	defer p.untrack(ln)
	if p.shuttingDown.Load() { // Shutdown may have missed ln
		return fmt.Errorf("proxy: serve: %w", net.ErrClosed)
	}
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if p.isClosed() || p.shuttingDown.Load() {
				return fmt.Errorf("proxy: serve: %w", net.ErrClosed)
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				// Out of file descriptors and the like: back off as
				// net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				p.log.LogAttrs(p.ctx, slog.LevelWarn, "proxy: accept failed; retrying",
					slog.Duration("delay", delay), slog.Any("err", err))
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("proxy: serve: %w", err)
		}
		delay = 0
		if ls := p.eventLoops(); ls != nil {
			if tc, ok := c.(*tls.Conn); ok && isTLSServerConn(tc) && !tc.ConnectionState().HandshakeComplete {
				// From NewTLSListener: the handshake first, then the loops.
				if !p.handshake(tc) {
					return fmt.Errorf("proxy: serve: %w", net.ErrClosed)
				}
				continue
			}
			if ls.take(c) {
				continue
			}
		}
		if !p.serveConn(c) {
			return fmt.Errorf("proxy: serve: %w", net.ErrClosed)
		}
	}
}

// handshaking is a TLS connection in its handshake, for Close and Shutdown
// to close.
type handshaking struct{ c *tls.Conn }

func (h handshaking) Close() error { return h.c.NetConn().Close() }

// handshake completes tc's handshake on a goroutine, within
// Config.ReadHeaderTimeout, then moves it onto the event loops (or serves it
// on that goroutine if they do not take it). It reports false, and closes
// tc, if the Proxy is closed or shutting down.
func (p *Proxy) handshake(tc *tls.Conn) bool {
	h := handshaking{tc}
	p.mu.Lock()
	if p.closed || p.shuttingDown.Load() {
		p.mu.Unlock()
		_ = h.Close()
		return false
	}
	p.closers[h] = struct{}{}
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		ctx, cancel := context.WithTimeout(p.ctx, p.cfg.ReadHeaderTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		p.mu.Lock()
		delete(p.closers, h)
		p.mu.Unlock()
		if err != nil || p.isClosed() || p.shuttingDown.Load() {
			RefusePlainHTTP(err)
			_ = h.Close()
			return
		}
		if ls := p.eventLoops(); ls != nil && ls.take(tc) {
			return
		}
		p.serveConn(tc)
	}()
	return true
}

// serveConn serves c on its own goroutine. It reports false, and closes c,
// if the Proxy is closed or shutting down.
func (p *Proxy) serveConn(c net.Conn) bool {
	cc := newClientConn(p, c)
	if p.shuttingDown.Load() || !p.track(cc) {
		_ = c.Close()
		return false
	}
	go cc.serve()
	return true
}

// closer is something Close must close: a listener given to Serve or a
// connection Serve accepted.
type closer interface{ Close() error }

// track registers c for Close, and for a connection counts its goroutine
// in p.wg. It reports false if the Proxy is closed.
func (p *Proxy) track(c closer) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.closers[c] = struct{}{}
	if _, ok := c.(*clientConn); ok {
		p.wg.Add(1)
	}
	return true
}

func (p *Proxy) untrack(c closer) {
	p.mu.Lock()
	delete(p.closers, c)
	p.mu.Unlock()
	if _, ok := c.(*clientConn); ok {
		p.wg.Done()
	}
}

func (p *Proxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// errHeaderTooLarge is returned by headerLimit when a request header
// exceeds MaxHeaderBytes.
var errHeaderTooLarge = errors.New("proxy: request header too large")

// headerLimit is the reader under a client connection's bufio.Reader: it
// limits the bytes read while a request header is parsed.
type headerLimit struct {
	c net.Conn
	n int64 // bytes left; < 0: no limit
}

func (l *headerLimit) Read(p []byte) (int, error) {
	if l.n == 0 {
		return 0, errHeaderTooLarge
	}
	if l.n > 0 && int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.c.Read(p)
	if l.n > 0 {
		l.n -= int64(n)
	}
	return n, err
}

// clientConn is a client connection served by Serve. Its goroutine owns
// every field.
type clientConn struct {
	p    *Proxy
	conn net.Conn
	lr   headerLimit
	br   *bufio.Reader
	bw   *bufio.Writer

	remoteAddr string               // set when the first request arrives
	tlsState   *tls.ConnectionState // set when the first request arrives, for TLS connections

	// state is connIdle while the connection waits for a request, which
	// Shutdown may then close, and connActive while one is served. Written
	// by the connection's goroutine and by Shutdown (connIdle to
	// connClosing, with a compare-and-swap).
	state atomic.Int32

	// Deadlines set by this goroutine's own waits (see lazyDeadline). The
	// read one is forgotten whenever a request body was read, which may
	// happen in another goroutine.
	rdl, wdl lazyDeadline

	up atomic.Pointer[upConn] // the upstream connection of the exchange in progress, for Close to abort

	// For intercepted requests (Config.Intercept), made on first use.
	ctx       context.Context    // the connection's: cancelled when it ends or the Proxy closes
	cancelCtx context.CancelFunc // cancels ctx
	wbuf      []byte             // holds back a handler's response body

	// Per request.
	r              *http.Request
	ex             exchange // reused: no allocation per request
	expectContinue bool     // send 100 Continue before reading the body
	chunked        bool     // the response body is being chunk-encoded
	headWritten    bool
	closeAfter     bool // close the connection after this response
	unread         bool // the client may still be sending: close with lingerClose
	hijacked       bool
}

var _ clientSide = (*clientConn)(nil)

func newClientConn(p *Proxy, c net.Conn) *clientConn {
	cc := &clientConn{p: p, conn: c}
	cc.lr = headerLimit{c: c, n: -1}
	cc.br = bufio.NewReaderSize(&cc.lr, upstreamBufSize)
	cc.bw = bufio.NewWriterSize(c, upstreamBufSize)
	return cc
}

// Close closes the connection. It is called by Proxy.Close from another
// goroutine, which net.Conn allows.
func (cc *clientConn) Close() error { return cc.conn.Close() }

func (cc *clientConn) serve() {
	p := cc.p
	defer p.untrack(cc)
	defer func() {
		if cc.cancelCtx != nil {
			cc.cancelCtx()
		}
	}()
	defer func() {
		if v := recover(); v != nil && v != http.ErrAbortHandler {
			p.log.LogAttrs(p.ctx, slog.LevelError, "proxy: panic serving connection",
				slog.String("remote", cc.remoteAddr), slog.Any("panic", v))
		}
		switch {
		case cc.hijacked:
		case cc.unread:
			cc.lingerClose()
		default:
			_ = cc.conn.Close()
		}
	}()
	for first := true; ; first = false {
		// The limit counts what the bufio.Reader reads ahead, too.
		cc.lr.n = int64(p.cfg.MaxHeaderBytes) + upstreamBufSize
		// Wait for the first byte of the next request. Shutdown may close
		// the connection meanwhile.
		if cc.br.Buffered() == 0 {
			cc.state.Store(connIdle)
			if p.shuttingDown.Load() {
				return
			}
			wait := p.cfg.IdleTimeout
			if first {
				wait = p.cfg.ReadHeaderTimeout
			}
			cc.rdl.set(cc.conn.SetReadDeadline, time.Now().Add(wait), wait/deadlineSlack)
			if _, err := cc.br.Peek(1); err != nil {
				return
			}
			if !cc.state.CompareAndSwap(connIdle, connActive) {
				return // Shutdown closed it
			}
		}
		// A header that has arrived whole is parsed without reading:
		// ReadHeaderTimeout only matters for one that has not.
		buffered, _ := cc.br.Peek(cc.br.Buffered())
		if !bytes.Contains(buffered, crlfcrlf) {
			cc.rdl.set(cc.conn.SetReadDeadline, time.Now().Add(p.cfg.ReadHeaderTimeout), 0)
		}
		left := cc.lr.n
		r, err := http.ReadRequest(cc.br)
		tooLarge := cc.lr.n == 0
		// Without a read, the head came from buffered, which is intact.
		var head []byte
		if cc.lr.n == left {
			head = buffered[:len(buffered)-cc.br.Buffered()]
		}
		cc.lr.n = -1
		if err != nil {
			switch {
			case tooLarge:
				cc.writeRaw(http.StatusRequestHeaderFieldsTooLarge)
			case err != io.EOF && !isTimeout(err) && !errors.Is(err, net.ErrClosed):
				cc.writeRaw(http.StatusBadRequest)
			}
			return
		}
		if first {
			cc.remoteAddr = cc.conn.RemoteAddr().String()
			if tc := tlsConnOf(cc.conn); tc != nil {
				st := tc.ConnectionState()
				cc.tlsState = &st
			}
		}
		if code := checkRequest(r); code != 0 {
			cc.writeRaw(code)
			return
		}
		if !r.Close && framingSuspect(r, head) {
			r.Close = true // Connection: close, and no further request
		}
		r.RemoteAddr = cc.remoteAddr
		r.TLS = cc.tlsState
		if !cc.handle(r) {
			return
		}
	}
}

var crlfcrlf = []byte("\r\n\r\n")

// framingSuspect reports whether a request's framing was ambiguous, so
// that the connection must close after the response (RFC 9112 section
// 6.1): Transfer-Encoding with Content-Length (the body was framed by the
// former), or Transfer-Encoding in HTTP/1.0 (by the latter). A request
// smuggled past another hop in front may follow. http.ReadRequest drops
// the field that lost, so r's head tells: head, or nil when it is not at
// hand (it arrived in several reads), and then the answer is yes. Only
// chunked and HTTP/1.0 requests are looked at.
func framingSuspect(r *http.Request, head []byte) bool {
	var name string
	switch {
	case len(r.TransferEncoding) > 0:
		name = "Content-Length"
	case !r.ProtoAtLeast(1, 1):
		name = "Transfer-Encoding" // net/http ignores it in HTTP/1.0
	default:
		return false
	}
	if head == nil {
		return true
	}
	_, rest, _ := bytes.Cut(head, []byte{'\n'}) // the request line
	for len(rest) > 0 {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte{'\n'})
		line = bytes.TrimSuffix(line, []byte{'\r'})
		if len(line) == 0 {
			break
		}
		if k, _, ok := bytes.Cut(line, []byte{':'}); ok && equalFoldASCII(k, name) {
			return true
		}
	}
	return false
}

// checkRequest applies the checks net/http's server makes beyond parsing,
// returning the status to refuse r with, or 0.
func checkRequest(r *http.Request) int {
	if r.ProtoMajor != 1 {
		return http.StatusHTTPVersionNotSupported
	}
	if r.ProtoAtLeast(1, 1) && r.Host == "" {
		return http.StatusBadRequest // missing Host
	}
	if r.Host != "" && !httpguts.ValidHostHeader(r.Host) {
		return http.StatusBadRequest
	}
	if !validHeader(r.Header) {
		// Whitespace before a colon (RFC 9112 section 5.1: a server
		// MUST answer 400), control characters: forwarded, such a
		// field may end the header section for the upstream's parser.
		return http.StatusBadRequest
	}
	return 0
}

// writeRaw answers a request that could not be parsed, and the connection
// is closed after it.
func (cc *clientConn) writeRaw(code int) {
	cc.closeAfter = true
	cc.unread = true
	cc.r = nil
	cc.headWritten = false
	cc.setWriteDeadline(time.Now().Add(time.Second))
	cc.writeStatus(code, nil)
	_ = cc.bw.Flush()
}

// handle serves one request. It reports whether the connection may carry
// another.
func (cc *clientConn) handle(r *http.Request) bool {
	p := cc.p
	cc.r = r
	cc.expectContinue = false
	cc.chunked = false
	cc.headWritten = false
	cc.closeAfter = r.Close
	hasBody := r.Body != http.NoBody && r.ContentLength != 0
	if hasBody {
		cc.rdl.forget() // body reads move the read deadline
	}

	if e := r.Header["Expect"]; len(e) > 0 {
		if len(e) != 1 || !strings.EqualFold(e[0], "100-continue") {
			cc.closeAfter = true
			cc.writeStatus(http.StatusExpectationFailed, nil)
			return cc.finish()
		}
		cc.expectContinue = hasBody && r.ProtoAtLeast(1, 1)
	}
	if ic := p.cfg.Intercept; ic != nil && p.interceptable(r.URL.Path) {
		if h := ic(r); h != nil {
			return cc.intercept(r, h)
		}
	}
	if r.Method == http.MethodConnect {
		cc.closeAfter = true
		cc.writeStatus(http.StatusMethodNotAllowed, nil)
		return cc.finish()
	}
	if !p.lim.acquire(p.ctx) {
		p.refused()
		cc.closeAfter = cc.closeAfter || hasBody // the body stays unread
		cc.unread = hasBody
		cc.writeRefusal()
		return cc.finish()
	}
	ex := &cc.ex
	*ex = exchange{p: p, cs: cc, r: r, ctx: p.ctx, watch: true, code: http.StatusBadGateway}
	ex.admitted()
	defer ex.release()
	ex.serve()
	if cc.hijacked {
		return false
	}
	if !ex.bodyRead {
		cc.closeAfter = true // the rest of the body would be taken for a request
		cc.unread = true
	}
	return cc.finish()
}

// lingerTime is how long a connection closed with request bytes unread
// keeps reading them (net/http waits as long).
const lingerTime = 500 * time.Millisecond

// lingerClose closes the connection of a client that may still be
// sending (a request body left unread, a request refused as malformed).
// Closing a socket with bytes unread resets the connection, and the reset
// can destroy the last response in the client's receive buffer, or reach
// a client still writing its body before it reads the response: it sees
// "connection reset" instead of the 503 and its Retry-After. So the write
// side is shut first (over TLS, close_notify) and what comes is read and
// dropped until the client closes too, for at most lingerTime, as
// net/http's server and the event loops (finishClose) do.
func (cc *clientConn) lingerClose() {
	c := cc.conn
	defer c.Close()
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil || c.SetReadDeadline(time.Now().Add(lingerTime)) != nil {
		return
	}
	bp := cc.p.smallBufs.Get().(*[]byte)
	defer cc.p.smallBufs.Put(bp)
	for {
		if _, err := c.Read(*bp); err != nil {
			return
		}
	}
}

// finish flushes the response and reports whether the connection may
// carry another request.
func (cc *clientConn) finish() bool {
	if err := cc.bw.Flush(); err != nil {
		return false
	}
	return !cc.closeAfter
}

func (cc *clientConn) beforeBody() {
	if cc.expectContinue {
		cc.expectContinue = false
		_, _ = cc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		_ = cc.bw.Flush()
	}
}

// setReadDeadline sets the read deadline at once: it is called by the
// goroutine that copies a request body, too.
func (cc *clientConn) setReadDeadline(t time.Time) { _ = cc.conn.SetReadDeadline(t) }

func (cc *clientConn) readDone() {}

func (cc *clientConn) idle(bool) {}

// setWriteDeadline moves the write deadline lazily (lazyDeadline), within
// an eighth of TransferTimeout. Only the connection's goroutine writes.
func (cc *clientConn) setWriteDeadline(t time.Time) {
	cc.wdl.set(cc.conn.SetWriteDeadline, t, cc.p.cfg.TransferTimeout/deadlineSlack)
}

func (cc *clientConn) writeInformational(resp *http.Response) {
	if !cc.r.ProtoAtLeast(1, 1) {
		return // HTTP/1.0 clients do not expect 1xx responses
	}
	cc.writeStatusLine(resp)
	writeResponseHeader(cc.bw, resp.Header)
	_, _ = cc.bw.WriteString("\r\n")
	_ = cc.bw.Flush()
}

// writeStatusLine writes the status line of resp, with the upstream's
// reason phrase.
func (cc *clientConn) writeStatusLine(resp *http.Response) {
	bw := cc.bw
	_, _ = bw.WriteString("HTTP/1.1 ")
	if st := resp.Status; len(st) > 3 && st[3] == ' ' && int(st[0]-'0')*100+int(st[1]-'0')*10+int(st[2]-'0') == resp.StatusCode {
		_, _ = bw.WriteString(resp.Status)
	} else {
		writeCodeAndText(bw, resp.StatusCode)
	}
	_, _ = bw.WriteString("\r\n")
}

func writeCodeAndText(bw *bufio.Writer, code int) {
	_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(code), 10))
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(http.StatusText(code))
}

// writeResponseHeader writes the end-to-end fields of h.
func writeResponseHeader(bw *bufio.Writer, h http.Header) {
	var tokens connTokens
	if c := h["Connection"]; len(c) > 0 {
		tokens.parse(c)
	}
	for k, vv := range h {
		if isHopHeader(k) || ((tokens.n > 0 || len(tokens.more) > 0) && tokens.has(k)) {
			continue
		}
		for _, v := range vv {
			writeHeaderLine(bw, k, v)
		}
	}
}

func (cc *clientConn) writeHead(resp *http.Response, bodyPending bool) {
	if bodyPending {
		cc.closeAfter = true
	}
	if t := cc.p.cfg.TransferTimeout; t > 0 {
		cc.setWriteDeadline(time.Now().Add(t))
	}
	r, bw := cc.r, cc.bw
	cc.headWritten = true
	cc.writeStatusLine(resp)
	writeResponseHeader(bw, resp.Header)
	if resp.Body != http.NoBody && resp.ContentLength < 0 {
		if r.ProtoAtLeast(1, 1) {
			_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
			cc.chunked = true
		} else {
			cc.closeAfter = true // the body ends when the connection does
		}
	}
	cc.writeConnection()
	_, _ = bw.WriteString("\r\n")
}

// Connection fields of the prebuilt refusals (Proxy.refusals).
const (
	refusalKeep   = iota // none: HTTP/1.1 keep-alive
	refusalClose         // Connection: close
	refusalKeep10        // Connection: keep-alive, for HTTP/1.0
)

// buildRefusals prebuilds the 503 responses Serve sends past MaxInFlight,
// so that a refusal under overload costs one copy into the connection's
// buffer and one write, and allocates nothing.
func (p *Proxy) buildRefusals() {
	body := statusBody(http.StatusServiceUnavailable)
	for mode, conn := range []string{"", "Connection: close\r\n", "Connection: keep-alive\r\n"} {
		head := "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n" +
			"X-Content-Type-Options: nosniff\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n" +
			"Retry-After: " + p.retryAfter[0] + "\r\n" + conn + "\r\n"
		p.refusals[mode][0] = []byte(head + body)
		p.refusals[mode][1] = []byte(head)
	}
}

// writeRefusal writes the 503 refusal for the current request.
func (cc *clientConn) writeRefusal() {
	if cc.p.shuttingDown.Load() {
		cc.closeAfter = true
	}
	mode := refusalKeep
	switch {
	case cc.closeAfter:
		mode = refusalClose
	case !cc.r.ProtoAtLeast(1, 1):
		mode = refusalKeep10
	}
	head := 0
	if cc.r.Method == http.MethodHead {
		head = 1
	}
	if t := cc.p.cfg.TransferTimeout; t > 0 {
		cc.setWriteDeadline(time.Now().Add(t))
	}
	cc.headWritten = true
	_, _ = cc.bw.Write(cc.p.refusals[mode][head])
}

// writeConnection writes the Connection field for the persistence decided
// so far.
func (cc *clientConn) writeConnection() {
	if cc.p.shuttingDown.Load() {
		cc.closeAfter = true
	}
	switch {
	case cc.closeAfter:
		_, _ = cc.bw.WriteString("Connection: close\r\n")
	case cc.r != nil && !cc.r.ProtoAtLeast(1, 1):
		_, _ = cc.bw.WriteString("Connection: keep-alive\r\n")
	}
}

func (cc *clientConn) write(p []byte) error {
	bw := cc.bw
	if cc.chunked {
		b := strconv.AppendInt(bw.AvailableBuffer(), int64(len(p)), 16)
		b = append(b, '\r', '\n')
		_, _ = bw.Write(b)
		_, _ = bw.Write(p)
		_, err := bw.WriteString("\r\n")
		return err
	}
	_, err := bw.Write(p)
	return err
}

func (cc *clientConn) flush() error { return cc.bw.Flush() }

func (cc *clientConn) endBody(trailer http.Header) error {
	if !cc.chunked {
		return nil
	}
	bw := cc.bw
	_, _ = bw.WriteString("0\r\n")
	for k, vv := range trailer {
		for _, v := range vv {
			writeHeaderLine(bw, k, v)
		}
	}
	_, err := bw.WriteString("\r\n")
	return err
}

func (cc *clientConn) writeStatus(code int, h http.Header) {
	if cc.headWritten {
		return
	}
	cc.headWritten = true
	bw := cc.bw
	body := statusBody(code)
	_, _ = bw.WriteString("HTTP/1.1 ")
	writeCodeAndText(bw, code)
	_, _ = bw.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: ")
	_, _ = bw.WriteString(strconv.Itoa(len(body)))
	_, _ = bw.WriteString("\r\n")
	for k, vv := range h {
		for _, v := range vv {
			writeHeaderLine(bw, k, v)
		}
	}
	cc.writeConnection()
	_, _ = bw.WriteString("\r\n")
	if cc.r == nil || cc.r.Method != http.MethodHead {
		_, _ = bw.WriteString(body)
	}
}

func (cc *clientConn) hijack() (net.Conn, *bufio.Reader, *bufio.Writer, error) {
	cc.hijacked = true
	cc.state.Store(connHijacked)
	return cc.conn, cc.br, cc.bw, nil
}

func (cc *clientConn) alive() bool { return peek(cc.conn) != peekClosed }
