package tap

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quenchnet/quench/internal/rawio"
)

const (
	// LengthPrefixSize is the size of the little-endian length that precedes
	// every frame on the stream.
	LengthPrefixSize = 2

	// MaxFrameSize is the largest frame the 2-byte length prefix can carry.
	MaxFrameSize = 65535

	// EthernetHeaderSize is the size of an Ethernet II header without VLAN
	// tag: destination MAC, source MAC, EtherType.
	EthernetHeaderSize = 14

	// DefaultMTU is the default L3 MTU of the virtual link. A frame is at
	// most MTU+EthernetHeaderSize bytes, so 65520 is close to the largest
	// MTU the 2-byte prefix allows (65521). The link never reaches the
	// internet: the host terminates TCP, so a large MTU costs nothing
	// outside and saves most per-packet work inside.
	DefaultMTU = 65520

	// DefaultMaxWrite is the default upper bound of every Write to the
	// stream. On kernels since a vsock change of August 2025 the Nitro
	// hypervisor corrupts guest VSOCK writes larger than 32 KiB, so frames
	// are coalesced into writes of at most this size, and larger frames are
	// split across writes.
	DefaultMaxWrite = 32 << 10

	// DefaultReadBufferSize is the default size of a Conn's read buffer.
	DefaultReadBufferSize = 256 << 10

	// MaxHandshakeSize bounds the request line plus headers that
	// ServerHandshake accepts.
	MaxHandshakeSize = 4 << 10

	// DefaultStallTimeout is the default Config.StallTimeout: how long a
	// frame that has started arriving may take to complete, and a write to
	// the stream to go through, before the stream counts as stalled.
	DefaultStallTimeout = 30 * time.Second

	// IdealBatchSize is the number of frames a Device and the Pump move per
	// batch: enough to amortise a syscall over many frames, small enough to
	// keep the per-batch buffers modest. It plays the role of wireguard-go's
	// conn.IdealBatchSize.
	IdealBatchSize = 128

	// maxMTU is the largest MTU whose frames still fit the length prefix.
	maxMTU = MaxFrameSize - EthernetHeaderSize
	// minMTU is IPv4's minimum MTU (RFC 791).
	minMTU = 68
	// minMaxWrite is the smallest accepted Config.MaxWrite.
	minMaxWrite = 64
	// maxMaxWrite bounds Config.MaxWrite (the write buffer is allocated
	// once at this size).
	maxMaxWrite = 16 << 20
	// maxReadBufferSize bounds Config.ReadBufferSize.
	maxReadBufferSize = 64 << 20
)

// Errors returned by Conn. Decode errors are sticky: once Next or ReadFrames
// has returned one, every later call returns it again and the caller should
// close the Conn (the stream cannot be resynchronised). Errors returned by
// AppendFrame and WriteFrames for an invalid outbound frame are not sticky:
// nothing of that frame was written, and the caller may carry on.
var (
	// ErrFrameTooLarge means a frame is longer than allowed: on the read
	// side, longer than MTU+EthernetHeaderSize; on the write side, longer
	// than MaxFrameSize.
	ErrFrameTooLarge = errors.New("tap: frame too large")

	// ErrZeroLengthFrame means a frame has length zero. No Ethernet frame is
	// empty; on the read side it means a corrupt or hostile stream.
	ErrZeroLengthFrame = errors.New("tap: zero-length frame")

	// ErrStalled means the stream stalled (see Config.StallTimeout): a
	// frame that had started arriving did not complete in time, or a write
	// made no progress in time. Like a decode error it is sticky; the
	// caller should close the Conn.
	ErrStalled = errors.New("tap: stream stalled")

	// ErrBadHandshake means the peer's /connect request was malformed,
	// too long, not "POST /connect", or the stream ended inside it. The
	// caller should close the connection.
	ErrBadHandshake = errors.New("tap: bad handshake")
)

// clientHandshake is exactly what gvforwarder writes:
//
//	req, _ := http.NewRequest("POST", "/connect", nil)
//	req.Write(conn)
//
// (TestClientHandshakeMatchesGo keeps it in step with net/http.)
const clientHandshake = "POST /connect HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 0\r\n\r\n"

// ConnectPath is the HTTP path of the frame tunnel endpoint, as in
// gvisor-tap-vsock's types.ConnectPath.
const ConnectPath = "/connect"

