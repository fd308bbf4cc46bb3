package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// echoHandler answers with what it received, as JSON-free text lines that
// the tests compare.
func echoHandler(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("X-Method", r.Method)
	w.Header().Set("X-URI", r.RequestURI)
	w.Header().Set("X-Host", r.Host)
	w.Header().Set("X-Body-Len", fmt.Sprint(len(body)))
	w.Header().Set("X-TE", strings.Join(r.TransferEncoding, ","))
	w.Header().Set("X-CL", fmt.Sprint(r.ContentLength))
	for _, k := range []string{"X-Hop", "Keep-Alive", "X-Custom", "Te", "Proxy-Authorization", "Expect"} {
		if v, ok := r.Header[k]; ok {
			w.Header().Set("X-Got-"+k, strings.Join(v, ","))
		}
	}
	_, _ = w.Write(body)
}

func TestForward(t *testing.T) {
	checkGoroutines(t)
	tests := []struct {
		name     string
		method   string
		path     string
		body     string
		chunked  bool // send the body without Content-Length
		header   http.Header
		want     map[string]string // response headers
		wantBody string
	}{
		{
			name: "get with query", method: "GET", path: "/a/b%2Fc?x=1&y=%20",
			want: map[string]string{"X-Method": "GET", "X-Uri": "/a/b%2Fc?x=1&y=%20", "X-Body-Len": "0"},
		},
		{
			name: "post with length", method: "POST", path: "/p", body: "hello body",
			want:     map[string]string{"X-Method": "POST", "X-Body-Len": "10", "X-Cl": "10"},
			wantBody: "hello body",
		},
		{
			name: "post chunked", method: "POST", path: "/p", body: strings.Repeat("z", 100000), chunked: true,
			want:     map[string]string{"X-Body-Len": "100000", "X-Te": "chunked"},
			wantBody: strings.Repeat("z", 100000),
		},
		{
			name: "empty post", method: "POST", path: "/p",
			want: map[string]string{"X-Body-Len": "0", "X-Cl": "0"},
		},
		{
			name: "head", method: "HEAD", path: "/h",
			want: map[string]string{"X-Method": "HEAD"},
		},
		{
			name: "hop-by-hop removed", method: "GET", path: "/",
			header: http.Header{
				"Connection":          {"X-Hop, keep-alive"},
				"X-Hop":               {"1"},
				"Keep-Alive":          {"timeout=5"},
				"X-Custom":            {"a", "b"},
				"Proxy-Authorization": {"secret"},
				"Te":                  {"trailers, deflate"},
			},
			want: map[string]string{"X-Got-X-Custom": "a,b", "X-Got-Te": "trailers", "X-Got-X-Hop": "", "X-Got-Keep-Alive": "", "X-Got-Proxy-Authorization": ""},
		},
	}
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			env := newEnv(t, front, http.HandlerFunc(echoHandler), Config{})
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					var body io.Reader
					if tt.body != "" {
						body = strings.NewReader(tt.body)
						if tt.chunked {
							body = io.MultiReader(body) // hides the length
						}
					}
					req, err := http.NewRequest(tt.method, env.url+tt.path, body)
					if err != nil {
						t.Fatal(err)
					}
					for k, v := range tt.header {
						req.Header[k] = v
					}
					resp, err := env.client.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					defer resp.Body.Close()
					gotBody, err := io.ReadAll(resp.Body)
					if err != nil {
						t.Fatal(err)
					}
					if resp.StatusCode != 200 {
						t.Fatalf("status %d", resp.StatusCode)
					}
					got := make(map[string]string)
					for k := range tt.want {
						got[k] = resp.Header.Get(k)
					}
					if diff := cmp.Diff(tt.want, got); diff != "" {
						t.Errorf("headers (-want +got):\n%s\nall: %v\nlogs:\n%s", diff, resp.Header, env.logs)
					}
					if string(gotBody) != tt.wantBody {
						t.Errorf("body: got %d bytes, want %d", len(gotBody), len(tt.wantBody))
					}
				})
			}
		})
	}
}

