package proxy

import (
	"bufio"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// hopHeaders are the hop-by-hop fields (RFC 9110 section 7.6.1, plus the
// obsolete ones net/http also drops, and HTTP2-Settings, which belongs to
// the h2c upgrade: RFC 9113 section 3.2.1), which a proxy must not forward.
var hopHeaders = [...]string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Http2-Settings"}

// isHopHeader reports whether k (in canonical form) is one of hopHeaders.
func isHopHeader(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Http2-Settings":
		return true
	}
	return false
}

// isForwardedHeader reports whether k is one of the headers the proxy sets
// from the connection.
func isForwardedHeader(k string) bool {
	switch k {
	case "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded":
		return true
	}
	return false
}

// connTokens holds the header names listed in a Connection header, other
// than the ones that are hop-by-hop anyway and the framing fields
// (Content-Length, Transfer-Encoding), which are never dropped for being
// listed. Most requests list none, so it lives on the stack and never
// allocates.
type connTokens struct {
	n       int
	names   [8]string
	more    []string // overflow, rarely used
	upgrade bool     // "upgrade" was listed
}

func (t *connTokens) parse(values []string) {
	for _, v := range values {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			tok = textprotoTrim(tok)
			switch {
			case tok == "":
			case strings.EqualFold(tok, "close"), strings.EqualFold(tok, "keep-alive"):
			case strings.EqualFold(tok, "upgrade"):
				t.upgrade = true
			case strings.EqualFold(tok, "content-length"), strings.EqualFold(tok, "transfer-encoding"):
				// The message's framing: never dropped for being named
				// (Transfer-Encoding is hop-by-hop anyway). Dropping
				// Content-Length from a response still framed by it
				// would leave the client reading to the connection's end.
			case t.n < len(t.names):
				t.names[t.n] = tok
				t.n++
			default:
				t.more = append(t.more, tok)
			}
		}
	}
}

// has reports whether header k was listed.
func (t *connTokens) has(k string) bool {
	for _, n := range t.names[:t.n] {
		if strings.EqualFold(n, k) {
			return true
		}
	}
	for _, n := range t.more {
		if strings.EqualFold(n, k) {
			return true
		}
	}
	return false
}

