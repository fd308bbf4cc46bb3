package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quenchnet/quench/internal/epoll"
	"github.com/quenchnet/quench/internal/relay"
)

// loopSet serves [Proxy.Serve]'s plain TCP and unix connections on a few
// event loops (Config.EventLoops) instead of a goroutine per connection,
// as nginx does: each loop owns an edge-triggered epoll instance with its
// client and upstream sockets (duplicated out of Go's poller) and reads and
// writes them with plain syscalls, parking its goroutine in Go's poller on
// the epoll descriptor. docs/bench/proxy.md measures what this saves.
//
// The loops forward the common case themselves: HTTP/1.1 requests without
// a body or with a Content-Length body, whose responses have a length, are
// chunked (passed through as they are) or end with the connection
// (chunked to the client). Requests and responses are parsed by net/http
// (http.ReadRequest, http.ReadResponse) and the upstream request head is
// written by the same code as for the goroutine front end, so both apply
// the same rules. Anything else - HTTP/1.0, chunked request bodies, Expect,
// upgrades, CONNECT, requests that Config.Intercept claims, a request that
// must wait in the admission queue is not - the connection is handed to the
// goroutine front end, with the bytes read so far, and stays there.
type loopSet struct {
	p      *Proxy
	loops  []*ploop
	next   atomic.Uint32
	closed atomic.Bool
	conns  atomic.Int64 // client connections on the loops
	waits  atomic.Int64 // len(wq)

	// Clients waiting for an upstream connection while MaxConns are open,
	// first come first served across the loops: a connection that comes
	// free on any loop goes to the first of them.
	wmu  sync.Mutex
	wq   []*lclient
	noFD atomic.Bool // the upstream dialer returns conns without a socket: loops are off
}

// newLoopSet starts n event loops (GOMAXPROCS if n is 0).
func newLoopSet(p *Proxy, n int) (*loopSet, error) {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	ls := &loopSet{p: p}
	for range n {
		el, err := newPloop(ls)
		if err != nil {
			_ = ls.Close()
			return nil, err
		}
		ls.loops = append(ls.loops, el)
		p.wg.Add(1) // Proxy.Close waits for the loops
		go func() {
			defer p.wg.Done()
			el.run()
		}()
	}
	return ls, nil
}

// take moves c onto a loop. It reports false if c has no socket (TLS,
// gVisor's gonet) or the loops are off; the caller serves c then.
func (ls *loopSet) take(c net.Conn) bool {
	if ls.closed.Load() || ls.noFD.Load() {
		return false
	}
	sock := c // the connection holding the socket
	var t *ltls
	switch cc := c.(type) {
	case *net.TCPConn, *net.UnixConn:
	case *tls.Conn:
		// A TLSServer connection whose handshake is done.
		b, ok := cc.NetConn().(*tlsBase)
		if !ok {
			return false
		}
		st := cc.ConnectionState()
		if !st.HandshakeComplete || (st.NegotiatedProtocol != "" && st.NegotiatedProtocol != "http/1.1") {
			return false
		}
		t = &ltls{conn: cc, base: b, state: &st, more: true}
		sock = b.Conn
	default:
		return false // PROXY protocol and other wrappers read ahead
	}
	fd, ok := relay.DupSocket(sock)
	if !ok {
		return false
	}
	remote := c.RemoteAddr().String()
	local := c.LocalAddr()
	maxWrite := 0
	if mw, ok := sock.(interface{ MaxWrite() int }); ok {
		maxWrite = mw.MaxWrite()
	}
	var done func()
	if d, ok := sock.(detacher); ok {
		done = d.Detach() // before Close: the end is the duplicate's
	}
	_ = sock.Close() // not a tls.Conn's Close: that would say goodbye
	el := ls.pick()
	cl := &lclient{el: el, remote: remote, local: local, first: true, done: done}
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		cl.ip, cl.ipOK = forwardedAddr(ap.Addr()), true
	}
	cl.s = lsock{fd: fd, readable: true, writable: true, maxWrite: maxWrite}
	if t != nil {
		t.c = cl
		cl.tls = t
		t.base.io = t
	}
	ls.conns.Add(1)
	el.post(lop{kind: lopAdd, c: cl})
	return true
}

// pick returns the loop for a new connection: each in turn.
func (ls *loopSet) pick() *ploop {
	return ls.loops[ls.next.Add(1)%uint32(len(ls.loops))]
}

// Close makes the loops end every connection and stop; Proxy.Close waits
// for them (they count in its WaitGroup).
func (ls *loopSet) Close() error {
	if ls.closed.Swap(true) {
		return nil
	}
	for _, el := range ls.loops {
		el.post(lop{kind: lopStop})
	}
	return nil
}

// drain closes the connections waiting for a request and makes the others
// close after their response (Shutdown). It reports whether no connection
// is left.
func (ls *loopSet) drain() bool {
	for _, el := range ls.loops {
		el.post(lop{kind: lopDrain})
	}
	return ls.conns.Load() == 0
}

type lopKind uint8

const (
	lopAdd     lopKind = iota // a new client connection
	lopUp                     // an upstream connection was dialed (or failed) for c
	lopAdmit                  // c waited in the queue: admitted (ok) or not
	lopSweep                  // check deadlines
	lopDrain                  // Shutdown
	lopStop                   // Close
	lopHandoff                // hand c to the goroutine front end (its upstream has no socket)
	lopOffer                  // a client waits for a connection (MaxConns): free an idle one
)

type lop struct {
	kind   lopKind
	c      *lclient
	fd     int   // lopUp: the upstream socket
	err    error // lopUp: the dial error
	reused bool  // lopUp: a connection handed over by another loop
	ok     bool  // lopAdmit
}

// ploop is one event loop. Its goroutine owns everything but loop, which
// others reach through post.
type ploop struct {
	ls   *loopSet
	p    *Proxy
	loop *epoll.Loop[lop]

	socks    []*lsock // by file descriptor (small integers)
	clients  map[*lclient]struct{}
	idle     []*lup // idle upstream connections, most recently used last
	scratch  []byte
	tlsOut   []byte // records a TLS client's tls.Conn wrote, on their way to its socket
	now      int64
	timer    *time.Timer
	sweepGap time.Duration
	stopped  bool
	draining bool

	// Parsing and head writing, reused for every message.
	hr bytes.Reader
	br *bufio.Reader
	sw sliceWriter
	bw *bufio.Writer
}

// sliceWriter appends to a byte slice.
type sliceWriter struct{ b []byte }