// Config configures a Conn. The zero value is valid and means defaults.
type Config struct {
	// MTU is the L3 MTU of the link. Frames read from the stream that are
	// longer than MTU+EthernetHeaderSize are rejected with
	// ErrFrameTooLarge. Default DefaultMTU (65520); must be in [68, 65521].
	MTU int

	// MaxWrite bounds every Write to the stream: frames are coalesced into
	// writes of at most MaxWrite bytes, and a longer frame is split across
	// writes. Default DefaultMaxWrite (32 KiB, the Nitro VSOCK limit); must
	// be in [64, 16 MiB].
	MaxWrite int

	// ReadBufferSize is the size of the read buffer, allocated once. Every
	// read syscall asks for as much as fits. Default DefaultReadBufferSize
	// (256 KiB); must be at least MTU+EthernetHeaderSize+LengthPrefixSize
	// and at most 64 MiB.
	ReadBufferSize int

	// StallTimeout bounds how long the peer may leave the stream stuck in
	// the middle of something: a frame whose first bytes have arrived must
	// be complete within StallTimeout (Next, NextBatch and ReadFrames then
	// fail with ErrStalled), and each write to the stream (at most
	// MaxWrite bytes) must go through within StallTimeout (writes then
	// fail with ErrStalled). A stall is detected between StallTimeout and
	// 1.5 × StallTimeout after it began. An idle stream, with no partial
	// frame buffered and nothing to write, never times out. It works
	// through the stream's deadlines: while a partial frame is buffered,
	// Next sets the read deadline itself (and clears it once the buffer
	// holds no partial frame), and writes set the write deadline, so a
	// caller that sets its own deadlines on the stream while frames flow
	// should turn this off. Default DefaultStallTimeout (30 s); negative
	// means no limit.
	StallTimeout time.Duration
}

// withDefaults returns cfg with zero fields set to their defaults, or an
// error if a field is out of range.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.MTU < minMTU || cfg.MTU > maxMTU {
		return cfg, fmt.Errorf("tap: MTU %d out of range [%d, %d]", cfg.MTU, minMTU, maxMTU)
	}
	if cfg.MaxWrite == 0 {
		cfg.MaxWrite = DefaultMaxWrite
	}
	if cfg.MaxWrite < minMaxWrite || cfg.MaxWrite > maxMaxWrite {
		return cfg, fmt.Errorf("tap: MaxWrite %d out of range [%d, %d]", cfg.MaxWrite, minMaxWrite, maxMaxWrite)
	}
	if cfg.ReadBufferSize == 0 {
		cfg.ReadBufferSize = DefaultReadBufferSize
	}
	if cfg.StallTimeout == 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	minRead := cfg.MTU + EthernetHeaderSize + LengthPrefixSize
	if cfg.ReadBufferSize < minRead || cfg.ReadBufferSize > maxReadBufferSize {
		return cfg, fmt.Errorf("tap: ReadBufferSize %d out of range [%d, %d]", cfg.ReadBufferSize, minRead, maxReadBufferSize)
	}
	return cfg, nil
}

// Stats is a snapshot of a Conn's counters. Byte counts are frame bytes,
// without length prefixes or the handshake.
type Stats struct {
	FramesRead    uint64 // frames returned by Next, NextBatch and ReadFrames
	BytesRead     uint64 // bytes of those frames
	ReadCalls     uint64 // Read calls on the stream
	FramesWritten uint64 // frames accepted by AppendFrame and WriteFrames
	BytesWritten  uint64 // bytes of those frames
	WriteCalls    uint64 // Write calls on the stream
}

