package tap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
)

// Pump moves frames between a Device and successive Conns. The device
// outlives the Conns: when the stream drops (say, the host daemon restarts)
// the caller dials again and calls Run with the new Conn, and the device,
// with its addresses and routes, stays as it is.
//
// One goroutine, started by the first Run and stopped by Close, reads the
// device and writes each batch to the Conn attached at that moment, in as
// few writes as Conn.WriteFrames needs. Run itself moves frames from the
// Conn to the device. While no Conn is attached, frames the device produces
// are dropped and counted, as if the cable were unplugged.
type Pump struct {
	dev    Device
	logger *slog.Logger

	mu         sync.Mutex
	att        *attachment   // Conn of the Run in progress, or nil; guarded by mu
	started    bool          // device reader started; guarded by mu
	closed     bool          // Close called; guarded by mu
	devErr     error         // why the device reader stopped; guarded by mu
	readerDone chan struct{} // closed when the device reader returns; set with started

	frames [][]byte // Run's batch of frames; used only by the Run in progress

	toConn       atomic.Uint64
	toDevice     atomic.Uint64
	dropped      atomic.Uint64
	devWriteErrs atomic.Uint64

	closeOnce sync.Once
	closeErr  error
}

// PumpStats is a snapshot of a Pump's counters.
type PumpStats struct {
	ToConn            uint64 // frames read from the device and written to a Conn
	ToDevice          uint64 // frames read from a Conn and written to the device
	Dropped           uint64 // device frames dropped: no Conn attached, invalid length, or the Conn failed
	DeviceWriteErrors uint64 // batches the device refused to write (frames dropped, Run carried on)
}

// attachment is one Run's Conn, as the device reader sees it.
type attachment struct {
	c *Conn
	// inflight counts the device reader's WriteFrames calls on c; Run
	// waits for them after detaching. Add happens under Pump.mu while the
	// attachment is current.
	inflight sync.WaitGroup
	once     sync.Once
	err      error // first failure; written in once
}

// fail records the first reason the Run ends and closes the Conn, which
// unblocks both directions.
func (a *attachment) fail(err error) {
	a.once.Do(func() {
		a.err = err
		_ = a.c.Close()
	})
}

// errPumpClosed is returned by Run after Close.
var errPumpClosed = fmt.Errorf("tap: pump closed: %w", net.ErrClosed)

// NewPump returns a Pump between dev and the Conns later given to Run. A
// nil logger discards. The Pump takes ownership of dev: the caller must
// call Close, which closes dev.
func NewPump(dev Device, logger *slog.Logger) *Pump {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Pump{dev: dev, logger: logger}
}

// Attached reports whether a Run is in progress with its Conn attached:
// from then on, frames from the device go to that Conn rather than being
// dropped.
func (p *Pump) Attached() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.att != nil
}

// DeviceErr returns why the device reader stopped, or nil while the device
// works (or before the first Run). Once it is not nil, every Run fails at
// once with it: the Pump is of no further use.
func (p *Pump) DeviceErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.devErr
}

// Stats returns a snapshot of the Pump's counters.
func (p *Pump) Stats() PumpStats {
	return PumpStats{
		ToConn:            p.toConn.Load(),
		ToDevice:          p.toDevice.Load(),
		Dropped:           p.dropped.Load(),
		DeviceWriteErrors: p.devWriteErrs.Load(),
	}
}

