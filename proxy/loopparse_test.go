package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseResponseHead(t *testing.T) {
	tests := []struct {
		name string
		head string
		want respInfo
		out  string // "" for an error
	}{
		{"length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\n",
			respInfo{code: 200, length: 5}, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n"},
		{"chunked drops length", "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Length: 5\r\n\r\n",
			respInfo{code: 200, length: 5, chunked: true}, "HTTP/1.1 200 OK\r\n"},
		{"hop-by-hop and named", "HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nKeep-Alive: timeout=5\r\nx-secret: 1\r\nX-Open: 2\r\n\r\n",
			respInfo{code: 200, length: -1}, "HTTP/1.1 200 OK\r\nX-Open: 2\r\n"},
		{"framing named", "HTTP/1.1 200 OK\r\nConnection: Content-Length, X-A\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n",
			respInfo{code: 200, length: 5}, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"},
		{"close", "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
			respInfo{code: 204, length: -1, close: true}, "HTTP/1.1 204 No Content\r\n"},
		{"http/1.0", "HTTP/1.0 200 OK\r\n\r\n", respInfo{code: 200, length: -1, close: true}, "HTTP/1.1 200 OK\r\n"},
		{"http/1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
			respInfo{code: 200, length: 0}, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"},
		{"no reason", "HTTP/1.1 200\r\n\r\n", respInfo{code: 200, length: -1}, "HTTP/1.1 200\r\n"},
		{"same length twice", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
			respInfo{code: 200, length: 1}, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n"},
		{"two lengths", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", respInfo{}, ""},
		{"signed length", "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n", respInfo{}, ""},
		{"gzip coding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", respInfo{}, ""},
		{"folded", "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\n\r\n", respInfo{}, ""},
		{"bare LF", "HTTP/1.1 200 OK\nX-A: 1\r\n\r\n", respInfo{}, ""},
		{"space in name", "HTTP/1.1 200 OK\r\nX A: 1\r\n\r\n", respInfo{}, ""},
		{"http/2", "HTTP/2.0 200 OK\r\n\r\n", respInfo{}, ""},
		{"short code", "HTTP/1.1 20 OK\r\n\r\n", respInfo{}, ""},
		{"code below 100", "HTTP/1.1 099 X\r\n\r\n", respInfo{}, ""},
		{"control in reason", "HTTP/1.1 200 O\x01K\r\n\r\n", respInfo{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ri, out, err := parseResponseHead(nil, []byte(tt.head))
			if tt.out == "" {
				if err == nil {
					t.Fatalf("parsed %+v, want an error", ri)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, ri, cmp.AllowUnexported(respInfo{})); diff != "" {
				t.Errorf("info (-want +got):\n%s", diff)
			}
			if string(out) != tt.out {
				t.Errorf("out = %q, want %q", out, tt.out)
			}
		})
	}
}

// FuzzParseResponseHead holds parseResponseHead to net/http: whatever it
// accepts, http.ReadResponse accepts with the same status, framing and
// persistence, and the head it writes for the client parses again without
// hop-by-hop fields.
func FuzzParseResponseHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n",
		"HTTP/1.0 200 OK\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\n",
	} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, head string, isHead bool) {
		if i := strings.Index(head, "\r\n\r\n"); i >= 0 {
			head = head[:i+4]
		} else {
			head += "\r\n\r\n"
		}
		ri, out, err := parseResponseHead(nil, []byte(head))
		if err != nil {
			return // stricter than net/http is allowed
		}
		method := http.MethodGet
		if isHead {
			method = http.MethodHead
		}
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(head)), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("accepted %q, which net/http rejects: %v", head, err)
		}
		if resp.StatusCode != ri.code {
			t.Fatalf("%q: code %d, net/http %d", head, ri.code, resp.StatusCode)
		}
		// A body that ends with the connection closes it, too.
		closes := ri.close || !ri.bodyless(isHead) && !ri.chunked && ri.length < 0
		if resp.Close != closes {
			t.Fatalf("%q: close %v, net/http %v", head, closes, resp.Close)
		}
		chunked := len(resp.TransferEncoding) == 1 && resp.TransferEncoding[0] == "chunked"
		if !ri.bodyless(isHead) {
			if chunked != ri.chunked {
				t.Fatalf("%q: chunked %v, net/http %v", head, ri.chunked, chunked)
			}
			if !chunked && resp.ContentLength != ri.length {
				t.Fatalf("%q: length %d, net/http %d", head, ri.length, resp.ContentLength)
			}
		}
		again, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(append(out, "\r\n"...))), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("head written for %q does not parse: %q: %v", head, out, err)
		}
		if again.StatusCode != ri.code {
			t.Fatalf("head written for %q has code %d", head, again.StatusCode)
		}
		// The loop adds Transfer-Encoding itself; a length must stay.
		if !ri.bodyless(isHead) && !ri.chunked && ri.length >= 0 && again.ContentLength != ri.length {
			t.Fatalf("head written for %q has length %d, not %d", head, again.ContentLength, ri.length)
		}
		for k := range again.Header {
			if isHopHeader(k) {
				t.Fatalf("head written for %q keeps %s", head, k)
			}
		}
	})
}

