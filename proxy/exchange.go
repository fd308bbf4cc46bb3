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
	"strconv"
	"sync/atomic"
	"time"
)

// clientCheckInterval is how often Serve checks, while it waits for the
// upstream, that the client is still connected (with a non-blocking peek at
// its socket), so that a client that goes away cancels the upstream
// exchange within this time. The handler front end needs no polling: the
// http.Server cancels the request context.
const clientCheckInterval = time.Second

// clientSide is the client half of an exchange: an http.ResponseWriter
// (ServeHTTP) or a connection Serve speaks HTTP/1.1 on itself.
type clientSide interface {
	// beforeBody runs before the request body is first read, in the
	// exchange's goroutine.
	beforeBody()
	// setReadDeadline sets the deadline for request body reads.
	setReadDeadline(t time.Time)
	// readDone is called after a body read under a deadline returned
	// short of the body's end, before the bytes go upstream.
	readDone()
	// writeInformational relays a 1xx response other than 100 and 101.
	writeInformational(resp *http.Response)
	// writeHead sends the status line and headers of resp. bodyPending
	// reports that the request body is still being read: the connection
	// must close after the response, since the rest of the body may have
	// to be abandoned.
	writeHead(resp *http.Response, bodyPending bool)
	// write sends part of the response body.
	write(p []byte) error
	// flush sends what is buffered.
	flush() error
	// setWriteDeadline sets the deadline for response writes.
	setWriteDeadline(t time.Time)
	// idle is called before the exchange waits for more of the response
	// from the upstream, with nothing to write meanwhile; stream reports
	// a response of unknown length.
	idle(stream bool)
	// endBody completes a response body that was read to its end.
	endBody(trailer http.Header) error
	// writeStatus sends a short plain-text response with code.
	writeStatus(code int, h http.Header)
	// hijack takes over the client connection for an upgrade.
	hijack() (net.Conn, *bufio.Reader, *bufio.Writer, error)
	// alive reports whether the client is still connected, as far as can
	// be told without blocking.
	alive() bool
}

// exchange is the state of one forwarded request.
type exchange struct {
	p     *Proxy
	cs    clientSide
	r     *http.Request
	ctx   context.Context // cancelled when the client goes away (handler) or the Proxy closes (Serve)
	watch bool            // poll cs.alive while waiting on the upstream (Serve)
	start time.Time       // admission; set only when metrics are on
	code  int             // status sent to the client, for metrics

	released  bool // the in-flight slot (or stream) has been given back
	streaming bool // the slot became a stream (toStream)
	bodyRead  bool // the request body was read to its end (or there was none)
	body      bodyState
}

// bodyState is the request body copy running beside the exchange.
type bodyState struct {
	errc    chan error  // receives sendBody's result; nil without a body
	eof     atomic.Bool // sendBody has read the whole body from the client
	err     error       // the result, once received
	waited  bool
	aborted bool
}

// release gives back the in-flight slot and records the request.
func (ex *exchange) release() {
	if ex.released {
		return
	}
	ex.released = true
	ex.p.giveBack(ex.streaming)
	if m := ex.p.metrics; m != nil {
		m.Request(ex.code, time.Since(ex.start))
	}
}

// toStream gives back the in-flight slot of a request whose response head
// has been sent and whose length is unknown (Config.MaxStreams), if
// streams are left; release then ends the stream.
func (ex *exchange) toStream(resp *http.Response) {
	if ex.released || ex.streaming || resp.ContentLength >= 0 || ex.r.Method == http.MethodHead ||
		!bodyAllowedForStatus(resp.StatusCode) {
		return
	}
	ex.streaming = ex.p.slotToStream()
}

// admitted records the admission of ex for metrics.
func (ex *exchange) admitted() {
	if m := ex.p.metrics; m != nil {
		ex.start = time.Now()
		m.InFlight(1)
	}
}