func (w *sliceWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

func newPloop(ls *loopSet) (*ploop, error) {
	loop, err := epoll.New[lop]("proxy")
	if err != nil {
		return nil, err
	}
	p := ls.p
	el := &ploop{
		ls: ls, p: p, loop: loop,
		clients: map[*lclient]struct{}{},
		scratch: make([]byte, 64<<10),
	}
	el.br = bufio.NewReaderSize(&el.hr, 4<<10)
	el.bw = bufio.NewWriterSize(&el.sw, 4<<10)
	el.sw.b = make([]byte, 0, 8<<10)
	// Deadlines are checked this often: an eighth of the shortest timeout.
	gap := time.Second
	for _, d := range []time.Duration{p.cfg.ReadHeaderTimeout, p.cfg.IdleTimeout, p.cfg.UpstreamTimeout, p.cfg.TransferTimeout} {
		if d > 0 {
			gap = min(gap, d/8)
		}
	}
	el.sweepGap = max(gap, 5*time.Millisecond)
	return el, nil
}

func (el *ploop) post(o lop) {
	if !el.loop.Post(o) {
		el.orphan(o)
	}
}

// orphan cleans up after an op posted to a stopped loop.
func (el *ploop) orphan(o lop) {
	switch o.kind {
	case lopAdd:
		_ = unix.Close(o.c.s.fd)
		o.c.ended()
		el.ls.conns.Add(-1)
	case lopUp:
		if o.err == nil {
			_ = unix.Close(o.fd)
			el.p.pool.release()
		}
	case lopAdmit:
		if o.ok {
			el.p.lim.release()
		}
	}
}

func (el *ploop) run() {
	el.timer = time.AfterFunc(el.sweepGap, func() { el.post(lop{kind: lopSweep}) })
	left, err := el.loop.Run(el)
	if err != nil {
		el.p.log.LogAttrs(el.p.ctx, slog.LevelError, "proxy: event loop failed; its connections close", slog.Any("err", err))
	}
	el.timer.Stop()
	for _, o := range left {
		el.orphan(o)
	}
	for c := range el.clients {
		c.close()
	}
	for _, u := range el.idle {
		u.close()
	}
	el.idle = nil
}

// Batch, Event, Ops and Stopped make ploop the epoll.Handler of its loop.
func (el *ploop) Batch()        { el.now = time.Now().UnixNano() }
func (el *ploop) Stopped() bool { return el.stopped }

func (el *ploop) Event(fd int32, events uint32) {
	var s *lsock
	if int(fd) < len(el.socks) {
		s = el.socks[fd]
	}
	if s == nil {
		return // closed by an earlier event of this batch
	}
	r, h, w := epoll.Readiness(events)
	s.readable = s.readable || r
	s.hup = s.hup || h
	s.writable = s.writable || w
	switch {
	case s.c != nil:
		s.c.run()
	case s.u != nil:
		s.u.event()
	}
	if w && s.outArmed && s.pend == nil && int(fd) < len(el.socks) && el.socks[fd] == s {
		// Nothing waits to be written any more: stop watching writes.
		s.outArmed = false
		_ = el.loop.WatchWrites(s.fd, false)
	}
}

func (el *ploop) Ops(ops []lop) {
	el.now = time.Now().UnixNano()
	for _, o := range ops {
		switch o.kind {
		case lopAdd:
			el.add(o.c)
		case lopUp:
			o.c.dialed(o.fd, o.err, o.reused)
		case lopAdmit:
			o.c.admitted(o.ok)
		case lopSweep:
			el.sweep()
		case lopDrain:
			el.drain()
		case lopStop:
			el.stopped = true
		case lopOffer:
			if n := len(el.idle); n > 0 && el.ls.waits.Load() > 0 {
				u := el.idle[n-1]
				el.idle = el.idle[:n-1]
				el.free(u)
			}
		case lopHandoff:
			if _, ok := el.clients[o.c]; ok {
				o.c.handoff()
			}
		}
	}
}

// register adds s to the epoll set.
func (el *ploop) register(s *lsock) error {
	// Writes are watched only while a socket is full (epoll.AddReader).
	if err := el.loop.AddReader(s.fd); err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	s.loop, s.outArmed = el.loop, false
	for s.fd >= len(el.socks) {
		el.socks = append(el.socks, make([]*lsock, max(64, len(el.socks)))...)
	}
	el.socks[s.fd] = s
	return nil
}

func (el *ploop) add(c *lclient) {
	c.s.c = c
	if err := el.register(&c.s); err != nil {
		_ = unix.Close(c.s.fd)
		c.ended()
		el.ls.conns.Add(-1)
		return
	}
	el.clients[c] = struct{}{}
	c.deadline = el.now + int64(el.p.cfg.ReadHeaderTimeout)
	if el.draining || el.p.shuttingDown.Load() {
		c.closeAfter = true
	}
	c.run()
}

func (el *ploop) sweep() {
	now := time.Now().UnixNano()
	el.now = now
	for c := range el.clients {
		if c.deadline > 0 && now >= c.deadline {
			c.expired()
		}
	}
	// Idle upstream connections past IdleConnTimeout.
	keep := el.idle[:0]
	for _, u := range el.idle {
		if now-u.idleAt > int64(el.p.cfg.IdleConnTimeout) {
			u.close()
			continue
		}
		keep = append(keep, u)
	}
	clear(el.idle[len(keep):])
	el.idle = keep
	if !el.stopped {
		el.timer.Reset(el.sweepGap)
	}
}

func (el *ploop) drain() {
	el.draining = true
	for c := range el.clients {
		c.closeAfter = true
		if c.st == lcIdle && c.inLen() == 0 && c.s.pend == nil {
			c.close()
		}
	}
}

// lsock is one socket on a loop and the bytes waiting to be written to it.
type lsock struct {
	fd       int
	c        *lclient // set for a client socket
	u        *lup     // set for an upstream socket
	readable bool
	writable bool
	hup      bool
	eof      bool
	maxWrite int  // > 0: bytes per write at most (VSOCK)
	outArmed bool // EPOLLOUT is watched (since a write fell short)
	loop     *epoll.Loop[lop]
	pend     []byte // bytes not yet written; from the Proxy's buffer pool
	pendBuf  *[]byte
	pendOff  int
}

// send writes b to s, keeping what the socket does not take. It reports an
// error other than a full socket.
func (s *lsock) send(p *Proxy, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if s.pend != nil {
		s.pend = append(s.pend, b...)
		return nil
	}
	n := 0
	if s.writable {
		var err error
		n, err = s.write(b)
		if err != nil && err != unix.EAGAIN {
			return err
		}
		if n == len(b) {
			return nil
		}
		if err := s.full(); err != nil {
			return err
		}
	}
	s.pendBuf = p.getBuf()
	s.pend = append((*s.pendBuf)[:0], b[n:]...)
	s.pendOff = 0
	return nil
}

// full records that s took less than it was given: writes wait for
// EPOLLOUT, watched from now on.
func (s *lsock) full() error {
	s.writable = false
	if s.outArmed {
		return nil
	}
	s.outArmed = true
	if err := s.loop.WatchWrites(s.fd, true); err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	return nil
}

// flush writes what is pending. It reports whether nothing is left.
func (s *lsock) flush(p *Proxy) (bool, error) {
	if s.pend == nil {
		return true, nil
	}
	if !s.writable {
		return false, nil
	}
	n, err := s.write(s.pend[s.pendOff:])
	if err != nil && err != unix.EAGAIN {
		return false, err
	}
	s.pendOff += n
	if s.pendOff < len(s.pend) {
		return false, s.full()
	}
	s.freePend(p)
	return true, nil
}

// write writes b, in pieces of at most maxWrite bytes, until the socket is
// full.
func (s *lsock) write(b []byte) (int, error) {
	if s.maxWrite <= 0 || len(b) <= s.maxWrite {
		return relay.SysWrite(s.fd, b)
	}
	n := 0
	for n < len(b) {
		piece := b[n:min(len(b), n+s.maxWrite)]
		k, err := relay.SysWrite(s.fd, piece)
		n += k
		if err != nil || k < len(piece) {
			return n, err
		}
	}
	return n, nil
}

func (s *lsock) freePend(p *Proxy) {
	if s.pend == nil {
		return
	}
	// *s.pendBuf is still the whole buffer (pend was appended to a
	// reslice of it): it goes back as it came. Putting back pend[:0], as
	// before, left a zero-length buffer in the pool, on which the next
	// request body copy read nothing forever, spinning a CPU.
	p.putBuf(s.pendBuf)
	s.pend, s.pendBuf, s.pendOff = nil, nil, 0
}

// read reads into b. n == 0 with a nil error is EOF; errAgain means nothing
// is there.
func (s *lsock) read(b []byte) (int, error) {
	n, err := relay.SysRead(s.fd, b)
	if err != nil {
		if err == unix.EAGAIN {
			s.readable = false
		}
		return 0, err
	}
	if n == 0 {
		s.eof = true
		s.readable = false
	} else if n < len(b) && !s.hup {
		s.readable = false // drained; edge-triggered epoll reports more
	}
	return n, nil
}

// lcState is what a client connection is doing.
type lcState uint8

const (
	lcIdle   lcState = iota // reading the next request head
	lcQueue                 // waiting for an in-flight slot
	lcDial                  // waiting for an upstream connection
	lcExch                  // forwarding: request body up, response down
	lcLinger                // closing: reading and dropping what the client still sends
)

// Response body framing.
type lframe uint8

const (
	lfNone    lframe = iota // no body
	lfLength                // rleft bytes
	lfChunked               // passed through, ends where the chunk scanner says
	lfClose                 // until the upstream closes; chunked to the client
)

// lclient is a client connection on a loop.
type lclient struct {
	el         *ploop
	s          lsock
	tls        *ltls // set for a TLS connection
	remote     string
	local      net.Addr
	first      bool // no request yet
	closeAfter bool // close after the current response
	upClose    bool // close the upstream connection after the current response (bodyIgnoredBy)
	closing    bool // close once the pending bytes are out
	refused    bool // a request was answered with an error: the client may still be sending
	hdl        bool // the deadline is the request header's
	tokens     connTokens
	st         lcState
	deadline   int64 // unix nanoseconds; 0: none

	in      *[]byte // unconsumed bytes from the client; nil when there are none
	inOff   int
	inEnd   int
	scanned int // bytes of in searched for the end of a head without finding it

	ip   netip.Addr // the client's, for the forwarding fields
	ipOK bool

	// The exchange in progress.
	inReq    bool          // a request is being served
	fast     bool          // parsed by parseRequestFast into fr; else r
	fr       fastReq       // slices of c.in: its head stays there until the exchange ends
	r        *http.Request // parsed by net/http
	isHead   bool
	resend   bool  // may be sent again after a reused connection failed (canResend)
	length   int64 // request body length
	head     int   // length of r's head in in
	bodyLeft int64 // request body bytes not yet sent upstream
	up       *lup
	retried  bool
	queued   bool // in loopSet.wq; guarded by its wmu
	start    time.Time
	code     int
	slot     bool // holds an in-flight slot
	stream   bool // ... that became a stream (limiter.toStream)
	resp     bool // the response head has been sent to the client
	rframe   lframe
	rleft    int64
	rclose   bool // the upstream connection cannot be reused
	acked    bool // waitUp sent the upstream's ACK for this response
	cs       chunkScanner

	// done is the Detach release of the connection the loop took (see
	// TLSServer), called by ended; nil if none.
	done func()
}

func (c *lclient) inLen() int { return c.inEnd - c.inOff }

// run advances c as far as it can without blocking.
func (c *lclient) run() {
	p := c.el.p
	for {
		off := c.s.pendOff
		if done, err := c.s.flush(p); err != nil {
			c.close()
			return
		} else if !done {
			if c.st == lcIdle {
				// The last response first. Its bytes must not wait
				// forever on a client that does not read them.
				c.sendDeadline(c.s.pendOff != off)
				return
			}
			if c.st == lcLinger {
				return
			}
		} else if c.closing && c.st == lcIdle {
			c.finishClose()
			return
		}
		more := false
		switch c.st {
		case lcIdle:
			more = c.readRequest()
		case lcExch:
			more = c.exchange()
		case lcLinger:
			c.linger()
			return
		}
		if !more {
			if c.closing && c.st == lcIdle && c.s.pend == nil {
				c.finishClose()
			}
			return
		}
	}
}

// sendDeadline sets the deadline of a connection whose response is
// complete but not yet all sent (st is lcIdle, bytes pending): now +
// TransferTimeout (IdleTimeout when that is off) if the client took some
// bytes (moved) or no deadline is set, so that a client that stops
// reading is closed, as a write deadline closes it on the goroutine
// front end.
func (c *lclient) sendDeadline(moved bool) {
	if !moved && c.deadline != 0 {
		return
	}
	p := c.el.p
	d := p.cfg.TransferTimeout
	if d <= 0 {
		d = p.cfg.IdleTimeout
	}
	c.hdl = false
	c.deadline = c.el.now + int64(d)
}

// finishClose closes c now that its last response is out. If the client
// may still be sending (bytes unread, or a request refused as malformed),
// closing would reset the connection,
// and a reset can destroy that last response in the client's receive
// buffer; so the write side is shut first and what comes is read and
// dropped until the client closes too, for at most lingerTime, as net/http
// does.
func (c *lclient) finishClose() {
	if _, live := c.el.clients[c]; !live {
		return // closed already, or handed off
	}
	c.closeNotify()
	if !c.refused && c.inLen() == 0 && peekFD(c.s.fd) != peekData {
		c.close()
		return
	}
	c.freeIn()
	if unix.Shutdown(c.s.fd, unix.SHUT_WR) != nil {
		c.close()
		return
	}
	c.st = lcLinger
	c.deadline = c.el.now + int64(lingerTime)
	c.s.readable = true
	c.linger()
}

// linger drops what the client sends until it closes.
func (c *lclient) linger() {
	for c.s.readable {
		n, err := c.s.read(c.el.scratch)
		if err == unix.EAGAIN {
			return
		}
		if err != nil || n == 0 {
			c.close()
			return
		}
	}
}

// readRequest reads and dispatches the next request. It reports whether
// run should go on.
func (c *lclient) readRequest() bool {
	el, p := c.el, c.el.p
	for {
		if c.inLen() > 0 {
			b := (*c.in)[c.inOff:c.inEnd]
			n := headEnd(b, c.scanned)
			if n > 0 && n <= p.cfg.MaxHeaderBytes+upstreamBufSize {
				return c.dispatch(n)
			}
			c.scanned = len(b) // a header sent in small pieces is not scanned again from its start
			if c.inLen() > p.cfg.MaxHeaderBytes+upstreamBufSize {
				c.answerAndClose(http.StatusRequestHeaderFieldsTooLarge)
				return false
			}
		}
		if !c.readable() {
			if c.inLen() == 0 {
				c.freeIn()
				c.hdl = false
				if c.first {
					c.deadline = el.now + int64(p.cfg.ReadHeaderTimeout)
				} else {
					c.deadline = el.now + int64(p.cfg.IdleTimeout)
				}
			} else if !c.hdl {
				c.hdl = true
				c.deadline = el.now + int64(p.cfg.ReadHeaderTimeout)
			}
			return false
		}
		if c.in == nil {
			c.in = p.smallBufs.Get().(*[]byte)
			c.inOff, c.inEnd = 0, 0
		}
		if c.inEnd == len(*c.in) {
			c.growIn()
		}
		n, err := c.read((*c.in)[c.inEnd:])
		if err != nil {
			if err == unix.EAGAIN {
				continue
			}
			c.close()
			return false
		}
		if n == 0 {
			if c.inLen() > 0 {
				c.answerAndClose(http.StatusBadRequest) // a truncated request
				return false
			}
			// The client closed between requests: a TLS client said
			// goodbye (close_notify, or its stream ended), and is told
			// goodbye too, as tls.Conn.Close tells it under net/http.
			c.closeNotify()
			c.close()
			return false
		}
		c.inEnd += n
	}
}

// growIn makes room in c.in: moves the bytes to its start or to a larger
// buffer.
func (c *lclient) growIn() {
	p := c.el.p
	b := *c.in
	if c.inOff > 0 {
		n := copy(b, b[c.inOff:c.inEnd])
		c.inOff, c.inEnd = 0, n
		if n < len(b) {
			return
		}
	}
	nb := make([]byte, 2*len(b))
	copy(nb, b[:c.inEnd])
	if len(b) == smallBufSize {
		p.smallBufs.Put(c.in)
	}
	c.in = &nb
}

func (c *lclient) freeIn() {
	if c.in == nil {
		return
	}
	if len(*c.in) == smallBufSize {
		c.el.p.smallBufs.Put(c.in)
	}
	c.in = nil
	c.inOff, c.inEnd, c.scanned = 0, 0, 0
}

// consume drops n bytes from the front of c.in.
func (c *lclient) consume(n int) {
	c.scanned = 0
	c.inOff += n
	if c.inOff >= c.inEnd {
		c.inOff, c.inEnd = 0, 0
	}
}

// dispatch handles the request whose head is the first n bytes of c.in.
func (c *lclient) dispatch(n int) bool {
	el, p := c.el, c.el.p
	head := (*c.in)[c.inOff : c.inOff+n]
	c.r, c.fast = nil, false
	if (p.cfg.Intercept == nil || p.cfg.InterceptPaths != nil) && !p.cfg.TrustForwarded && p.pathPrefix == "" {
		if fr, ok := parseRequestFast(head); ok && (p.cfg.Intercept == nil || !p.mayIntercept(fr.target)) &&
			!(fr.underscore && p.cfg.AllowUnderscoreHeaders) {
			c.fast, c.fr = true, fr
			c.isHead = string(fr.method) == http.MethodHead
			c.resend = fr.idempotent()
			c.length = fr.length
			c.upClose = fr.length > 0 && bodyIgnoredBy(string(fr.method))
			c.closeAfter = c.closeAfter || fr.close
		}
	}
	if !c.fast {
		el.hr.Reset(head)
		el.br.Reset(&el.hr)
		r, err := http.ReadRequest(el.br)
		if err != nil {
			c.answerAndClose(http.StatusBadRequest)
			return false
		}
		// net/http ends a head at a blank line however its lines end;
		// headEnd may have found the end of a later head.
		n -= el.hr.Len() + el.br.Buffered()
		if code := checkRequest(r); code != 0 {
			c.answerAndClose(code)
			return false
		}
		r.RemoteAddr = c.remote
		if c.tls != nil {
			r.TLS = c.tls.state
		}
		c.tokens = connTokens{}
		if v := r.Header["Connection"]; len(v) > 0 {
			c.tokens.parse(v)
		}
		switch {
		case !r.ProtoAtLeast(1, 1), len(r.TransferEncoding) > 0, len(r.Header["Expect"]) > 0,
			c.tokens.upgrade, r.Method == http.MethodConnect:
			c.handoff()
			return false
		}
		if ic := p.cfg.Intercept; ic != nil && p.interceptable(r.URL.Path) {
			if ic(r) != nil {
				c.handoff()
				return false
			}
		}
		c.r = r
		c.isHead = r.Method == http.MethodHead
		c.resend = canResend(r)
		c.length = max(r.ContentLength, 0)
		c.upClose = c.length > 0 && bodyIgnoredBy(r.Method)
		c.closeAfter = c.closeAfter || r.Close
	}
	c.first = false
	c.inReq = true
	c.head, c.hdl = n, false
	c.bodyLeft = c.length
	c.closeAfter = c.closeAfter || p.shuttingDown.Load() || el.draining
	c.code, c.resp, c.retried = http.StatusBadGateway, false, false
	c.deadline = 0
	if !p.lim.tryAcquire() {
		if p.lim.queueSize > 0 {
			c.st = lcQueue
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				el.post(lop{kind: lopAdmit, c: c, ok: p.lim.acquire(p.ctx)})
			}()
			return false
		}
		c.refuse()
		return true
	}
	c.slot = true
	c.st = lcDial
	c.admit()
	return true
}