func TestChunkScanner(t *testing.T) {
	tests := []struct {
		name string
		body string
		n    int // bytes of the body; -1: incomplete; -2: error
	}{
		{"one chunk", "5\r\nhello\r\n0\r\n\r\n", 15},
		{"extra after", "1\r\na\r\n0\r\n\r\nGET", 11},
		{"extension", "1;a=b\r\na\r\n0\r\n\r\n", 15},
		{"trailing space", "1 \r\na\r\n0\r\n\r\n", 12},
		{"space before extension", "1 ;a\r\na\r\n", -2},
		{"trailer", "1\r\na\r\n0\r\nX-T: 1\r\n\r\n", 19},
		{"upper hex", "A\r\n0123456789\r\n0\r\n\r\n", 20},
		{"incomplete", "5\r\nhel", -1},
		{"no size", "\r\n", -2},
		{"bad hex", "g\r\n", -2},
		{"size overflow", "1000000000000000\r\n", -2},
		{"no CR after data", "1\r\naX", -2},
		{"bare LF", "1\na\r\n", -2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Byte by byte and whole: the same result.
			for _, step := range []int{1, len(tt.body)} {
				var s chunkScanner
				n, err := 0, error(nil)
				for i := 0; i < len(tt.body) && err == nil && !s.done(); i += step {
					var k int
					k, err = s.scan([]byte(tt.body[i:min(i+step, len(tt.body))]))
					n += k
				}
				switch {
				case tt.n == -2:
					if err == nil {
						t.Errorf("step %d: no error", step)
					}
				case err != nil:
					t.Errorf("step %d: %v", step, err)
				case tt.n == -1:
					if s.done() {
						t.Errorf("step %d: done at %d", step, n)
					}
				case !s.done() || n != tt.n:
					t.Errorf("step %d: done %v at %d, want %d", step, s.done(), n, tt.n)
				}
			}
		})
	}
}

// FuzzChunkScanner holds the scanner to net/http's chunked reader: where the
// scanner says a body ends, net/http reads its data to the end without an
// error, and a body net/http reads that ends in an empty trailer is found
// complete.
func FuzzChunkScanner(f *testing.F) {
	f.Add("5\r\nhello\r\n0\r\n\r\n", uint8(3))
	f.Add("1;x=y\r\na\r\n0\r\nT: 1\r\n\r\n", uint8(1))
	f.Add("10\r\n0123456789abcdef\r\n0\r\n\r\n", uint8(7))
	f.Fuzz(func(t *testing.T, body string, step uint8) {
		st := int(step) + 1
		var s chunkScanner
		n := 0
		var err error
		for i := 0; i < len(body) && err == nil && !s.done(); i += st {
			var k int
			k, err = s.scan([]byte(body[i:min(i+st, len(body))]))
			n += k
		}
		if err == nil && s.done() {
			_, rerr := io.Copy(io.Discard, httputil.NewChunkedReader(strings.NewReader(body[:n])))
			if rerr != nil {
				t.Fatalf("scanner: %q is a whole body; net/http: %v", body[:n], rerr)
			}
			return
		}
		// net/http reads all the data and only "\r\n" is left: complete.
		r := strings.NewReader(body)
		if _, rerr := io.Copy(io.Discard, httputil.NewChunkedReader(r)); rerr == nil && err == nil {
			rest := body[len(body)-r.Len():]
			if rest == "\r\n" && !s.done() {
				t.Fatalf("net/http reads %q whole; scanner: not done", body)
			}
		}
	})
}

