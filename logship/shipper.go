package logship

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Config.
const (
	DefaultBufferSize   = 1 << 20
	DefaultWriteTimeout = 10 * time.Second
	DefaultMaxBackoff   = 5 * time.Second
	// maxWrite is the largest write on the stream (the Nitro hypervisor's
	// VSOCK limit; ARCHITECTURE.md).
	maxWrite = 32 << 10
	// NoticeStream is the stream of the Shipper's own notices (lines
	// dropped).
	NoticeStream = "logship"
)

// Config configures a Shipper.
type Config struct {
	// Dial opens a stream to the host's receiver (quench-host
	// -enclave-logs), e.g. VSOCK CID 3 port 1025. Required.
	Dial func(ctx context.Context) (net.Conn, error)
	// BufferSize is how many bytes of lines (encoded, 3 bytes and the
	// stream name over each line) are held while the host is away or
	// slow. Past it new lines are dropped, never blocking the writer, and
	// a notice on stream "logship" says how many once there is room.
	// Default DefaultBufferSize (1 MiB).
	BufferSize int
	// WriteTimeout ends a stream on which the host took nothing for this
	// long; the Shipper dials again and sends the lines of the unfinished
	// write again (the host may see some twice). Default 10 s.
	WriteTimeout time.Duration
	// MaxBackoff is the longest wait between dials while the host does not
	// answer (from 100 ms, doubling). Default 5 s.
	MaxBackoff time.Duration
	// Logger gets the Shipper's own news: the host lost and found again,
	// once each. It may write into this Shipper. Default: none.
	Logger *slog.Logger
}

// Stats are a Shipper's counters.
type Stats struct {
	Connected bool   // a stream to the host is open
	Lines     uint64 // lines (records) accepted for sending
	Dropped   uint64 // lines dropped: the buffer was full, or the Shipper closed
	Sent      uint64 // bytes written to the host, resent ones included
	Pending   int    // bytes of records the host has not acknowledged
}

// A Shipper sends lines written to its Writers to the host, in the
// background. Writes never block on the host and never fail: while the
// host is away or slow, lines wait in a bounded buffer, and past it they
// are dropped and counted. It reconnects with backoff whenever the stream
// ends.
type Shipper struct {
	cfg Config

	mu           sync.Mutex
	buf          []byte // records the host has not acknowledged
	base         []byte // the array buf lives in, from its start (len 0)
	written      int    // bytes of buf written on the open stream
	dropped      uint64 // lines dropped since the last notice
	droppedBytes uint64
	closing      bool
	writers      []*lineWriter
	conn         net.Conn // the open stream, for Close to interrupt

	wake      chan struct{}
	stop      context.Context // cancelled: give up at once
	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error

	lines, droppedTotal, sent atomic.Uint64
	connected                 atomic.Bool
}

