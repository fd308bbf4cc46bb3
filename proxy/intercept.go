package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// interceptBufSize is how much of an intercepted handler's response body is
// held back before the header is sent: a body that ends within it goes out
// with Content-Length, a longer one chunked (as net/http's 2 KiB
// bufferBeforeChunkingSize, but one upstream buffer's worth).
const interceptBufSize = upstreamBufSize

// maxPostHandlerDiscard is how much of a request body an intercepted
// handler left unread is read and dropped to keep the connection; with more
// left the connection is closed after the response (net/http's
// maxPostHandlerReadBytes).
const maxPostHandlerDiscard = 256 << 10

// intercept serves r with h, a handler Config.Intercept chose, on the
// connection itself. It reports whether the connection may carry another
// request.
func (cc *clientConn) intercept(r *http.Request, h http.Handler) (keep bool) {
	p := cc.p
	if cc.ctx == nil {
		base := context.WithValue(p.ctx, http.LocalAddrContextKey, cc.conn.LocalAddr())
		cc.ctx, cc.cancelCtx = context.WithCancel(base)
	}
	ctx, cancel := context.WithCancel(cc.ctx)
	defer cancel()
	r = r.WithContext(ctx)
	w := &respWriter{cc: cc, r: r, header: make(http.Header), cancel: cancel, declared: -1,
		isHead: r.Method == http.MethodHead}
	if r.Body != nil && r.Body != http.NoBody {
		w.body = reqBody{rc: r.Body, w: w}
		r.Body = &w.body
	}
	cc.r = r
	cc.headWritten = false
	cc.chunked = false
	if cc.wbuf == nil {
		cc.wbuf = make([]byte, 0, interceptBufSize)
	}
	w.buf = cc.wbuf[:0]
	defer func() {
		if v := recover(); v != nil {
			keep = false
			cc.closeAfter = true
			if v == http.ErrAbortHandler {
				return
			}
			stack := make([]byte, 16<<10)
			stack = stack[:runtime.Stack(stack, false)]
			p.log.LogAttrs(p.ctx, slog.LevelError, "proxy: panic in intercepted handler",
				slog.String("remote", cc.remoteAddr), slog.String("method", r.Method),
				slog.String("uri", r.RequestURI), slog.Any("panic", v), slog.String("stack", string(stack)))
		}
	}()
	h.ServeHTTP(w, r)
	cc.rdl.forget() // the handler may have moved it
	if cc.hijacked {
		return false
	}
	w.handlerDone = true
	w.finish()
	return cc.finish()
}

// respWriter is the [http.ResponseWriter] that [Proxy.Serve] gives to the
// handlers [Config.Intercept] returns. It writes HTTP/1.1 straight into the
// connection's buffered writer: the header goes out when the body passes
// interceptBufSize, on Flush, or when the handler returns, with
// Content-Length if the whole body is known by then and chunked otherwise.
// Like net/http's, it is not safe for concurrent use and must not be used
// after ServeHTTP returns.
type respWriter struct {
	cc     *clientConn
	r      *http.Request
	header http.Header
	cancel context.CancelFunc // the request context's
	body   reqBody            // r.Body, when there is one

	status      int    // final status; 0 until WriteHeader
	headSent    bool   // the status line and header are in cc.bw
	buf         []byte // body held back until the header goes out
	declared    int64  // Content-Length set by the handler; -1 if none
	written     int64  // body bytes accepted
	trailers    []string
	isHead      bool
	handlerDone bool
	manualRead  bool // the handler set its own read deadline
	manualWrite bool // the handler set its own write deadline
	err         error
}

var (
	_ http.ResponseWriter = (*respWriter)(nil)
	_ http.Flusher        = (*respWriter)(nil)
	_ http.Hijacker       = (*respWriter)(nil)
)

func (w *respWriter) Header() http.Header { return w.header }

