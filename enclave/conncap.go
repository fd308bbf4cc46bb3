package enclave

import (
	"errors"
	"log/slog"
	"math"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// connCap bounds the connections the host can open into the enclave that
// it holds at once, on all its listeners together (Config.MaxConns): the
// public server's, the forwards' and key sync's. An Enclave has one.
// Without a limit (negative) it still counts them, for the metrics.
type connCap struct {
	max     int64 // the limit; math.MaxInt64: none
	held    atomic.Int64
	refused atomic.Uint64
	log     *slog.Logger
	lastLog atomic.Int64 // unix nanoseconds of the last warning
}

func newConnCap(limit int, log *slog.Logger) *connCap {
	c := &connCap{max: math.MaxInt64, log: log}
	if limit > 0 {
		c.max = int64(limit)
	}
	return c
}

func (c *connCap) acquire() bool {
	for {
		n := c.held.Load()
		if n >= c.max {
			return false
		}
		if c.held.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (c *connCap) release() { c.held.Add(-1) }

// refuse closes nc, counts it and warns at most once a second. A TCP
// connection is reset, as quench-host resets clients past its limits, so
// that no TIME_WAIT state is left behind for it.
func (c *connCap) refuse(nc net.Conn, ln net.Listener) {
	if l, ok := nc.(interface{ SetLinger(int) error }); ok {
		_ = l.SetLinger(0)
	}
	_ = nc.Close()
	c.refused.Add(1)
	now := time.Now().UnixNano()
	last := c.lastLog.Load()
	if now-last < int64(time.Second) || !c.lastLog.CompareAndSwap(last, now) {
		return
	}
	c.log.Warn("connection limit reached (MaxConns); new connections are closed at once",
		"max_conns", c.max, "listener", ln.Addr().String(), "refused_total", c.refused.Load())
}

// listen wraps ln: past the cap its connections are closed as they are
// accepted, before any handshake.
func (c *connCap) listen(ln net.Listener) net.Listener {
	return &capListener{Listener: ln, cap: c}
}

type capListener struct {
	net.Listener
	cap *connCap
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.cap.acquire() {
			return &capConn{Conn: nc, cap: l.cap}, nil
		}
		l.cap.refuse(nc, l.Listener)
	}
}

// capConn holds one slot of its connCap until the connection ends: its
// first Close, or, once the proxy's or a forward's event loops took its
// socket (Detach), the release they call when they close their duplicate
// of it.
type capConn struct {
	net.Conn
	cap   *connCap
	state atomic.Uint32 // capLive, capDetached, capReleased
}

const (
	capLive uint32 = iota
	capDetached
	capReleased
)

// Close closes the connection and releases its slot, unless Detach handed
// the release on.
func (c *capConn) Close() error {
	err := c.Conn.Close()
	if c.state.CompareAndSwap(capLive, capReleased) {
		c.cap.release()
	}
	return err
}

// Detach is for event loops that take a duplicate of the socket and close
// c at once (proxy.Serve's, see proxy.TLSServer; a forward's relay.Loop):
// the slot is released when they call the returned function.
func (c *capConn) Detach() func() {
	if !c.state.CompareAndSwap(capLive, capDetached) {
		return nil
	}
	return func() {
		if c.state.CompareAndSwap(capDetached, capReleased) {
			c.cap.release()
		}
	}
}

// SyscallConn, MaxWrite and CloseWrite are the wrapped connection's, for
// the event loops and half-closes.
func (c *capConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}

func (c *capConn) MaxWrite() int {
	if mw, ok := c.Conn.(interface{ MaxWrite() int }); ok {
		return mw.MaxWrite()
	}
	return 0
}

func (c *capConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
