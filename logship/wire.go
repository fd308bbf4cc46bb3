// Package logship carries an enclave's logs to its parent instance over a
// stream of their own (VSOCK port 1025 by convention), apart from the
// network tunnel, so that they still arrive when the enclave's networking
// is down, which is when they matter most.
//
// A production Nitro Enclave has no console: `nitro-cli console` works only
// for enclaves started in debug mode, whose attestation documents carry
// zeroed PCRs. Without something like this package an operator sees
// nothing of a failing enclave. quench-enclave -log-to ships its own log
// and the app's standard output and error; quench-host -enclave-logs
// receives them and writes each line to its log, with the enclave's CID.
// Go apps importing enclave use a [Shipper] directly.
//
// Logs leave the enclave in clear to the host, which the enclave does not
// trust: never log secrets, and know that the host can drop, delay or read
// every line. quench-enclave names the destination in its attested
// configuration (/enclave/config, annotation "logs_to_host") so that
// clients see that the enclave's logs leave it.
//
// # Wire format
//
// The enclave opens the stream and writes the header "QUENCH-LOG 1\n", then
// records, each
//
//	u8      n, the length of the stream name (1 to MaxStream)
//	[n]byte the stream name: ASCII letters, digits, '.', '_' or '-'
//	u16     length of the line, little endian (0 to MaxLine)
//	[]byte  the line, without its newline
//
// A line longer than MaxLine is sent as several records. Writes are at
// most 32 KiB, the largest the Nitro hypervisor's VSOCK passes intact; a
// record may span two.
//
// The host acknowledges what it has taken: it writes, now and then (when
// it has read all that arrived, and at least every 64 KiB and 250 ms), the number of
// record bytes it has taken on this stream so far, a u64, little endian,
// always at the end of a record. The enclave keeps each record until it is
// acknowledged and, on a new stream after the old one ended, sends the
// unacknowledged ones again: a host that restarts loses no line, though it
// may see some twice.
package logship

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Header opens every log stream.
const Header = "QUENCH-LOG 1\n"

const (
	// MaxStream is the longest stream name.
	MaxStream = 32
	// MaxLine is the longest line in one record; longer lines are split.
	MaxLine = 16 << 10
	// maxRecord is the longest encoded record.
	maxRecord = 1 + MaxStream + 2 + MaxLine
)

// ErrBadHeader: the peer did not open a quench log stream.
var ErrBadHeader = errors.New("logship: not a quench log stream (bad header)")

// validStream reports whether name may name a stream.
func validStream(name string) bool {
	if len(name) == 0 || len(name) > MaxStream {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// appendRecord appends the record of line (at most MaxLine bytes) on
// stream (valid) to dst.
func appendRecord(dst []byte, stream string, line []byte) []byte {
	dst = append(dst, byte(len(stream)))
	dst = append(dst, stream...)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(line)))
	return append(dst, line...)
}

// A Reader decodes a log stream. It holds at most one record in memory
// beyond its buffer, whatever the peer sends.
type Reader struct {
	r        *bufio.Reader
	header   bool
	line     []byte
	stream   []byte
	consumed uint64 // record bytes returned so far
	last     string // the last stream name, returned again without allocating
	lenBuf   [2]byte
}

// NewReader returns a Reader of r, which must start with Header.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, 64<<10)}
}

// Next returns the next record: its stream name and line, valid until the
// following call. At the end of a stream that ended between records it
// returns io.EOF; a stream that ended inside one gives
// io.ErrUnexpectedEOF; a bad header gives ErrBadHeader; a bad stream name
// or length an error saying which.
func (r *Reader) Next() (stream string, line []byte, err error) {
	if !r.header {
		var h [len(Header)]byte
		if n, err := io.ReadFull(r.r, h[:]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return "", nil, fmt.Errorf("%w: stream ended after %q", ErrBadHeader, h[:n])
			}
			return "", nil, err
		}
		if string(h[:]) != Header {
			return "", nil, fmt.Errorf("%w: %q", ErrBadHeader, h[:])
		}
		r.header = true
	}
	n, err := r.r.ReadByte()
	if err != nil {
		return "", nil, err // io.EOF between records
	}
	if n == 0 || n > MaxStream {
		return "", nil, fmt.Errorf("logship: stream name of %d bytes (want 1 to %d)", n, MaxStream)
	}
	if cap(r.stream) < MaxStream {
		r.stream = make([]byte, MaxStream)
	}
	name := r.stream[:n]
	if _, err := io.ReadFull(r.r, name); err != nil {
		return "", nil, unexpected(err)
	}
	if !validStream(string(name)) {
		return "", nil, fmt.Errorf("logship: bad stream name %q (want ASCII letters, digits, '.', '_', '-')", name)
	}
	l := r.lenBuf[:] // a field: a local array would escape to the heap through io.ReadFull
	if _, err := io.ReadFull(r.r, l); err != nil {
		return "", nil, unexpected(err)
	}
	size := int(binary.LittleEndian.Uint16(l))
	if size > MaxLine {
		return "", nil, fmt.Errorf("logship: line of %d bytes (at most %d)", size, MaxLine)
	}
	if cap(r.line) < size {
		r.line = make([]byte, size, MaxLine)
	}
	line = r.line[:size]
	if _, err := io.ReadFull(r.r, line); err != nil {
		return "", nil, unexpected(err)
	}
	r.consumed += uint64(1 + len(name) + 2 + size)
	if string(name) != r.last { // the comparison does not allocate
		r.last = string(name)
	}
	return r.last, line, nil
}

// ackEvery is the most record bytes Receive takes without acknowledging,
// and ackInterval the longest time: a receiver that takes what it read
// ahead slowly (quench-host's -enclave-log-rate) still acknowledges, so
// that a restart sends again a moment of lines, not 64 KiB of them.
const (
	ackEvery    = 64 << 10
	ackInterval = 250 * time.Millisecond
)

// Receive reads the log stream c until it ends, calling fn with each
// record (line valid only during the call), and acknowledges what it took
// (after a record, when nothing more has arrived, and at least every 64
// KiB and every 250 ms). It returns nil when the stream ends between records, and otherwise
// the error: a bad header (ErrBadHeader), a bad record, a failed read or
// acknowledgement. Set deadlines on c to bound a peer that stops reading
// acknowledgements.
func Receive(c io.ReadWriter, fn func(stream string, line []byte)) error {
	r := NewReader(c)
	var acked uint64
	var ack [8]byte
	lastAck := time.Now()
	for {
		stream, line, err := r.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		fn(stream, line)
		if r.r.Buffered() == 0 || r.consumed-acked >= ackEvery || time.Since(lastAck) >= ackInterval {
			binary.LittleEndian.PutUint64(ack[:], r.consumed)
			if _, err := c.Write(ack[:]); err != nil {
				return fmt.Errorf("logship: acknowledging: %w", err)
			}
			acked = r.consumed
			lastAck = time.Now()
		}
	}
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