// serve forwards the request. On return the response is complete or
// aborted; ex.release has not been called.
func (ex *exchange) serve() {
	if ex.p.h2c != nil {
		ex.serveH2C()
		return
	}
	r := ex.r
	var tokens connTokens
	if c := r.Header["Connection"]; len(c) > 0 {
		tokens.parse(c)
	}
	upgrade := upgradeType(r, &tokens)
	hasBody := r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	ex.bodyRead = !hasBody
	if hasBody {
		upgrade = "" // an upgrade must not carry a body; forward it as a plain request
	}
	if hasBody && r.ContentLength < 0 && r.ProtoMajor == 2 {
		// An HTTP/2 body without content-length: sent with a
		// Content-Length if it ends soon (prebufferWait), for apps that
		// read only that. The request is the server's: change a copy.
		ex.cs.beforeBody()
		pb := newPrebuffered(ex.p, r.Body)
		defer pb.Close()
		complete, n := pb.wait(prebufferWait)
		r2 := *r
		r2.Body = pb
		if complete {
			r2.ContentLength = int64(n)
			hasBody = n > 0
			ex.bodyRead = !hasBody
		}
		ex.r, r = &r2, &r2
	}
	if upgrade != "" {
		// The tunnel, if the upstream switches, runs inside this call.
		if !ex.p.reserveUpgrade() {
			ex.p.refused()
			ex.code = http.StatusServiceUnavailable
			ex.cs.writeStatus(http.StatusServiceUnavailable, ex.p.retryAfterHeader())
			return
		}
		defer ex.p.releaseUpgrade()
	}
	for attempt := 0; ; attempt++ {
		uc, err := ex.p.pool.get(ex.ctx)
		if err != nil {
			ex.fail(err)
			return
		}
		if uc.reused && (uc.recheck || time.Since(uc.idleAt) > ex.p.aliveCheckAfter) && !idleConnUsable(uc.conn) {
			ex.p.pool.discard(uc)
			attempt--
			continue
		}
		if !ex.roundTrip(uc, &tokens, upgrade, hasBody, attempt == 0) {
			return
		}
	}
}

