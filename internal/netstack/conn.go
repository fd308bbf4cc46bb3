package netstack

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/quenchnet/quench/internal/ethlink"
)

// The conns wrap gonet's, which carry the data path and deadlines, and fix
// what gonet does differently from the standard library:
//   - calls after Close fail with net.ErrClosed (gonet: io.EOF or a stack
//     error string), and a second Close reports it;
//   - deadlines fail with os.ErrDeadlineExceeded (gonet: an error that only
//     reports Timeout());
//   - stack errors become syscall.Errno values (gonet: errors.New of the
//     tcpip.Error's text), so errors.Is(err, syscall.ECONNRESET) works;
//   - addresses are fixed at creation, from the endpoint's ID (gonet asks
//     the endpoint, which reports no peer once closed or reset, and then
//     returns a nil net.Addr);
//   - WriteTo accepts any *net.UDPAddr, including 16-byte IPv4 ones, and
//     refuses other net.Addr types instead of panicking.

// errnoOf maps stack errors to the errno the Linux kernel returns for them.
func errnoOf(terr tcpip.Error) (syscall.Errno, bool) {
	switch terr.(type) {
	case *tcpip.ErrConnectionRefused:
		return syscall.ECONNREFUSED, true
	case *tcpip.ErrConnectionReset:
		return syscall.ECONNRESET, true
	case *tcpip.ErrConnectionAborted, *tcpip.ErrAborted:
		return syscall.ECONNABORTED, true
	case *tcpip.ErrTimeout:
		return syscall.ETIMEDOUT, true
	case *tcpip.ErrHostUnreachable, *tcpip.ErrHostDown:
		return syscall.EHOSTUNREACH, true
	case *tcpip.ErrNetworkUnreachable:
		return syscall.ENETUNREACH, true
	case *tcpip.ErrPortInUse, *tcpip.ErrDuplicateAddress:
		return syscall.EADDRINUSE, true
	case *tcpip.ErrBadLocalAddress:
		return syscall.EADDRNOTAVAIL, true
	case *tcpip.ErrClosedForSend:
		return syscall.EPIPE, true
	case *tcpip.ErrNotConnected:
		return syscall.ENOTCONN, true
	case *tcpip.ErrAlreadyConnected:
		return syscall.EISCONN, true
	case *tcpip.ErrMessageTooLong:
		return syscall.EMSGSIZE, true
	case *tcpip.ErrNoBufferSpace:
		return syscall.ENOBUFS, true
	case *tcpip.ErrInvalidEndpointState, *tcpip.ErrBadAddress, *tcpip.ErrInvalidOptionValue:
		return syscall.EINVAL, true
	case *tcpip.ErrAddressFamilyNotSupported:
		return syscall.EAFNOSUPPORT, true
	case *tcpip.ErrBroadcastDisabled, *tcpip.ErrNotPermitted:
		return syscall.EACCES, true
	}
	return 0, false
}

// errnoByText maps the text of every tcpip.Error that errnoOf knows to its
// errno, for errors that gonet has already turned into strings.
var errnoByText = func() map[string]syscall.Errno {
	m := map[string]syscall.Errno{}
	for _, e := range []tcpip.Error{
		&tcpip.ErrConnectionRefused{}, &tcpip.ErrConnectionReset{}, &tcpip.ErrConnectionAborted{},
		&tcpip.ErrAborted{}, &tcpip.ErrTimeout{}, &tcpip.ErrHostUnreachable{}, &tcpip.ErrHostDown{},
		&tcpip.ErrNetworkUnreachable{}, &tcpip.ErrPortInUse{},
		&tcpip.ErrDuplicateAddress{}, &tcpip.ErrBadLocalAddress{}, &tcpip.ErrClosedForSend{},
		&tcpip.ErrNotConnected{}, &tcpip.ErrAlreadyConnected{}, &tcpip.ErrMessageTooLong{},
		&tcpip.ErrNoBufferSpace{}, &tcpip.ErrInvalidEndpointState{}, &tcpip.ErrBadAddress{},
		&tcpip.ErrInvalidOptionValue{}, &tcpip.ErrAddressFamilyNotSupported{},
		&tcpip.ErrBroadcastDisabled{}, &tcpip.ErrNotPermitted{},
	} {
		errno, _ := errnoOf(e)
		m[e.String()] = errno
	}
	return m
}()