// refuse answers 503 at once.
func (c *lclient) refuse() {
	p := c.el.p
	p.refused()
	if c.bodyLeft > 0 {
		c.closeAfter = true // the body stays unread
	}
	mode := refusalKeep
	if c.closeAfter {
		mode = refusalClose
	}
	head := 0
	if c.isHead {
		head = 1
	}
	c.endRequest()
	c.closing = c.closeAfter
	if err := c.send(p.refusals[mode][head]); err != nil {
		c.close()
	}
}

func (c *lclient) admitted(ok bool) {
	if _, live := c.el.clients[c]; !live {
		if ok {
			c.el.p.lim.release()
		}
		return
	}
	if !ok {
		c.refuse()
		c.run()
		return
	}
	c.slot = true
	c.st = lcDial
	c.admit()
	c.run()
}

// admit starts the exchange: takes an idle upstream connection or dials.
func (c *lclient) admit() {
	if m := c.el.p.metrics; m != nil {
		c.start = time.Now()
		m.InFlight(1)
	}
	c.connect()
}

// connect takes an idle upstream connection or dials one.
func (c *lclient) connect() {
	el, p := c.el, c.el.p
	for len(el.idle) > 0 {
		u := el.idle[len(el.idle)-1]
		el.idle = el.idle[:len(el.idle)-1]
		if el.now-u.idleAt > int64(p.cfg.IdleConnTimeout) || u.s.eof || u.s.hup || !u.drained() {
			u.close() // closed, or it sent bytes nobody asked for
			continue
		}
		c.start2(u)
		return
	}
	c.st = lcDial
	if s := p.pool.slots; s != nil && len(s) == cap(s) {
		// MaxConns are open: wait for one to come free, on any loop, or
		// for a slot (lup.close), for at most DialTimeout.
		c.wait()
		return
	}
	c.dial()
}