// Conn carries Ethernet frames over a stream (VSOCK, unix socket, TCP,
// net.Pipe) in gvisor-tap-vsock's format: after the handshake, every frame
// is preceded by its length as 2 bytes little endian.
//
// The read side (ServerHandshake, Next, NextBatch, ReadFrames, Buffered)
// must be used by one goroutine at a time. The write side is guarded by a
// lock; see LockWrite. Read and write sides may run concurrently.
type Conn struct {
	nc  net.Conn
	raw syscall.RawConn // nc's, when reads and writes may bypass it (rawio.Of); else nil
	cfg Config
	// maxFrame is cfg.MTU + EthernetHeaderSize: the longest frame accepted
	// from the stream.
	maxFrame int

	// Read side; owned by the reading goroutine.
	rbuf []byte // allocated once, cfg.ReadBufferSize
	r, w int    // rbuf[r:w] holds unconsumed bytes
	eof  bool   // the stream returned io.EOF
	rerr error  // sticky read or decode error; returned once rbuf is drained

	// Stall detection on the read side (Config.StallTimeout): the read
	// deadline is set (rarmed) while a partial frame is buffered.
	stall     time.Duration // cfg.StallTimeout; <= 0: off
	nframes   uint64        // frames consumed
	rarmed    bool          // the read deadline is set to rdeadline
	rframe    uint64        // nframes when the partial frame was first seen
	rdeadline time.Time     // the read deadline set while rarmed

	framesRead atomic.Uint64
	bytesRead  atomic.Uint64
	readCalls  atomic.Uint64

	_ [64]byte // keep the write side's hot fields off the read side's cache line

	// Write side.
	wmu  sync.Mutex
	wbuf []byte // allocated once, cfg.MaxWrite; guarded by wmu
	wn   int    // bytes pending in wbuf; guarded by wmu
	werr error  // sticky write error; guarded by wmu
	// wdeadline is the write deadline last set (Config.StallTimeout);
	// guarded by wmu.
	wdeadline time.Time

	framesWritten atomic.Uint64
	bytesWritten  atomic.Uint64
	writeCalls    atomic.Uint64
}

// NewConn returns a Conn that carries frames over c. It validates cfg and
// allocates the buffers; it does no I/O. The caller runs ClientHandshake or
// ServerHandshake next (or neither, for a stream without a handshake), and
// must call Close (which closes c) when done.
func NewConn(c net.Conn, cfg Config) (*Conn, error) {
	if c == nil {
		return nil, errors.New("tap: nil net.Conn")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Conn{
		nc:       c,
		raw:      rawio.Of(c),
		cfg:      cfg,
		maxFrame: cfg.MTU + EthernetHeaderSize,
		rbuf:     make([]byte, cfg.ReadBufferSize),
		wbuf:     make([]byte, cfg.MaxWrite),
		stall:    cfg.StallTimeout,
	}, nil
}

// Config returns the Conn's configuration with defaults filled in.
func (c *Conn) Config() Config { return c.cfg }

// NetConn returns the underlying stream.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Close closes the underlying stream. It unblocks a pending Next or write.
func (c *Conn) Close() error { return c.nc.Close() }

// Stats returns a snapshot of the Conn's counters. It is safe to call
// concurrently with everything else.
func (c *Conn) Stats() Stats {
	return Stats{
		FramesRead:    c.framesRead.Load(),
		BytesRead:     c.bytesRead.Load(),
		ReadCalls:     c.readCalls.Load(),
		FramesWritten: c.framesWritten.Load(),
		BytesWritten:  c.bytesWritten.Load(),
		WriteCalls:    c.writeCalls.Load(),
	}
}

// ClientHandshake performs the enclave (client) side of the handshake: it
// writes the same "POST /connect" HTTP/1.1 request as gvforwarder, in one
// write of its own. The server sends no reply; frames may follow at once.
//
// Stock gvproxy hands the connection to its switch after net/http has parsed
// the request, and drops whatever net/http buffered behind it. Against stock
// gvproxy, frames written in the same instant as the handshake can therefore
// be lost (quench-host's ServerHandshake keeps them).
func (c *Conn) ClientHandshake() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	if c.wn > 0 {
		return errors.New("tap: ClientHandshake after frames were appended")
	}
	c.armWrite()
	if _, err := io.WriteString(c.nc, clientHandshake); err != nil {
		if c.writeStalled(err) {
			err = fmt.Errorf("%w: the handshake did not go through in %v", ErrStalled, c.cfg.StallTimeout)
		}
		c.werr = fmt.Errorf("tap: write handshake: %w", err)
		return c.werr
	}
	c.writeCalls.Add(1)
	return nil
}