// stackError converts a tcpip.Error to an error for an *net.OpError's Err:
// an *os.SyscallError with the matching errno, or the error's text.
func stackError(op string, terr tcpip.Error) error {
	if errno, ok := errnoOf(terr); ok {
		return os.NewSyscallError(op, errno)
	}
	return errors.New(terr.String())
}

// dialTimeoutError is the standard library's dial timeout error: "i/o
// timeout", a net.Error with Timeout() true, and errors.Is
// context.DeadlineExceeded.
type dialTimeoutError struct{}

func (dialTimeoutError) Error() string        { return "i/o timeout" }
func (dialTimeoutError) Timeout() bool        { return true }
func (dialTimeoutError) Temporary() bool      { return true }
func (dialTimeoutError) Is(target error) bool { return target == context.DeadlineExceeded }

// dialCanceledError is the standard library's dial cancellation error.
type dialCanceledError struct{}

func (dialCanceledError) Error() string        { return "operation was canceled" }
func (dialCanceledError) Is(target error) bool { return target == context.Canceled }

// contextError maps a context's error as net.Dialer does.
func contextError(err error) error {
	switch err {
	case context.Canceled:
		return dialCanceledError{}
	case context.DeadlineExceeded:
		return dialTimeoutError{}
	}
	return err
}

// fixOpError rewrites an error from gonet's data path. closed reports
// whether the conn was closed locally.
func fixOpError(op, network string, laddr, raddr net.Addr, closed bool, err error) error {
	if closed {
		return &net.OpError{Op: op, Net: network, Source: laddr, Addr: raddr, Err: net.ErrClosed}
	}
	if err == io.EOF {
		return err
	}
	inner := err
	var oe *net.OpError
	if errors.As(err, &oe) {
		inner = oe.Err
	}
	var ne net.Error
	switch {
	case errors.As(inner, &ne) && ne.Timeout():
		inner = os.ErrDeadlineExceeded
	default:
		if errno, ok := errnoByText[inner.Error()]; ok {
			inner = os.NewSyscallError(op, errno)
		}
	}
	return &net.OpError{Op: op, Net: network, Source: laddr, Addr: raddr, Err: inner}
}

// tcpConn is a TCP net.Conn on the stack.
type tcpConn struct {
	c            *gonet.TCPConn
	ep           tcpip.Endpoint
	n            *Net
	laddr, raddr net.Addr
	closed       atomic.Bool
	readClosed   atomic.Bool // CloseRead was called
}

var _ net.Conn = (*tcpConn)(nil)

// newTCPConn wraps a connected (or accepted) endpoint. The addresses come
// from the endpoint's ID, which is fixed once the endpoint is connected:
// gonet's RemoteAddr asks the endpoint whether it is still connected, and a
// connection the peer reset while it waited in the accept queue would come
// out of Accept with a nil RemoteAddr.
func newTCPConn(n *Net, wq *waiter.Queue, ep tcpip.Endpoint) *tcpConn {
	c := &tcpConn{c: gonet.NewTCPConn(wq, ep), ep: ep, n: n}
	if info, ok := ep.Info().(*stack.TransportEndpointInfo); ok {
		id := info.ID
		c.laddr = &net.TCPAddr{IP: addrIP(id.LocalAddress), Port: int(id.LocalPort)}
		c.raddr = &net.TCPAddr{IP: addrIP(id.RemoteAddress), Port: int(id.RemotePort)}
		return c
	}
	c.laddr, c.raddr = c.c.LocalAddr(), c.c.RemoteAddr()
	return c
}

func (c *tcpConn) err(op string, err error) error {
	return fixOpError(op, "tcp", c.laddr, c.raddr, c.closed.Load(), err)
}

// Read implements net.Conn.
func (c *tcpConn) Read(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.err("read", net.ErrClosed)
	}
	n, err := c.c.Read(b)
	if err != nil {
		err = c.err("read", err)
	}
	return n, err
}

