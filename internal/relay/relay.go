// Package relay copies bytes both ways between two connections with pooled
// buffers that grow with traffic, and propagates half-closes and resets.
//
// A copy direction whose source has nothing to read holds no buffer: on
// sockets that expose a syscall.RawConn (TCP, unix, VSOCK), the loop waits
// for readability first and only then takes a buffer from a pool, returning
// it once the socket is drained. A direction that keeps filling its buffer
// steps up to larger ones (4 KiB → 64 KiB → 256 KiB). Ten thousand idle
// relayed connections therefore cost their goroutines and sockets, not
// buffers. Other connections (TLS, gVisor's gonet) hold the current buffer
// while blocked in Read.
//
// Nothing is allocated per read or write in steady state.
package relay

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quenchnet/quench/internal/rawio"
)

// Buffer size classes. A copy loop starts at the smallest and moves up one
// class after promoteAfter consecutive reads that fill the buffer.
var sizes = [...]int{4 << 10, 64 << 10, 256 << 10}

const promoteAfter = 4

// pools hold *[]byte (not []byte, which would allocate on Put).
var pools [len(sizes)]sync.Pool

func init() {
	for i, n := range sizes {
		pools[i].New = func() any { b := make([]byte, n); return &b }
	}
}

// Stats reports what one Relay moved.
type Stats struct {
	AToB, BToA int64 // bytes copied in each direction
}

// Options tune a Relay. The zero value is usable.
type Options struct {
	// IdleTimeout closes both connections when neither direction has moved
	// a byte for this long. Default: 0, no idle timeout.
	IdleTimeout time.Duration

	// AToB and BToA, when not nil, are increased by the bytes written in
	// each direction as they are written (for live counters). Default: nil.
	AToB, BToA *atomic.Int64

	// MaxWriteA and MaxWriteB, when positive, bound every single write to a
	// and to b: the relay reads at most that much for it at once. An
	// enclave's writes to VSOCK must stay at 32 KiB or less (see
	// tap.DefaultMaxWrite). Default: 0, unbounded.
	MaxWriteA, MaxWriteB int
}

// Relay copies a→b and b→a until both directions have finished, then closes
// both connections. When one side finishes sending (EOF), the write half of
// the other side is closed if it supports CloseWrite, so half-closed
// protocols keep working; otherwise both are closed. When reading one side
// fails with ECONNRESET (its peer reset the connection), the other is
// closed with a reset too (see Abort). It returns the first
// error other than EOF or use of a closed connection. One direction runs in
// the calling goroutine, the other in a goroutine Relay waits for.
func Relay(a, b net.Conn, opts Options) (Stats, error) {
	var (
		st    Stats
		errAB error
		errBA error
	)
	var idle *idleTimer
	if opts.IdleTimeout > 0 {
		idle = newIdleTimer(opts.IdleTimeout, func() { _ = a.Close(); _ = b.Close() })
		defer idle.stop()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.BToA, errBA = copyHalf(a, b, idle, opts.BToA, opts.MaxWriteA)
	}()
	st.AToB, errAB = copyHalf(b, a, idle, opts.AToB, opts.MaxWriteB)
	<-done
	_ = a.Close()
	_ = b.Close()
	return st, errors.Join(quiet(errAB), quiet(errBA))
}

// Go is Relay without the waiting: it starts both directions in two new
// goroutines and returns at once. done, if not nil, is called exactly once,
// by the last of them, after both connections are closed, with what Relay
// would return. A caller whose own goroutine has grown a deep stack (dialing,
// handshakes) hands the long, mostly idle life of a connection to two small
// fresh goroutines this way.
func Go(a, b net.Conn, opts Options, done func(Stats, error)) {
	r := &async{a: a, b: b, done: done}
	r.pending.Store(2)
	if opts.IdleTimeout > 0 {
		r.idle = newIdleTimer(opts.IdleTimeout, func() { _ = a.Close(); _ = b.Close() })
	}
	go func() {
		r.st.AToB, r.errAB = copyHalf(b, a, r.idle, opts.AToB, opts.MaxWriteB)
		r.finish()
	}()
	go func() {
		r.st.BToA, r.errBA = copyHalf(a, b, r.idle, opts.BToA, opts.MaxWriteA)
		r.finish()
	}()
}

type async struct {
	a, b         net.Conn
	idle         *idleTimer
	done         func(Stats, error)
	pending      atomic.Int32
	st           Stats // each field written by one goroutine before finish
	errAB, errBA error
}

func (r *async) finish() {
	if r.pending.Add(-1) != 0 {
		return
	}
	if r.idle != nil {
		r.idle.stop()
	}
	_ = r.a.Close()
	_ = r.b.Close()
	if r.done != nil {
		r.done(r.st, errors.Join(quiet(r.errAB), quiet(r.errBA)))
	}
}

