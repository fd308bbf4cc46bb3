package proxy

import (
	"bytes"
	"net/netip"
	"strconv"

	"golang.org/x/net/http/httpguts"
)

// fastReq is a request head parsed by parseRequestFast: slices of the head.
type fastReq struct {
	method []byte
	target []byte
	host   []byte
	fields []byte // the field lines, each ending in CRLF
	length int64  // Content-Length; 0 when absent
	close  bool   // Connection: close
	idem   bool   // an Idempotency-Key or X-Idempotency-Key field
	// underscore: a field name has an underscore (appendFastHead drops
	// those fields; see Proxy.dropUnderscoreField).
	underscore bool
}

// idempotent is canResend for fr.
func (fr *fastReq) idempotent() bool {
	switch string(fr.method) {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return fr.idem
}

// parseRequestFast parses the common HTTP/1.1 request head b (request line
// and fields, ending in an empty line) without allocating. It accepts a
// strict subset of what http.ReadRequest accepts, and only requests that
// the event-loop front end forwards as they are: an origin-form target, one
// valid Host, at most one Content-Length, no Transfer-Encoding, Expect, TE
// or Upgrade, no Connection option other than close and keep-alive, no
// forwarding headers. Field names with underscores are noted in
// underscore. For anything else it reports false and the caller
// parses with net/http, which applies the full rules (and may refuse the
// request). FuzzParseRequestFast holds it to net/http.
func parseRequestFast(b []byte) (fastReq, bool) {
	var fr fastReq
	line, rest, ok := cutLine(b)
	if !ok {
		return fr, false
	}
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return fr, false
	}
	fr.method = line[:sp]
	for _, c := range fr.method {
		if c < 'A' || c > 'Z' {
			return fr, false
		}
	}
	if string(fr.method) == "CONNECT" || string(fr.method) == "PRI" {
		return fr, false
	}
	line = line[sp+1:]
	if len(line) < 10 || string(line[len(line)-9:]) != " HTTP/1.1" {
		return fr, false
	}
	fr.target = line[:len(line)-9]
	if !validOriginForm(fr.target) {
		return fr, false
	}
	hosts, lengths := 0, 0
	for r := rest; ; {
		var l []byte
		l, r, ok = cutLine(r)
		if !ok {
			return fr, false
		}
		if len(l) == 0 {
			if len(r) != 0 {
				return fr, false
			}
			break
		}
		i := bytes.IndexByte(l, ':')
		if i <= 0 {
			return fr, false
		}
		name := l[:i]
		tok, seen := uint8(fbToken), uint8(0)
		for _, c := range name {
			tok &= fieldBytes[c]
			seen |= fieldBytes[c]
		}
		if tok == 0 {
			return fr, false // whitespace before the colon, and the like: net/http's path refuses it
		}
		fr.underscore = fr.underscore || seen&fbUnderscore != 0
		value := bytes.Trim(l[i+1:], " \t")
		for _, c := range value {
			if fieldBytes[c]&fbValue == 0 || c >= 0x80 {
				return fr, false
			}
		}
		switch {
		case equalFoldASCII(name, "Host"):
			hosts++
			fr.host = value
		case equalFoldASCII(name, "Content-Length"):
			lengths++
			n, err := parseContentLength(value)
			if err != nil {
				return fr, false
			}
			fr.length = n
		case equalFoldASCII(name, "Connection"):
			cl, _, other := connectionOptions(value)
			if other {
				return fr, false // other options: net/http's path drops the fields they name
			}
			fr.close = fr.close || cl
		case equalFoldASCII(name, "Idempotency-Key"), equalFoldASCII(name, "X-Idempotency-Key"):
			fr.idem = true
		case equalFoldASCII(name, "Transfer-Encoding"), equalFoldASCII(name, "Expect"),
			equalFoldASCII(name, "Te"), equalFoldASCII(name, "Upgrade"),
			equalFoldASCII(name, "X-Forwarded-For"), equalFoldASCII(name, "X-Forwarded-Host"),
			equalFoldASCII(name, "X-Forwarded-Proto"), equalFoldASCII(name, "Forwarded"):
			return fr, false
		}
	}
	if hosts != 1 || len(fr.host) == 0 || lengths > 1 || !httpguts.ValidHostHeader(string(fr.host)) {
		return fr, false
	}
	fr.fields = rest[:len(rest)-2] // without the final CRLF
	return fr, true
}

