package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// TLSServer is [tls.Server] for connections given to [Proxy.Serve]: once
// its handshake is done and the client chose HTTP/1.1 (or no protocol),
// Serve moves the connection onto its event loops (Config.EventLoops), as
// it does plain TCP and unix connections, instead of serving it on a
// goroutine. Records are then encrypted and decrypted by crypto/tls on the
// loop; docs/bench/enclave.md measures what this saves.
//
// Do the handshake before Serve sees the connection (HandshakeContext with
// a deadline, as an HTTPS front door does to route by ALPN), or let Serve
// do it: given a TLSServer connection whose handshake is not done (as
// [NewTLSListener] returns them), Serve completes it on a goroutine first. A connection that c wraps may expose its socket through
// [syscall.Conn] only while it holds no bytes read ahead, and bound each
// write to the socket with a MaxWrite() int method (VSOCK: 32 KiB); the
// loop honours both. RemoteAddr and LocalAddr are c's, kept for the
// connection's life.
//
// A loop that takes the socket works on a duplicate of its descriptor and
// closes c at once, so c's Close does not mark the connection's end. A c
// that must learn of that end (to release a slot of a connection limit,
// say) may have a method Detach() (release func()): the loop calls it
// before it closes c (Close must then leave the end to release), and calls
// the release it returned, if not nil, exactly once when the connection
// ends: when the loop closes the duplicate, or, for a connection the loop
// hands to a goroutine, when that connection is closed.

func TLSServer(c net.Conn, config *tls.Config) *tls.Conn {
	return tls.Server(&tlsBase{Conn: c, remote: c.RemoteAddr(), local: c.LocalAddr()}, config)
}

// NewTLSListener is [tls.NewListener] for [Proxy.Serve]: its connections
// are TLSServer connections, and config's NextProtos is replaced by
// http/1.1 alone (Serve speaks HTTP/1.1; serve HTTP/2 through
// [NewServer]). Serve completes each handshake on a goroutine, within
// Config.ReadHeaderTimeout, then serves the connection on its event loops
// (on a goroutine where there are none). config is cloned.
func NewTLSListener(inner net.Listener, config *tls.Config) net.Listener {
	c := config.Clone()
	c.NextProtos = []string{"http/1.1"}
	return &tlsListener{Listener: inner, config: c}
}

type tlsListener struct {
	net.Listener
	config *tls.Config
}

func (l *tlsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return TLSServer(c, l.config), nil
}

// RefusePlainHTTP answers a client that spoke plain HTTP to a TLS port, as
// net/http's server does: if err, from a failed TLS handshake, shows an
// HTTP request where the first TLS record should have been, it writes a 400
// response that says so to the connection under the TLS one, and reports
// true. A user who typed http:// for an https:// address learns why,
// instead of seeing an empty reply. The caller closes the connection
// either way.
func RefusePlainHTTP(err error) bool {
	var re tls.RecordHeaderError
	if !errors.As(err, &re) || re.Conn == nil || !looksLikeHTTP(re.RecordHeader[:]) {
		return false
	}
	_ = re.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = re.Conn.Write(plainHTTPRefusal)
	return true
}

var plainHTTPRefusal = []byte("HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")

