package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// drain reads and closes a response, and fails on a status other than 200,
// 204 or 503.
func drain(resp *http.Response, err error) error {
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("%s %s: %w", resp.Request.Method, resp.Request.URL.Path, err)
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusNoContent, http.StatusServiceUnavailable:
		return nil
	}
	return fmt.Errorf("%s %s: status %d", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode)
}

// TestHeadOfStreamNotReused: a HEAD to an endpoint that streams (a Go
// server-sent events handler runs on, its writes discarded, until its
// connection closes) gets a response head without a length while the
// upstream is still busy on that connection. The connection must not go
// back to the pool: the next request on it would wait for UpstreamTimeout
// and get 504. A monitor sending HEAD to an event stream did that.
func TestHeadOfStreamNotReused(t *testing.T) {
	checkGoroutines(t)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/events" {
			io.WriteString(w, "plain")
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for range 600 { // at most ~3 s: a failing run ends
			fmt.Fprint(w, "data: x\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			// Bounded waits, so that a failure is quick.
			env := newEnv(t, front, up, Config{UpstreamTimeout: 2 * time.Second})
			env.client.Timeout = 5 * time.Second
			for i := range 3 {
				resp, err := env.client.Head(env.url + "/events")
				if err != nil {
					t.Fatalf("HEAD %d: %v", i, err)
				}
				resp.Body.Close()
				if err := drain(env.client.Get(env.url + "/plain")); err != nil {
					t.Fatalf("GET after HEAD %d: %v", i, err)
				}
			}
		})
	}
}

// TestRefusedBodyNotReset: a request refused while its client is still
// sending the body (503 past MaxInFlight) reaches the client as a 503,
// not as a connection reset: the proxy closes such a connection only
// after shutting its write side and dropping what still comes, for a
// while, as net/http's server does. The goroutine front end closed at
// once, the unread body reset the connection, and the client, still
// writing, saw "connection reset by peer" and never the Retry-After.
func TestRefusedBodyNotReset(t *testing.T) {
	checkGoroutines(t)
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			release := make(chan struct{})
			up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/held" {
					<-release
				}
			})
			env := newEnv(t, front, up, Config{MaxInFlight: 1})
			held := make(chan error, 1)
			go func() { held <- drain(env.client.Get(env.url + "/held")) }()
			defer func() {
				close(release)
				if err := <-held; err != nil {
					t.Error(err)
				}
			}()
			eventually(t, 5*time.Second, "the slot taken", func() bool { return env.proxy.InFlight() == 1 })
			body := strings.Repeat("x", 512<<10) // more than the socket buffers take at once
			for i := range 30 {
				resp, err := env.client.Post(env.url+"/upload", "text/plain", strings.NewReader(body))
				if err != nil {
					t.Fatalf("upload %d: %v", i, err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
					t.Fatalf("upload %d: %d, Retry-After %q; want 503 with Retry-After", i, resp.StatusCode, resp.Header.Get("Retry-After"))
				}
			}
		})
	}
}