// wait queues c for the next upstream connection to come free, for at
// most DialTimeout, and asks the other loops for an idle one.
func (c *lclient) wait() {
	el := c.el
	el.ls.enqueue(c)
	c.deadline = el.now + int64(el.p.cfg.DialTimeout)
	for _, o := range el.ls.loops {
		if o != el {
			o.post(lop{kind: lopOffer})
		}
	}
}

// dial gets c an upstream connection from the pool, which dials it, on a
// goroutine; the loop gets it in a lopUp op.
func (c *lclient) dial() {
	el, p := c.el, c.el.p
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		uc, err := p.pool.tryGet(p.ctx)
		if err != nil {
			el.post(lop{kind: lopUp, c: c, err: err})
			return
		}
		fd, ok := relay.DupSocket(uc.conn)
		if !ok {
			// A DialContext whose conns have no socket: the goroutine
			// front end serves this client, and later ones.
			el.ls.noFD.Store(true)
			p.pool.put(uc)
			el.post(lop{kind: lopHandoff, c: c})
			return
		}
		_ = uc.conn.Close() // the loop owns fd, and the pool slot with it
		el.post(lop{kind: lopUp, c: c, fd: fd})
	}()
}

func (c *lclient) dialed(fd int, err error, reused bool) {
	el, p := c.el, c.el.p
	_, live := el.clients[c]
	waiting := live && c.st == lcDial && c.up == nil
	if waiting {
		el.ls.remove(c)
	}
	var u *lup
	if err == nil {
		u = &lup{el: el, reused: reused}
		u.s = lsock{fd: fd, u: u, readable: true, writable: true}
		if rerr := el.register(&u.s); rerr != nil {
			_ = unix.Close(fd)
			p.pool.release()
			u, err = nil, rerr
		}
	}
	if !waiting {
		if u != nil { // c was served meanwhile, or is gone: pass it on
			u.idleAt = el.now
			el.free(u)
		}
		return
	}
	if err == errNoSlot {
		c.wait()
		return
	}
	if err != nil {
		c.fail(err)
		c.run()
		return
	}
	c.start2(u)
	c.run()
}