// WriteHeader sends an informational (1xx) response at once, and records
// a final status; the header goes out with the first part of the body.
func (w *respWriter) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic("proxy: invalid WriteHeader code " + strconv.Itoa(code))
	}
	if w.status != 0 || w.cc.hijacked {
		return // superfluous, as net/http ignores it
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		w.writeInformational(code)
		return
	}
	w.status = code
	if cl := w.header["Content-Length"]; len(cl) > 0 {
		if n, err := strconv.ParseInt(cl[0], 10, 64); err == nil && n >= 0 {
			w.declared = n
		} else {
			delete(w.header, "Content-Length")
		}
	}
}

func (w *respWriter) writeInformational(code int) {
	cc := w.cc
	if !w.r.ProtoAtLeast(1, 1) || w.err != nil {
		return
	}
	bw := cc.bw
	_, _ = bw.WriteString("HTTP/1.1 ")
	writeCodeAndText(bw, code)
	_, _ = bw.WriteString("\r\n")
	w.writeFields()
	_, _ = bw.WriteString("\r\n")
	w.moveWriteDeadline()
	if err := bw.Flush(); err != nil {
		w.fail(err)
	}
}

// bodyAllowed reports whether the status permits a body (RFC 9110).
func (w *respWriter) bodyAllowed() bool { return bodyAllowedForStatus(w.status) }