func TestResponseHeadersAndTrailers(t *testing.T) {
	checkGoroutines(t)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Secret")
		w.Header().Set("X-Secret", "hop")
		w.Header().Set("Keep-Alive", "timeout=1")
		w.Header().Add("Set-Cookie", "a=1")
		w.Header().Add("Set-Cookie", "b=2")
		w.Header().Set("Trailer", "X-Sum")
		w.WriteHeader(201)
		_, _ = io.WriteString(w, "part1")
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, "part2")
		w.Header().Set("X-Sum", "42")
	})
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			env := newEnv(t, front, up, Config{})
			resp, err := env.client.Get(env.url + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]any{
				"status":  resp.StatusCode,
				"body":    string(body),
				"cookies": resp.Header.Values("Set-Cookie"),
				"secret":  resp.Header.Get("X-Secret"),
				"ka":      resp.Header.Get("Keep-Alive"),
				"trailer": resp.Trailer.Get("X-Sum"),
			}
			want := map[string]any{
				"status": 201, "body": "part1part2", "cookies": []string{"a=1", "b=2"},
				"secret": "", "ka": "", "trailer": "42",
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestTargetPathAndHost(t *testing.T) {
	checkGoroutines(t)
	up := httptest.NewServer(http.HandlerFunc(echoHandler))
	defer up.Close()
	tests := []struct {
		name, target, host, path, wantURI, wantHost string
	}{
		{"prefix", up.URL + "/api", "", "/v1?q=1", "/api/v1?q=1", ""},
		{"prefix slash", up.URL + "/api/", "", "/", "/api/", ""},
		{"fixed host", up.URL, "app.internal", "/x", "/x", "app.internal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target, _ := url.Parse(tt.target)
			p, err := New(target, Config{Host: tt.host})
			if err != nil {
				t.Fatal(err)
			}
			base := serveFront(t, p, "serve")
			resp, err := http.Get(base + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			wantHost := tt.wantHost
			if wantHost == "" {
				wantHost = strings.TrimPrefix(base, "http://")
			}
			got := []string{resp.Header.Get("X-Uri"), resp.Header.Get("X-Host")}
			if diff := cmp.Diff([]string{tt.wantURI, wantHost}, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestForwardedHeaders(t *testing.T) {
	checkGoroutines(t)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"} {
			w.Header()["Got-"+k] = r.Header[k]
		}
	})
	forged := http.Header{
		"X-Forwarded-For":   {"6.6.6.6"},
		"X-Forwarded-Host":  {"evil"},
		"X-Forwarded-Proto": {"https"},
		"Forwarded":         {"for=6.6.6.6"},
	}
	for _, front := range fronts {
		for _, trust := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/trust=%v", front, trust), func(t *testing.T) {
				env := newEnv(t, front, up, Config{TrustForwarded: trust})
				req, _ := http.NewRequest("GET", env.url+"/", nil)
				req.Host = "example.com:8080"
				for k, v := range forged {
					req.Header[k] = v
				}
				resp, err := env.client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				got := map[string][]string{}
				for k, v := range resp.Header {
					if strings.HasPrefix(k, "Got-") {
						got[strings.TrimPrefix(k, "Got-")] = v
					}
				}
				proto := "http"
				if strings.HasPrefix(front, "serve-tls") {
					proto = "https"
				}
				want := map[string][]string{
					"X-Forwarded-For":   {"127.0.0.1"},
					"X-Forwarded-Host":  {"example.com:8080"},
					"X-Forwarded-Proto": {proto},
					"Forwarded":         {`for=127.0.0.1;host="example.com:8080";proto=` + proto},
				}
				if trust {
					want = map[string][]string{
						"X-Forwarded-For":   {"6.6.6.6, 127.0.0.1"},
						"X-Forwarded-Host":  {"evil"},
						"X-Forwarded-Proto": {"https"},
						"Forwarded":         {`for=6.6.6.6, for=127.0.0.1;host="example.com:8080";proto=` + proto},
					}
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("(-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestWriteForwarded(t *testing.T) {
	tests := []struct {
		name, remote, host string
		tls                bool
		want               string
	}{
		{"ipv4", "192.0.2.1:1234", "h", false,
			"X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Host: h\r\nX-Forwarded-Proto: http\r\nForwarded: for=192.0.2.1;host=h;proto=http\r\n"},
		{"ipv6 tls", "[2001:db8::1]:443", "h.example", true,
			"X-Forwarded-For: 2001:db8::1\r\nX-Forwarded-Host: h.example\r\nX-Forwarded-Proto: https\r\nForwarded: for=\"[2001:db8::1]\";host=h.example;proto=https\r\n"},
		{"mapped v4", "[::ffff:192.0.2.9]:1", "", false,
			"X-Forwarded-For: 192.0.2.9\r\nX-Forwarded-Proto: http\r\nForwarded: for=192.0.2.9;proto=http\r\n"},
		{"unix socket peer", "@", "h", false,
			"X-Forwarded-Host: h\r\nX-Forwarded-Proto: http\r\nForwarded: for=unknown;host=h;proto=http\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: tt.remote, Host: tt.host, Header: http.Header{}}
			if tt.tls {
				r.TLS = &tls.ConnectionState{}
			}
			var b bytes.Buffer
			bw := bufio.NewWriter(&b)
			writeForwarded(bw, r, false)
			_ = bw.Flush()
			if diff := cmp.Diff(tt.want, b.String()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestConnTokens(t *testing.T) {
	tests := []struct {
		in      []string
		want    []string
		upgrade bool
	}{
		{nil, nil, false},
		{[]string{"close"}, nil, false},
		{[]string{"Upgrade, X-A", " x-b ,,keep-alive"}, []string{"X-A", "x-b"}, true},
		{[]string{"a,b,c,d,e,f,g,h,i,j"}, []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}, false},
	}
	for _, tt := range tests {
		var tok connTokens
		tok.parse(tt.in)
		got := append(append([]string(nil), tok.names[:tok.n]...), tok.more...)
		if len(got) == 0 {
			got = nil
		}
		if diff := cmp.Diff(tt.want, got); diff != "" || tok.upgrade != tt.upgrade {
			t.Errorf("parse(%q): (-want +got):\n%s upgrade=%v", tt.in, diff, tok.upgrade)
		}
		for _, n := range tt.want {
			if !tok.has(strings.ToUpper(n)) {
				t.Errorf("has(%q) = false", n)
			}
		}
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name   string
		target string
		cfg    Config
	}{
		{"no host", "http:///x", Config{}},
		{"scheme", "ftp://h", Config{}},
		{"query", "http://h/?a=1", Config{}},
		{"user", "http://u:p@h/", Config{}},
		{"unix with host", "unix://h/sock", Config{}},
		{"negative MaxConns", "http://h", Config{MaxConns: -1}},
		{"negative QueueSize", "http://h", Config{QueueSize: -1}},
		{"tiny buffer", "http://h", Config{BufferSize: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := url.Parse(tt.target)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := New(u, tt.cfg); err == nil || !strings.HasPrefix(err.Error(), "proxy: ") {
				t.Errorf("New(%q) error = %v, want one prefixed with \"proxy: \"", tt.target, err)
			}
		})
	}
	if _, err := New(nil, Config{}); err == nil {
		t.Error("New(nil) succeeded")
	}
}

func TestClose(t *testing.T) {
	checkGoroutines(t)
	env := newEnv(t, "serve", http.HandlerFunc(echoHandler), Config{})
	resp, err := env.client.Get(env.url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := env.proxy.Close(); err != nil {
		t.Fatal(err)
	}
	if err := env.proxy.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := env.proxy.Serve(ln); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve after Close = %v, want net.ErrClosed", err)
	}
	// The handler answers 503 after Close.
	rec := httptest.NewRecorder()
	env.proxy.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("ServeHTTP after Close: %d, want 503", rec.Code)
	}
}

func TestUnixUpstreamAndDialContext(t *testing.T) {
	checkGoroutines(t)
	sock := filepath.Join(t.TempDir(), "app.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(echoHandler)}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	defer func() { _ = srv.Close(); <-done }()

	// unix:// target.
	p, err := New(&url.URL{Scheme: "unix", Path: sock}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	base := serveFront(t, p, "serve")
	resp, err := http.Get(base + "/u")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("X-Uri"); got != "/u" {
		t.Errorf("unix target: X-Uri %q", got)
	}

	// An http target reached through DialContext.
	var dials atomic.Int32
	p2, err := New(&url.URL{Scheme: "http", Host: "app"}, Config{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	base2 := serveFront(t, p2, "handler")
	for range 3 {
		resp, err := http.Get(base2 + "/d")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("DialContext called %d times for 3 sequential requests, want 1 (reuse)", n)
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestConnectionReuseAndMaxConns(t *testing.T) {
	checkGoroutines(t)
	var open, peak atomic.Int32
	release := make(chan struct{})
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
	}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			n := open.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	up.Start()
	defer up.Close()
	target, _ := url.Parse(up.URL)
	p, err := New(target, Config{MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	base := serveFront(t, p, "serve")
	var wg sync.WaitGroup
	codes := make([]int, 3)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(base + "/slow")
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			codes[i] = resp.StatusCode
		}()
	}
	time.Sleep(100 * time.Millisecond)
	close(release)
	wg.Wait()
	if diff := cmp.Diff([]int{200, 200, 200}, codes); diff != "" {
		t.Errorf("codes (-want +got):\n%s", diff)
	}
	if got := peak.Load(); got != 1 {
		t.Errorf("peak upstream connections %d, want 1 (MaxConns)", got)
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestIdleConnClosedByUpstream(t *testing.T) {
	checkGoroutines(t)
	for _, check := range []string{"peek", "retry"} {
		t.Run(check, func(t *testing.T) {
			up := httptest.NewUnstartedServer(http.HandlerFunc(echoHandler))
			up.Config.IdleTimeout = 20 * time.Millisecond // like Node.js's short keep-alive
			up.Start()
			defer up.Close()
			target, _ := url.Parse(up.URL)
			p, err := New(target, Config{})
			if err != nil {
				t.Fatal(err)
			}
			if check == "retry" {
				p.aliveCheckAfter = time.Hour // skip the peek: the request fails and is resent
			} else {
				p.aliveCheckAfter = 0
			}
			base := serveFront(t, p, "serve")
			c := &http.Client{Transport: &http.Transport{}}
			defer c.CloseIdleConnections()
			for i := range 3 {
				resp, err := c.Get(base + "/")
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("request %d: status %d", i, resp.StatusCode)
				}
				time.Sleep(60 * time.Millisecond) // the upstream closes the idle connection
			}
		})
	}
}

// TestPutBufDropsPartial: a buffer given back shortened (as the event
// loop's pending-write buffer once was) never comes out of the pool: a
// request body copied into it would read nothing for ever.
func TestPutBufDropsPartial(t *testing.T) {
	u, _ := url.Parse("http://127.0.0.1:1")
	p, err := New(u, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	b := p.getBuf()
	*b = (*b)[:0]
	p.putBuf(b)
	for range 100 {
		got := p.getBuf()
		if len(*got) != p.cfg.BufferSize {
			t.Fatalf("the pool gave a buffer of %d bytes, want %d", len(*got), p.cfg.BufferSize)
		}
		defer p.putBuf(got)
	}
}