// ServerHandshake performs the host (server) side of the handshake: it reads
// the client's HTTP request through the Conn's own read buffer (so frames
// that arrive right behind it are kept for Next), and checks that it is a
// POST to /connect with an empty body, as gvforwarder and ClientHandshake
// send. The request line and headers may be at most MaxHandshakeSize bytes.
// No reply is written. Every failure wraps ErrBadHandshake; the caller
// should close the Conn.
func (c *Conn) ServerHandshake() error {
	if c.rerr != nil {
		return c.rerr
	}
	from := 0 // the search for the end of the head resumes here, relative to c.r
	for {
		if end := headerEnd(c.rbuf[c.r:c.w], from); end >= 0 {
			if end > MaxHandshakeSize {
				c.rerr = fmt.Errorf("%w: request headers longer than %d bytes", ErrBadHandshake, MaxHandshakeSize)
				c.r = c.w
				return c.rerr
			}
			hdr := c.rbuf[c.r : c.r+end]
			c.r += end
			if err := checkConnectRequest(hdr); err != nil {
				c.rerr = err
				c.r = c.w
				return err
			}
			return nil
		}
		if c.w-c.r > MaxHandshakeSize {
			c.rerr = fmt.Errorf("%w: request headers longer than %d bytes", ErrBadHandshake, MaxHandshakeSize)
			c.r = c.w
			return c.rerr
		}
		// Resume a few bytes back: the terminator may straddle reads.
		from = max(0, c.w-c.r-3)
		n, err := c.readMore()
		if n == 0 && err != nil {
			if errors.Is(err, io.EOF) {
				if c.w == c.r {
					err = io.EOF
				} else {
					err = io.ErrUnexpectedEOF
				}
			}
			err = fmt.Errorf("%w: %w", ErrBadHandshake, err)
			if !isTimeout(err) {
				c.rerr = err
				c.r = c.w
			}
			return err
		}
	}
}

// headerEnd returns the length of the HTTP head at the start of b, including
// the empty line that ends it ("\r\n\r\n" or a bare "\n\n", which net/http
// also accepts), or -1 if b holds no complete head. The search starts at
// from.
func headerEnd(b []byte, from int) int {
	for i := max(from, 0); i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		// b[i] ends a line; the head ends if the line is empty.
		if i+1 < len(b) && b[i+1] == '\n' {
			return i + 2
		}
		if i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n' {
			return i + 3
		}
	}
	return -1
}

// checkConnectRequest parses hdr (a complete HTTP request head) with
// net/http, as gvproxy does, and accepts only "POST /connect" without body.
func checkConnectRequest(hdr []byte) error {
	req, err := http.ReadRequest(bufio.NewReaderSize(bytes.NewReader(hdr), len(hdr)+16))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadHandshake, err)
	}
	switch {
	case req.ProtoMajor != 1:
		return fmt.Errorf("%w: protocol %q, want HTTP/1.x", ErrBadHandshake, req.Proto)
	case req.Method != http.MethodPost:
		return fmt.Errorf("%w: method %q, want POST", ErrBadHandshake, req.Method)
	case req.URL.Path != ConnectPath:
		return fmt.Errorf("%w: path %q, want %q", ErrBadHandshake, req.URL.Path, ConnectPath)
	case len(req.TransferEncoding) > 0:
		return fmt.Errorf("%w: Transfer-Encoding %q, want none", ErrBadHandshake, req.TransferEncoding)
	case req.ContentLength != 0:
		return fmt.Errorf("%w: Content-Length %d, want 0", ErrBadHandshake, req.ContentLength)
	}
	return nil
}

// readMore does one Read on the stream into the free space of rbuf, first
// moving unconsumed bytes to the front when the free space at the end could
// not hold a whole maximum-size frame. It returns what Read returned.
func (c *Conn) readMore() (int, error) {
	if c.r == c.w {
		c.r, c.w = 0, 0
	} else if len(c.rbuf)-c.w < c.maxFrame+LengthPrefixSize && c.r > 0 {
		c.w = copy(c.rbuf, c.rbuf[c.r:c.w])
		c.r = 0
	}
	if c.w == len(c.rbuf) {
		// Only reachable during the handshake with a tiny buffer; the
		// caller's size check reports it.
		return 0, fmt.Errorf("tap: read buffer full")
	}
	for range 100 {
		n, err := c.read(c.rbuf[c.w:])
		c.readCalls.Add(1)
		c.w += n
		if n > 0 || err != nil {
			return n, err
		}
	}
	return 0, io.ErrNoProgress
}