// Write implements net.Conn.
func (c *tcpConn) Write(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.err("write", net.ErrClosed)
	}
	n, err := c.c.Write(b)
	if err != nil {
		err = c.err("write", err)
	}
	return n, err
}

// Close implements net.Conn. It sends FIN (RST if unread data remains) and
// unblocks pending Reads and Writes, which then return net.ErrClosed.
// Unsent data stays with the stack until the host takes it, at most
// ethlink.OrphanTimeout without progress (ethlink.BoundOrphan).
func (c *tcpConn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return c.err("close", net.ErrClosed)
	}
	c.n.untrack(c)
	ethlink.BoundOrphan(c.ep)
	return c.c.Close()
}

// CloseRead shuts down the reading side, like net.TCPConn.CloseRead.
func (c *tcpConn) CloseRead() error {
	if c.closed.Load() {
		return c.err("close", net.ErrClosed)
	}
	if err := c.c.CloseRead(); err != nil {
		return c.err("close", err)
	}
	c.readClosed.Store(true)
	return nil
}

// CloseWrite shuts down the writing side (sends FIN), like
// net.TCPConn.CloseWrite.
//
// After CloseRead, gVisor treats shutting down the second side with data
// the app has not read as a full close with unread data, and resets the
// connection instead of sending FIN (losing what is still in the send
// buffer); Linux sends FIN. The unread data, which the app has said it will
// not read, is discarded first, so that the FIN goes out.
func (c *tcpConn) CloseWrite() error {
	if c.closed.Load() {
		return c.err("close", net.ErrClosed)
	}
	if c.readClosed.Load() {
		for {
			if _, terr := c.ep.Read(io.Discard, tcpip.ReadOptions{}); terr != nil {
				break
			}
		}
	}
	if err := c.c.CloseWrite(); err != nil {
		return c.err("close", err)
	}
	return nil
}

// LocalAddr implements net.Conn.
func (c *tcpConn) LocalAddr() net.Addr { return c.laddr }

// RemoteAddr implements net.Conn.
func (c *tcpConn) RemoteAddr() net.Addr { return c.raddr }

// SetDeadline implements net.Conn.
func (c *tcpConn) SetDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.err("set", net.ErrClosed)
	}
	return c.c.SetDeadline(t)
}

// SetReadDeadline implements net.Conn.
func (c *tcpConn) SetReadDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.err("set", net.ErrClosed)
	}
	return c.c.SetReadDeadline(t)
}

// SetWriteDeadline implements net.Conn.
func (c *tcpConn) SetWriteDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.err("set", net.ErrClosed)
	}
	return c.c.SetWriteDeadline(t)
}

// udpConn is a UDP socket on the stack: a net.PacketConn, and a net.Conn
// when connected (Dial). Writes go through gonet, reads through rx, which
// bounds the datagrams waiting to be read by their size in memory.
type udpConn struct {
	c            *gonet.UDPConn
	n            *Net
	rx           rxQueue
	laddr, raddr net.Addr // raddr is nil unless connected
	closed       atomic.Bool
}

var (
	_ net.Conn       = (*udpConn)(nil)
	_ net.PacketConn = (*udpConn)(nil)
)

func newUDPConn(n *Net, wq *waiter.Queue, ep tcpip.Endpoint, connected bool) *udpConn {
	c := &udpConn{c: gonet.NewUDPConn(wq, ep), n: n}
	c.rx.init(ep, wq)
	c.laddr = c.c.LocalAddr()
	if connected {
		c.raddr = c.c.RemoteAddr()
	}
	return c
}

func (c *udpConn) err(op string, raddr net.Addr, err error) error {
	return fixOpError(op, "udp", c.laddr, raddr, c.closed.Load(), err)
}

// Read implements net.Conn.
func (c *udpConn) Read(b []byte) (int, error) {
	n, _, err := c.readFrom(b, c.raddr)
	return n, err
}

// ReadFrom implements net.PacketConn.
func (c *udpConn) ReadFrom(b []byte) (int, net.Addr, error) {
	return c.readFrom(b, nil)
}