// Run pumps frames between the device and c until c fails, the device
// fails, or ctx is done, and returns why: io.EOF if the peer closed the
// stream (a write error such as EPIPE may win the race instead while
// frames are being sent), ctx.Err(), a decode error from c, ErrStalled if
// the peer stalled the stream (Config.StallTimeout), or an I/O error of c
// or the device. It closes c before returning and leaves the device
// open. The handshake must already be done.
//
// Only one Run may be in progress at a time; a concurrent call closes its
// Conn and returns an error at once. After Close, or once the device has
// failed, Run closes c and returns the device's error.
func (p *Pump) Run(ctx context.Context, c *Conn) error {
	if c == nil {
		return errors.New("tap: Run with nil Conn")
	}
	p.mu.Lock()
	var err error
	switch {
	case p.closed:
		err = errPumpClosed
	case p.devErr != nil:
		err = p.devErr
	case p.att != nil:
		err = errors.New("tap: Pump.Run already in progress")
	}
	if err != nil {
		p.mu.Unlock()
		_ = c.Close()
		return err
	}
	a := &attachment{c: c}
	p.att = a
	if !p.started {
		p.started = true
		p.readerDone = make(chan struct{})
		go p.readDevice(p.readerDone)
	}
	if p.frames == nil {
		p.frames = make([][]byte, max(1, p.dev.BatchSize()))
	}
	frames := p.frames
	p.mu.Unlock()

	stop := context.AfterFunc(ctx, func() { a.fail(ctx.Err()) })
	p.connToDevice(a, frames)
	stop()

	p.mu.Lock()
	p.att = nil
	p.mu.Unlock()
	a.inflight.Wait()
	clear(frames) // drop references into c's buffer
	return a.err
}

// connToDevice copies frames from a.c to the device until either fails.
func (p *Pump) connToDevice(a *attachment, frames [][]byte) {
	warned := false
	for {
		n, err := a.c.NextBatch(frames)
		if err != nil {
			a.fail(err)
			return
		}
		if _, err := p.dev.Write(frames[:n], 0); err != nil {
			if isClosed(err) {
				a.fail(fmt.Errorf("tap: device write: %w", err))
				return
			}
			// A frame the device refuses (or a link that is down)
			// ends nothing: count it and carry on.
			p.devWriteErrs.Add(1)
			if !warned {
				warned = true
				p.logger.Warn("tap: device write failed; dropping frames", "device", p.dev.Name(), "err", err)
			}
			continue
		}
		p.toDevice.Add(uint64(n))
	}
}

// readDevice is the device reader goroutine: it reads batches from the
// device and writes each to the attached Conn, until the device fails or
// is closed.
func (p *Pump) readDevice(done chan struct{}) {
	defer close(done)
	batch := max(1, p.dev.BatchSize())
	size := p.dev.MTU() + EthernetHeaderSize
	backing := make([]byte, batch*size)
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = backing[i*size : (i+1)*size : (i+1)*size]
	}
	sizes := make([]int, batch)
	frames := make([][]byte, batch)
	for {
		n, err := p.dev.Read(bufs, sizes, 0)
		if n > 0 {
			for i := range n {
				frames[i] = bufs[i][:sizes[i]]
			}
			p.deliver(frames[:n])
		}
		if err != nil {
			err = fmt.Errorf("tap: device read: %w", err)
			p.mu.Lock()
			p.devErr = err
			a := p.att
			p.mu.Unlock()
			if a != nil {
				a.fail(err)
			}
			p.logger.Debug("tap: device reader stopped", "device", p.dev.Name(), "err", err)
			return
		}
	}
}

// deliver writes frames to the attached Conn, or drops them if there is
// none.
func (p *Pump) deliver(frames [][]byte) {
	p.mu.Lock()
	a := p.att
	if a != nil {
		a.inflight.Add(1)
	}
	p.mu.Unlock()
	if a == nil {
		p.dropped.Add(uint64(len(frames)))
		return
	}
	defer a.inflight.Done()
	for len(frames) > 0 {
		k, err := a.c.WriteFrames(frames, 0)
		p.toConn.Add(uint64(k))
		if err == nil {
			return
		}
		if errors.Is(err, ErrZeroLengthFrame) || errors.Is(err, ErrFrameTooLarge) {
			// Frame k is invalid and was not written; the Conn is fine.
			p.dropped.Add(1)
			frames = frames[k+1:]
			continue
		}
		p.dropped.Add(uint64(len(frames) - k))
		a.fail(err)
		return
	}
}

// isClosed reports whether err means the device was closed.
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed)
}

// Close closes the device, which stops the device reader goroutine, and
// waits for it. A Run in progress returns soon after with an error. Close
// returns the device's Close error.
func (p *Pump) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		started, done, a := p.started, p.readerDone, p.att
		p.mu.Unlock()
		if a != nil {
			a.fail(errPumpClosed)
		}
		p.closeErr = p.dev.Close()
		if started {
			<-done
		}
	})
	return p.closeErr
}