// FuzzParseRequestFast holds parseRequestFast and appendFastHead to
// net/http and writeRequestHead: a head the fast parser accepts, net/http
// accepts with the same method, target, Host, length and persistence, and
// the upstream heads written from both parse to the same request.
func FuzzParseRequestFast(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a?b=c HTTP/1.1\r\nHost: example.com:80\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
		"GET /%41 HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\nKeep-Alive: 5\r\n\r\n",
		"DELETE /x HTTP/1.1\r\nHost: a b\r\nIdempotency-Key: 1\r\n\r\n",
		"PUT / HTTP/1.1\r\nhost: x\r\nProxy-Connection: keep-alive\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 1.2.3.4\r\nx_a: 1\r\nX-B: 2\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX-Pad : 1\r\n\r\n",
	} {
		f.Add(s, "192.0.2.1:1234", false)
	}
	f.Add("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "[2001:db8::1]:1", false)
	f.Add("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "192.0.2.1:1234", true)
	p, err := New(&url.URL{Scheme: "http", Host: "upstream"}, Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, head, remote string, https bool) {
		if i := strings.Index(head, "\r\n\r\n"); i >= 0 {
			head = head[:i+4]
		} else {
			head += "\r\n\r\n"
		}
		fr, ok := parseRequestFast([]byte(head))
		if !ok {
			return
		}
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
		if err != nil {
			t.Fatalf("fast parser accepts %q, net/http: %v", head, err)
		}
		if code := checkRequest(r); code != 0 {
			t.Fatalf("fast parser accepts %q, checkRequest: %d", head, code)
		}
		if r.Method != string(fr.method) || r.RequestURI != string(fr.target) || r.Host != string(fr.host) ||
			r.ContentLength != fr.length || r.Close != fr.close || canResend(r) != fr.idempotent() {
			t.Fatalf("%q: fast %q %q %q %d %v, net/http %q %q %q %d %v", head,
				fr.method, fr.target, fr.host, fr.length, fr.close, r.Method, r.RequestURI, r.Host, r.ContentLength, r.Close)
		}
		r.RemoteAddr = remote
		ip, ipOK := clientAddr(r)
		if https {
			r.TLS = &tls.ConnectionState{}
		}
		fast := p.appendFastHead(nil, &fr, ip, ipOK, https)
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		var tokens connTokens
		if c := r.Header["Connection"]; len(c) > 0 {
			tokens.parse(c)
		}
		p.writeRequestHead(bw, r, &tokens, "", false)
		_ = bw.Flush()
		a, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(fast)))
		if err != nil {
			t.Fatalf("fast head for %q does not parse: %q: %v", head, fast, err)
		}
		b, err := http.ReadRequest(bufio.NewReader(&buf))
		if err != nil {
			t.Fatalf("net/http head for %q does not parse: %v", head, err)
		}
		type req struct {
			Method, URI, Host string
			Length            int64
			Header            http.Header
		}
		ra := req{a.Method, a.RequestURI, a.Host, a.ContentLength, a.Header}
		rb := req{b.Method, b.RequestURI, b.Host, b.ContentLength, b.Header}
		if diff := cmp.Diff(rb, ra); diff != "" {
			t.Fatalf("upstream heads for %q differ (-net/http +fast):\n%s", head, diff)
		}
	})
}

func TestHeadEnd(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest", 27},
		{"GET / HTTP/1.1\nHost: x\n\nrest", 24},
		{"GET / HTTP/1.1\r\nHost: x\n\r\n", 26},
		{"GET / HTTP/1.1\r\nHost: x\r\n", 0},
		{"\r\n", 0},
		{"", 0},
	}
	for _, tt := range tests {
		if got := headEnd([]byte(tt.in), 0); got != tt.want {
			t.Errorf("headEnd(%q) = %d, want %d", tt.in, got, tt.want)
		}
		// Resumed at every point of an earlier search that found nothing.
		for from := 0; from <= len(tt.in); from++ {
			if tt.want > 0 && from > tt.want-1 {
				break
			}
			if headEnd([]byte(tt.in[:from]), 0) != 0 {
				continue
			}
			if got := headEnd([]byte(tt.in), from); got != tt.want {
				t.Errorf("headEnd(%q, %d) = %d, want %d", tt.in, from, got, tt.want)
			}
		}
	}
}