func textprotoTrim(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// upgradeType returns the protocol an HTTP/1.1 request asks to upgrade to,
// or "" if it asks for none. An upgrade to h2c is not one: behind the
// proxy it would tunnel the client straight to the upstream's HTTP/2
// server, past every check and forwarding field ("h2c smuggling"; RFC 9113
// deprecates the upgrade), so the request goes on as a plain one (Upgrade
// and HTTP2-Settings are hop-by-hop and dropped).
func upgradeType(r *http.Request, tokens *connTokens) string {
	if !tokens.upgrade || r.ProtoMajor != 1 {
		return ""
	}
	if v := r.Header["Upgrade"]; len(v) > 0 && !hasToken(v, "h2c") {
		return v[0]
	}
	return ""
}

// clientAddr returns the client's IP address from r.RemoteAddr, which a
// PROXY protocol listener sets to the address in the PROXY header.
func clientAddr(r *http.Request) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err == nil {
		return forwardedAddr(ap.Addr()), true
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return forwardedAddr(a), true
}

// forwardedAddr is a client address as the forwarding fields carry it:
// IPv4 unmapped, and without an IPv6 zone, which names one of the proxy's
// interfaces (meaningless upstream, and any bytes an interface name may
// hold would go into a header).
func forwardedAddr(a netip.Addr) netip.Addr {
	return a.Unmap().WithZone("")
}

// writeForwarded writes X-Forwarded-For, X-Forwarded-Host,
// X-Forwarded-Proto and Forwarded (RFC 7239) for this hop. With trust, the
// client's values are extended; otherwise they were skipped by the caller.
func writeForwarded(bw *bufio.Writer, r *http.Request, trust bool) {
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	ip, ok := clientAddr(r)

	// X-Forwarded-For: prior values, then this client.
	var prior []string
	if trust {
		prior = r.Header["X-Forwarded-For"]
	}
	if ok || len(prior) > 0 {
		bw.WriteString("X-Forwarded-For: ")
		for i, v := range prior {
			if i > 0 {
				bw.WriteString(", ")
			}
			bw.WriteString(v)
		}
		if ok {
			if len(prior) > 0 {
				bw.WriteString(", ")
			}
			bw.Write(ip.AppendTo(bw.AvailableBuffer()))
		}
		bw.WriteString("\r\n")
	}
	if trust {
		if v := r.Header["X-Forwarded-Host"]; len(v) > 0 {
			writeHeaderLine(bw, "X-Forwarded-Host", v[0])
		} else if r.Host != "" {
			writeHeaderLine(bw, "X-Forwarded-Host", r.Host)
		}
		if v := r.Header["X-Forwarded-Proto"]; len(v) > 0 {
			writeHeaderLine(bw, "X-Forwarded-Proto", v[0])
		} else {
			writeHeaderLine(bw, "X-Forwarded-Proto", proto)
		}
	} else {
		if r.Host != "" {
			writeHeaderLine(bw, "X-Forwarded-Host", r.Host)
		}
		writeHeaderLine(bw, "X-Forwarded-Proto", proto)
	}

	// Forwarded: for=...;host=...;proto=...
	bw.WriteString("Forwarded: ")
	if trust {
		for _, v := range r.Header["Forwarded"] {
			bw.WriteString(v)
			bw.WriteString(", ")
		}
	}
	bw.WriteString("for=")
	switch {
	case !ok:
		bw.WriteString("unknown")
	case ip.Is6():
		bw.WriteString(`"[`)
		bw.Write(ip.AppendTo(bw.AvailableBuffer()))
		bw.WriteString(`]"`)
	default:
		bw.Write(ip.AppendTo(bw.AvailableBuffer()))
	}
	if r.Host != "" {
		bw.WriteString(";host=")
		writeForwardedValue(bw, r.Host)
	}
	bw.WriteString(";proto=")
	bw.WriteString(proto)
	bw.WriteString("\r\n")
}

// writeForwardedValue writes v as an RFC 7239 value: a token if it is one,
// else a quoted string.
func writeForwardedValue(bw *bufio.Writer, v string) {
	token := v != ""
	for i := 0; i < len(v) && token; i++ {
		token = isTokenChar(v[i])
	}
	if token {
		bw.WriteString(v)
		return
	}
	bw.WriteByte('"')
	for i := 0; i < len(v); i++ {
		if v[i] == '"' || v[i] == '\\' {
			bw.WriteByte('\\')
		}
		bw.WriteByte(v[i])
	}
	bw.WriteByte('"')
}

// isTokenChar reports whether c is a tchar (RFC 9110 section 5.6.2).
func isTokenChar(c byte) bool { return fieldBytes[c]&fbToken != 0 }

// fieldBytes classifies bytes for the header field checks, one table
// lookup per byte.
var fieldBytes = func() (t [256]uint8) {
	for c := range 256 {
		b := byte(c)
		switch {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9',
			strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0:
			t[c] |= fbToken
		}
		if b >= ' ' && b != 0x7f || b == '\t' {
			t[c] |= fbValue
		}
		if b == '_' {
			t[c] |= fbUnderscore
		}
	}
	return t
}()

const (
	fbToken      = 1 << iota // a tchar: allowed in a field name
	fbValue                  // allowed in a field value: anything but controls other than HTAB
	fbUnderscore             // '_'
)

// validFieldName is httpguts.ValidHeaderFieldName: a non-empty token.
func validFieldName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if fieldBytes[k[i]]&fbToken == 0 {
			return false
		}
	}
	return true
}

// validRequestLine reports whether r's method, target and Host can go into
// an HTTP/1.1 request line and Host field as they are. net/http's HTTP/1
// server ensures it; its HTTP/2 server lets spaces through in :method,
// :path and :authority, which would split the request line upstream
// ("GET /a HTTP/1.0 HTTP/1.1"). A fragment (#) has no place in a target
// either.
func validRequestLine(r *http.Request) bool {
	if !validFieldName(r.Method) { // a method is a token
		return false
	}
	for i := 0; i < len(r.RequestURI); i++ {
		if c := r.RequestURI[i]; c <= ' ' || c == 0x7f || c == '#' {
			return false
		}
	}
	return r.Host == "" || httpguts.ValidHostHeader(r.Host)
}

// validFieldValue is httpguts.ValidHeaderFieldValue: no control
// characters but HTAB (obs-text is allowed).
func validFieldValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if fieldBytes[v[i]]&fbValue == 0 {
			return false
		}
	}
	return true
}