func (c *udpConn) readFrom(b []byte, raddr net.Addr) (int, net.Addr, error) {
	if c.closed.Load() {
		return 0, nil, c.err("read", raddr, net.ErrClosed)
	}
	n, from, err := c.rx.pop(b)
	if err != nil {
		return n, nil, c.err("read", raddr, err)
	}
	return n, from, nil
}

// Write implements net.Conn.
func (c *udpConn) Write(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.err("write", c.raddr, net.ErrClosed)
	}
	n, err := c.c.Write(b)
	if err != nil {
		err = c.err("write", c.raddr, err)
	}
	return n, err
}

// WriteTo implements net.PacketConn. addr must be a *net.UDPAddr with an
// IPv4 address. On a conn from Dial it fails with net.ErrWriteToConnected,
// as the standard library's does: the stack would send the datagram to addr
// rather than the peer, past whatever checked the address Dial was given
// (enclave.Config.Egress).
func (c *udpConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if c.closed.Load() {
		return 0, c.err("write", addr, net.ErrClosed)
	}
	if c.raddr != nil {
		return 0, c.err("write", addr, net.ErrWriteToConnected)
	}
	ua, ok := addr.(*net.UDPAddr)
	if !ok || ua == nil {
		return 0, c.err("write", addr, syscall.EINVAL)
	}
	ip4 := ua.IP.To4()
	if ip4 == nil || ua.Port < 0 || ua.Port > 65535 {
		return 0, c.err("write", addr, &net.AddrError{Err: "not an IPv4 address and port", Addr: ua.String()})
	}
	n, err := c.c.WriteTo(b, &net.UDPAddr{IP: ip4, Port: ua.Port})
	if err != nil {
		err = c.err("write", addr, err)
	}
	return n, err
}

// Close implements net.Conn and net.PacketConn.
func (c *udpConn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return c.err("close", c.raddr, net.ErrClosed)
	}
	c.n.untrack(c)
	return c.c.Close()
}

// LocalAddr implements net.Conn and net.PacketConn.
func (c *udpConn) LocalAddr() net.Addr { return c.laddr }

// RemoteAddr implements net.Conn; it is nil for an unconnected socket.
func (c *udpConn) RemoteAddr() net.Addr { return c.raddr }

// SetDeadline implements net.Conn and net.PacketConn.
func (c *udpConn) SetDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.err("set", c.raddr, net.ErrClosed)
	}
	c.rx.setDeadline(t)
	return c.c.SetWriteDeadline(t)
}

// SetReadDeadline implements net.Conn and net.PacketConn.
func (c *udpConn) SetReadDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.err("set", c.raddr, net.ErrClosed)
	}
	c.rx.setDeadline(t)
	return nil
}

// SetWriteDeadline implements net.Conn and net.PacketConn.
func (c *udpConn) SetWriteDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.err("set", c.raddr, net.ErrClosed)
	}
	return c.c.SetWriteDeadline(t)
}

// datagramOverhead is what a queued datagram costs in a udpConn's receive
// queue on top of its payload: about the memory of its bookkeeping, as the
// Linux kernel charges a socket an skb's truesize.
const datagramOverhead = 256

// datagram is one entry of an rxQueue: a datagram, or an error the socket
// reported once (an ICMP error on a connected socket).
type datagram struct {
	b    []byte
	from net.Addr
	err  error
}

// rxQueue is a udpConn's receive side. gVisor charges a datagram to the
// socket's receive buffer by its payload alone, so a peer (the host) could
// queue empty datagrams without limit, and 1-byte ones by the hundred
// thousand, in a socket the application reads slowly or not at all.
//
// A reader takes datagrams straight from gVisor's queue, as gonet does,
// when it has nothing of its own. Whenever datagrams wait in gVisor's
// queue and no reader is waiting for them, pump moves them to items, which
// charges each its payload plus datagramOverhead and drops datagrams once
// the socket's receive buffer size is used, as gVisor and Linux do. gVisor
// signals a readable socket only when its queue stops being empty, so pump
// wakes then (and skips it if readers wait: they were signalled too), and
// a reader that leaves datagrams behind in gVisor's queue kicks pump.
type rxQueue struct {
	ep    tcpip.Endpoint
	wq    *waiter.Queue
	limit int           // the socket's receive buffer size, fixed at creation
	kick  chan struct{} // asks pump to drain gVisor's queue

	// mu serialises reads from ep, so that datagrams keep their order.
	mu       sync.Mutex
	items    []datagram    // guarded by mu
	size     int           // guarded by mu; bytes charged for items
	waiting  int           // guarded by mu; readers waiting for a datagram
	ended    bool          // guarded by mu; the socket was closed
	deadline time.Time     // guarded by mu; of reads
	wake     chan struct{} // guarded by mu; closed on any change, made by a waiting reader
}