// isTimeout reports whether err is a deadline error, which leaves the
// stream intact and is therefore not made sticky.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// peek decodes the frame at the start of the read buffer. It returns the
// frame's total length on the wire (prefix included) if a complete frame is
// buffered, 0 if more bytes are needed, or a decode error.
func (c *Conn) peek() (int, error) {
	avail := c.w - c.r
	if avail < LengthPrefixSize {
		return 0, nil
	}
	n := int(binary.LittleEndian.Uint16(c.rbuf[c.r:]))
	if n == 0 {
		return 0, ErrZeroLengthFrame
	}
	if n > c.maxFrame {
		return 0, fmt.Errorf("%w: %d bytes, MTU %d allows %d", ErrFrameTooLarge, n, c.cfg.MTU, c.maxFrame)
	}
	if avail < LengthPrefixSize+n {
		return 0, nil
	}
	return LengthPrefixSize + n, nil
}

// Buffered reports whether Next would return without a read syscall: a
// complete frame (or an error) is already buffered. A caller can use it to
// finish a batch of work before blocking.
func (c *Conn) Buffered() bool {
	if c.rerr != nil || c.eof {
		return true // Next returns at once: frames, then the error
	}
	n, err := c.peek()
	return n > 0 || err != nil
}

// Next returns the next frame. The slice aliases the Conn's read buffer and
// is valid only until the next call to Next, NextBatch, ReadFrames or
// ServerHandshake. Next does a read syscall only when no complete frame is
// buffered, and then reads as much as the buffer holds, so consecutive
// calls drain many frames per syscall.
//
// Next returns io.EOF if the stream ends cleanly between frames,
// io.ErrUnexpectedEOF (wrapped) if it ends inside a frame,
// ErrZeroLengthFrame or ErrFrameTooLarge (wrapped) for a bad length, and
// ErrStalled (wrapped) if a frame that has started arriving does not
// complete within Config.StallTimeout. Such errors are sticky; the caller
// should close the Conn. Waiting for a frame that has not started never
// times out.
func (c *Conn) Next() ([]byte, error) {
	for {
		n, err := c.peek()
		if err != nil {
			// Poison the Conn: drop the buffer, keep the error.
			c.rerr = err
			c.r, c.w = 0, 0
			return nil, err
		}
		if n > 0 {
			f := c.rbuf[c.r+LengthPrefixSize : c.r+n : c.r+n]
			c.r += n
			c.nframes++
			c.framesRead.Add(1)
			c.bytesRead.Add(uint64(len(f)))
			if c.rarmed && c.r == c.w {
				c.disarmRead() // no partial frame left
			}
			return f, nil
		}
		if c.rerr != nil {
			return nil, c.rerr
		}
		if c.eof {
			if c.r == c.w {
				c.rerr = io.EOF
			} else {
				c.rerr = fmt.Errorf("tap: stream ended inside a frame: %w", io.ErrUnexpectedEOF)
				c.r, c.w = 0, 0
			}
			return nil, c.rerr
		}
		if c.stall > 0 {
			if c.r < c.w {
				c.armRead()
			} else if c.rarmed {
				c.disarmRead()
			}
		}
		if _, err := c.readMore(); err != nil {
			switch {
			case errors.Is(err, io.EOF):
				c.eof = true
			case c.readStalled(err):
				// The partial frame did not complete in time.
				c.rerr = fmt.Errorf("%w: a frame did not complete within %v", ErrStalled, c.stall)
			case isTimeout(err):
				// Bytes read before the deadline stay buffered; a
				// frame they complete is returned first.
				if n, _ := c.peek(); n == 0 {
					return nil, fmt.Errorf("tap: read: %w", err)
				}
			default:
				c.rerr = fmt.Errorf("tap: read: %w", err)
			}
			// Frames completed by the last read are returned before
			// the error.
		}
	}
}

