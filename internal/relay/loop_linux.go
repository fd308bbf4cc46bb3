package relay

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quenchnet/quench/internal/epoll"
	"github.com/quenchnet/quench/internal/rawio"
)

// Loop relays connection pairs on a few event loops instead of two
// goroutines per pair. Each loop owns an edge-triggered epoll instance
// with the pairs' sockets (duplicated from the net.Conns, which are closed)
// and reads and writes them with plain syscalls:
//
//   - a read that returns less than the loop's buffer drained the socket,
//     so the next read waits for the next edge: no EAGAIN read per message,
//     which Go's poller needs after every wake-up;
//   - one scratch buffer per loop serves every pair; a pair holds a pooled
//     buffer only for bytes its destination could not take yet (then its
//     source is not read until they are written), so idle pairs hold none;
//   - the loop's goroutine waits in Go's own poller, on the epoll file
//     descriptor, so no thread blocks in epoll_wait.
//   - write readiness is watched only while a socket is full: a unix or
//     VSOCK stream signals EPOLLOUT each time its reader takes data, which
//     would wake the loop once per message for nothing.
//
// Connections that are not stream sockets with a file descriptor (TLS,
// gVisor's gonet, net.Pipe) are relayed by Go's goroutines as before.
type Loop struct {
	loops  []*evloop
	next   atomic.Uint32
	wg     sync.WaitGroup
	closed atomic.Bool
}

// NewLoop starts cfg.Loops event loops. Close stops them.
func NewLoop(cfg LoopConfig) (*Loop, error) {
	n := cfg.Loops
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	l := &Loop{}
	for range n {
		el, err := newEvloop()
		if err != nil {
			_ = l.Close()
			return nil, err
		}
		l.loops = append(l.loops, el)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			el.run()
		}()
	}
	return l, nil
}

// Go relays a and b as Go does: a→b and b→a until both directions have
// finished (half-closes propagated), then both are closed and done (if not
// nil) is called exactly once with what was copied. done runs on a loop's
// goroutine and must not block. The connections belong to the Loop from
// now on: stop the relay with the returned Handle, not by closing them.
// After Close, Go closes both connections and calls done with an error
// wrapping net.ErrClosed.
func (l *Loop) Go(a, b net.Conn, opts Options, done func(Stats, error)) Handle {
	if l.closed.Load() {
		return refuse(a, b, done)
	}
	fa, ok := dupSocket(a)
	if !ok {
		return goHandle(a, b, opts, done)
	}
	fb, ok := dupSocket(b)
	if !ok {
		_ = unix.Close(fa)
		return goHandle(a, b, opts, done)
	}
	_ = a.Close()
	_ = b.Close()
	el := l.loops[l.next.Add(1)%uint32(len(l.loops))]
	p := &pair{loop: el, opts: opts, done: done, maxWrite: [2]int{opts.MaxWriteA, opts.MaxWriteB}}
	p.s[0] = side{p: p, fd: fa, readable: true, writable: true}
	p.s[1] = side{p: p, fd: fb, readable: true, writable: true}
	el.post(op{kind: opAdd, p: p})
	return p
}

// Close ends every pair (their done functions are called), stops the loops
// and waits for them. It is idempotent.
func (l *Loop) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	for _, el := range l.loops {
		el.post(op{kind: opStop})
	}
	l.wg.Wait()
	return nil
}

// dupSocket returns a non-blocking duplicate of c's file descriptor if c is
// a stream socket.
func dupSocket(c net.Conn) (int, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, false
	}
	// TCP and unix stream connections are streams; other kinds (VSOCK)
	// are asked. Each system call saved counts when every client request
	// is a connection of its own.
	stream := false
	switch c := c.(type) {
	case *net.TCPConn:
		stream = true
	case *net.UnixConn:
		a, ok := c.LocalAddr().(*net.UnixAddr)
		stream = ok && a != nil && a.Net == "unix"
	}
	nfd := -1
	cerr := rc.Control(func(fd uintptr) {
		if !stream {
			typ, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
			if err != nil || typ != unix.SOCK_STREAM {
				return
			}
		}
		// At least 3: a write to a broken stream on fd 1 or 2 would
		// kill the process with SIGPIPE (os/signal).
		d, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			return
		}
		// The duplicate shares the file status flags: Go's sockets are
		// non-blocking already, so one F_GETFL usually settles it.
		if fl, err := unix.FcntlInt(uintptr(d), unix.F_GETFL, 0); err != nil || (fl&unix.O_NONBLOCK == 0 && unix.SetNonblock(d, true) != nil) {
			_ = unix.Close(d)
			return
		}
		nfd = d
	})
	if cerr != nil || nfd < 0 {
		return -1, false
	}
	return nfd, true
}