// init sets q up on ep and starts its pump, which ends when ep is closed.
func (q *rxQueue) init(ep tcpip.Endpoint, wq *waiter.Queue) {
	q.ep, q.wq = ep, wq
	q.limit = int(ep.SocketOptions().GetReceiveBufferSize())
	q.kick = make(chan struct{}, 1)
	// Register before the first Read, so that no datagram is missed.
	entry, notify := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&entry)
	go func() {
		defer wq.EventUnregister(&entry)
		q.pump(notify)
	}()
}

func (q *rxQueue) pump(notify <-chan struct{}) {
	q.drain(false)
	for {
		kicked := false
		select {
		case <-notify:
		case <-q.kick:
			kicked = true
		}
		if q.drain(kicked) {
			return
		}
	}
}

// drain moves gVisor's queue to items, unless readers wait and were
// signalled (not kicked). It reports whether the socket is closed.
func (q *rxQueue) drain(kicked bool) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.ended {
		return true
	}
	if q.waiting > 0 && !kicked {
		return false
	}
	for {
		var w datagramWriter
		res, terr := q.ep.Read(&w, tcpip.ReadOptions{NeedRemoteAddr: true})
		switch terr.(type) {
		case nil:
			q.pushLocked(datagram{b: w.b, from: &net.UDPAddr{IP: addrIP(res.RemoteAddr.Addr), Port: int(res.RemoteAddr.Port)}})
		case *tcpip.ErrWouldBlock:
			return false
		case *tcpip.ErrClosedForReceive:
			q.ended = true
			q.wakeLocked()
			return true
		default:
			q.pushLocked(datagram{err: stackError("read", terr)})
		}
	}
}

// datagramWriter collects one datagram's payload.
type datagramWriter struct{ b []byte }