// roundTrip sends the request on uc and relays the response. It reports
// whether the request should be retried on another connection, which it
// does only for a reused connection that the upstream turned out to have
// closed, when resending is safe.
func (ex *exchange) roundTrip(uc *upConn, tokens *connTokens, upgrade string, hasBody, first bool) (retry bool) {
	p, r := ex.p, ex.r
	stop := func() bool { return true }
	if ex.ctx.Done() != nil && !ex.watch {
		stop = context.AfterFunc(ex.ctx, uc.abort)
	}
	keep := false
	tunneled := false
	defer func() {
		if tunneled {
			return
		}
		if !stop() { // the client went away and uc was aborted
			keep = false
		}
		uc.disarm()
		if hasBody {
			// sendBody and finishBody moved the write deadline.
			uc.wdl.forget()
		}
		if keep {
			p.pool.put(uc)
		} else {
			p.pool.discard(uc)
		}
	}()
	mayRetry := first && uc.reused && !hasBody
	if cc, ok := ex.cs.(*clientConn); ok {
		cc.up.Store(uc)
		defer cc.up.Store(nil)
	}

	// The write deadline covers the request head; body writes move it.
	if t := p.cfg.UpstreamTimeout; t > 0 {
		uc.wdl.set(uc.conn.SetWriteDeadline, time.Now().Add(t), t/deadlineSlack)
	} else if uc.reused {
		uc.wdl.set(uc.conn.SetWriteDeadline, time.Time{}, 0)
	}
	chunked := hasBody && r.ContentLength < 0
	p.writeRequestHead(uc.bw, r, tokens, upgrade, chunked)
	ex.body.errc, ex.body.err, ex.body.waited, ex.body.aborted = nil, nil, false, false
	ex.body.eof.Store(false)
	if hasBody {
		ex.cs.beforeBody()
		ex.body.errc = make(chan error, 1)
		go func() { ex.body.errc <- ex.sendBody(uc, chunked) }()
		defer ex.finishBody(uc)
	} else if err := uc.bw.Flush(); err != nil {
		if mayRetry && ex.ctx.Err() == nil {
			return true
		}
		ex.fail(fmt.Errorf("proxy: write request: %w", err))
		return false
	}

	// Wait for the first byte before parsing, to tell a connection the
	// upstream closed while it was idle from one that failed mid-response.
	uc.rd.reads, uc.rd.acked = 0, false // a new response (quickAck)
	if err := ex.waitUpstream(uc); err != nil {
		if mayRetry && ex.ctx.Err() == nil && canResend(r) && !isTimeout(err) && !errors.Is(err, errClientGone) {
			return true
		}
		ex.failWithBody(uc, fmt.Errorf("proxy: read response: %w", err))
		return false
	}
	uc.req.Method = r.Method
	resp, err := readResponse(uc)
	for err == nil && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
		if resp.StatusCode != http.StatusContinue {
			ex.cs.writeInformational(resp)
		}
		if err = ex.waitUpstream(uc); err == nil {
			resp, err = readResponse(uc)
		}
	}
	if err != nil {
		ex.failWithBody(uc, fmt.Errorf("proxy: read response: %w", err))
		return false
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if upgrade == "" {
			ex.failWithBody(uc, errors.New("proxy: upstream switched protocols without being asked to"))
			return false
		}
		if !stop() {
			ex.code = 499
			return false // the deferred func discards uc: keep is false
		}
		stop = func() bool { return true }
		tunneled = ex.tunnel(uc, resp, upgrade)
		return false
	}

	ex.code = resp.StatusCode
	ex.cs.writeHead(resp, hasBody && !ex.body.eof.Load())
	ex.toStream(resp)
	complete, rerr, werr := ex.copyResponse(uc, resp)
	if rerr != nil {
		// The status line is out: all that is left is to abort the response
		// so that the client cannot take it for a whole one.
		ex.finishBody(uc)
		ex.upstreamFailed(fmt.Errorf("proxy: read response body: %w", rerr), resp.StatusCode)
		panic(http.ErrAbortHandler)
	}
	if werr != nil {
		ex.clientGone(werr)
		return false
	}
	if werr := ex.cs.endBody(resp.Trailer); werr != nil {
		return false
	}
	if hasBody && ex.finishBody(uc) != nil {
		return false
	}
	// uc is not reused when the upstream may still be busy with this
	// request, or may answer part of it later, as the response to the
	// next request on uc, another client's:
	//   - after a chunked request body: an upstream that reads only
	//     Content-Length (Python's http.server, HTTP/1.0 servers) answers
	//     before the body and then takes its chunks for requests;
	//   - after a body on a GET (or HEAD, DELETE, OPTIONS, TRACE), which
	//     apps leave unread (Python's do_GET) and take for a request;
	//   - after HEAD answered without a length (headOfUnknownLength).
	keep = complete && !resp.Close && !chunked && !(hasBody && bodyIgnoredBy(r.Method)) &&
		!headOfUnknownLength(r, resp) && uc.drained()
	// A body sent for HEAD, 204 or 304 (a handler that writes one
	// anyway) may arrive after the head: check before reuse.
	uc.recheck = r.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent ||
		resp.StatusCode == http.StatusNotModified
	return false
}

// headOfUnknownLength reports whether resp answers a HEAD without a
// Content-Length (or chunked). The upstream may still be busy on the
// connection, producing the body it does not send: a Go handler of a
// stream (server-sent events) runs on, its writes discarded, until its
// connection closes. Such a connection is not reused: the next request on
// it would wait for UpstreamTimeout.
func headOfUnknownLength(r *http.Request, resp *http.Response) bool {
	return r.Method == http.MethodHead && (resp.ContentLength < 0 || len(resp.TransferEncoding) > 0)
}