// armRead sets the read deadline for the partial frame at c.r, if it is not
// the one the deadline was set for. The frame gets at least StallTimeout:
// a deadline still that far away is kept (so a busy stream, where most
// reads end inside a frame, sets it about once per StallTimeout/2), else
// it is set to 1.5 × StallTimeout from now. A frame keeps the deadline it
// got when it was first seen, however slowly its bytes trickle in.
func (c *Conn) armRead() {
	if c.rarmed && c.rframe == c.nframes {
		return
	}
	c.rframe = c.nframes
	now := time.Now()
	if c.rarmed && c.rdeadline.Sub(now) >= c.stall {
		return
	}
	c.rdeadline = now.Add(c.stall + c.stall/2)
	c.rarmed = true
	_ = c.nc.SetReadDeadline(c.rdeadline)
}

// disarmRead clears the read deadline armRead set.
func (c *Conn) disarmRead() {
	c.rarmed = false
	_ = c.nc.SetReadDeadline(time.Time{})
}

// readStalled reports whether err is the timeout of the deadline armRead
// set (rather than one the caller set on the stream).
func (c *Conn) readStalled(err error) bool {
	return c.rarmed && isTimeout(err) && !time.Now().Before(c.rdeadline)
}

// armWrite makes sure the write deadline leaves at least StallTimeout for
// the next write: it is set to 1.5 × StallTimeout from now when less than
// StallTimeout is left, so a busy stream sets it about once per
// StallTimeout/2. The caller holds wmu.
func (c *Conn) armWrite() {
	if c.stall <= 0 {
		return
	}
	now := time.Now()
	if c.wdeadline.Sub(now) >= c.stall {
		return
	}
	c.wdeadline = now.Add(c.stall + c.stall/2)
	_ = c.nc.SetWriteDeadline(c.wdeadline)
}

// writeStalled reports whether err is the timeout of the deadline armWrite
// set. The caller holds wmu.
func (c *Conn) writeStalled(err error) bool {
	return c.stall > 0 && isTimeout(err) && !time.Now().Before(c.wdeadline)
}

// NextBatch stores up to len(frames) frames in frames and returns how many:
// it blocks for the first, then takes every further complete frame already
// buffered, without another syscall. Like Next's result, the slices alias the
// read buffer and are valid only until the next read-side call. It returns
// an error only when it returns no frame.
func (c *Conn) NextBatch(frames [][]byte) (int, error) {
	if len(frames) == 0 {
		return 0, nil
	}
	f, err := c.Next()
	if err != nil {
		return 0, err
	}
	frames[0] = f
	i := 1
	for i < len(frames) {
		if n, err := c.peek(); n == 0 || err != nil {
			break
		}
		frames[i], _ = c.Next()
		i++
	}
	return i, nil
}