func (w *datagramWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// wakeLocked wakes the waiting readers.
func (q *rxQueue) wakeLocked() {
	if q.wake != nil {
		close(q.wake)
		q.wake = nil
	}
}

// pushLocked queues d, or drops it when the receive buffer is used up.
func (q *rxQueue) pushLocked(d datagram) {
	if q.size >= q.limit {
		return
	}
	q.items = append(q.items, d)
	q.size += len(d.b) + datagramOverhead
	q.wakeLocked()
}

// kickIfPending asks pump to drain gVisor's queue if it is not empty.
func (q *rxQueue) kickIfPending() {
	if q.ep.Readiness(waiter.ReadableEvents) != 0 {
		select {
		case q.kick <- struct{}{}:
		default:
		}
	}
}

func (q *rxQueue) setDeadline(t time.Time) {
	q.mu.Lock()
	q.deadline = t
	q.wakeLocked()
	q.mu.Unlock()
}

// pop reads a datagram into b (truncating it, as a UDP socket does): one of
// items, or else one from gVisor's queue, waiting for it until the read
// deadline or the socket's end.
func (q *rxQueue) pop(b []byte) (int, net.Addr, error) {
	var (
		timer      *time.Timer
		entry      waiter.Entry
		notify     chan struct{}
		registered bool
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
		if registered {
			q.wq.EventUnregister(&entry)
		}
	}()
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			d := q.items[0]
			q.items[0] = datagram{}
			q.items = q.items[1:]
			q.size -= len(d.b) + datagramOverhead
			q.mu.Unlock()
			if d.err != nil {
				return 0, nil, d.err
			}
			return copy(b, d.b), d.from, nil
		}
		if q.ended {
			q.mu.Unlock()
			return 0, nil, net.ErrClosed
		}
		if !registered {
			// Before reading, so that a datagram arriving after the
			// read is signalled.
			entry, notify = waiter.NewChannelEntry(waiter.ReadableEvents)
			q.wq.EventRegister(&entry)
			registered = true
		}
		w := tcpip.SliceWriter(b)
		res, terr := q.ep.Read(&w, tcpip.ReadOptions{NeedRemoteAddr: true})
		switch terr.(type) {
		case nil:
			q.mu.Unlock()
			q.kickIfPending()
			return res.Count, &net.UDPAddr{IP: addrIP(res.RemoteAddr.Addr), Port: int(res.RemoteAddr.Port)}, nil
		case *tcpip.ErrWouldBlock:
		case *tcpip.ErrClosedForReceive:
			q.ended = true
			q.wakeLocked()
			q.mu.Unlock()
			select {
			case q.kick <- struct{}{}: // to end pump
			default:
			}
			return 0, nil, net.ErrClosed
		default:
			q.mu.Unlock()
			q.kickIfPending()
			return 0, nil, stackError("read", terr)
		}
		dl := q.deadline
		if !dl.IsZero() && !time.Now().Before(dl) {
			q.mu.Unlock()
			return 0, nil, os.ErrDeadlineExceeded
		}
		if q.wake == nil {
			q.wake = make(chan struct{})
		}
		wake := q.wake
		q.waiting++
		q.mu.Unlock()
		var expired <-chan time.Time
		if !dl.IsZero() {
			if timer == nil {
				timer = time.NewTimer(time.Until(dl))
			} else {
				timer.Reset(time.Until(dl))
			}
			expired = timer.C
		}
		select {
		case <-wake:
		case <-notify:
		case <-expired:
		}
		q.mu.Lock()
		q.waiting--
		q.mu.Unlock()
	}
}

// listener is a TCP net.Listener on the stack. Accept is gonet's loop, with
// a cancellation that Close triggers (a closed gVisor listening endpoint
// does not reliably wake waiters) and keepalive set on each connection.
type listener struct {
	n    *Net
	ep   tcpip.Endpoint
	wq   *waiter.Queue
	addr net.Addr

	closeOnce sync.Once
	done      chan struct{} // closed by Close
}

var _ net.Listener = (*listener)(nil)

// Accept implements net.Listener.
func (l *listener) Accept() (net.Conn, error) {
	var (
		entry  waiter.Entry
		notify chan struct{}
	)
	for {
		select {
		case <-l.done:
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
		default:
		}
		ep, wq, terr := l.ep.Accept(nil)
		if terr == nil {
			setKeepalive(ep)
			c := newTCPConn(l.n, wq, ep)
			if !l.n.track(c) {
				_ = c.c.Close()
				return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
			}
			return c, nil
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			select {
			case <-l.done:
				return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
			default:
			}
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: stackError("accept", terr)}
		}
		if notify == nil {
			// Register, then try again before waiting: a connection may
			// have arrived in between.
			entry, notify = waiter.NewChannelEntry(waiter.ReadableEvents)
			l.wq.EventRegister(&entry)
			defer l.wq.EventUnregister(&entry)
			continue
		}
		select {
		case <-l.done:
		case <-notify:
		}
	}
}

// Close implements net.Listener. It unblocks Accept; connections already
// accepted are left open.
func (l *listener) Close() error {
	closed := false
	l.closeOnce.Do(func() {
		closed = true
		close(l.done)
		l.n.untrack(l)
		l.ep.Close()
	})
	if !closed {
		return &net.OpError{Op: "close", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
	}
	return nil
}

// Addr implements net.Listener.
func (l *listener) Addr() net.Addr { return l.addr }

func setKeepalive(ep tcpip.Endpoint) {
	ep.SocketOptions().SetKeepAlive(true)
	idle := tcpip.KeepaliveIdleOption(keepaliveIdle)
	_ = ep.SetSockOpt(&idle)
	interval := tcpip.KeepaliveIntervalOption(keepaliveInterval)
	_ = ep.SetSockOpt(&interval)
}