type opKind int

const (
	opAdd opKind = iota
	opClose
	opSweep
	opStop
)

type op struct {
	kind opKind
	p    *pair
}

// evloop is one event loop. Its goroutine owns everything but loop, which
// others reach through post.
type evloop struct {
	loop    *epoll.Loop[op]
	timerOn bool // the sweep timer is armed

	sides   map[int32]*side
	pairs   map[*pair]struct{}
	timed   int // pairs with an idle timeout
	scratch []byte
	now     int64 // unix nanoseconds at the start of the current batch
	timer   *time.Timer
	sweepAt time.Duration
	stopped bool
	pollErr error
}

func newEvloop() (*evloop, error) {
	loop, err := epoll.New[op]("relay")
	if err != nil {
		return nil, err
	}
	return &evloop{
		loop:    loop,
		sides:   map[int32]*side{},
		pairs:   map[*pair]struct{}{},
		scratch: make([]byte, sizes[len(sizes)-1]),
	}, nil
}

// post hands o to the loop. After the loop stopped, it is handled here.
func (el *evloop) post(o op) {
	if !el.loop.Post(o) {
		orphan(o)
	}
}

// orphan ends a pair posted to a loop that has stopped.
func orphan(o op) {
	if o.kind == opAdd {
		_ = unix.Close(o.p.s[0].fd)
		_ = unix.Close(o.p.s[1].fd)
		if o.p.done != nil {
			o.p.done(Stats{}, fmt.Errorf("relay: %w", net.ErrClosed))
		}
	}
}

func (el *evloop) run() {
	left, err := el.loop.Run(el)
	el.pollErr = err
	if el.timer != nil {
		el.timer.Stop()
	}
	for _, o := range left {
		orphan(o)
	}
	for p := range el.pairs {
		p.finish(nil)
	}
}

// Batch, Event, Ops and Stopped make evloop the epoll.Handler of its loop.
func (el *evloop) Batch()        { el.now = time.Now().UnixNano() }
func (el *evloop) Stopped() bool { return el.stopped }

func (el *evloop) Event(fd int32, events uint32) {
	s := el.sides[fd]
	if s == nil {
		return // closed by an earlier event of this batch
	}
	r, h, w := epoll.Readiness(events)
	s.readable = s.readable || r
	s.hup = s.hup || h
	s.writable = s.writable || w
	s.p.pump()
	if w && s.outArmed && s.pend == nil && el.sides[fd] == s {
		// Nothing waits to be written any more: stop watching writes.
		s.outArmed = false
		_ = el.loop.WatchWrites(s.fd, false)
	}
}

func (el *evloop) Ops(ops []op) {
	for _, o := range ops {
		switch o.kind {
		case opAdd:
			el.add(o.p)
		case opClose:
			if _, ok := el.pairs[o.p]; ok {
				o.p.finish(nil)
			}
		case opSweep:
			el.sweep()
		case opStop:
			el.stopped = true
		}
	}
}

func (el *evloop) add(p *pair) {
	for i := range p.s {
		s := &p.s[i]
		if err := el.loop.AddReader(s.fd); err != nil {
			for j := range i {
				el.loop.Remove(p.s[j].fd)
				delete(el.sides, int32(p.s[j].fd))
			}
			_ = unix.Close(p.s[0].fd)
			_ = unix.Close(p.s[1].fd)
			if p.done != nil {
				p.done(Stats{}, fmt.Errorf("relay: %w", err))
			}
			return
		}
		el.sides[int32(s.fd)] = s
	}
	el.pairs[p] = struct{}{}
	p.last = el.now
	if p.opts.IdleTimeout > 0 {
		el.timed++
		el.armSweep(p.opts.IdleTimeout)
	}
	p.pump() // whatever was buffered before the hand-over
}