// New starts a Shipper; it dials the host in the background.
func New(cfg Config) (*Shipper, error) {
	if cfg.Dial == nil {
		return nil, errors.New("logship: Config.Dial is required")
	}
	if cfg.BufferSize < 0 || cfg.WriteTimeout < 0 || cfg.MaxBackoff < 0 {
		return nil, errors.New("logship: negative BufferSize, WriteTimeout or MaxBackoff")
	}
	if cfg.BufferSize == 0 {
		cfg.BufferSize = DefaultBufferSize
	}
	if cfg.BufferSize < maxRecord {
		return nil, fmt.Errorf("logship: BufferSize %d holds no longest line (at least %d)", cfg.BufferSize, maxRecord)
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Shipper{cfg: cfg, wake: make(chan struct{}, 1), done: make(chan struct{})}
	s.base = make([]byte, 0, min(cfg.BufferSize, 64<<10))
	s.buf = s.base
	s.stop, s.cancel = context.WithCancel(context.Background())
	go s.run()
	return s, nil
}

// Writer returns a writer of lines on stream (1 to MaxStream ASCII
// letters, digits, '.', '_', '-'; quench-enclave uses "quench", "stdout"
// and "stderr"). Each line, up to its newline, becomes a record; a line
// longer than MaxLine is sent in pieces; a final '\r' is dropped. Writes
// never block on the host and never fail. Safe for concurrent use; use one
// Writer per source, so that partial lines of two sources do not mix.
func (s *Shipper) Writer(stream string) (io.Writer, error) {
	if !validStream(stream) {
		return nil, fmt.Errorf("logship: bad stream name %q (want 1 to %d ASCII letters, digits, '.', '_', '-')", stream, MaxStream)
	}
	w := &lineWriter{s: s, stream: stream}
	s.mu.Lock()
	s.writers = append(s.writers, w)
	s.mu.Unlock()
	return w, nil
}

// Stats returns the counters.
func (s *Shipper) Stats() Stats {
	s.mu.Lock()
	pending := len(s.buf)
	s.mu.Unlock()
	return Stats{
		Connected: s.connected.Load(),
		Lines:     s.lines.Load(),
		Dropped:   s.droppedTotal.Load(),
		Sent:      s.sent.Load(),
		Pending:   pending,
	}
}

// Close sends the partial lines of every Writer and what is buffered, until
// ctx is done, then closes the stream. Lines written after Close are
// dropped. It returns an error saying how much was not delivered, if any.
// Later calls return the first's result.
func (s *Shipper) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		writers := s.writers
		s.mu.Unlock()
		for _, w := range writers {
			w.flush()
		}
		s.mu.Lock()
		s.noticeLocked(0)
		s.closing = true
		s.mu.Unlock()
		s.poke()
		select {
		case <-s.done:
		case <-ctx.Done():
		}
		s.cancel()
		s.mu.Lock()
		if s.conn != nil {
			_ = s.conn.Close() // interrupts a write the host does not take
		}
		s.mu.Unlock()
		<-s.done
		s.mu.Lock()
		left := len(s.buf)
		s.mu.Unlock()
		if left > 0 {
			s.closeErr = fmt.Errorf("logship: %d bytes of log lines not delivered: %w", left, context.Cause(ctx))
		}
	})
	return s.closeErr
}

func (s *Shipper) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// enqueue adds one record (line at most MaxLine bytes), or drops it.
func (s *Shipper) enqueue(stream string, line []byte) {
	size := 3 + len(stream) + len(line)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		s.droppedTotal.Add(1)
		return
	}
	if !s.noticeLocked(size) || len(s.buf)+size > s.cfg.BufferSize {
		s.dropped++
		s.droppedBytes += uint64(len(line))
		s.mu.Unlock()
		s.droppedTotal.Add(1)
		return
	}
	s.roomLocked(3 + len(stream) + len(line))
	s.buf = appendRecord(s.buf, stream, line)
	s.mu.Unlock()
	s.lines.Add(1)
	s.poke()
}

// noticeLocked appends the notice of the lines dropped since the last one,
// if any, when it fits with room for extra bytes more; it reports whether
// no notice is left pending. Called with s.mu held: by enqueue before a
// line, by readAcks when the host made room, and by Close, so that the
// notice does not wait for a line that may never come.
func (s *Shipper) noticeLocked(extra int) bool {
	if s.dropped == 0 {
		return true
	}
	notice := fmt.Appendf(nil, "%d lines (%d bytes) dropped: the host did not take them in time", s.dropped, s.droppedBytes)
	if len(s.buf)+3+len(NoticeStream)+len(notice)+extra > s.cfg.BufferSize {
		return false
	}
	s.roomLocked(3 + len(NoticeStream) + len(notice))
	s.buf = appendRecord(s.buf, NoticeStream, notice)
	s.dropped, s.droppedBytes = 0, 0
	s.lines.Add(1)
	return true
}

// roomLocked makes room for size more bytes at the end of s.buf (the
// caller checked BufferSize): it moves the unacknowledged records to the
// front of their array when acknowledgements freed enough there, and grows
// a new array (twice as large, at most BufferSize) only when the records
// do not fit in this one. The sender copies from s.buf under s.mu, and
// its offset (written) is from s.buf's start, which a move keeps.
func (s *Shipper) roomLocked(size int) {
	need := len(s.buf) + size
	if need <= cap(s.buf) {
		return
	}
	if need <= cap(s.base) {
		s.buf = s.base[:copy(s.base[:cap(s.base)], s.buf)]
		return
	}
	nb := make([]byte, len(s.buf), max(need, min(2*cap(s.base), s.cfg.BufferSize)))
	copy(nb, s.buf)
	s.buf, s.base = nb, nb[:0]
}