// drained reports whether uc holds nothing past the response just read:
// bytes the upstream sent beyond its end (more than its Content-Length, a
// body for HEAD, 204 or 304) would be taken for the response to the next
// request on uc, another client's. Bytes already in br are seen at once;
// the socket is peeked only when the last read filled its buffer, so
// that more may be waiting (a short read drains a socket).
func (uc *upConn) drained() bool {
	if uc.br.Buffered() > 0 {
		return false
	}
	if !uc.rd.full {
		return true
	}
	if !idleConnUsable(uc.conn) {
		return false
	}
	if _, ok := uc.conn.(*tls.Conn); ok {
		// Decrypted bytes may wait in the tls.Conn, where no peek sees
		// them: read with a deadline in the past, which returns them or
		// times out at once (tls.Conn survives a timeout).
		uc.disarm() // no retries in upReader
		uc.rd.acked = true
		_ = uc.conn.SetReadDeadline(aLongTimeAgo)
		_, err := uc.br.Peek(1)
		_ = uc.conn.SetReadDeadline(time.Time{})
		uc.rdl = lazyDeadline{known: true}
		return err != nil && isTimeout(err)
	}
	return true
}

// readResponse parses a response head from uc, rejecting status codes
// that net/http could not send on (it accepts any three digits).
func readResponse(uc *upConn) (*http.Response, error) {
	resp, err := http.ReadResponse(uc.br, &uc.req)
	if err == nil && (resp.StatusCode < 100 || resp.StatusCode > 599) {
		return nil, fmt.Errorf("proxy: malformed status code %d", resp.StatusCode)
	}
	return resp, err
}

// errClientGone reports a client found disconnected while waiting.
var errClientGone = errors.New("proxy: client went away")

// waitUpstream waits until the upstream has sent something, for at most
// UpstreamTimeout, checking every clientCheckInterval that the client is
// still there when ex.watch is set (see upReader). The reads that follow
// within the same message share the wait's deadline.
func (ex *exchange) waitUpstream(uc *upConn) error {
	if uc.br.Buffered() > 0 {
		return nil
	}
	if err := ex.ctx.Err(); err != nil {
		return err
	}
	now := time.Now()
	var end time.Time
	if t := ex.p.cfg.UpstreamTimeout; t > 0 {
		end = now.Add(t)
	}
	uc.armRead(ex, now, end)
	if uc.aborted.Load() { // abort ran before armRead moved the deadline
		return fmt.Errorf("proxy: upstream exchange aborted: %w", errTimeout)
	}
	_, err := uc.br.Peek(1)
	return err
}

// idleConnUsable reports whether an idle upstream connection may carry a
// request: the upstream has neither closed it nor sent unsolicited bytes.
func idleConnUsable(c net.Conn) bool {
	st := peek(c)
	return st == peekEmpty || st == peekUnknown
}