// ReadFrames copies at least one frame (blocking for the first), plus every
// further complete frame already buffered, into bufs[i][offset:], and stores
// each frame's length in sizes[i]; it returns the number of frames. sizes
// must be at least as long as bufs. It returns an error only when it copies
// no frame. A frame that does not fit its buffer is dropped and reported as
// io.ErrShortBuffer (wrapped, not sticky) if it is the first; otherwise it
// is left for the next call.
func (c *Conn) ReadFrames(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(sizes) < len(bufs) {
		return 0, fmt.Errorf("tap: ReadFrames: %d sizes for %d buffers", len(sizes), len(bufs))
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	i := 0
	for i < len(bufs) {
		if i > 0 {
			n, err := c.peek()
			if n == 0 || err != nil {
				break
			}
			if n-LengthPrefixSize > len(bufs[i])-offset {
				break
			}
		}
		f, err := c.Next()
		if err != nil {
			return 0, err // only reachable for i == 0
		}
		if len(f) > len(bufs[i])-offset {
			return 0, fmt.Errorf("tap: %d-byte frame for a %d-byte buffer: %w", len(f), len(bufs[i])-offset, io.ErrShortBuffer)
		}
		sizes[i] = copy(bufs[i][offset:], f)
		i++
	}
	return i, nil
}

// LockWrite acquires the write lock. AppendFrame and Flush require the
// caller to hold it, so that the frames of one goroutine's batch are not
// interleaved with another's; release it with UnlockWrite after Flush.
// WriteFrames and ClientHandshake take the lock themselves and must not be
// called while holding it.
func (c *Conn) LockWrite() { c.wmu.Lock() }

// UnlockWrite releases the write lock taken by LockWrite.
func (c *Conn) UnlockWrite() { c.wmu.Unlock() }

// AppendFrame appends one frame, given as the concatenation of parts, to
// the pending write batch. Frames are packed back to back and the batch is
// written out each time it reaches MaxWrite bytes, so a frame may straddle
// two writes and a frame larger than MaxWrite is split across several.
// Call Flush after the last frame of a batch. The caller must hold the write
// lock (LockWrite).
//
// A frame of zero or more than MaxFrameSize bytes is refused with
// ErrZeroLengthFrame or ErrFrameTooLarge (wrapped) and nothing of it is
// written; the Conn stays usable. A write error is sticky.
func (c *Conn) AppendFrame(parts ...[]byte) error {
	if c.werr != nil {
		return c.werr
	}
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n == 0 {
		return fmt.Errorf("tap: write: %w", ErrZeroLengthFrame)
	}
	if n > MaxFrameSize {
		return fmt.Errorf("tap: write %d bytes: %w", n, ErrFrameTooLarge)
	}
	// The prefix goes byte by byte so that it too may straddle writes.
	if err := c.appendByte(byte(n)); err != nil {
		return err
	}
	if err := c.appendByte(byte(n >> 8)); err != nil {
		return err
	}
	for _, p := range parts {
		if err := c.appendBytes(p); err != nil {
			return err
		}
	}
	c.framesWritten.Add(1)
	c.bytesWritten.Add(uint64(n))
	return nil
}

func (c *Conn) appendByte(b byte) error {
	c.wbuf[c.wn] = b
	c.wn++
	if c.wn == len(c.wbuf) {
		return c.flush()
	}
	return nil
}

func (c *Conn) appendBytes(p []byte) error {
	for len(p) > 0 {
		if c.wn == 0 && len(p) >= len(c.wbuf) {
			// A whole write's worth: send it from p, without a copy.
			if err := c.write(p[:len(c.wbuf)]); err != nil {
				return err
			}
			p = p[len(c.wbuf):]
			continue
		}
		k := copy(c.wbuf[c.wn:], p)
		c.wn += k
		p = p[k:]
		if c.wn == len(c.wbuf) {
			if err := c.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Flush writes out the pending batch. The caller must hold the write lock.
func (c *Conn) Flush() error {
	if c.werr != nil {
		return c.werr
	}
	return c.flush()
}

func (c *Conn) flush() error {
	if c.wn == 0 {
		return nil
	}
	err := c.write(c.wbuf[:c.wn])
	c.wn = 0
	return err
}

// read does one Read on the stream.
func (c *Conn) read(p []byte) (int, error) {
	if c.raw == nil {
		return c.nc.Read(p)
	}
	n, err := rawio.ReadRaw(c.raw, p)
	switch {
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: c.nc.LocalAddr().Network(), Source: c.nc.LocalAddr(), Addr: c.nc.RemoteAddr(), Err: rawio.Cause("read", err)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// write does one Write on the stream; len(p) <= MaxWrite.
func (c *Conn) write(p []byte) error {
	c.armWrite()
	var err error
	if c.raw == nil {
		_, err = c.nc.Write(p)
	} else if _, err = rawio.WriteRaw(c.raw, p); err != nil {
		err = &net.OpError{Op: "write", Net: c.nc.LocalAddr().Network(), Source: c.nc.LocalAddr(), Addr: c.nc.RemoteAddr(), Err: rawio.Cause("write", err)}
	}
	c.writeCalls.Add(1)
	if err != nil {
		if c.writeStalled(err) {
			err = fmt.Errorf("%w: a %d-byte write did not go through within %v", ErrStalled, len(p), c.stall)
		}
		c.werr = fmt.Errorf("tap: write: %w", err)
		return c.werr
	}
	return nil
}

// WriteFrames appends bufs[i][offset:] for each i and flushes, holding the
// write lock. It returns the number of frames written. If a frame is
// invalid (see AppendFrame), the frames before it are still flushed, and
// WriteFrames returns their count and the error.
func (c *Conn) WriteFrames(bufs [][]byte, offset int) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for i, b := range bufs {
		if err := c.AppendFrame(b[offset:]); err != nil {
			if c.werr != nil {
				return 0, err
			}
			if ferr := c.Flush(); ferr != nil {
				return 0, ferr
			}
			return i, err
		}
	}
	if err := c.Flush(); err != nil {
		return 0, err
	}
	return len(bufs), nil
}