// armSweep makes sure the idle sweep runs often enough for timeout d.
func (el *evloop) armSweep(d time.Duration) {
	every := min(max(d/4, 5*time.Millisecond), time.Second)
	if el.timerOn && every >= el.sweepAt {
		return
	}
	el.sweepAt = every
	el.timerOn = true
	if el.timer == nil {
		el.timer = time.AfterFunc(every, func() { el.post(op{kind: opSweep}) })
	} else {
		el.timer.Reset(every)
	}
}

func (el *evloop) sweep() {
	el.timerOn = false
	if el.timed == 0 {
		return
	}
	now := time.Now().UnixNano()
	for p := range el.pairs {
		if d := p.opts.IdleTimeout; d > 0 && now-p.last >= int64(d) {
			p.finish(nil)
		}
	}
	if el.timed > 0 {
		el.timerOn = true
		el.timer.Reset(el.sweepAt)
	}
}

// pair is one relayed connection pair: s[0] is a, s[1] is b.
type pair struct {
	loop *evloop
	s    [2]side
	opts Options
	// maxWrite bounds each write to s[i] (Options.MaxWriteA, MaxWriteB).
	maxWrite [2]int
	st       Stats
	done     func(Stats, error)
	last     int64 // el.now at the last read or backlog write
}

// side is one socket of a pair and the bytes waiting to be written to it.
type side struct {
	p        *pair
	fd       int
	readable bool // may have data (or EOF) to read
	hup      bool // the peer shut down or the socket failed: read to the end
	writable bool // the last write did not fill its send buffer
	outArmed bool // EPOLLOUT is watched (since a write fell short)
	eof      bool // read returned 0: nothing more comes from this socket
	shut     bool // its write half is shut (the other side's EOF passed on)
	pend     *[]byte
	pendCls  int
	pendOff  int
	pendEnd  int
}

// full records that s took less than it was given: writes wait for
// EPOLLOUT, watched from now on.
func (s *side) full() error {
	s.writable = false
	if s.outArmed {
		return nil
	}
	s.outArmed = true
	if err := s.p.loop.loop.WatchWrites(s.fd, true); err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	return nil
}

// Close ends the relay from outside; done is called on the loop.
func (p *pair) Close() error {
	p.loop.post(op{kind: opClose, p: p})
	return nil
}

// pump moves whatever can move in both directions without blocking.
func (p *pair) pump() {
	if !p.copy(0) {
		return
	}
	if !p.copy(1) {
		return
	}
	if p.s[0].eof && p.s[1].eof && p.s[0].pend == nil && p.s[1].pend == nil {
		p.finish(nil)
	}
}

