package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// localHandlers are the embedding program's own endpoints in the intercept
// tests.
func localHandlers(t *testing.T, flushed chan struct{}) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/local/json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"path": r.URL.Path, "remote": r.RemoteAddr != "", "ctx": r.Context().Err() == nil})
	})
	mux.HandleFunc("/local/big", func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 512) // 8 KiB
		for range 128 {                                        // 1 MiB
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/local/flush", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		select {
		case <-flushed: // the client has read "first": it was not held back
		case <-time.After(5 * time.Second):
			t.Error("flushed part did not reach the client")
		}
		_, _ = io.WriteString(w, "second")
	})
	mux.HandleFunc("/local/echo", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
	})
	mux.HandleFunc("/local/panic", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "partial")
		panic("boom")
	})
	mux.HandleFunc("/local/rc", func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if err := rc.SetWriteDeadline(time.Now().Add(time.Minute)); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		_, _ = io.WriteString(w, "a")
		if err := rc.Flush(); err != nil {
			t.Errorf("ResponseController.Flush: %v", err)
		}
		_, _ = io.WriteString(w, "b")
	})
	return mux
}

func TestIntercept(t *testing.T) {
	checkGoroutines(t)
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Upstream", "1")
				_, _ = io.WriteString(w, "from upstream "+r.URL.Path)
			})
			flushed := make(chan struct{})
			local := localHandlers(t, flushed)
			env := newEnv(t, front, up, Config{Intercept: func(r *http.Request) http.Handler {
				if strings.HasPrefix(r.URL.Path, "/local/") {
					return local
				}
				return nil
			}})
			var reused atomic.Int32
			get := func(method, path string, body io.Reader, hdr http.Header) (*http.Response, string) {
				t.Helper()
				req, _ := http.NewRequest(method, env.url+path, body)
				for k, v := range hdr {
					req.Header[k] = v
				}
				req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
					GotConn: func(i httptrace.GotConnInfo) {
						if i.Reused {
							reused.Add(1)
						}
					},
				}))
				resp, err := env.client.Do(req)
				if err != nil {
					t.Fatalf("%s %s: %v", method, path, err)
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatalf("%s %s: body: %v", method, path, err)
				}
				return resp, string(b)
			}

			// JSON, small: Content-Length, kept alive.
			resp, body := get("GET", "/local/json", nil, nil)
			var got map[string]any
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("json body %q: %v", body, err)
			}
			if diff := cmp.Diff(map[string]any{"path": "/local/json", "remote": true, "ctx": true}, got); diff != "" {
				t.Errorf("json (-want +got):\n%s", diff)
			}
			if resp.ContentLength != int64(len(body)) || resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Date") == "" {
				t.Errorf("json: Content-Length %d (body %d), Content-Type %q, Date %q", resp.ContentLength, len(body), resp.Header.Get("Content-Type"), resp.Header.Get("Date"))
			}
			if resp.Header.Get("X-Upstream") != "" {
				t.Error("intercepted request reached the upstream")
			}
			jsonLen := resp.ContentLength

			// HEAD: the same length, no body.
			resp, body = get("HEAD", "/local/json", nil, nil)
			if resp.StatusCode != 200 || body != "" || resp.ContentLength != jsonLen {
				t.Errorf("HEAD: status %d, body %q, Content-Length %d; want 200, empty, %d", resp.StatusCode, body, resp.ContentLength, jsonLen)
			}

			// Large streamed body: chunked, intact.
			resp, body = get("GET", "/local/big", nil, nil)
			if want := strings.Repeat("0123456789abcdef", 512*128); body != want {
				t.Errorf("big body: %d bytes, want %d (equal: %v)", len(body), len(want), body == want)
			}
			if resp.ContentLength != -1 || len(resp.TransferEncoding) == 0 {
				t.Errorf("big body: Content-Length %d, Transfer-Encoding %v; want chunked", resp.ContentLength, resp.TransferEncoding)
			}

			// Flush sends what was written before the handler returns.
			func() {
				resp, err := env.client.Get(env.url + "/local/flush")
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				buf := make([]byte, 5)
				if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first" {
					t.Fatalf("flushed part: %q, %v", buf, err)
				}
				close(flushed)
				rest, err := io.ReadAll(resp.Body)
				if err != nil || string(rest) != "second" {
					t.Errorf("rest: %q, %v", rest, err)
				}
			}()

			// ResponseController works on the writer.
			if _, body = get("GET", "/local/rc", nil, nil); body != "ab" {
				t.Errorf("ResponseController handler: body %q, want ab", body)
			}

			// A handler that reads the request body, with and without
			// 100-continue.
			up100 := bytes.Repeat([]byte("x"), 100000)
			sum := sha256.Sum256(up100)
			want := fmt.Sprintf("%d %s", len(up100), hex.EncodeToString(sum[:]))
			for _, hdr := range []http.Header{nil, {"Expect": {"100-continue"}}} {
				if _, body = get("POST", "/local/echo", bytes.NewReader(up100), hdr); body != want {
					t.Errorf("echo (header %v): %q, want %q", hdr, body, want)
				}
			}

			// Everything else is forwarded.
			resp, body = get("GET", "/app", nil, nil)
			if body != "from upstream /app" || resp.Header.Get("X-Upstream") != "1" {
				t.Errorf("forwarded: %q, X-Upstream %q", body, resp.Header.Get("X-Upstream"))
			}
			if reused.Load() == 0 {
				t.Error("no connection was reused: keep-alive lost")
			}

			// A panic closes the connection and is logged; the next request works.
			req, _ := http.NewRequest("GET", env.url+"/local/panic", nil)
			if resp, err := env.client.Do(req); err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil {
					t.Errorf("panicking handler: got a whole response, status %d", resp.StatusCode)
				}
			}
			if front != "handler" && !strings.Contains(env.logs.String(), "boom") {
				t.Errorf("panic not logged:\n%s", env.logs)
			}
			if _, body = get("GET", "/local/json", nil, nil); !strings.Contains(body, "/local/json") {
				t.Errorf("after panic: %q", body)
			}
			if n := env.metrics.requests.Load(); n != 1 {
				t.Errorf("metrics counted %d requests, want 1 (the forwarded one)", n)
			}
		})
	}
}