// canResend reports whether a request without a body may be sent again
// after a connection failed before any response byte arrived: the request
// may have reached the upstream, so only idempotent ones qualify (RFC 9110
// section 9.2.2), as in net/http's Transport.
func canResend(r *http.Request) bool {
	switch r.Method {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	_, a := r.Header["Idempotency-Key"]
	_, b := r.Header["X-Idempotency-Key"]
	return a || b
}

// sendBody copies the request body to the upstream. It runs in its own
// goroutine so that the response can stream back at the same time.
func (ex *exchange) sendBody(uc *upConn, chunked bool) error {
	p := ex.p
	bp := p.getBuf()
	defer p.putBuf(bp)
	buf := *bp
	tt := p.cfg.TransferTimeout
	var sent int64
	for i := 0; ; i++ {
		if tt > 0 {
			ex.cs.setReadDeadline(time.Now().Add(tt))
		}
		n, rerr := ex.r.Body.Read(buf)
		sent += int64(n)
		if tt > 0 && rerr == nil && (ex.r.ContentLength < 0 || sent < ex.r.ContentLength) {
			// More to come: the deadline of this read must not run
			// during the write upstream (a whole body of known length
			// has nothing left to wait for).
			ex.cs.readDone()
		}
		if rerr == io.EOF {
			// The body is all read (net/http's body returns its last
			// bytes with io.EOF): say so before they go up, since the
			// upstream may answer as soon as it has them, and writeHead,
			// seeing the body still pending, would close the client's
			// connection after the response.
			ex.body.eof.Store(true)
		}
		if n > 0 {
			if t := p.cfg.UpstreamTimeout; t > 0 && i > 0 {
				_ = uc.conn.SetWriteDeadline(time.Now().Add(t))
			}
			if chunked {
				b := strconv.AppendInt(uc.bw.AvailableBuffer(), int64(n), 16)
				b = append(b, '\r', '\n')
				_, _ = uc.bw.Write(b)
				_, _ = uc.bw.Write(buf[:n])
				_, _ = uc.bw.WriteString("\r\n")
			} else {
				_, _ = uc.bw.Write(buf[:n])
			}
			if err := uc.bw.Flush(); err != nil {
				return &upstreamWriteError{err}
			}
		}
		if rerr == io.EOF {
			if tt > 0 {
				ex.cs.setReadDeadline(time.Time{}) // leave none behind
			}
			if chunked {
				_, _ = uc.bw.WriteString("0\r\n\r\n")
			}
			if err := uc.bw.Flush(); err != nil {
				return &upstreamWriteError{err}
			}
			return nil
		}
		if rerr != nil {
			// The upstream has a truncated body it would wait on: stop
			// the exchange now rather than at the next timeout.
			uc.abort()
			return &clientReadError{rerr}
		}
	}
}

// finishBody waits for the request body copy to end, first stopping it if
// the response is over (or failed) while the body is still being sent. It
// returns the copy's error, or errBodyAborted.
func (ex *exchange) finishBody(uc *upConn) error {
	body := &ex.body
	if body.errc == nil || body.waited {
		return body.err
	}
	body.waited = true
	select {
	case body.err = <-body.errc:
	default:
		if body.eof.Load() {
			// Only the final flush upstream is left; the upstream write
			// deadline bounds it.
			body.err = <-body.errc
			break
		}
		// Still sending: unblock the client read and the upstream write.
		body.aborted = true
		ex.cs.setReadDeadline(aLongTimeAgo)
		_ = uc.conn.SetWriteDeadline(aLongTimeAgo)
		body.err = <-body.errc
		if body.err == nil {
			body.err = errBodyAborted
		}
	}
	ex.bodyRead = body.err == nil
	return body.err
}

var errBodyAborted = errors.New("proxy: request body not fully sent: the response ended first")

// failWithBody reports a failure that happened before the response header,
// telling a client that stopped sending its body from an upstream failure.
func (ex *exchange) failWithBody(uc *upConn, err error) {
	if ex.body.errc != nil {
		_ = uc.conn.SetDeadline(aLongTimeAgo)
		var cre *clientReadError
		if berr := ex.finishBody(uc); errors.As(berr, &cre) && !ex.body.aborted {
			// The client stopped sending: the upstream failure follows
			// from it. Answer 400, as net/http does for a bad body.
			ex.code = http.StatusBadRequest
			ex.p.log.LogAttrs(ex.ctx, slog.LevelDebug, "proxy: client request body failed",
				slog.String("method", ex.r.Method), slog.String("uri", ex.r.RequestURI), slog.Any("err", cre.err))
			if ex.ctx.Err() == nil {
				ex.cs.writeStatus(http.StatusBadRequest, nil)
			}
			return
		}
	}
	ex.fail(err)
}

// fail answers 502 (504 on timeouts) for an exchange that failed before the
// response began, and logs it, unless the client has gone away.
func (ex *exchange) fail(err error) {
	if ex.ctx.Err() != nil || errors.Is(err, errClientGone) {
		ex.code = 499
		ex.p.log.LogAttrs(ex.ctx, slog.LevelDebug, "proxy: client went away",
			slog.String("method", ex.r.Method), slog.String("uri", ex.r.RequestURI), slog.Any("err", err))
		return
	}
	code := http.StatusBadGateway
	switch {
	case errors.Is(err, errPoolClosed):
		code = http.StatusServiceUnavailable
	case isTimeout(err):
		code = http.StatusGatewayTimeout
	}
	ex.code = code
	ex.upstreamFailed(err, code)
	ex.cs.writeStatus(code, nil)
}

func (ex *exchange) upstreamFailed(err error, code int) {
	if m := ex.p.metrics; m != nil {
		m.UpstreamError()
	}
	ex.p.log.LogAttrs(ex.ctx, slog.LevelWarn, "proxy: upstream error",
		slog.String("method", ex.r.Method), slog.String("uri", ex.r.RequestURI),
		slog.Int("status", code), slog.Any("err", err))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// copyResponse copies the response body to the client. complete reports
// that the body was read to its end. rerr is an upstream read error, werr a
// client write error; they are kept apart because only the first is the
// upstream's fault.
func (ex *exchange) copyResponse(uc *upConn, resp *http.Response) (complete bool, rerr, werr error) {
	if resp.Body == http.NoBody {
		return true, nil, nil
	}
	p, cs := ex.p, ex.cs
	if n := resp.ContentLength; n >= 0 && len(resp.TransferEncoding) == 0 && n <= int64(uc.br.Buffered()) {
		// The whole body is already in the connection's buffer (most small
		// responses are): write it from there, without a copy buffer.
		b, _ := uc.br.Peek(int(n))
		if err := cs.write(b); err != nil {
			return false, nil, err
		}
		_, _ = uc.br.Discard(int(n))
		return true, nil, nil
	}
	bp := p.getBuf()
	defer p.putBuf(bp)
	buf := *bp
	// Responses of unknown length (chunked or until close: server-sent
	// events, streams) are flushed whenever the upstream has nothing more
	// buffered, so that each event goes out at once while bulk transfers
	// still go out in full buffers.
	stream := resp.ContentLength < 0
	// Long responses take more than one write; each gets a fresh client
	// deadline.
	tt := p.cfg.TransferTimeout
	manageDeadline := tt > 0 && (stream || resp.ContentLength > int64(len(buf)))
	if stream && uc.br.Buffered() == 0 {
		// The head alone so far: the upstream may wait (for an event, or
		// for the client, full duplex) before any body. Send the head now.
		if werr := cs.flush(); werr != nil {
			return false, nil, werr
		}
	}
	// A body without Content-Length or chunked coding (HTTP/1.0 style)
	// ends when the upstream closes: the wait's EOF is its end, which the
	// read below reports.
	untilClose := stream && len(resp.TransferEncoding) == 0
	for {
		if uc.br.Buffered() == 0 {
			cs.idle(stream)
		}
		if err := ex.waitUpstream(uc); err != nil && !(untilClose && err == io.EOF) {
			if errors.Is(err, errClientGone) {
				return false, nil, err
			}
			return false, err, nil
		}
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if manageDeadline {
				cs.setWriteDeadline(time.Now().Add(tt))
			}
			if werr := cs.write(buf[:n]); werr != nil {
				return false, nil, werr
			}
			if stream && err == nil && uc.br.Buffered() == 0 {
				if werr := cs.flush(); werr != nil {
					return false, nil, werr
				}
			}
		}
		if err == io.EOF {
			return true, nil, nil
		}
		if err != nil {
			return false, err, nil
		}
	}
}

// bodyIgnoredBy reports whether apps commonly leave the body of a request
// with method m unread: after such a request with a body, the upstream
// connection is not reused. Whatever an app left unread it parses as its
// next request, and answers it: a client could have another client's
// request, on the pooled connection, answered with a response it chose.
func bodyIgnoredBy(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodDelete, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// clientReadError is a failure to read the request body from the client.
type clientReadError struct{ err error }

func (e *clientReadError) Error() string { return "proxy: read request body: " + e.err.Error() }
func (e *clientReadError) Unwrap() error { return e.err }

// upstreamWriteError is a failure to send the request body upstream.
type upstreamWriteError struct{ err error }

func (e *upstreamWriteError) Error() string { return "proxy: write request body: " + e.err.Error() }
func (e *upstreamWriteError) Unwrap() error { return e.err }
