package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSlotAccounting: clients that mix every kind of exchange, at random
// and at once, past MaxInFlight and MaxStreams (responses of known and
// unknown length, streams read in part and dropped, HEAD, 204, upstreams
// that cut a response short, clients that give up mid-response, request
// bodies) leave no in-flight slot, stream or metrics count behind: a slot
// lost per odd exchange would end, after enough of them, with every
// request refused.
func TestSlotAccounting(t *testing.T) {
	checkGoroutines(t)
	up := http.HandlerFunc(accountingApp)
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			env := newEnv(t, front, up, Config{MaxInFlight: 4, MaxStreams: 3})
			env.client.Timeout = 5 * time.Second
			mixLoad(t, env.client, env.url, env.proxy, env.metrics)
		})
	}
}

// TestH2CSlotAccounting: the same mix, from HTTP/2 clients to an h2c
// upstream, where a stream cut short is reset rather than its connection
// closed.
func TestH2CSlotAccounting(t *testing.T) {
	checkGoroutines(t)
	up := startH2CUpstream(t, http.HandlerFunc(accountingApp), false)
	env := newH2CEnv(t, up, Config{MaxInFlight: 4, MaxStreams: 3})
	env.client.Timeout = 5 * time.Second
	mixLoad(t, env.client, "https://"+env.addr, env.proxy, env.metrics)
}

// mixLoad runs 12 clients doing 40 random exchanges each against base (a
// Proxy p in front of accountingApp with MaxInFlight 4 and MaxStreams 3),
// then checks that every slot and stream came back.
func mixLoad(t *testing.T, client *http.Client, base string, p *Proxy, m *countMetrics) {
	t.Helper()
	var subscribed atomic.Int64
	ops := []func(rng *rand.Rand) error{
		func(*rand.Rand) error { return drain(client.Get(base + "/length")) },
		func(*rand.Rand) error { return drain(client.Get(base + "/chunked")) },
		func(*rand.Rand) error { return drain(client.Head(base + "/events")) },
		func(*rand.Rand) error { return drain(client.Get(base + "/empty")) },
		func(*rand.Rand) error { _ = drain(client.Get(base + "/cut")); return nil },
		func(rng *rand.Rand) error {
			body := strings.Repeat("x", rng.IntN(100000))
			return drain(client.Post(base+"/echo", "text/plain", strings.NewReader(body)))
		},
		func(rng *rand.Rand) error {
			// A subscriber that reads a few events and leaves.
			resp, err := client.Get(base + "/events")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return nil // refused: fine here
			}
			subscribed.Add(1)
			br := bufio.NewReader(resp.Body)
			for range 1 + rng.IntN(6) {
				if _, err := br.ReadString('\n'); err != nil {
					return err
				}
			}
			return nil
		},
		func(rng *rand.Rand) error {
			// A client that gives up at a random moment.
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(20))*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events", nil)
			resp, err := client.Do(req)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			return nil
		},
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 12 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range 40 {
				if err := ops[rng.IntN(len(ops))](rng); err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The mix went past both limits.
	if m.refused.Load() == 0 || subscribed.Load() == 0 {
		t.Errorf("%d refusals, %d streams read: the mix did not reach the limits", m.refused.Load(), subscribed.Load())
	}
	t.Logf("%d requests, %d refused, %d streams read", m.requests.Load(), m.refused.Load(), subscribed.Load())
	eventually(t, 10*time.Second, "every slot and stream back", func() bool {
		return p.InFlight() == 0 && p.Streams() == 0 && m.inFlight.Load() == 0
	})
	// Nothing was lost: a plain request still passes.
	if err := drain(client.Get(base + "/length")); err != nil {
		t.Error(err)
	}
}

// accountingApp is TestSlotAccounting's upstream: every kind of response.
func accountingApp(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/length":
		w.Header().Set("Content-Length", "5")
		io.WriteString(w, "hello")
	case "/chunked":
		for i := range 3 {
			fmt.Fprintf(w, "part %d\n", i)
			w.(http.Flusher).Flush()
		}
	case "/events":
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 1000 { // at most ~5 s, so that a failing run ends
			if _, err := fmt.Fprintf(w, "data: %d\n\n", i); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	case "/empty":
		w.WriteHeader(http.StatusNoContent)
	case "/cut":
		// A response whose upstream goes away mid-body: the
		// connection closes (HTTP/1.1) or the stream is reset (HTTP/2).
		io.WriteString(w, "start")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	case "/echo":
		_, _ = io.Copy(w, r.Body)
	default:
		http.NotFound(w, r)
	}
}

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

// TestPlainHTTPOnTLSFront: a client that speaks plain HTTP to a TLS front
// (http:// typed for https://) is told so with a 400, as net/http's server
// tells it, instead of getting an empty reply.
func TestPlainHTTPOnTLSFront(t *testing.T) {
	checkGoroutines(t)
	env := newEnv(t, "serve-tls-listener", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), Config{})
	c, err := net.Dial("tcp", strings.TrimPrefix(env.url, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "HTTP request to an HTTPS server") {
		t.Errorf("plain HTTP to the TLS front: %d %q", resp.StatusCode, body)
	}
	// Anything else that is not TLS is closed without an answer.
	c2, err := net.Dial("tcp", strings.TrimPrefix(env.url, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c2, "SSH-2.0-OpenSSH_9.2\r\n")
	if b, _ := io.ReadAll(c2); len(b) != 0 {
		t.Errorf("a client that is neither TLS nor HTTP got %q", b)
	}
}
