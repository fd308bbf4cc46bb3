package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
)

// h2Raw sends one HTTP/2 request with the given header fields (in order,
// pseudo-headers included) to the TLS front at addr and returns the
// response status (or error string).
func h2Raw(t *testing.T, addr string, fields [][2]string, data []byte) string {
	t.Helper()
	f, err := testutil.H2First(t, addr, fields, data, 5*time.Second)
	switch {
	case err != nil:
		return "error: " + err.Error()
	case f.Kind == "HEADERS":
		return f.Fields[":status"]
	case f.Kind == "RST_STREAM":
		return "rst: " + f.ErrCode
	case f.Kind == "GOAWAY":
		return "goaway: " + f.ErrCode
	}
	return "unexpected " + f.String()
}

func startH2Front(t *testing.T, p *Proxy) string {
	t.Helper()
	srv := NewServer(p, ServerConfig{TLSConfig: testServerTLS(t)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return ln.Addr().String()
}

// TestH2PseudoHeadersRefused: over HTTP/2 (NewServer, the Proxy as
// handler) net/http's server lets :method, :path and :authority carry
// spaces (tabs get RST_STREAM), and :path a fragment. The proxy wrote
// r.Method, r.RequestURI and r.Host verbatim into the HTTP/1.1 request
// line and Host field, so the upstream got a request line with extra words
// ("GET /public HTTP/1.0 HTTP/1.1") and an invalid Host. Such requests are
// now refused with 400 and nothing goes upstream; a clean one still does.
func TestH2PseudoHeadersRefused(t *testing.T) {
	up := newRawUp(t, func(r *http.Request) []string {
		return []string{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"}
	})
	p, err := New(up.url(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	addr := startH2Front(t, p)
	req := func(method, authority, path string) [][2]string {
		return [][2]string{{":method", method}, {":scheme", "https"}, {":authority", authority}, {":path", path}}
	}
	for _, c := range [][][2]string{
		req("GET", "app", "/public HTTP/1.0"),
		req("GET /admin", "app", "/public"),
		req("GET", "app x", "/public"),
		req("GET", "app", "/x#frag"),
	} {
		before := len(up.received())
		if st := h2Raw(t, addr, c, nil); st != "400" {
			t.Errorf("h2 request %v: status %s, want 400", c, st)
		}
		time.Sleep(50 * time.Millisecond)
		if got := up.received()[before:]; got != "" {
			line, _, _ := strings.Cut(got, "\r\n")
			t.Errorf("h2 request %v went upstream as %q", c, line)
		}
	}
	before := len(up.received())
	if st := h2Raw(t, addr, req("GET", "app", "/ok?q=1"), nil); st != "200" {
		t.Fatalf("clean h2 request: status %s", st)
	}
	for deadline := time.Now().Add(2 * time.Second); !strings.Contains(up.received()[before:], "\r\n\r\n"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("clean h2 request never reached the upstream")
		}
	}
	if line, _, _ := strings.Cut(up.received()[before:], "\r\n"); line != "GET /ok?q=1 HTTP/1.1" {
		t.Errorf("clean h2 request went upstream as %q", line)
	}
}

// TestH2UnknownLengthBody: an HTTP/2 request body without content-length
// goes to an HTTP/1.1 app with a Content-Length when it ends within one
// buffer and prebufferWait, so that an app reading only Content-Length
// (Python's http.server) does not take it for an empty body; chunked when
// it is longer or slower, whole either way; and a client that waits for
// the response before it sends the rest (full duplex) still gets it.
func TestH2UnknownLengthBody(t *testing.T) {
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		framing := "chunked"
		if r.ContentLength >= 0 {
			framing = "length " + strconv.FormatInt(r.ContentLength, 10)
		}
		if r.URL.Path == "/duplex" {
			// Answer the head at once, then echo line by line.
			_ = http.NewResponseController(w).EnableFullDuplex()
			w.Header().Set("X-Framing", framing)
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			br := bufio.NewReader(r.Body)
			for {
				line, err := br.ReadString('\n')
				if line != "" {
					_, _ = io.WriteString(w, line)
					w.(http.Flusher).Flush()
				}
				if err != nil {
					return
				}
			}
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%s %d %x", framing, len(b), sha256.Sum256(b))
	})
	u, err := url.Parse(newUpstream(t, app).URL)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(u, Config{})
	if err != nil {
		t.Fatal(err)
	}
	addr := h2iFront(t, p, ServerConfig{}) // h2 offered
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}

	// unknown hides the length from the client: no content-length.
	type unknown struct{ io.Reader }
	post := func(body io.Reader) string {
		t.Helper()
		req, err := http.NewRequest("POST", "https://"+addr+"/upload", unknown{body})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("the client spoke %s, not HTTP/2", resp.Proto)
		}
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	small := bytes.Repeat([]byte("form=field&"), 100)
	big := bytes.Repeat([]byte("0123456789abcdef"), 8192) // 128 KiB, past one buffer
	for _, tc := range []struct {
		name    string
		body    func() io.Reader
		want    []byte
		framing string
	}{
		{"small", func() io.Reader { return bytes.NewReader(small) }, small, fmt.Sprintf("length %d", len(small))},
		{"empty", func() io.Reader { return bytes.NewReader(nil) }, nil, "length 0"},
		{"longer than a buffer", func() io.Reader { return bytes.NewReader(big) }, big, "chunked"},
		{"slower than the wait", func() io.Reader {
			pr, pw := io.Pipe()
			go func() {
				_, _ = pw.Write(small[:10])
				time.Sleep(4 * prebufferWait)
				_, _ = pw.Write(small[10:])
				_ = pw.Close()
			}()
			return pr
		}, small, "chunked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := fmt.Sprintf("%s %d %x", tc.framing, len(tc.want), sha256.Sum256(tc.want))
			if got := post(tc.body()); got != want {
				t.Errorf("the app got %q, want %q", got, want)
			}
		})
	}

	t.Run("full duplex", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pw.Close()
		req, err := http.NewRequest("POST", "https://"+addr+"/duplex", unknown{pr})
		if err != nil {
			t.Fatal(err)
		}
		go func() { _, _ = pw.Write([]byte("first\n")) }() // once the client reads the body
		done := make(chan struct{})
		var resp *http.Response
		go func() {
			defer close(done)
			resp, err = client.Do(req)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("no response head while the client waits for it before sending more")
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if got := resp.Header.Get("X-Framing"); got != "chunked" {
			t.Errorf("framing %q, want chunked (the body was still open)", got)
		}
		br := bufio.NewReader(resp.Body)
		for _, line := range []string{"first\n", "second\n"} {
			if line != "first\n" {
				_, _ = pw.Write([]byte(line))
			}
			got, err := br.ReadString('\n')
			if got != line {
				t.Fatalf("echo %q, %v; want %q", got, err, line)
			}
		}
		// End the body first: the client's body writer, blocked reading
		// the pipe, would otherwise hold resp.Body.Close until Timeout.
		_ = pw.Close()
	})
	eventually(t, 5*time.Second, "no slot held", func() bool { return p.InFlight() == 0 })
}