// free gives an upstream connection that is ready for a request to the
// first client waiting for one (MaxConns), or keeps it idle.
func (el *ploop) free(u *lup) {
	if el.ls.waits.Load() > 0 {
		if w := el.ls.dequeue(); w != nil {
			if w.el == el {
				w.start2(u)
				w.run()
				return
			}
			// Hand it to w's loop.
			el.socks[u.s.fd] = nil
			el.loop.Remove(u.s.fd)
			w.el.post(lop{kind: lopUp, c: w, fd: u.s.fd, reused: true})
			return
		}
	}
	if m := el.p.cfg.MaxIdleConns; m < 0 || len(el.idle) >= max(m/len(el.ls.loops), 1) {
		u.close() // keep-alive off, or MaxIdleConns (shared out among the loops) kept
		return
	}
	el.idle = append(el.idle, u)
}

func (ls *loopSet) enqueue(c *lclient) {
	ls.wmu.Lock()
	c.queued = true
	ls.wq = append(ls.wq, c)
	ls.waits.Add(1)
	ls.wmu.Unlock()
}

// dequeue returns the first waiting client, or nil.
func (ls *loopSet) dequeue() *lclient {
	ls.wmu.Lock()
	defer ls.wmu.Unlock()
	if len(ls.wq) == 0 {
		return nil
	}
	c := ls.wq[0]
	ls.wq[0] = nil
	ls.wq = ls.wq[1:]
	c.queued = false
	ls.waits.Add(-1)
	return c
}

// remove takes c out of the queue; it reports whether c was in it.
func (ls *loopSet) remove(c *lclient) bool {
	ls.wmu.Lock()
	defer ls.wmu.Unlock()
	if !c.queued {
		return false
	}
	for i, w := range ls.wq {
		if w == c {
			ls.wq = append(ls.wq[:i], ls.wq[i+1:]...)
			break
		}
	}
	c.queued = false
	ls.waits.Add(-1)
	return true
}

// start2 sends the request on u.
func (c *lclient) start2(u *lup) {
	el, p := c.el, c.el.p
	c.up, u.c = u, c
	c.st = lcExch
	c.rframe, c.rleft, c.rclose, c.cs, c.acked = lfNone, 0, false, chunkScanner{}, false
	u.hstart, u.inEnd = 0, 0
	el.sw.b = el.sw.b[:0]
	if c.fast {
		el.sw.b = p.appendFastHead(el.sw.b, &c.fr, c.ip, c.ipOK, c.tls != nil)
	} else {
		el.bw.Reset(&el.sw)
		p.writeRequestHead(el.bw, c.r, &c.tokens, "", false)
		_ = el.bw.Flush()
	}
	// Body bytes that came with the head. A request without a body keeps
	// its head in c.in until the exchange ends: c.fr points into it, and a
	// retry sends it again.
	if c.bodyLeft > 0 {
		avail := int64(c.inLen() - c.head)
		k := min(avail, c.bodyLeft)
		el.sw.b = append(el.sw.b, (*c.in)[c.inOff+c.head:c.inOff+c.head+int(k)]...)
		c.bodyLeft -= k
		c.consume(c.head + int(k))
		c.head = 0
	}
	c.deadline = el.now + int64(max(p.cfg.UpstreamTimeout, 0))
	if p.cfg.UpstreamTimeout <= 0 {
		c.deadline = 0
	}
	if err := u.s.send(p, el.sw.b); err != nil {
		c.upFailed(err)
	}
}

// exchange moves request body bytes up and response bytes down. It reports
// whether run should go on.
func (c *lclient) exchange() bool {
	p := c.el.p
	u := c.up
	if u == nil {
		return c.st != lcExch
	}
	if done, err := u.s.flush(p); err != nil {
		return c.upFailed(err)
	} else if done && c.bodyLeft > 0 && c.readable() {
		if !c.sendBody() {
			return c.st != lcExch
		}
	}
	if c.s.pend == nil && (u.s.readable || u.inEnd > u.hstart && !c.resp) {
		if !c.readResponse() {
			return c.st != lcExch
		}
		return true
	}
	if c.s.hup && c.bodyLeft == 0 && c.st == lcExch {
		// The client may have gone: a pipelined request keeps it.
		if c.clientClosed() {
			c.gone()
			return false
		}
		c.s.hup = false
	}
	return false
}

