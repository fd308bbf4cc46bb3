package proxy

import (
	"crypto/tls"
	"io"

	"golang.org/x/sys/unix"
)

// ltls is a TLS client connection on a loop (TLSServer). The loop reads
// and writes plaintext through conn; conn reads records from the socket
// and writes them to el.tlsOut through base, which is in the loop's hands
// (rawRead, rawWrite), and the loop sends what conn wrote after each call.
type ltls struct {
	conn  *tls.Conn
	base  *tlsBase
	state *tls.ConnectionState // for r.TLS
	c     *lclient
	// more: conn may hold bytes that need no read from the socket (a
	// record read ahead, plaintext past the last read). The socket's
	// readability alone does not tell, so the loop reads until conn says
	// it would block.
	more bool
	// pipe: plaintext decrypted while a response was on its way, to see
	// whether the client that shut its side had said goodbye or sent
	// another request (clientClosed); read before conn.
	pipe []byte
}

// maxPipe bounds ltls.pipe.
const maxPipe = 64 << 10

// rawRead is conn's read from the socket: what is there, or errWouldBlock.
func (t *ltls) rawRead(p []byte) (int, error) {
	s := &t.c.s
	if s.eof {
		return 0, io.EOF
	}
	if !s.readable {
		return 0, errWouldBlock
	}
	n, err := s.read(p)
	switch {
	case err == unix.EAGAIN:
		return 0, errWouldBlock
	case err != nil:
		return 0, err
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// rawWrite is conn's write to the socket: kept in el.tlsOut for send.
func (t *ltls) rawWrite(p []byte) (int, error) {
	el := t.c.el
	el.tlsOut = append(el.tlsOut, p...)
	return len(p), nil
}

// readable reports whether c.read may return bytes.
func (c *lclient) readable() bool {
	return c.s.readable || c.tls != nil && c.tls.more
}

// read reads from the client, as lsock.read does: n == 0 with a nil error
// is the end of the stream; unix.EAGAIN means nothing is there.
func (c *lclient) read(b []byte) (int, error) {
	t := c.tls
	if t == nil {
		return c.s.read(b)
	}
	if len(t.pipe) > 0 {
		n := copy(b, t.pipe)
		t.pipe = t.pipe[n:]
		if len(t.pipe) == 0 {
			t.pipe = nil
		}
		return n, nil
	}
	n, err := t.conn.Read(b)
	if len(c.el.tlsOut) > 0 {
		// A reply to a post-handshake message (KeyUpdate).
		if ferr := c.flushTLS(); ferr != nil && err == nil {
			err = ferr
		}
	}
	switch {
	case n > 0:
		t.more = true // a later read tells
		return n, nil
	case err == errWouldBlock:
		t.more = false
		return 0, unix.EAGAIN
	case err == io.EOF: // close_notify, or the stream's end between records
		t.more = false
		c.s.eof, c.s.readable = true, false
		return 0, nil
	case err == nil:
		return 0, nil // len(b) == 0
	}
	t.more = false
	return 0, err
}

// send writes b to the client, keeping what the socket does not take (as
// lsock.send).
func (c *lclient) send(b []byte) error {
	if c.tls == nil {
		return c.s.send(c.el.p, b)
	}
	if len(b) == 0 {
		return nil
	}
	_, err := c.tls.conn.Write(b)
	if ferr := c.flushTLS(); err == nil {
		err = ferr
	}
	return err
}

// flushTLS sends the records conn wrote.
func (c *lclient) flushTLS() error {
	el := c.el
	err := c.s.send(el.p, el.tlsOut)
	el.tlsOut = el.tlsOut[:0]
	return err
}

// closeNotify tells a TLS client that no more data comes (close_notify), as
// tls.Conn.Close does; the loop closes the socket itself.
func (c *lclient) closeNotify() {
	if c.tls == nil {
		return
	}
	_ = c.tls.conn.CloseWrite()
	_ = c.flushTLS()
}

// clientClosed reports, for a client that shut its side (EPOLLRDHUP) while
// its response is on the way, whether it is gone rather than waiting for
// the response with a pipelined request sent. A plain socket is peeked. A
// TLS client's bytes may be a close_notify or a request: they are
// decrypted into t.pipe, for readRequest, until the stream ends.
func (c *lclient) clientClosed() bool {
	t := c.tls
	if t == nil {
		return peekFD(c.s.fd) == peekClosed
	}
	b := c.el.scratch
	for len(t.pipe) < maxPipe {
		n, err := t.conn.Read(b[:min(len(b), maxPipe-len(t.pipe))])
		if len(c.el.tlsOut) > 0 {
			_ = c.flushTLS()
		}
		if n > 0 {
			t.pipe = append(t.pipe, b[:n]...)
			t.more = true
			continue
		}
		if err == errWouldBlock {
			return false
		}
		// The end of the stream, or an error: gone, unless a request came
		// before it.
		c.s.eof, c.s.readable = true, false
		return len(t.pipe) == 0
	}
	return false
}