// run is the sender: it dials when no stream is open, writes what the
// host has not yet taken, and, on a new stream, starts again from the
// first record the host has not acknowledged.
func (s *Shipper) run() {
	defer close(s.done)
	defer s.connected.Store(false)
	backoff := time.Duration(0)
	lost := false // the host was lost and not found again (logged once)
	scratch := make([]byte, maxWrite)
	var conn net.Conn
	var acks chan error   // the ack reader's end, for conn
	var took *atomic.Bool // the host acknowledged something on conn
	defer func() {
		if conn != nil {
			s.drop(conn)
		}
	}()
	for {
		if conn == nil {
			if !s.waitFor(func() bool { return len(s.buf) > 0 }) {
				return
			}
			c, err := s.dial()
			if err != nil {
				if s.stop.Err() != nil {
					return
				}
				if !lost {
					lost = true
					s.cfg.Logger.Warn("log host unreachable; lines are kept and sent when it answers", "err", err, "buffer_bytes", s.cfg.BufferSize)
				}
				backoff = min(max(2*backoff, 100*time.Millisecond), s.cfg.MaxBackoff)
				select {
				case <-time.After(backoff):
				case <-s.stop.Done():
					return
				}
				continue
			}
			// backoff is reset only once the host takes something: a host
			// that accepts and closes each stream at once (quench-host at
			// its limit) is dialled no faster than one that refuses.
			conn = c
			acks, took = make(chan error, 1), new(atomic.Bool)
			go func(took *atomic.Bool) { acks <- s.readAcks(c, took) }(took)
			s.connected.Store(true)
		}
		if lost && took != nil && took.Load() {
			// Not at the dial: a host that closes every stream at
			// once would be "reached again" at each.
			lost = false
			s.cfg.Logger.Info("log host reached again")
		}
		// Write what is unwritten, or wait for more, an ack or the end.
		var n int
		ok := s.waitFor(func() bool {
			if s.written < len(s.buf) {
				n = copy(scratch, s.buf[s.written:])
				s.written += n
				return true
			}
			return false
		}, acks)
		var err error
		if ok {
			_ = conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
			var w int
			w, err = conn.Write(scratch[:n])
			s.sent.Add(uint64(w))
		} else if s.stop.Err() == nil && s.closingDone() {
			return
		} else {
			select {
			case err = <-acks:
			default:
				err = s.stop.Err()
			}
			if err == nil {
				err = io.EOF
			}
		}
		if err != nil {
			s.drop(conn)
			if ok {
				<-acks
			}
			conn = nil
			s.connected.Store(false)
			s.mu.Lock()
			s.written = 0 // everything unacknowledged again, on the next stream
			s.mu.Unlock()
			if s.stop.Err() != nil {
				return
			}
			if !lost {
				lost = true
				s.cfg.Logger.Warn("log stream to the host ended; dialling again", "err", err)
			}
			if took.Load() {
				backoff = 0
				continue
			}
			backoff = min(max(2*backoff, 100*time.Millisecond), s.cfg.MaxBackoff)
			select {
			case <-time.After(backoff):
			case <-s.stop.Done():
				return
			}
		}
	}
}

// waitFor waits until ready (called under s.mu) reports true, and returns
// true; or returns false when the Shipper stops, when it is closing with
// nothing left to acknowledge, or when a receive on end is possible
// (without taking it).
func (s *Shipper) waitFor(ready func() bool, end ...chan error) bool {
	for {
		s.mu.Lock()
		if ready() {
			s.mu.Unlock()
			return true
		}
		done := s.closing && len(s.buf) == 0
		s.mu.Unlock()
		if done {
			return false
		}
		var e chan error
		if len(end) > 0 {
			e = end[0]
		}
		select {
		case <-s.wake:
		case <-s.stop.Done():
			return false
		case err := <-e:
			e <- err // put it back for the caller
			return false
		}
	}
}