func (w *respWriter) Write(p []byte) (int, error) {
	if w.cc.hijacked {
		return 0, http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !w.bodyAllowed() {
		return 0, http.ErrBodyNotAllowed
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.declared >= 0 && w.written+int64(len(p)) > w.declared {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if !w.headSent {
		if len(w.buf)+len(p) <= cap(w.buf) {
			w.buf = append(w.buf, p...)
			return len(p), nil
		}
		w.sendHead(false)
		if err := w.writeBody(w.buf); err != nil {
			return 0, err
		}
		w.buf = w.buf[:0]
	}
	if err := w.writeBody(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeBody writes p, framed, to the connection's buffer, moving the write
// deadline when that will reach the socket.
func (w *respWriter) writeBody(p []byte) error {
	if w.isHead || len(p) == 0 {
		return nil
	}
	if len(p) > w.cc.bw.Available() {
		w.moveWriteDeadline()
	}
	if err := w.cc.write(p); err != nil {
		w.fail(err)
		return err
	}
	return nil
}

// fail records a failed write to the client and cancels the request's
// context: the client is gone.
func (w *respWriter) fail(err error) {
	if w.err == nil {
		w.err = err
		w.cc.closeAfter = true
		w.cancel()
	}
}

func (w *respWriter) moveWriteDeadline() {
	if t := w.cc.p.cfg.TransferTimeout; t > 0 && !w.manualWrite {
		w.cc.setWriteDeadline(time.Now().Add(t))
	}
}

// Flush sends the header, if it has not gone out yet, and everything
// buffered; a body whose length was not declared is then chunked.
func (w *respWriter) Flush() { _ = w.FlushError() }

// FlushError is Flush, reporting the error ([http.ResponseController]).
func (w *respWriter) FlushError() error {
	if w.cc.hijacked {
		return http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(false)
		_ = w.writeBody(w.buf)
		w.buf = w.buf[:0]
	}
	if w.err != nil {
		return w.err
	}
	w.moveWriteDeadline()
	if err := w.cc.bw.Flush(); err != nil {
		w.fail(err)
		return err
	}
	return nil
}

// sendHead writes the status line and header into cc.bw. final reports
// that the handler has returned, so that the buffered body is all of it.
func (w *respWriter) sendHead(final bool) {
	cc, h := w.cc, w.header
	w.headSent = true
	cc.headWritten = true
	w.body.settle(final)
	if c := h["Connection"]; len(c) > 0 && hasToken(c, "close") {
		cc.closeAfter = true
	}
	if cc.p.shuttingDown.Load() {
		cc.closeAfter = true
	}
	if tr := h["Trailer"]; len(tr) > 0 {
		for _, v := range tr {
			for _, k := range strings.Split(v, ",") {
				if k = textprotoTrim(k); k != "" {
					w.trailers = append(w.trailers, http.CanonicalHeaderKey(k))
				}
			}
		}
	}
	hasTrailers := len(w.trailers) > 0
	if !hasTrailers {
		for k := range h {
			if strings.HasPrefix(k, http.TrailerPrefix) {
				hasTrailers = true
				break
			}
		}
	}
	setLength, chunked := false, false
	if w.bodyAllowed() && w.declared < 0 {
		switch {
		case final && !hasTrailers && (!w.isHead || w.written > 0):
			setLength = true
		case w.isHead:
		case w.r.ProtoAtLeast(1, 1):
			chunked = true
		default:
			cc.closeAfter = true // the body ends when the connection does
		}
	}
	if w.status == http.StatusNoContent || w.status < 200 {
		delete(h, "Content-Length")
	}
	if !w.isHead && w.declared >= 0 && final && w.written < w.declared && w.bodyAllowed() {
		cc.closeAfter = true // the client would wait for the rest
	}
	if _, ok := h["Content-Type"]; !ok && w.bodyAllowed() && len(w.buf) > 0 && len(h["Content-Encoding"]) == 0 {
		h["Content-Type"] = []string{http.DetectContentType(w.buf)}
	}

	w.moveWriteDeadline()
	bw := cc.bw
	_, _ = bw.WriteString("HTTP/1.1 ")
	writeCodeAndText(bw, w.status)
	_, _ = bw.WriteString("\r\n")
	w.writeFields()
	if _, ok := h["Date"]; !ok {
		_, _ = bw.WriteString("Date: ")
		_, _ = bw.Write(time.Now().UTC().AppendFormat(bw.AvailableBuffer(), http.TimeFormat))
		_, _ = bw.WriteString("\r\n")
	}
	if setLength {
		_, _ = bw.WriteString("Content-Length: ")
		_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), w.written, 10))
		_, _ = bw.WriteString("\r\n")
	}
	if chunked {
		_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
		cc.chunked = true
	}
	cc.writeConnection()
	_, _ = bw.WriteString("\r\n")
}

// writeFields writes the handler's header fields, except those the writer
// sets itself, dropping invalid names and turning line breaks in values
// into spaces, as net/http does.
func (w *respWriter) writeFields() {
	bw := w.cc.bw
	for k, vv := range w.header {
		switch k {
		case "Connection", "Transfer-Encoding", "Keep-Alive", "Proxy-Connection", "Upgrade":
			if w.status != http.StatusSwitchingProtocols {
				continue
			}
		case "Content-Length":
			if w.declared < 0 {
				continue // set after WriteHeader, or invalid
			}
		}
		if !httpguts.ValidHeaderFieldName(k) { // also drops http.TrailerPrefix keys
			continue
		}
		for _, v := range vv {
			_, _ = bw.WriteString(k)
			_, _ = bw.WriteString(": ")
			writeFieldValue(bw, v)
			_, _ = bw.WriteString("\r\n")
		}
	}
}

// writeFieldValue writes v with CR and LF replaced by spaces and leading
// and trailing blanks trimmed.
func writeFieldValue(bw *bufio.Writer, v string) {
	v = textprotoTrim(v)
	for {
		i := strings.IndexAny(v, "\r\n")
		if i < 0 {
			_, _ = bw.WriteString(v)
			return
		}
		_, _ = bw.WriteString(v[:i])
		_ = bw.WriteByte(' ')
		v = v[i+1:]
	}
}

// finish completes the response after the handler has returned.
func (w *respWriter) finish() {
	cc := w.cc
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(true)
		_ = w.writeBody(w.buf)
		w.buf = w.buf[:0]
	} else {
		w.body.settle(true)
	}
	if w.err != nil {
		return
	}
	if !w.isHead && w.declared >= 0 && w.written < w.declared && w.bodyAllowed() {
		cc.closeAfter = true // the response is short of its Content-Length
	}
	if cc.chunked {
		var trailer http.Header
		for _, k := range w.trailers {
			if vv := w.header[k]; len(vv) > 0 {
				if trailer == nil {
					trailer = make(http.Header)
				}
				trailer[k] = vv
			}
		}
		for k, vv := range w.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && httpguts.ValidHeaderFieldName(name) {
				if trailer == nil {
					trailer = make(http.Header)
				}
				trailer[http.CanonicalHeaderKey(name)] = vv
			}
		}
		if err := cc.endBody(trailer); err != nil {
			w.fail(err)
		}
	}
}