// sendBody copies request body bytes from the client up. It reports false
// when the exchange ended.
func (c *lclient) sendBody() bool {
	el, p := c.el, c.el.p
	for c.bodyLeft > 0 && c.readable() && c.up.s.pend == nil {
		b := el.scratch[:min(int64(len(el.scratch)), c.bodyLeft)]
		n, err := c.read(b)
		if err == unix.EAGAIN {
			break
		}
		if err != nil || n == 0 {
			c.gone()
			return false
		}
		c.bodyLeft -= int64(n)
		if err := c.up.s.send(p, b[:n]); err != nil {
			return c.upFailed(err)
		}
		c.progress()
	}
	return true
}

func (c *lclient) progress() {
	p := c.el.p
	if d := max(p.cfg.UpstreamTimeout, p.cfg.TransferTimeout); d > 0 {
		c.deadline = c.el.now + int64(d)
	}
}

// readResponse reads from the upstream and forwards to the client. It
// reports whether the exchange goes on.
func (c *lclient) readResponse() bool {
	el, p := c.el, c.el.p
	u := c.up
	for c.st == lcExch && c.s.pend == nil {
		if !c.resp {
			// Response head: accumulate in u.in.
			if u.inEnd > u.hstart {
				b := (*u.in)[u.hstart:u.inEnd]
				if n := headEnd(b, 0); n > 0 {
					if !c.respHead(n) {
						return false
					}
					continue
				}
				if u.inEnd-u.hstart > p.cfg.MaxHeaderBytes+4<<10 {
					c.fail(errors.New("proxy: response header too large"))
					return false
				}
			}
			if !u.s.readable {
				return c.waitUp(u.inEnd > u.hstart)
			}
			if u.in == nil {
				u.in = p.smallBufs.Get().(*[]byte)
			}
			if u.inEnd == len(*u.in) {
				u.growIn()
			}
			n, err := u.s.read((*u.in)[u.inEnd:])
			if err == unix.EAGAIN {
				return c.waitUp(u.inEnd > u.hstart)
			}
			if err != nil || n == 0 {
				if u.inEnd == 0 && u.reused && !c.retried && c.length == 0 && c.resend {
					c.retry()
					return true
				}
				if err == nil {
					err = io.ErrUnexpectedEOF
				}
				c.fail(fmt.Errorf("proxy: read response: %w", err))
				return false
			}
			u.inEnd += n
			continue
		}
		// Response body.
		if !u.s.readable {
			return c.waitUp(true)
		}
		b := el.scratch
		if c.rframe == lfClose {
			b = b[16 : len(b)-2] // room for the chunk framing
		} else if c.rframe == lfLength {
			b = b[:min(int64(len(b)), c.rleft)]
		}
		n, err := u.s.read(b)
		if err == unix.EAGAIN {
			return c.waitUp(true)
		}
		if err != nil || (n == 0 && c.rframe != lfClose) {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			c.abort(fmt.Errorf("proxy: read response body: %w", err))
			return false
		}
		if n == 0 { // lfClose: the end
			c.rclose = true
			if err := c.send(lastChunk); err != nil {
				c.gone()
				return false
			}
			c.respDone()
			return true
		}
		c.progress()
		if !c.body(b[:n]) {
			return false
		}
	}
	return c.st == lcExch
}

var lastChunk = []byte("0\r\n\r\n")

// waitUp is readResponse's return when the upstream has nothing more to
// read for now. With part of the response in (partial), the upstream's
// ACK goes out at once, once per response (TCP_QUICKACK): a server that
// writes the head and the body apart without TCP_NODELAY (Python's
// http.server, for one) holds the body back until the head is
// acknowledged, and Linux delays that ACK by 40 ms.
func (c *lclient) waitUp(partial bool) bool {
	if partial && !c.acked {
		c.acked = true
		if u := c.up; !u.noQuickAck {
			if unix.SetsockoptInt(u.s.fd, unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1) != nil {
				u.noQuickAck = true // not TCP
			}
		}
	}
	return false
}

// body forwards response body bytes b (in el.scratch, or in u.in right
// after the head) to the client and ends the response when b completes it.
func (c *lclient) body(b []byte) bool {
	switch c.rframe {
	case lfLength:
		k := min(int64(len(b)), c.rleft)
		c.rleft -= k
		if int64(len(b)) > k {
			c.rclose = true // the upstream sent more than it announced
		}
		if err := c.send(b[:k]); err != nil {
			c.gone()
			return false
		}
		if c.rleft == 0 {
			c.respDone()
		}
	case lfChunked:
		n, err := c.cs.scan(b)
		if err != nil {
			c.abort(err)
			return false
		}
		if n < len(b) {
			c.rclose = true
		}
		if err := c.send(b[:n]); err != nil {
			c.gone()
			return false
		}
		if c.cs.done() {
			c.respDone()
		}
	case lfClose:
		// b sits in el.scratch[16:], with room for the framing around it
		// when it came from there; otherwise copy.
		frame := chunkFrame(c.el.scratch, b)
		if err := c.send(frame); err != nil {
			c.gone()
			return false
		}
	}
	return true
}

// chunkFrame returns b framed as one chunk, in place when b lies in
// scratch[16:len-2].
func chunkFrame(scratch, b []byte) []byte {
	var hex [16]byte
	h := strconvAppendHex(hex[:0], len(b))
	h = append(h, '\r', '\n')
	if len(b) > 0 && len(scratch) > 16 && &b[0] == &scratch[16] {
		start := 16 - len(h)
		copy(scratch[start:], h)
		end := 16 + len(b)
		scratch[end], scratch[end+1] = '\r', '\n'
		return scratch[start : end+2]
	}
	out := make([]byte, 0, len(h)+len(b)+2)
	out = append(out, h...)
	out = append(out, b...)
	return append(out, '\r', '\n')
}

func strconvAppendHex(dst []byte, n int) []byte {
	const digits = "0123456789abcdef"
	var buf [16]byte
	i := len(buf)
	for {
		i--
		buf[i] = digits[n&15]
		n >>= 4
		if n == 0 {
			break
		}
	}
	return append(dst, buf[i:]...)
}