// closingDone reports whether Close is waiting and everything was
// acknowledged.
func (s *Shipper) closingDone() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing && len(s.buf) == 0
}

// dial opens a stream and writes the header.
func (s *Shipper) dial() (net.Conn, error) {
	c, err := s.cfg.Dial(s.stop)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if err := s.stop.Err(); err != nil {
		s.mu.Unlock()
		_ = c.Close()
		return nil, err
	}
	s.conn, s.written = c, 0
	s.mu.Unlock()
	_ = c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	if _, err := io.WriteString(c, Header); err != nil {
		s.drop(c)
		return nil, err
	}
	return c, nil
}

// readAcks reads the host's acknowledgements on c and forgets the records
// they cover, until c fails; took is set once they cover a record.
func (s *Shipper) readAcks(c net.Conn, took *atomic.Bool) error {
	var b [8]byte
	var acked uint64
	for {
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return fmt.Errorf("reading acknowledgements: %w", err)
		}
		a := binary.LittleEndian.Uint64(b[:])
		s.mu.Lock()
		if sent := acked + uint64(s.written); a < acked || a > sent {
			s.mu.Unlock()
			return fmt.Errorf("the host acknowledged %d bytes, %d were sent", a, sent)
		}
		n := int(a - acked)
		if !recordsEnd(s.buf, n) {
			s.mu.Unlock()
			return fmt.Errorf("the host acknowledged %d bytes, inside a record", a)
		}
		s.buf, s.written = s.buf[n:], s.written-n
		if len(s.buf) == 0 {
			s.buf = s.base // start again at the front of the array
		}
		s.noticeLocked(0)
		s.mu.Unlock()
		if a > acked {
			took.Store(true)
		}
		acked = a
		s.poke() // Close may be waiting for the last ack
	}
}

// recordsEnd reports whether the first n bytes of buf, which holds whole
// records, are whole records: forgetting part of one would put the rest
// at the head of every later stream.
func recordsEnd(buf []byte, n int) bool {
	off := 0
	for off < n {
		name := int(buf[off])
		off += 1 + name + 2 + int(binary.LittleEndian.Uint16(buf[off+1+name:]))
	}
	return off == n
}

// drop closes c and forgets it.
func (s *Shipper) drop(c net.Conn) {
	s.mu.Lock()
	if s.conn == c {
		s.conn = nil
	}
	s.mu.Unlock()
	_ = c.Close()
}

// lineWriter is a Writer of one stream.
type lineWriter struct {
	s      *Shipper
	stream string
	mu     sync.Mutex
	part   []byte // the line so far, without its newline
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
			if len(chunk) > 0 {
				chunk = bytes.TrimSuffix(chunk, []byte("\r"))
			} else {
				w.part = bytes.TrimSuffix(w.part, []byte("\r"))
			}
		}
		// w.part never holds more than MaxLine: a longer line goes in
		// pieces, and a line of exactly MaxLine waits for its newline
		// (or flush), so that it is one record however it was written.
		for len(w.part)+len(chunk) > MaxLine {
			if len(w.part) == 0 {
				w.s.enqueue(w.stream, chunk[:MaxLine])
				chunk = chunk[MaxLine:]
				continue
			}
			room := MaxLine - len(w.part)
			w.part = append(w.part, chunk[:room]...)
			chunk = chunk[room:]
			w.s.enqueue(w.stream, w.part)
			w.part = w.part[:0]
		}
		if i < 0 {
			w.part = append(w.part, chunk...)
			break
		}
		if len(w.part) > 0 {
			w.part = append(w.part, chunk...)
			chunk = w.part
		}
		w.s.enqueue(w.stream, chunk)
		w.part = w.part[:0]
		p = p[i+1:]
	}
	return n, nil
}

// flush sends the partial line, if any.
func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.part) > 0 {
		w.s.enqueue(w.stream, w.part)
		w.part = w.part[:0]
	}
}
