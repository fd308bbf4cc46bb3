// Package relay copies bytes both ways between two connections with pooled
// buffers that grow with traffic, and propagates half-closes.
//
// Idle connections hold no buffer at all: a buffer is taken from a pool only
// for the duration of one Read/Write round, and a direction that keeps moving
// full buffers steps up to larger ones (4 KiB → 64 KiB → 256 KiB). Ten thousand
// idle relayed connections therefore cost only their goroutines.
package relay

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Buffer size classes. A copy loop starts at the smallest and moves up one
// class after promoteAfter consecutive reads that fill the buffer.
var sizes = [...]int{4 << 10, 64 << 10, 256 << 10}

const promoteAfter = 4

var pools = func() (p [len(sizes)]sync.Pool) {
	for i, n := range sizes {
		n := n
		p[i].New = func() any { b := make([]byte, n); return &b }
	}
	return p
}()

// Stats reports what one Relay moved.
type Stats struct {
	AToB, BToA int64 // bytes copied in each direction
}

// Options tune a Relay. The zero value is usable.
type Options struct {
	// IdleTimeout closes both connections when neither direction has moved
	// a byte for this long. Zero means no idle timeout.
	IdleTimeout time.Duration
}

// Relay copies a→b and b→a until both directions have finished, then closes
// both connections. When one side finishes sending (EOF), the write half of
// the other side is closed if it supports CloseWrite, so half-closed
// protocols keep working; otherwise both are closed. It returns the first
// error other than EOF or use of a closed connection.
func Relay(a, b net.Conn, opts Options) (Stats, error) {
	var (
		st    Stats
		wg    sync.WaitGroup
		errAB error
		errBA error
	)
	var idle *idleTimer
	if opts.IdleTimeout > 0 {
		idle = newIdleTimer(opts.IdleTimeout, func() { _ = a.Close(); _ = b.Close() })
		defer idle.stop()
	}
	wg.Add(2)
	go func() { defer wg.Done(); st.AToB, errAB = copyHalf(b, a, idle) }()
	go func() { defer wg.Done(); st.BToA, errBA = copyHalf(a, b, idle) }()
	wg.Wait()
	_ = a.Close()
	_ = b.Close()
	return st, errors.Join(quiet(errAB), quiet(errBA))
}

// copyHalf copies src to dst and then half-closes dst (or closes both on
// error, which unblocks the other direction).
func copyHalf(dst, src net.Conn, idle *idleTimer) (int64, error) {
	var progress func()
	if idle != nil {
		progress = idle.touch
	}
	n, err := Copy(dst, src, progress)
	if err != nil {
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

// Copy copies from src to dst until EOF with a pooled buffer that grows with
// traffic, calling progress (if not nil) after every write. It returns the
// bytes written and the first error other than EOF.
func Copy(dst io.Writer, src io.Reader, progress func()) (int64, error) {
	var written int64
	class, full := 0, 0
	bp := pools[class].Get().(*[]byte)
	defer func() { pools[class].Put(bp) }()
	for {
		buf := *bp
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			written += int64(nw)
			if progress != nil {
				progress()
			}
			if werr != nil {
				return written, werr
			}
			if nw != nr {
				return written, io.ErrShortWrite
			}
			if nr == len(buf) {
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
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

type idleTimer struct {
	d     time.Duration
	t     *time.Timer
	last  atomic.Int64 // unix nanoseconds of the last progress
	fired func()
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
	it.last.Store(time.Now().UnixNano())
}

func (it *idleTimer) stop() { it.t.Stop() }