// respHead handles the response head that is the first n bytes of u.in
// past hstart.
func (c *lclient) respHead(n int) bool {
	el, p := c.el, c.el.p
	u := c.up
	ri, out, err := parseResponseHead(el.sw.b[:0], (*u.in)[u.hstart:u.hstart+n])
	el.sw.b = out[:0]
	if err == nil && ri.code == http.StatusSwitchingProtocols {
		err = errors.New("proxy: upstream switched protocols without being asked to")
	}
	if err != nil {
		c.fail(fmt.Errorf("proxy: read response: %w", err))
		return false
	}
	u.hstart += n
	if ri.code < 200 {
		if ri.code != http.StatusContinue {
			out = append(out, '\r', '\n')
			if err := c.send(out); err != nil {
				c.gone()
				return false
			}
		}
		return true
	}
	c.code = ri.code
	c.resp = true
	c.rclose = ri.close
	switch {
	case ri.bodyless(c.isHead):
		c.rframe = lfNone
		// As headOfUnknownLength: not reused, the upstream may be busy.
		c.rclose = c.rclose || c.isHead && (ri.length < 0 || ri.chunked)
	case ri.chunked:
		c.rframe = lfChunked
	case ri.length >= 0:
		c.rframe, c.rleft = lfLength, ri.length
	default:
		c.rframe = lfClose
		c.rclose = true
	}
	if c.bodyLeft > 0 {
		c.closeAfter = true // the rest of the request body is abandoned
	}
	if p.shuttingDown.Load() || el.draining {
		c.closeAfter = true
	}
	if c.rframe == lfChunked || c.rframe == lfClose {
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	}
	if c.closeAfter {
		out = append(out, "Connection: close\r\n"...)
	}
	out = append(out, '\r', '\n')
	el.sw.b = out
	// Body bytes that came with the head go out in the same write.
	rest := (*u.in)[u.hstart:u.inEnd]
	u.hstart, u.inEnd = 0, 0
	switch c.rframe {
	case lfNone:
		if len(rest) > 0 {
			c.rclose = true
		}
		rest = nil
	case lfLength:
		k := min(int64(len(rest)), c.rleft)
		if int64(len(rest)) > k {
			c.rclose = true
		}
		rest = rest[:k]
		c.rleft -= k
	case lfChunked:
		k, err := c.cs.scan(rest)
		if err != nil {
			c.abort(err)
			return false
		}
		if k < len(rest) {
			c.rclose = true
		}
		rest = rest[:k]
	case lfClose:
		if len(rest) > 0 {
			el.sw.b = append(el.sw.b, chunkFrame(nil, rest)...)
			rest = nil
		}
	}
	el.sw.b = append(el.sw.b, rest...)
	u.freeIn()
	if err := c.send(el.sw.b); err != nil {
		c.gone()
		return false
	}
	c.progress()
	if c.rframe == lfNone || (c.rframe == lfLength && c.rleft == 0) || (c.rframe == lfChunked && c.cs.done()) {
		c.respDone()
	} else if c.rframe != lfLength && c.slot && !c.stream {
		// A response of unknown length still coming: its slot goes back
		// (Config.MaxStreams).
		c.stream = p.slotToStream()
	}
	return true
}

// respDone ends an exchange whose response is complete.
func (c *lclient) respDone() {
	el := c.el
	u := c.up
	c.up = nil
	u.c = nil
	if c.rclose || c.upClose || c.bodyLeft > 0 || u.s.eof || u.s.hup || el.stopped || !u.drained() {
		u.close()
	} else {
		u.reused = true
		u.idleAt = el.now
		defer el.free(u) // after c's state is settled: free may run another client
	}
	c.release()
	c.endRequest()
	c.deadline = 0
	c.closing = c.closeAfter
}

// endRequest forgets the request of the exchange that ended and drops its
// head from c.in.
func (c *lclient) endRequest() {
	c.st = lcIdle
	c.deadline = 0 // run sets the next one (sendDeadline, readRequest)
	c.consume(c.head)
	c.head = 0
	c.r, c.fast, c.inReq = nil, false, false
}

// reqMethod and reqURI describe the request for logs.
func (c *lclient) reqMethod() string {
	if c.fast {
		return string(c.fr.method)
	}
	return c.r.Method
}

func (c *lclient) reqURI() string {
	if c.fast {
		return string(c.fr.target)
	}
	return c.r.RequestURI
}

// release gives back the slot and records the request.
func (c *lclient) release() {
	p := c.el.p
	if !c.slot {
		return
	}
	c.slot = false
	p.giveBack(c.stream)
	c.stream = false
	if m := p.metrics; m != nil {
		m.Request(c.code, time.Since(c.start))
	}
}

// retry resends a request without a body on a new connection after a
// reused one turned out closed.
func (c *lclient) retry() {
	c.retried = true
	u := c.up
	c.up = nil
	u.c = nil
	u.close()
	c.connect() // start2 writes the head again: it is still in c.in (or c.r)
}

// upFailed handles a failed write to the upstream.
func (c *lclient) upFailed(err error) bool {
	u := c.up
	if u != nil && u.reused && !c.retried && !c.resp && c.length == 0 && c.resend {
		c.retry()
		return true
	}
	c.fail(fmt.Errorf("proxy: write request: %w", err))
	return false
}

// fail answers 502 (504 on timeouts) before the response began, or aborts
// it after.
func (c *lclient) fail(err error) {
	if c.resp {
		c.abort(err)
		return
	}
	code := http.StatusBadGateway
	if isTimeout(err) {
		code = http.StatusGatewayTimeout
	}
	if c.inReq {
		c.upstreamFailed(err, code)
	}
	if c.up != nil {
		c.up.c = nil
		c.up.close()
		c.up = nil
	}
	c.code = code
	c.release()
	c.endRequest()
	if c.bodyLeft > 0 {
		c.closeAfter = true // the body stays unread
	}
	c.closing = c.closeAfter
	c.bodyLeft = 0
	el := c.el
	el.sw.b = el.sw.b[:0]
	body := statusBody(code)
	el.sw.b = fmt.Appendf(el.sw.b, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: %d\r\n", code, http.StatusText(code), len(body))
	if c.closeAfter {
		el.sw.b = append(el.sw.b, "Connection: close\r\n"...)
	}
	el.sw.b = append(el.sw.b, "\r\n"...)
	el.sw.b = append(el.sw.b, body...)
	if err := c.send(el.sw.b); err != nil {
		c.close()
	}
}

func (c *lclient) upstreamFailed(err error, code int) {
	p := c.el.p
	if m := p.metrics; m != nil {
		m.UpstreamError()
	}
	p.log.LogAttrs(p.ctx, slog.LevelWarn, "proxy: upstream error",
		slog.String("method", c.reqMethod()), slog.String("uri", c.reqURI()),
		slog.Int("status", code), slog.Any("err", err))
}

// abort ends a response that has begun: the client connection closes so
// that it cannot take a partial response for a whole one.
func (c *lclient) abort(err error) {
	c.upstreamFailed(err, c.code)
	c.close()
}

// gone handles a client that went away during an exchange.
func (c *lclient) gone() {
	if !c.resp {
		c.code = 499
	}
	if c.inReq {
		p := c.el.p
		p.log.LogAttrs(p.ctx, slog.LevelDebug, "proxy: client went away",
			slog.String("method", c.reqMethod()), slog.String("uri", c.reqURI()))
	}
	c.close()
}

// expired handles a passed deadline.
func (c *lclient) expired() {
	switch c.st {
	case lcDial:
		if c.el.ls.remove(c) {
			c.fail(fmt.Errorf("proxy: wait for upstream connection: all %d busy", cap(c.el.p.pool.slots)))
			c.run()
		}
	case lcIdle, lcLinger:
		// Idle, a header that did not arrive in time, or done lingering
		// (close_notify sent already): a TLS client is told the
		// connection ends (close_notify) rather than left to take the
		// close for a truncation.
		c.closeNotify()
		c.close()
	case lcExch:
		if !c.resp && c.bodyLeft == 0 {
			c.fail(fmt.Errorf("proxy: wait for response: %w", os.ErrDeadlineExceeded))
			c.run()
			return
		}
		c.abort(fmt.Errorf("proxy: transfer stalled: %w", os.ErrDeadlineExceeded))
	}
}

// answerAndClose answers a request that cannot be served with code and
// closes the connection after it.
func (c *lclient) answerAndClose(code int) {
	c.closeAfter, c.closing, c.refused = true, true, true
	body := statusBody(code)
	msg := fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), len(body), body)
	c.freeIn()
	if err := c.send(msg); err != nil {
		c.close()
	}
}