// Hijack lets the handler take over the connection
// ([http.Hijacker]): anything written so far is sent first.
func (w *respWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	cc := w.cc
	if cc.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.headSent {
		if err := cc.bw.Flush(); err != nil {
			return nil, nil, err
		}
	}
	cc.hijacked = true
	cc.state.Store(connHijacked)
	_ = cc.conn.SetDeadline(time.Time{})
	return cc.conn, bufio.NewReadWriter(cc.br, cc.bw), nil
}

// SetReadDeadline sets the connection's read deadline, and stops the
// writer moving it before each body read ([http.ResponseController]).
func (w *respWriter) SetReadDeadline(t time.Time) error {
	w.manualRead = true
	return w.cc.conn.SetReadDeadline(t)
}

// SetWriteDeadline sets the connection's write deadline, and stops the
// writer moving it before each write ([http.ResponseController]).
func (w *respWriter) SetWriteDeadline(t time.Time) error {
	w.manualWrite = true
	w.cc.wdl.forget()
	return w.cc.conn.SetWriteDeadline(t)
}

// EnableFullDuplex reports success: the handler may read the request body
// after writing the response ([http.ResponseController]); a connection
// whose request body is unfinished when the header goes out is closed after
// the response.
func (w *respWriter) EnableFullDuplex() error { return nil }

// reqBody is the request body of an intercepted request: it sends
// 100 Continue before the first read when the client asked for it, moves
// the read deadline before each read (Config.TransferTimeout), and records
// whether the body was read to its end.
type reqBody struct {
	rc     io.ReadCloser
	w      *respWriter
	eof    bool
	closed bool
	err    error
}

func (b *reqBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.eof {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	w := b.w
	cc := w.cc
	if cc.expectContinue {
		if w.headSent {
			cc.expectContinue = false // the final response is out; no 100 now
		} else {
			cc.beforeBody()
		}
	}
	if t := cc.p.cfg.TransferTimeout; t > 0 && !w.manualRead {
		cc.setReadDeadline(time.Now().Add(t))
	}
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil:
		b.err = err
		cc.closeAfter = true
	}
	return n, err
}

// Close stops reads; what is left of the body is dropped when the response
// goes out, or the connection closed after it.
func (b *reqBody) Close() error {
	b.closed = true
	return nil
}

// settle makes sure the connection can carry another request once the
// response is out, when the header is about to be sent: a body the handler
// has not read to its end is read and dropped if the handler is done and
// little is left, or else the connection closes after the response.
func (b *reqBody) settle(handlerDone bool) {
	if b.rc == nil || b.eof {
		return
	}
	cc := b.w.cc
	if !handlerDone || cc.expectContinue || b.err != nil {
		// Still being read; or the client waits for 100 Continue before
		// sending it.
		cc.closeAfter = true
		return
	}
	if cc.closeAfter {
		return
	}
	if t := cc.p.cfg.TransferTimeout; t > 0 {
		cc.setReadDeadline(time.Now().Add(t))
	}
	_, err := io.CopyN(io.Discard, b.rc, maxPostHandlerDiscard+1)
	if !errors.Is(err, io.EOF) {
		cc.closeAfter = true
		return
	}
	b.eof = true
}