// validOriginForm reports whether t is an origin-form request target
// (RFC 9112 section 3.2.1) made of unreserved and reserved characters and
// well-formed percent-encodings only.
func validOriginForm(t []byte) bool {
	if len(t) == 0 || t[0] != '/' || (len(t) > 1 && t[1] == '/') {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '%':
			if i+2 >= len(t) {
				return false
			}
			if _, ok := hexDigit(t[i+1]); !ok {
				return false
			}
			if _, ok := hexDigit(t[i+2]); !ok {
				return false
			}
			i += 2
		case bytes.IndexByte([]byte("-._~!$&'()*+,;=:@/?"), c) >= 0:
		default:
			return false
		}
	}
	return true
}

// mayIntercept reports whether Config.Intercept may claim a request for
// target (origin-form, as parseRequestFast accepts it): its path is within
// Config.InterceptPaths, or percent-encoded (net/http decodes it first).
func (p *Proxy) mayIntercept(target []byte) bool {
	path := target
	if i := bytes.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	return bytes.IndexByte(path, '%') >= 0 || p.cfg.InterceptPaths == nil || underPaths(p.cfg.InterceptPaths, path)
}

// appendFastHead appends the head of fr as sent upstream, as
// writeRequestHead would write it for the same request parsed by net/http
// (without TrustForwarded and a target path; the caller checks): the
// end-to-end fields as they came, then Host, the forwarding fields and the
// framing.
func (p *Proxy) appendFastHead(dst []byte, fr *fastReq, ip netip.Addr, ipOK, https bool) []byte {
	dst = append(dst, fr.method...)
	dst = append(dst, ' ')
	dst = append(dst, fr.target...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	host := fr.host
	switch {
	case p.cfg.Host != "":
		dst = append(dst, p.cfg.Host...)
	case len(host) > 0:
		dst = append(dst, host...)
	default:
		dst = append(dst, p.defaultHost...)
	}
	dst = append(dst, '\r', '\n')
	for r := fr.fields; len(r) > 0; {
		l, rest, _ := cutLine(r)
		r = rest
		name := l[:bytes.IndexByte(l, ':')]
		if isHopField(name) || equalFoldASCII(name, "Host") || equalFoldASCII(name, "Content-Length") {
			continue
		}
		if fr.underscore && bytes.IndexByte(name, '_') >= 0 {
			continue // the caller parses with net/http if Config.AllowUnderscoreHeaders
		}
		dst = append(dst, l...)
		dst = append(dst, '\r', '\n')
	}
	if ipOK {
		dst = append(dst, "X-Forwarded-For: "...)
		dst = ip.AppendTo(dst)
		dst = append(dst, '\r', '\n')
	}
	if len(host) > 0 {
		dst = append(dst, "X-Forwarded-Host: "...)
		dst = append(dst, host...)
		dst = append(dst, '\r', '\n')
	}
	if https {
		dst = append(dst, "X-Forwarded-Proto: https\r\nForwarded: for="...)
	} else {
		dst = append(dst, "X-Forwarded-Proto: http\r\nForwarded: for="...)
	}
	switch {
	case !ipOK:
		dst = append(dst, "unknown"...)
	case ip.Is6():
		dst = append(dst, `"[`...)
		dst = ip.AppendTo(dst)
		dst = append(dst, `]"`...)
	default:
		dst = ip.AppendTo(dst)
	}
	if len(host) > 0 {
		dst = append(dst, ";host="...)
		dst = appendForwardedValue(dst, host)
	}
	if https {
		dst = append(dst, ";proto=https\r\n"...)
	} else {
		dst = append(dst, ";proto=http\r\n"...)
	}
	switch {
	case fr.length > 0:
		dst = append(dst, "Content-Length: "...)
		dst = strconv.AppendInt(dst, fr.length, 10)
		dst = append(dst, '\r', '\n')
	case methodExpectsBody(string(fr.method)):
		dst = append(dst, "Content-Length: 0\r\n"...)
	}
	return append(dst, '\r', '\n')
}

// appendForwardedValue is writeForwardedValue for a byte slice.
func appendForwardedValue(dst, v []byte) []byte {
	token := len(v) > 0
	for i := 0; i < len(v) && token; i++ {
		token = isTokenChar(v[i])
	}
	if token {
		return append(dst, v...)
	}
	dst = append(dst, '"')
	for _, c := range v {
		if c == '"' || c == '\\' {
			dst = append(dst, '\\')
		}
		dst = append(dst, c)
	}
	return append(dst, '"')
}
