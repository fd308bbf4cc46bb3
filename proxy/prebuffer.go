package proxy

import (
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// prebufferWait is how long an HTTP/2 request body of unknown length is
// waited for before the request goes to an HTTP/1.1 upstream: a body that
// ends within it, and within one buffer (Config.BufferSize), goes with a
// Content-Length, the rest chunked.
//
// An HTTP/2 client that sends no content-length did not choose chunked
// coding, but an HTTP/1.1 app that reads only Content-Length (Python's
// http.server, many small servers) takes a chunked body for an empty one
// and answers for it. nginx buffers every body for this
// (proxy_request_buffering); a bound of one buffer and a short wait keeps
// full-duplex streams working: a client that waits for the response before
// it sends more delays the head by this much, once.
const prebufferWait = 50 * time.Millisecond

// prebuffered is a request body read ahead, by a goroutine of its own,
// into one pooled buffer, until the buffer is full, the body ends or fails.
// Read returns the bytes read ahead as they arrive (it does not wait for
// the buffer to fill), then reads the body itself. Only fill writes into
// the buffer, beyond n; Read copies out below n: the two never touch the
// same bytes.
type prebuffered struct {
	p     *Proxy
	body  io.ReadCloser
	bp    *[]byte
	refs  atomic.Int32  // fill and the Read side; the last gives bp back
	ended chan struct{} // closed when fill has stopped

	mu   sync.Mutex
	cond sync.Cond
	n    int   // bytes read ahead (guarded by mu)
	off  int   // of those, bytes Read returned (guarded by mu)
	done bool  // fill stopped: the buffer full (err nil) or err (guarded by mu)
	err  error // guarded by mu

	// The Read side only (sendBody's goroutine, or the exchange's once
	// sendBody is over).
	direct   bool // the read-ahead is drained and the body goes on: read it
	released bool // the Read side gave up its reference
}

func newPrebuffered(p *Proxy, body io.ReadCloser) *prebuffered {
	b := &prebuffered{p: p, body: body, bp: p.getBuf(), ended: make(chan struct{})}
	b.cond.L = &b.mu
	b.refs.Store(2)
	go b.fill()
	return b
}

func (b *prebuffered) fill() {
	defer b.unref()
	defer close(b.ended)
	buf := *b.bp
	n := 0
	for {
		if n == len(buf) {
			b.mu.Lock()
			b.done = true
			b.cond.Broadcast()
			b.mu.Unlock()
			return
		}
		m, err := b.body.Read(buf[n:])
		n += m
		b.mu.Lock()
		b.n = n
		if err != nil {
			b.done, b.err = true, err
		}
		b.cond.Broadcast()
		b.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// wait waits for the read-ahead to stop, or d, and reports whether the
// whole body is in the buffer, and its length.
func (b *prebuffered) wait(d time.Duration) (complete bool, n int) {
	t := time.NewTimer(d)
	select {
	case <-b.ended:
	case <-t.C:
	}
	t.Stop()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.done && b.err == io.EOF, b.n
}

func (b *prebuffered) Read(p []byte) (int, error) {
	if b.direct {
		return b.body.Read(p)
	}
	b.mu.Lock()
	for b.off == b.n && !b.done {
		b.cond.Wait()
	}
	if b.off < b.n {
		k := copy(p, (*b.bp)[b.off:b.n])
		b.off += k
		b.mu.Unlock()
		return k, nil
	}
	err := b.err
	b.mu.Unlock()
	b.release()
	if err == nil {
		// The buffer filled: the rest comes straight from the body.
		b.direct = true
		return b.body.Read(p)
	}
	return 0, err
}

// Close gives up the Read side's reference (the request's body is closed
// by its server, as ever).
func (b *prebuffered) Close() error {
	b.release()
	return nil
}

func (b *prebuffered) release() {
	if !b.released {
		b.released = true
		b.unref()
	}
}

func (b *prebuffered) unref() {
	if b.refs.Add(-1) == 0 {
		b.p.putBuf(b.bp)
	}
}
