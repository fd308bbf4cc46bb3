package proxy

import "errors"

// chunkScanner finds the end of a chunked message body (RFC 9112 section
// 7.1) in a byte stream without decoding it, so that the event-loop front
// end can pass a chunked response through unchanged. It is strict where the
// RFC allows leniency: lines end in CRLF, sizes are hex digits (at most 15,
// so that they fit an int64), chunk extensions and trailer sections are
// bounded. An error means the upstream sent a malformed body; the exchange
// is aborted.
type chunkScanner struct {
	st   chunkState
	size int64 // bytes of chunk data left (chunkData) or the size being read
	n    int   // digits of the size, or bytes of the extension or trailer line
	tr   int   // bytes of the trailer section so far
}

type chunkState uint8

const (
	chunkSize      chunkState = iota // reading the hex size
	chunkSizeWS                      // whitespace after the size, up to CR
	chunkExt                         // in a chunk extension, up to CR
	chunkSizeLF                      // CR seen after the size line
	chunkData                        // size bytes of data left
	chunkDataCR                      // CR after the data
	chunkDataLF                      // LF after the data
	chunkTrailer                     // at the start of a trailer line (or the final CRLF)
	chunkTrailerLn                   // in a trailer line, up to CR
	chunkTrailerLF                   // CR seen after a trailer line
	chunkEndLF                       // CR of the final empty line seen
	chunkDone                        // the body is complete
)

const (
	maxChunkExt     = 4 << 10  // bytes of chunk extensions per chunk
	maxChunkTrailer = 64 << 10 // bytes of the trailer section
)

var errBadChunked = errors.New("proxy: malformed chunked response body")

// done reports whether the whole body has been scanned.
func (s *chunkScanner) done() bool { return s.st == chunkDone }

// scan consumes b and returns how many of its bytes belong to the body:
// len(b) unless the body ended inside b.
func (s *chunkScanner) scan(b []byte) (int, error) {
	i := 0
	for i < len(b) {
		c := b[i]
		switch s.st {
		case chunkSize:
			switch {
			case c == '\r' && s.n > 0:
				s.st = chunkSizeLF
			case c == ';' && s.n > 0:
				s.st, s.n = chunkExt, 0
			case (c == ' ' || c == '\t') && s.n > 0:
				s.st = chunkSizeWS
			default:
				d, ok := hexDigit(c)
				if !ok || s.n == 15 {
					return i, errBadChunked
				}
				s.size = s.size<<4 | int64(d)
				s.n++
			}
		case chunkSizeWS:
			switch c {
			case '\r':
				s.st = chunkSizeLF
			case ' ', '\t':
			default:
				return i, errBadChunked // net/http allows no space before ';'
			}
		case chunkExt:
			switch {
			case c == '\r':
				s.st = chunkSizeLF
			case c == '\n' || s.n >= maxChunkExt:
				return i, errBadChunked
			default:
				s.n++
			}
		case chunkSizeLF:
			if c != '\n' {
				return i, errBadChunked
			}
			s.n = 0
			if s.size == 0 {
				s.st = chunkTrailer
			} else {
				s.st = chunkData
			}
		case chunkData:
			k := int64(len(b) - i)
			if k > s.size {
				k = s.size
			}
			s.size -= k
			i += int(k)
			if s.size == 0 {
				s.st = chunkDataCR
			}
			continue
		case chunkDataCR:
			if c != '\r' {
				return i, errBadChunked
			}
			s.st = chunkDataLF
		case chunkDataLF:
			if c != '\n' {
				return i, errBadChunked
			}
			s.st, s.n = chunkSize, 0
		case chunkTrailer:
			if c == '\r' {
				s.st = chunkEndLF
			} else {
				s.st, s.n = chunkTrailerLn, 1
			}
			s.tr++
		case chunkTrailerLn:
			switch {
			case c == '\r':
				s.st = chunkTrailerLF
			case c == '\n':
				return i, errBadChunked
			}
			s.tr++
		case chunkTrailerLF:
			if c != '\n' {
				return i, errBadChunked
			}
			s.st = chunkTrailer
			s.tr++
		case chunkEndLF:
			if c != '\n' {
				return i, errBadChunked
			}
			s.st = chunkDone
			return i + 1, nil
		case chunkDone:
			return i, nil
		}
		if s.tr > maxChunkTrailer {
			return i, errBadChunked
		}
		i++
	}
	return i, nil
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