// copy moves bytes from s[from] to the other side. It reports false when
// the pair was finished.
func (p *pair) copy(from int) bool {
	src, dst := &p.s[from], &p.s[1-from]
	el := p.loop
	if dst.pend != nil {
		if !dst.writable {
			return true
		}
		buf := (*dst.pend)[dst.pendOff:dst.pendEnd]
		n, err := write(dst.fd, buf)
		if testWrite != nil {
			testWrite(p, 1-from, len(buf))
		}
		if n > 0 {
			dst.pendOff += n
			p.count(from, n)
			p.last = el.now // a slow reader draining a backlog is not idle
		}
		if err != nil && err != unix.EAGAIN {
			return p.writeFailed(from, err)
		}
		if n < len(buf) {
			if err := dst.full(); err != nil {
				p.finish(err)
				return false
			}
			return true
		}
		pools[dst.pendCls].Put(dst.pend)
		dst.pend = nil
	}
	scratch := el.scratch
	if m := p.maxWrite[1-from]; m > 0 && m < len(scratch) {
		scratch = scratch[:m]
	}
	for src.readable && !src.eof {
		n, err := read(src.fd, scratch)
		if err != nil {
			if err == unix.EAGAIN {
				src.readable = false
				break
			}
			if err == unix.ECONNRESET {
				// src's peer reset the connection: close dst with a
				// reset too (SO_LINGER 0), as Relay does.
				_ = unix.SetsockoptLinger(dst.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			}
			p.finish(fmt.Errorf("relay: read: %w", err))
			return false
		}
		if n == 0 {
			src.eof = true
			src.readable = false
			break
		}
		p.last = el.now
		if n < len(scratch) && !src.hup {
			// A short read drained the socket; with edge-triggered
			// epoll, new data brings a new event. Not so for an EOF or
			// error already signalled: read on until it shows.
			src.readable = false
		}
		w := 0
		if dst.writable {
			w, err = write(dst.fd, scratch[:n])
			if testWrite != nil {
				testWrite(p, 1-from, n)
			}
			if err != nil && err != unix.EAGAIN {
				return p.writeFailed(from, err)
			}
			if w > 0 {
				p.count(from, w)
			}
		}
		if w < n {
			// The destination is full: keep the rest and stop reading
			// the source until it is written (EPOLLOUT on dst).
			if err := dst.full(); err != nil {
				p.finish(err)
				return false
			}
			rest := n - w
			cls := 0
			for sizes[cls] < rest {
				cls++
			}
			dst.pend = pools[cls].Get().(*[]byte)
			dst.pendCls = cls
			dst.pendOff = 0
			dst.pendEnd = copy(*dst.pend, scratch[w:n])
			return true
		}
	}
	if src.eof && dst.pend == nil && !dst.shut {
		dst.shut = true
		if dst.eof && src.pend == nil {
			// Both directions are done: pump finishes the pair now, and
			// close sends the FIN (dst's input was read to its end) for
			// one system call less per connection.
			return true
		}
		if err := unix.Shutdown(dst.fd, unix.SHUT_WR); err != nil {
			// Cannot half-close (the peer is gone): end both, as the
			// goroutine relay does.
			p.finish(nil)
			return false
		}
	}
	return true
}

// writeFailed handles an error writing to s[1-from]; it reports false when
// it finished the pair. A peer that went away (EPIPE, ECONNRESET) may have
// sent bytes the relay has not read yet, such as a server's answer to a
// request it did not read to the end (an HTTP 413) before it closed: only
// the direction towards it ends (the backlog for it and what s[from] has
// yet to send are dropped, s[from] is no longer read), and the other one
// goes on until it ends too. Other errors end the pair.
func (p *pair) writeFailed(from int, err error) bool {
	if err != unix.EPIPE && err != unix.ECONNRESET {
		p.finish(fmt.Errorf("relay: write: %w", err))
		return false
	}
	src, dst := &p.s[from], &p.s[1-from]
	if dst.pend != nil {
		pools[dst.pendCls].Put(dst.pend)
		dst.pend = nil
	}
	src.eof, src.readable = true, false
	dst.shut = true // nothing to half-close: its peer reads no more
	return true
}

func (p *pair) count(from, n int) {
	if from == 0 {
		p.st.AToB += int64(n)
		if p.opts.AToB != nil {
			p.opts.AToB.Add(int64(n))
		}
	} else {
		p.st.BToA += int64(n)
		if p.opts.BToA != nil {
			p.opts.BToA.Add(int64(n))
		}
	}
}

// finish closes both sockets, returns the buffers and calls done.
func (p *pair) finish(err error) {
	el := p.loop
	if _, ok := el.pairs[p]; !ok {
		return
	}
	delete(el.pairs, p)
	if p.opts.IdleTimeout > 0 {
		el.timed--
	}
	for i := range p.s {
		s := &p.s[i]
		delete(el.sides, int32(s.fd))
		_ = unix.Close(s.fd) // also leaves the epoll set
		if s.pend != nil {
			pools[s.pendCls].Put(s.pend)
			s.pend = nil
		}
	}
	if p.done != nil {
		if errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE) {
			err = nil // the peer went away: as a closed connection
		}
		p.done(p.st, err)
	}
}

// testWrite, set by tests only, sees the size of every write to side i of a
// pair.
var testWrite func(p *pair, i, n int)

// read and write are rawio's: raw system calls on the loop's non-blocking
// sockets.
func read(fd int, b []byte) (int, error)  { return rawio.Read(fd, b) }
func write(fd int, b []byte) (int, error) { return rawio.Write(fd, b) }

// DupSocket returns a non-blocking duplicate (close-on-exec, numbered 3 or
// more) of c's file descriptor if c is a stream socket. The caller owns it;
// c stays open.
func DupSocket(c net.Conn) (int, bool) { return dupSocket(c) }

// SysRead is read(2) on a non-blocking descriptor, retried on EINTR,
// without allocating. It returns unix.EAGAIN when nothing is there.
func SysRead(fd int, b []byte) (int, error) { return read(fd, b) }

// SysWrite is write(2) on a non-blocking descriptor, retried on EINTR,
// without allocating. It returns unix.EAGAIN when the socket is full.
func SysWrite(fd int, b []byte) (int, error) { return write(fd, b) }
