package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// respInfo is what the event-loop front end needs to know of an upstream
// response head.
type respInfo struct {
	code   int
	length int64 // Content-Length; -1 when absent
	// chunked: Transfer-Encoding: chunked (Content-Length is then ignored,
	// as net/http does).
	chunked bool
	// close: the upstream closes the connection after the response
	// (Connection: close, or HTTP/1.0 without keep-alive).
	close bool
}

// bodyless reports whether the response has no body whatever its header
// says: 1xx, 204, 304, or an answer to HEAD.
func (ri *respInfo) bodyless(head bool) bool {
	return head || ri.code < 200 || ri.code == 204 || ri.code == 304
}

var errBadResponse = errors.New("proxy: malformed response head")

// parseResponseHead parses an HTTP/1.x response head b (status line and
// fields, ending in an empty line) as net/http's client would, and appends
// the head to send to the client to dst: an HTTP/1.1 status line with the
// upstream's reason phrase and the fields in their order and spelling,
// without the hop-by-hop ones (and those the Connection field names, but
// never Content-Length, which still frames the body) and
// without Content-Length when the body is chunked. The caller adds framing
// and Connection fields and the final CRLF. It rejects what net/http
// would reject and some things it would accept (obsolete line folding,
// transfer codings other than chunked, a protocol other than HTTP/1.0 and
// HTTP/1.1), so that upstream bytes are never forwarded on a guess;
// FuzzParseResponseHead holds it to that.
func parseResponseHead(dst, b []byte) (respInfo, []byte, error) {
	ri := respInfo{length: -1}
	line, rest, ok := cutLine(b)
	if !ok {
		return ri, dst, errBadResponse
	}
	// Status line: HTTP/1.x SP 3DIGIT [SP reason].
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || (line[7] != '0' && line[7] != '1') || line[8] != ' ' {
		return ri, dst, fmt.Errorf("%w: status line %q", errBadResponse, truncate(line))
	}
	http10 := line[7] == '0'
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return ri, dst, fmt.Errorf("%w: status line %q", errBadResponse, truncate(line))
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 {
		return ri, dst, fmt.Errorf("%w: status code %d", errBadResponse, code)
	}
	reason := line[12:]
	if len(reason) > 0 {
		if reason[0] != ' ' {
			return ri, dst, fmt.Errorf("%w: status line %q", errBadResponse, truncate(line))
		}
		reason = reason[1:]
	}
	for _, c := range reason {
		if c < ' ' && c != '\t' || c == 0x7f {
			return ri, dst, fmt.Errorf("%w: status line %q", errBadResponse, truncate(line))
		}
	}
	ri.code = code

	// First pass: check every field, note framing and Connection.
	var tokens connTokens
	keepAlive := false
	for r := rest; ; {
		var l []byte
		l, r, ok = cutLine(r)
		if !ok {
			return ri, dst, errBadResponse
		}
		if len(l) == 0 {
			if len(r) != 0 {
				return ri, dst, errBadResponse // bytes after the head: not ours to parse
			}
			break
		}
		name, value, err := splitField(l)
		if err != nil {
			return ri, dst, err
		}
		switch {
		case equalFoldASCII(name, "Content-Length"):
			n, err := parseContentLength(value)
			if err != nil || (ri.length >= 0 && ri.length != n) {
				return ri, dst, fmt.Errorf("%w: Content-Length %q", errBadResponse, truncate(value))
			}
			ri.length = n
		case equalFoldASCII(name, "Transfer-Encoding"):
			if ri.chunked || !equalFoldASCII(value, "chunked") {
				return ri, dst, fmt.Errorf("%w: Transfer-Encoding %q", errBadResponse, truncate(value))
			}
			ri.chunked = true
		case equalFoldASCII(name, "Connection"):
			cl, ka, other := connectionOptions(value)
			ri.close = ri.close || cl
			keepAlive = keepAlive || ka
			if other {
				tokens.parse([]string{string(value)})
			}
		}
	}
	if http10 && !keepAlive {
		ri.close = true
	}
	if ri.chunked && http10 {
		return ri, dst, fmt.Errorf("%w: chunked HTTP/1.0 response", errBadResponse)
	}

	// Second pass: the fields to forward.
	dst = append(dst, "HTTP/1.1 "...)
	dst = append(dst, line[9:]...)
	dst = append(dst, '\r', '\n')
	for r := rest; ; {
		var l []byte
		l, r, _ = cutLine(r)
		if len(l) == 0 {
			break
		}
		name, _, _ := splitField(l)
		if isHopField(name) || (ri.chunked && equalFoldASCII(name, "Content-Length")) {
			continue
		}
		if (tokens.n > 0 || len(tokens.more) > 0) && tokens.has(string(name)) {
			continue
		}
		dst = append(dst, l...)
		dst = append(dst, '\r', '\n')
	}
	return ri, dst, nil
}

// connectionOptions reports which options a Connection field value lists:
// close, keep-alive, others.
func connectionOptions(v []byte) (close, keepAlive, other bool) {
	for len(v) > 0 {
		var tok []byte
		tok, v, _ = bytes.Cut(v, []byte{','})
		tok = bytes.Trim(tok, " \t")
		switch {
		case len(tok) == 0:
		case equalFoldASCII(tok, "close"):
			close = true
		case equalFoldASCII(tok, "keep-alive"):
			keepAlive = true
		default:
			other = true
		}
	}
	return close, keepAlive, other
}

// headEnd returns the length of the message head at the start of b, up to
// and including the blank line that ends it, or 0 if b holds no whole head.
// Lines may end in CRLF or, as net/http allows, in a bare LF. The first
// from bytes were searched before and held no end.
func headEnd(b []byte, from int) int {
	for i := max(from-3, 0); ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return 0
		}
		i += j + 1
		switch {
		case i < len(b) && b[i] == '\n':
			return i + 1
		case i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n':
			return i + 2
		}
	}
}

// cutLine returns the line at the start of b without its CRLF, and the rest.
// ok is false if b has no CRLF or a bare LF or CR comes first.
func cutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, false
	}
	line = b[:i-1]
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, nil, false
	}
	return line, b[i+1:], true
}

// splitField splits a field line into its name and its value without
// surrounding whitespace, checking both as net/http does.
func splitField(l []byte) (name, value []byte, err error) {
	i := bytes.IndexByte(l, ':')
	if i <= 0 {
		return nil, nil, fmt.Errorf("%w: field %q", errBadResponse, truncate(l))
	}
	name = l[:i]
	for _, c := range name {
		if !isTokenChar(c) {
			return nil, nil, fmt.Errorf("%w: field name %q", errBadResponse, truncate(name))
		}
	}
	value = bytes.Trim(l[i+1:], " \t")
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			return nil, nil, fmt.Errorf("%w: field value of %q", errBadResponse, truncate(name))
		}
	}
	return name, value, nil
}

// isHopField is isHopHeader for a field name in any case.
func isHopField(name []byte) bool {
	for _, h := range hopHeaders {
		if equalFoldASCII(name, h) {
			return true
		}
	}
	return false
}

func equalFoldASCII(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		if lowerASCII(b[i]) != lowerASCII(s[i]) {
			return false
		}
	}
	return true
}

// parseContentLength parses a Content-Length value: digits only, no sign.
func parseContentLength(v []byte) (int64, error) {
	if len(v) == 0 || len(v) > 18 {
		return 0, errBadResponse
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, errBadResponse
		}
	}
	return strconv.ParseInt(string(v), 10, 64)
}

// truncate shortens b for an error message.
func truncate(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}