// validHeader reports whether every field name and value in h is valid,
// as net/http's server requires of a request before serving it.
// http.ReadRequest does not check: it keeps, for one, a name with
// whitespace before the colon ("X-A : 1", go.dev/issue/34540), a line that
// other parsers take for the end of the header section.
func validHeader(h map[string][]string) bool {
	for k, vv := range h {
		if !validFieldName(k) {
			return false
		}
		for _, v := range vv {
			if !validFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// dropUnderscoreField reports whether a request field named k, which
// contains an underscore, is dropped rather than forwarded. CGI, WSGI,
// PHP and the like map '-' and '_' alike to '_' (X_Forwarded_For and
// X-Forwarded-For both become HTTP_X_FORWARDED_FOR), so such a name can
// stand in for a field the proxy sets or drops. Like nginx
// (underscores_in_headers off), every one is dropped unless
// Config.AllowUnderscoreHeaders; even then the stand-ins for the fields
// the proxy manages are.
func (p *Proxy) dropUnderscoreField(k string) bool {
	if !p.cfg.AllowUnderscoreHeaders {
		return true
	}
	for _, m := range [...]string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
		"Content-Length", "Transfer-Encoding", "Proxy-Connection", "Keep-Alive",
		"Proxy-Authenticate", "Proxy-Authorization"} {
		if equalFoldDash(k, m) {
			return true
		}
	}
	return false
}

// equalFoldDash reports whether k equals m, ignoring ASCII case and taking
// '_' in k for '-'.
func equalFoldDash(k, m string) bool {
	if len(k) != len(m) {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c == '_' {
			c = '-'
		}
		if lowerASCII(c) != lowerASCII(m[i]) {
			return false
		}
	}
	return true
}

// lowerASCII returns c in lower case if it is an ASCII capital.
func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func writeHeaderLine(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(v)
	bw.WriteString("\r\n")
}

// writeRequestHead writes the request line and headers of r, as sent to the
// upstream, into bw. It reads r.Header but never modifies or copies it.
func (p *Proxy) writeRequestHead(bw *bufio.Writer, r *http.Request, tokens *connTokens, upgrade string, chunked bool) {
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	p.writeRequestURI(bw, r)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	switch {
	case p.cfg.Host != "":
		bw.WriteString(p.cfg.Host)
	case r.Host != "":
		bw.WriteString(r.Host)
	default:
		bw.WriteString(p.defaultHost)
	}
	bw.WriteString("\r\n")

	for k, vv := range r.Header {
		if isHopHeader(k) {
			if k == "Te" && hasToken(vv, "trailers") {
				bw.WriteString("Te: trailers\r\n")
			}
			continue
		}
		switch k {
		case "Content-Length", "Expect", "Host":
			// Framing is written below from r.ContentLength; the server
			// in front has already answered Expect: 100-continue.
			continue
		}
		if isForwardedHeader(k) {
			continue // written, or extended when trusted, by writeForwarded
		}
		if strings.IndexByte(k, '_') >= 0 && p.dropUnderscoreField(k) {
			continue
		}
		if tokens.n > 0 || len(tokens.more) > 0 {
			if tokens.has(k) {
				continue
			}
		}
		for _, v := range vv {
			writeHeaderLine(bw, k, v)
		}
	}
	writeForwarded(bw, r, p.cfg.TrustForwarded)
	if upgrade != "" {
		bw.WriteString("Connection: Upgrade\r\nUpgrade: ")
		bw.WriteString(upgrade)
		bw.WriteString("\r\n")
	}
	switch {
	case chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case r.ContentLength > 0:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), r.ContentLength, 10))
		bw.WriteString("\r\n")
	case methodExpectsBody(r.Method):
		bw.WriteString("Content-Length: 0\r\n")
	}
	bw.WriteString("\r\n")
}

// writeRequestURI writes the request target: the client's, unchanged, when
// the target URL has no path; otherwise the target's path joined with the
// request's.
func (p *Proxy) writeRequestURI(bw *bufio.Writer, r *http.Request) {
	uri := r.RequestURI
	if p.pathPrefix == "" && uri != "" && uri[0] == '/' {
		bw.WriteString(uri)
		return
	}
	if uri == "*" && p.pathPrefix == "" {
		bw.WriteString(uri)
		return
	}
	// Absolute-form request targets, or a path prefix to join.
	path := r.URL.EscapedPath()
	switch {
	case p.pathPrefix == "":
		if path == "" {
			path = "/"
		}
		bw.WriteString(path)
	case path == "" || path == "/":
		bw.WriteString(p.pathPrefix)
		if path == "/" || strings.HasSuffix(p.rawPrefix, "/") {
			bw.WriteByte('/')
		}
	default:
		bw.WriteString(p.pathPrefix)
		if path[0] != '/' {
			bw.WriteByte('/')
		}
		bw.WriteString(path)
	}
	if r.URL.RawQuery != "" || r.URL.ForceQuery {
		bw.WriteByte('?')
		bw.WriteString(r.URL.RawQuery)
	}
}

func hasToken(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(textprotoTrim(t), token) {
				return true
			}
		}
	}
	return false
}

// methodExpectsBody reports whether an empty body must still be framed
// with Content-Length: 0, as net/http's client does.
func methodExpectsBody(m string) bool {
	return m == "POST" || m == "PUT" || m == "PATCH"
}

// copyResponseHeader copies the end-to-end headers of the upstream response
// into dst, which is the ResponseWriter's header map. It moves the slices
// rather than copying them: src is not used afterwards.
func copyResponseHeader(dst, src http.Header) {
	var tokens connTokens
	if c := src["Connection"]; len(c) > 0 {
		tokens.parse(c)
	}
	for k, vv := range src {
		if isHopHeader(k) {
			continue
		}
		if (tokens.n > 0 || len(tokens.more) > 0) && tokens.has(k) {
			continue
		}
		dst[k] = vv
	}
}
