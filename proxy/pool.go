package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// upstreamBufSize is the size of each upstream connection's bufio reader and
// writer: room for a request or response head and small bodies. Body copies
// larger than this go through the pooled BufferSize buffers and bypass them.
const upstreamBufSize = 4 << 10

// aLongTimeAgo is a deadline in the past, set to unblock I/O at once.
var aLongTimeAgo = time.Unix(1, 0)

// errPoolClosed is returned by connPool.get after Close.
var errPoolClosed = errors.New("proxy: closed")

// upConn is one upstream connection with its buffers. It is used by one
// request at a time.
type upConn struct {
	conn   net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	req    http.Request // reused as the request passed to http.ReadResponse
	idleAt time.Time    // when it was put back in the pool
	reused bool         // served an earlier request
	abort  func()       // unblocks all I/O on conn for good; made once, not per request

	rd         upReader     // under br
	rdl, wdl   lazyDeadline // owned by the exchange using uc
	aborted    atomic.Bool  // abort has run: timeouts are final
	noQuickAck bool         // conn takes no TCP_QUICKACK
	// recheck: its last response had no body by rule (HEAD, 204, 304):
	// it is peeked at before reuse however briefly it was idle, for a
	// body the upstream may have sent anyway.
	recheck bool
}

func newUpConn(c net.Conn) *upConn {
	uc := &upConn{
		conn: c,
		bw:   bufio.NewWriterSize(c, upstreamBufSize),
	}
	uc.rd.uc = uc
	uc.br = bufio.NewReaderSize(&uc.rd, upstreamBufSize)
	uc.abort = func() { uc.aborted.Store(true); _ = c.SetDeadline(aLongTimeAgo) }
	return uc
}

// connPool keeps idle upstream connections. The idle channel is both the
// pool and the wait queue: a connection put back goes straight to a request
// waiting for one when MaxConns are open.
type connPool struct {
	network, addr string
	dial          func(ctx context.Context, network, addr string) (net.Conn, error)
	dialTimeout   time.Duration
	idleTimeout   time.Duration
	tlsConfig     *tls.Config // nil for plain HTTP

	idle  chan *upConn  // idle connections; nil when keep-alive is disabled
	slots chan struct{} // one token per open connection; nil when MaxConns == 0

	closed atomic.Bool
	mu     sync.Mutex // serializes drain against itself
}

// get returns an idle connection, or dials a new one, waiting for a slot
// when MaxConns connections are open.
func (p *connPool) get(ctx context.Context) (*upConn, error) {
	uc, err := p.tryGet(ctx)
	if err != errNoSlot {
		return uc, err
	}
	uc, err = p.wait(ctx)
	if uc != nil || err != nil {
		return uc, err
	}
	uc, err = p.dialConn(ctx)
	if err != nil {
		<-p.slots
	}
	return uc, err
}

// errNoSlot is returned by tryGet when MaxConns connections are open.
var errNoSlot = errors.New("proxy: all upstream connections busy")

// tryGet is get without waiting: it returns errNoSlot when MaxConns
// connections are open and none is idle. It may still wait for a dial.
func (p *connPool) tryGet(ctx context.Context) (*upConn, error) {
	for p.idle != nil {
		var uc *upConn
		select {
		case uc = <-p.idle:
		default:
		}
		if uc == nil {
			break
		}
		if time.Since(uc.idleAt) > p.idleTimeout {
			p.discard(uc)
			continue
		}
		return uc, nil
	}
	if p.closed.Load() {
		return nil, errPoolClosed
	}
	if p.slots != nil {
		select {
		case p.slots <- struct{}{}:
		default:
			return nil, errNoSlot
		}
	}
	uc, err := p.dialConn(ctx)
	if err != nil && p.slots != nil {
		<-p.slots
	}
	return uc, err
}

// wait blocks until a connection is put back (returned) or a slot frees up
// (nil, nil: the caller dials), for at most dialTimeout.
func (p *connPool) wait(ctx context.Context) (*upConn, error) {
	t := time.NewTimer(p.dialTimeout)
	defer t.Stop()
	select {
	case uc := <-p.idle: // a nil channel (keep-alive disabled) never fires
		return uc, nil
	case p.slots <- struct{}{}:
		return nil, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("proxy: wait for upstream connection: %w", context.Cause(ctx))
	case <-t.C:
		return nil, fmt.Errorf("proxy: wait for upstream connection: all %d busy: %w", cap(p.slots), errTimeout)
	}
}

func (p *connPool) dialConn(ctx context.Context) (*upConn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.dialTimeout)
	defer cancel()
	c, err := p.dial(ctx, p.network, p.addr)
	if err != nil {
		return nil, fmt.Errorf("proxy: dial upstream: %w", err)
	}
	if p.tlsConfig != nil {
		tc := tls.Client(c, p.tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("proxy: TLS handshake with upstream: %w", err)
		}
		c = tc
	}
	return newUpConn(c), nil
}

// put returns a healthy connection to the pool, or closes it if the pool is
// full or closed.
func (p *connPool) put(uc *upConn) {
	if p.idle == nil || p.closed.Load() {
		p.discard(uc)
		return
	}
	uc.reused = true
	uc.idleAt = time.Now()
	select {
	case p.idle <- uc:
	default:
		p.discard(uc)
		return
	}
	if p.closed.Load() { // raced with close: drain what we just added
		p.drain()
	}
}

// discard closes a connection and frees its slot.
func (p *connPool) discard(uc *upConn) {
	_ = uc.conn.Close()
	if p.slots != nil {
		<-p.slots
	}
}

// release frees the slot of a connection that left the pool for good
// (upgraded) without closing it.
func (p *connPool) release() {
	if p.slots != nil {
		<-p.slots
	}
}

// drain closes every idle connection.
func (p *connPool) drain() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		select {
		case uc := <-p.idle:
			p.discard(uc)
		default:
			return
		}
	}
}

func (p *connPool) close() {
	p.closed.Store(true)
	if p.idle != nil {
		p.drain()
	}
}

// errTimeout is wrapped by errors that should be answered with 504.
var errTimeout = timeoutError{}

type timeoutError struct{}

func (timeoutError) Error() string { return "timeout" }
func (timeoutError) Timeout() bool { return true }