// TestInterceptNoSlot checks that intercepted requests are served when
// every in-flight slot is taken.
func TestInterceptNoSlot(t *testing.T) {
	checkGoroutines(t)
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			release := make(chan struct{})
			arrived := make(chan struct{}, 1)
			up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				arrived <- struct{}{}
				<-release
			})
			env := newEnv(t, front, up, Config{MaxInFlight: 1, Intercept: func(r *http.Request) http.Handler {
				if r.URL.Path == "/health" {
					return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
				}
				return nil
			}})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := env.client.Get(env.url + "/held")
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
			}()
			<-arrived
			resp, err := env.client.Get(env.url + "/health")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "ok" {
				t.Errorf("/health with no free slot: %d %q", resp.StatusCode, b)
			}
			resp, err = env.client.Get(env.url + "/other")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Errorf("forwarded request with no free slot: %d, want 503", resp.StatusCode)
			}
			close(release)
			wg.Wait()
		})
	}
}

// TestInterceptServeProtocol checks the HTTP/1.1 that Serve's writer
// produces, byte by byte where it matters.
func TestInterceptServeProtocol(t *testing.T) {
	checkGoroutines(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/small", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "<html>hi</html>") })
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "abc")
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, "def")
	})
	mux.HandleFunc("/trailer", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		_, _ = io.WriteString(w, "data")
		w.Header().Set("X-Sum", "42")
		w.Header().Set(http.TrailerPrefix+"X-Late", "7")
	})
	mux.HandleFunc("/nocontent", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
		if _, err := w.Write([]byte("x")); err != http.ErrBodyNotAllowed {
			t.Errorf("Write after 204: %v, want ErrBodyNotAllowed", err)
		}
	})
	mux.HandleFunc("/short", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		_, _ = io.WriteString(w, "abc")
		if _, err := io.WriteString(w, "12345678"); err != http.ErrContentLength {
			t.Errorf("Write past Content-Length: %v, want ErrContentLength", err)
		}
	})
	mux.HandleFunc("/early", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusEarlyHints)
		_, _ = io.WriteString(w, "done")
	})
	mux.HandleFunc("/unread", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ignored body") })
	mux.HandleFunc("/header", func(w http.ResponseWriter, r *http.Request) {
		w.Header()["X-Bad"] = []string{"a\r\nInjected: 1"}
		w.Header()["Bad Name"] = []string{"x"}
		w.Header()["Date"] = nil
		w.Header().Set("Connection", "close")
	})
	env := newEnv(t, "serve", http.NotFoundHandler(), Config{Intercept: func(r *http.Request) http.Handler { return mux }})
	addr := strings.TrimPrefix(env.url, "http://")
	tests := []struct {
		name string
		req  string
		want []string // substrings of the reply, in order
		not  []string
	}{
		{"small body: length and sniffed type, kept alive",
			"GET /small HTTP/1.1\r\nHost: x\r\n\r\nGET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			[]string{"HTTP/1.1 200 OK\r\n", "Content-Type: text/html; charset=utf-8\r\n", "Content-Length: 15\r\n", "\r\n<html>hi</html>HTTP/1.1 200 OK", "Connection: close\r\n", "<html>hi</html>"},
			[]string{"chunked"}},
		{"flushed: chunked", "GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			[]string{"Transfer-Encoding: chunked\r\n", "\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"}, []string{"Content-Length"}},
		{"http/1.0 flushed: until close", "GET /stream HTTP/1.0\r\n\r\n",
			[]string{"Connection: close\r\n", "\r\nabcdef"}, []string{"chunked"}},
		{"head small", "HEAD /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			[]string{"Content-Length: 15\r\n"}, []string{"<html>"}},
		{"trailers", "GET /trailer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			[]string{"Trailer: X-Sum\r\n", "Transfer-Encoding: chunked\r\n", "4\r\ndata\r\n0\r\n", "\r\n\r\n"}, nil},
		{"204", "GET /nocontent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			[]string{"HTTP/1.1 204 No Content\r\n"}, []string{"Content-Length", "chunked", "\r\n\r\nx"}},
		{"short of Content-Length: closed", "GET /short HTTP/1.1\r\nHost: x\r\n\r\nGET /small HTTP/1.1\r\nHost: x\r\n\r\n",
			[]string{"Content-Length: 10\r\n", "Connection: close\r\n", "\r\nabc"}, []string{"<html>"}},
		{"103 then 200", "GET /early HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			[]string{"HTTP/1.1 103 Early Hints\r\n\r\n", "HTTP/1.1 200 OK\r\n", "done"}, nil},
		{"unread small body dropped, connection kept",
			"POST /unread HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			[]string{"ignored body", "<html>hi</html>"}, []string{"400"}},
		{"unread body after 100-continue not sent: closed",
			"POST /unread HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
			[]string{"Connection: close\r\n", "ignored body"}, []string{"100 Continue"}},
		{"header values sanitised", "GET /header HTTP/1.1\r\nHost: x\r\n\r\n",
			[]string{"X-Bad: a  Injected: 1\r\n", "Connection: close\r\n"}, []string{"\r\nInjected", "Bad Name", "Date:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkReply(t, rawRequest(t, addr, tt.req, 3*time.Second), tt.want, tt.not)
		})
	}
	// The trailers themselves: through a client that parses them.
	resp, err := env.client.Get(env.url + "/trailer")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if diff := cmp.Diff(http.Header{"X-Sum": {"42"}, "X-Late": {"7"}}, resp.Trailer); diff != "" {
		t.Errorf("trailers (-want +got):\n%s", diff)
	}
}

// TestInterceptPaths checks that Config.InterceptPaths limits Intercept to
// its paths (decoded, as r.URL.Path) on every front end, and that New
// refuses a path without a leading slash.
func TestInterceptPaths(t *testing.T) {
	checkGoroutines(t)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "upstream")
	})
	local := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "local")
	})
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			var mu sync.Mutex
			asked := map[string]bool{}
			env := newEnv(t, front, up, Config{
				Intercept: func(r *http.Request) http.Handler {
					mu.Lock()
					asked[r.URL.Path] = true
					mu.Unlock()
					return local
				},
				InterceptPaths: []string{"/local/", "/x"},
			})
			for _, tc := range []struct{ path, want string }{
				{"/local", "local"},
				{"/local/a?b=c", "local"},
				{"/%6cocal/a", "local"},
				{"/x", "local"},
				{"/localx", "upstream"},
				{"/loca", "upstream"},
				{"/y/../local", "upstream"},
				{"/", "upstream"},
				{"/xy?/x", "upstream"},
			} {
				resp, err := env.client.Get(env.url + tc.path)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != tc.want {
					t.Errorf("%s: %q, want %q", tc.path, b, tc.want)
				}
			}
			// The loops ask again after handing a request off: a set.
			mu.Lock()
			defer mu.Unlock()
			if want := map[string]bool{"/local": true, "/local/a": true, "/x": true}; !maps.Equal(asked, want) {
				t.Errorf("Intercept asked about %v, want %v", asked, want)
			}
		})
	}
	if _, err := New(&url.URL{Scheme: "http", Host: "x"}, Config{InterceptPaths: []string{"local"}}); err == nil {
		t.Error("New accepted InterceptPaths without a leading slash")
	}
}
