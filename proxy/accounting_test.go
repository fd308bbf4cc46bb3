package proxy

import (
	"fmt"
	"io"
	"net/http"
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