// close closes the connection and its upstream connection.
func (c *lclient) close() {
	el := c.el
	if _, ok := el.clients[c]; !ok {
		return
	}
	delete(el.clients, c)
	if c.st == lcDial {
		el.ls.remove(c)
	}
	if c.up != nil {
		c.up.c = nil
		c.up.close()
		c.up = nil
	}
	if c.slot {
		if c.code == http.StatusBadGateway && !c.resp {
			c.code = 499
		}
		c.release()
	}
	el.socks[c.s.fd] = nil
	_ = unix.Close(c.s.fd)
	c.ended()
	c.s.freePend(el.p)
	c.freeIn()
	el.ls.conns.Add(-1)
}

// ended calls the Detach release of c's connection, once its socket is
// closed or handed on (see TLSServer).
func (c *lclient) ended() {
	if done := c.done; done != nil {
		c.done = nil
		done()
	}
}

// handoff moves c to the goroutine front end with the bytes read so far.
func (c *lclient) handoff() {
	el, p := c.el, c.el.p
	delete(el.clients, c)
	if c.st == lcDial {
		el.ls.remove(c)
	}
	el.socks[c.s.fd] = nil
	el.loop.Remove(c.s.fd)
	if c.slot {
		// The goroutine front end admits the request again.
		c.slot = false
		p.giveBack(c.stream)
		c.stream = false
	}
	var prefix []byte
	if c.inLen() > 0 {
		prefix = bytes.Clone((*c.in)[c.inOff:c.inEnd])
	}
	if t := c.tls; t != nil && len(t.pipe) > 0 {
		// Bytes decrypted past c.in (clientClosed), which the tls.Conn
		// no longer holds: they come next in the stream.
		prefix = append(prefix, t.pipe...)
		t.pipe = nil
	}
	pend := c.s.pend
	c.freeIn()
	el.ls.conns.Add(-1)
	// raw is the socket, nc what the goroutine front end serves: the
	// same, or for TLS the tls.Conn, with the records it holds, whose
	// socket goes back under it as Go's poller serves it.
	var raw, nc net.Conn
	if t := c.tls; t != nil {
		raw = &fileConn{
			File:     os.NewFile(uintptr(c.s.fd), "proxy-client"),
			remote:   t.base.remote,
			local:    t.base.local,
			maxWrite: c.s.maxWrite,
			done:     c.done, // the connection ends with raw now
		}
		c.done = nil
		t.base.Conn, t.base.io = raw, nil
		nc = t.conn
	} else {
		f := os.NewFile(uintptr(c.s.fd), "proxy-client")
		_ = unix.SetNonblock(c.s.fd, false)
		var err error
		raw, err = net.FileConn(f)
		_ = f.Close()
		// No release to carry: a plain connection is a *net.TCPConn or
		// *net.UnixConn (take), which have no Detach.
		if err != nil {
			c.s.freePend(p)
			return
		}
		nc = raw
	}
	if pend != nil {
		// A response still on its way out (for TLS, records already
		// sealed): write it to the socket first, off the loop.
		out := bytes.Clone(pend[c.s.pendOff:])
		c.s.freePend(p)
		go func() {
			_ = raw.SetWriteDeadline(time.Now().Add(max(p.cfg.TransferTimeout, time.Second)))
			if _, err := raw.Write(out); err != nil {
				_ = raw.Close()
				return
			}
			_ = raw.SetWriteDeadline(time.Time{})
			p.serveConn(&prefixConn{Conn: nc, prefix: prefix})
		}()
		return
	}
	if prefix == nil {
		p.serveConn(nc)
		return
	}
	p.serveConn(&prefixConn{Conn: nc, prefix: prefix})
}

// lup is an upstream connection on a loop.
type lup struct {
	el     *ploop
	s      lsock
	c      *lclient // the exchange using it; nil when idle
	in     *[]byte  // the response head being read
	hstart int
	inEnd  int
	reused bool
	idleAt int64
	// noQuickAck: the socket takes no TCP_QUICKACK (a unix socket).
	noQuickAck bool
}

func (u *lup) event() {
	if u.c != nil {
		u.c.run()
		return
	}
	if u.s.readable || u.s.hup {
		// An idle connection the upstream closed, or sent unasked bytes
		// on: of no more use.
		u.close()
		for i, v := range u.el.idle {
			if v == u {
				u.el.idle = append(u.el.idle[:i], u.el.idle[i+1:]...)
				break
			}
		}
	}
}

// drained reports whether u has nothing left to read: bytes the upstream
// sent past the end of a response (more than its Content-Length, a body
// for HEAD) would be taken for the response to the next request on it,
// another client's. The last read leaves readable set only when it
// filled its buffer (lsock.read), so the common case costs no syscall;
// otherwise the socket is peeked, and, found empty, readable is cleared:
// bytes arriving later raise an edge (event closes an idle connection).
func (u *lup) drained() bool {
	if !u.s.readable {
		return true
	}
	if peekFD(u.s.fd) != peekEmpty {
		return false
	}
	u.s.readable = false
	return true
}

func (u *lup) growIn() {
	b := *u.in
	nb := make([]byte, 2*len(b))
	copy(nb, b[:u.inEnd])
	if len(b) == smallBufSize {
		u.el.p.smallBufs.Put(u.in)
	}
	u.in = &nb
}

func (u *lup) freeIn() {
	if u.in == nil {
		return
	}
	if len(*u.in) == smallBufSize {
		u.el.p.smallBufs.Put(u.in)
	}
	u.in = nil
	u.hstart, u.inEnd = 0, 0
}

func (u *lup) close() {
	if u.s.fd < 0 {
		return
	}
	el := u.el
	el.socks[u.s.fd] = nil
	_ = unix.Close(u.s.fd)
	u.s.fd = -1
	u.s.freePend(el.p)
	u.freeIn()
	el.p.pool.release()
	if el.ls.waits.Load() > 0 && !el.stopped {
		if w := el.ls.dequeue(); w != nil {
			w.dial() // the slot just freed is for w
		}
	}
}

// peekFD looks at a socket without reading.
func peekFD(fd int) peekState {
	var b [1]byte
	n, _, err := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	switch {
	case n > 0:
		return peekData
	case err == unix.EAGAIN:
		return peekEmpty
	}
	return peekClosed
}