// looksLikeHTTP reports whether the first five bytes of a connection are
// the start of an HTTP request (net/http's test).
func looksLikeHTTP(b []byte) bool {
	switch string(b) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// isTLSServerConn reports whether tc was made by TLSServer.
func isTLSServerConn(tc *tls.Conn) bool {
	_, ok := tc.NetConn().(*tlsBase)
	return ok
}

// tlsBase is the connection under a TLSServer connection. On a loop its
// reads and writes go to the loop (io); before that and after a handoff
// back to a goroutine, to Conn.
type tlsBase struct {
	net.Conn
	remote, local net.Addr
	io            loopIO // set while the connection is on an event loop
}

// loopIO is an event loop's side of a tlsBase: non-blocking reads from the
// socket and writes into the loop's output buffer.
type loopIO interface {
	rawRead(p []byte) (int, error)
	rawWrite(p []byte) (int, error)
}

func (b *tlsBase) Read(p []byte) (int, error) {
	if b.io != nil {
		return b.io.rawRead(p)
	}
	return b.Conn.Read(p)
}

func (b *tlsBase) Write(p []byte) (int, error) {
	if b.io != nil {
		return b.io.rawWrite(p)
	}
	return b.Conn.Write(p)
}

// Close closes Conn; on a loop the loop closes the socket itself.
func (b *tlsBase) Close() error {
	if b.io != nil {
		return nil
	}
	return b.Conn.Close()
}

func (b *tlsBase) RemoteAddr() net.Addr { return b.remote }
func (b *tlsBase) LocalAddr() net.Addr  { return b.local }

// Deadlines are the loop's business while it owns the connection.
func (b *tlsBase) SetDeadline(t time.Time) error {
	if b.io != nil {
		return nil
	}
	return b.Conn.SetDeadline(t)
}

func (b *tlsBase) SetReadDeadline(t time.Time) error {
	if b.io != nil {
		return nil
	}
	return b.Conn.SetReadDeadline(t)
}

func (b *tlsBase) SetWriteDeadline(t time.Time) error {
	if b.io != nil {
		return nil
	}
	return b.Conn.SetWriteDeadline(t)
}

// errWouldBlock is what a loop-owned tlsBase returns when the socket has
// nothing to read: crypto/tls keeps a partial record and reads on after a
// Temporary error.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "proxy: would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// fileConn is a socket handed back from an event loop to a goroutine, for
// any address family (net.FileConn knows only TCP, UDP, IP and unix): an
// *os.File on the non-blocking descriptor, which Go's poller serves with
// deadlines, and the connection's addresses.
type fileConn struct {
	*os.File
	remote, local net.Addr
	maxWrite      int    // > 0: split writes longer than this
	done          func() // the Detach release of the connection it was; nil if none
	doneOnce      sync.Once
}

// detacher is the optional method of a connection under a TLSServer
// connection that learns when a loop ends it (see TLSServer).
type detacher interface{ Detach() (release func()) }

// Close closes the descriptor and ends the connection.
func (f *fileConn) Close() error {
	err := f.File.Close()
	if f.done != nil {
		f.doneOnce.Do(f.done)
	}
	return err
}

func (f *fileConn) RemoteAddr() net.Addr { return f.remote }
func (f *fileConn) LocalAddr() net.Addr  { return f.local }

// Read reads from the socket, with net.Conn's errors (netError).
func (f *fileConn) Read(b []byte) (int, error) {
	n, err := f.File.Read(b)
	return n, f.netError("read", err)
}

func (f *fileConn) Write(b []byte) (int, error) {
	if f.maxWrite <= 0 || len(b) <= f.maxWrite {
		n, err := f.File.Write(b)
		return n, f.netError("write", err)
	}
	var n int
	for len(b) > 0 {
		k, err := f.File.Write(b[:min(len(b), f.maxWrite)])
		n += k
		if err != nil {
			return n, f.netError("write", err)
		}
		b = b[k:]
	}
	return n, nil
}

// netError turns the *os.PathError of an *os.File into the *net.OpError a
// net.Conn returns. crypto/tls keeps a connection usable only after a read
// error that is a net.Error reporting Temporary, as a passed deadline's
// is; a *os.PathError has no Temporary method, so a deadline that stopped
// a read (finishBody stopping a request body) broke the TLS connection
// for good, and lingerClose, reading nothing, reset it under a client
// still sending, which then never read its response.
func (f *fileConn) netError(op string, err error) error {
	pe, ok := err.(*os.PathError)
	if !ok {
		return err // nil, io.EOF
	}
	return &net.OpError{Op: op, Net: f.local.Network(), Source: f.local, Addr: f.remote, Err: pe.Err}
}

// prefixConn is a connection whose first bytes were read already.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// CloseWrite shuts the write side of the connection under c (over TLS,
// close_notify): lingerClose and tunnels half-close through it.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("proxy: no CloseWrite")
}

// SyscallConn lets peeks (alive checks) reach the socket.
func (c *prefixConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("proxy: no socket")
}

// tlsConnOf returns the TLS connection c is or wraps, or nil.
func tlsConnOf(c net.Conn) *tls.Conn {
	if pc, ok := c.(*prefixConn); ok {
		c = pc.Conn
	}
	tc, _ := c.(*tls.Conn)
	return tc
}