// copyHalf copies src to dst, in writes of at most maxWrite bytes if it is
// positive, and then half-closes dst (or closes both on error, which
// unblocks the other direction).
//
// A dst whose peer went away (EPIPE, ECONNRESET on a write) ends this
// direction only, with src left open and unread: that peer may have sent
// bytes the other direction has yet to copy, such as a server's answer to a
// request it did not read to the end (an HTTP 413) before it closed.
func copyHalf(dst, src net.Conn, idle *idleTimer, counter *atomic.Int64, maxWrite int) (int64, error) {
	n, err := copyCounted(dst, src, idle, counter, maxWrite)
	if we, ok := err.(writeError); ok {
		if errors.Is(we.err, syscall.EPIPE) || errors.Is(we.err, syscall.ECONNRESET) {
			return n, nil
		}
		err = we.err
	}
	if err != nil {
		if errors.Is(err, syscall.ECONNRESET) {
			// src's peer reset the connection: reset dst's too, as a
			// direct connection would have, rather than end it with a FIN
			// that reads as a clean EOF.
			Abort(dst)
		}
		_ = src.Close()
		_ = dst.Close()
		return n, err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if cerr := cw.CloseWrite(); cerr == nil {
			return n, nil
		}
	}
	_ = dst.Close()
	return n, nil
}

// Abort closes c with a reset (SO_LINGER 0) where c supports it (a method
// SetLinger(sec int) error, as *net.TCPConn has), else plainly.
func Abort(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		_ = l.SetLinger(0)
	}
	_ = c.Close()
}

// Copy copies from src to dst until EOF with a pooled buffer that grows with
// traffic, calling progress (if not nil) after every write. It returns the
// bytes written and the first error other than EOF.
func Copy(dst io.Writer, src io.Reader, progress func()) (int64, error) {
	var it *idleTimer
	if progress != nil {
		it = &idleTimer{progress: progress}
	}
	n, err := copyCounted(dst, src, it, nil, 0)
	if we, ok := err.(writeError); ok {
		err = we.err
	}
	return n, err
}

// writeError marks an error of copyCounted's writes (not its reads).
type writeError struct{ err error }

func (e writeError) Error() string { return e.err.Error() }
func (e writeError) Unwrap() error { return e.err }

func copyCounted(dst io.Writer, src io.Reader, idle *idleTimer, counter *atomic.Int64, maxWrite int) (int64, error) {
	var (
		written  int64
		class    int
		full     int
		bp       *[]byte // nil while parked (waiting for readability)
		drained  = true  // the last read did not fill the buffer
		waitRead func() error
	)
	if sc, ok := src.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			waitRead = newWaiter(rc)
		}
	}
	// Plain sockets are read and written with raw system calls (package
	// rawio: no scheduler bookkeeping per call).
	read, write := src.Read, dst.Write
	if rc := rawio.Of(src); rc != nil {
		read = func(b []byte) (int, error) {
			n, err := rawio.ReadRaw(rc, b)
			switch {
			case err != nil:
				return 0, rawio.Cause("read", err)
			case n == 0:
				return 0, io.EOF
			}
			return n, nil
		}
	}
	if rc := rawio.Of(dst); rc != nil {
		write = func(b []byte) (int, error) {
			n, err := rawio.WriteRaw(rc, b)
			if err != nil {
				err = rawio.Cause("write", err)
			}
			return n, err
		}
	}
	defer func() {
		if bp != nil {
			pools[class].Put(bp)
		}
	}()
	for {
		if drained && waitRead != nil {
			// Park without a buffer until there is something to read.
			if bp != nil {
				pools[class].Put(bp)
				bp = nil
			}
			if err := waitRead(); err != nil {
				if errors.Is(err, io.EOF) {
					return written, nil
				}
				return written, err
			}
		}
		if bp == nil {
			bp = pools[class].Get().(*[]byte)
		}
		buf := *bp
		if maxWrite > 0 && maxWrite < len(buf) {
			buf = buf[:maxWrite]
		}
		nr, rerr := read(buf)
		drained = nr < len(buf)
		if nr > 0 {
			nw, werr := write(buf[:nr])
			written += int64(nw)
			if counter != nil {
				counter.Add(int64(nw))
			}
			idle.touch()
			if werr != nil {
				return written, writeError{werr}
			}
			if nw != nr {
				return written, writeError{io.ErrShortWrite}
			}
			if !drained {
				full++
				if full >= promoteAfter && class < len(sizes)-1 {
					pools[class].Put(bp)
					class++
					full = 0
					bp = pools[class].Get().(*[]byte)
				}
			} else {
				full = 0
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return written, nil
			}
			return written, rerr
		}
	}
}

func quiet(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) {
		return nil
	}
	return err
}

type idleTimer struct {
	d        time.Duration
	t        *time.Timer
	last     atomic.Int64 // unix nanoseconds of the last progress
	fired    func()
	progress func() // for Copy's callers
}

func newIdleTimer(d time.Duration, fire func()) *idleTimer {
	it := &idleTimer{d: d, fired: fire}
	it.last.Store(time.Now().UnixNano())
	it.t = time.AfterFunc(d, it.check)
	return it
}

// check runs when the timer expires: fire if nothing moved, else re-arm.
func (it *idleTimer) check() {
	since := time.Duration(time.Now().UnixNano() - it.last.Load())
	if since >= it.d {
		it.fired()
		return
	}
	it.t.Reset(it.d - since)
}

func (it *idleTimer) touch() {
	if it == nil {
		return
	}
	if it.progress != nil {
		it.progress()
		return
	}
	it.last.Store(time.Now().UnixNano())
}

func (it *idleTimer) stop() { it.t.Stop() }
