package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/net/websocket"

	"github.com/quenchnet/quench/internal/testutil"
)

func TestOverload(t *testing.T) {
	checkGoroutines(t)
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			release := make(chan struct{})
			var arrived atomic.Int32
			up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				arrived.Add(1)
				<-release
			})
			env := newEnv(t, front, up, Config{MaxInFlight: 2, RetryAfter: 1500 * time.Millisecond})
			var wg sync.WaitGroup
			held := make([]int, 2)
			for i := range held {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, err := env.client.Get(env.url + "/held")
					if err != nil {
						t.Error(err)
						return
					}
					resp.Body.Close()
					held[i] = resp.StatusCode
				}()
			}
			eventually(t, 5*time.Second, "two requests at the upstream", func() bool { return arrived.Load() == 2 })

			// Past the limit: refused at once, with Retry-After, nothing queued.
			for i := range 5 {
				start := time.Now()
				resp, err := env.client.Get(env.url + "/refused")
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "2" {
					t.Errorf("refusal %d: status %d, Retry-After %q; want 503, 2", i, resp.StatusCode, resp.Header.Get("Retry-After"))
				}
				if d := time.Since(start); d > time.Second {
					t.Errorf("refusal %d took %v", i, d)
				}
			}
			if got := env.proxy.InFlight(); got != 2 {
				t.Errorf("InFlight() = %d, want 2", got)
			}
			close(release)
			wg.Wait()
			if diff := cmp.Diff([]int{200, 200}, held); diff != "" {
				t.Errorf("held requests (-want +got):\n%s", diff)
			}
			eventually(t, 5*time.Second, "in-flight back to 0", func() bool { return env.metrics.inFlight.Load() == 0 })
			if got := env.metrics.refused.Load(); got != 5 {
				t.Errorf("Refused() called %d times, want 5", got)
			}
			if got := arrived.Load(); got != 2 {
				t.Errorf("%d requests reached the upstream, want 2", got)
			}
		})
	}
}

func TestQueue(t *testing.T) {
	for _, front := range serveFronts {
		t.Run(front, func(t *testing.T) { testQueue(t, front) })
	}
}

func testQueue(t *testing.T, front string) {
	checkGoroutines(t)
	release := make(chan struct{})
	var arrived atomic.Int32
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if arrived.Add(1) == 1 {
			<-release
		}
	})
	env := newEnv(t, front, up, Config{MaxInFlight: 1, QueueSize: 1, QueueTimeout: 2 * time.Second})
	get := func(path string, code *int, wg *sync.WaitGroup) {
		defer wg.Done()
		resp, err := env.client.Get(env.url + path)
		if err != nil {
			t.Error(err)
			return
		}
		resp.Body.Close()
		*code = resp.StatusCode
	}
	var wg sync.WaitGroup
	var first, queued, refused int
	wg.Add(1)
	go get("/first", &first, &wg)
	eventually(t, 5*time.Second, "first request at the upstream", func() bool { return arrived.Load() == 1 })
	wg.Add(1)
	go get("/queued", &queued, &wg)
	eventually(t, 5*time.Second, "a queued request", func() bool { return env.proxy.lim.queued.Load() == 1 })
	wg.Add(1)
	get("/refused", &refused, &wg) // the queue is full
	close(release)
	wg.Wait()
	if diff := cmp.Diff([]int{200, 200, 503}, []int{first, queued, refused}); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}

	// A queued request that waits longer than QueueTimeout is refused.
	l := newLimiter(1, 1, 20*time.Millisecond, -1)
	if !l.acquire(context.Background()) {
		t.Fatal("first acquire failed")
	}
	start := time.Now()
	if l.acquire(context.Background()) {
		t.Error("second acquire succeeded past the limit")
	}
	if d := time.Since(start); d < 20*time.Millisecond || d > time.Second {
		t.Errorf("queued acquire gave up after %v, want about 20ms", d)
	}
}

func TestClientDisconnectCancelsUpstream(t *testing.T) {
	checkGoroutines(t)
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			arrived := make(chan struct{})
			canceled := make(chan struct{})
			up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(arrived)
				select {
				case <-r.Context().Done(): // the proxy closed the upstream connection
					close(canceled)
				case <-time.After(10 * time.Second):
				}
			})
			env := newEnv(t, front, up, Config{})
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() {
				req, _ := http.NewRequestWithContext(ctx, "GET", env.url+"/wait", nil)
				resp, err := env.client.Do(req)
				if err == nil {
					resp.Body.Close()
				}
				errc <- err
			}()
			<-arrived
			cancel()
			if err := <-errc; !isCanceled(err) {
				t.Errorf("client error %v, want cancellation", err)
			}
			select {
			case <-canceled:
			case <-time.After(3 * clientCheckInterval):
				t.Fatal("upstream request not cancelled after the client went away")
			}
			eventually(t, 5*time.Second, "request recorded as 499", func() bool {
				env.metrics.mu.Lock()
				defer env.metrics.mu.Unlock()
				return env.metrics.codes[499] == 1
			})
		})
	}
}

func TestClientDisconnectMidBody(t *testing.T) {
	checkGoroutines(t)
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			bodyErr := make(chan error, 1)
			up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, err := io.Copy(io.Discard, r.Body)
				bodyErr <- err
			})
			env := newEnv(t, front, up, Config{})
			c, err := dialFrontErr(t, env.url)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
			_, _ = c.Write(make([]byte, 100000))
			time.Sleep(50 * time.Millisecond) // let the body start streaming upstream
			_ = c.Close()
			select {
			case err := <-bodyErr:
				if err == nil {
					t.Error("upstream read the whole body, want an error: the body was cut short")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("upstream still reading a body the client abandoned")
			}
			eventually(t, 5*time.Second, "in-flight back to 0", func() bool { return env.metrics.inFlight.Load() == 0 })
		})
	}
}

func TestUpstreamFailures(t *testing.T) {
	checkGoroutines(t)
	t.Run("down", func(t *testing.T) {
		for _, front := range fronts {
			env := newEnv(t, front, nil, Config{})
			resp, err := env.client.Get(env.url + "/x")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("%s: status %d, want 502", front, resp.StatusCode)
			}
			if logs := env.logs.String(); !strings.Contains(logs, "proxy: upstream error") || !strings.Contains(logs, "level=WARN") {
				t.Errorf("%s: no upstream error logged at WARN:\n%s", front, logs)
			}
			if n := env.metrics.upstreamErrors.Load(); n != 1 {
				t.Errorf("%s: UpstreamError() called %d times, want 1", front, n)
			}
		}
	})
	t.Run("dies mid-body", func(t *testing.T) {
		up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
			_ = brw.Flush()
			_ = c.Close()
		})
		for _, front := range fronts {
			env := newEnv(t, front, up, Config{})
			// The client must see an error, never a short body taken for
			// a whole one: either the response never starts or it is cut.
			resp, err := env.client.Get(env.url + "/x")
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			if err == nil {
				t.Errorf("%s: a truncated response reached the client as a complete one", front)
			}
			eventually(t, 5*time.Second, "upstream error counted", func() bool { return env.metrics.upstreamErrors.Load() == 1 })
		}
	})
	t.Run("timeout", func(t *testing.T) {
		up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		})
		for _, front := range fronts {
			env := newEnv(t, front, up, Config{UpstreamTimeout: 50 * time.Millisecond})
			resp, err := env.client.Get(env.url + "/x")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusGatewayTimeout {
				t.Errorf("%s: status %d, want 504", front, resp.StatusCode)
			}
		}
	})
	t.Run("garbage", func(t *testing.T) {
		up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.WriteString(c, "NOT HTTP AT ALL\r\n\r\n")
			_ = c.Close()
		})
		for _, front := range fronts {
			env := newEnv(t, front, up, Config{})
			resp, err := env.client.Get(env.url + "/x")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("%s: status %d, want 502", front, resp.StatusCode)
			}
		}
	})
}

func TestWebSocket(t *testing.T) {
	checkGoroutines(t)
	echo := websocket.Handler(func(ws *websocket.Conn) { _, _ = io.Copy(ws, ws) })
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			env := newEnv(t, front, echo, Config{MaxInFlight: 1})
			wsURL := "ws" + strings.TrimPrefix(env.url, "http") + "/ws"
			wcfg, err := websocket.NewConfig(wsURL, env.url)
			if err != nil {
				t.Fatal(err)
			}
			wcfg.TlsConfig = testClientTLS()
			ws, err := websocket.DialConfig(wcfg)
			if err != nil {
				t.Fatal(err)
			}
			for _, msg := range []string{"hello", strings.Repeat("big", 20000)} {
				if err := websocket.Message.Send(ws, msg); err != nil {
					t.Fatal(err)
				}
				// The echo handler may split a message into several frames.
				var got string
				for len(got) < len(msg) {
					var part string
					if err := websocket.Message.Receive(ws, &part); err != nil {
						t.Fatal(err)
					}
					got += part
				}
				if got != msg {
					t.Errorf("echo: got %d bytes, want %d", len(got), len(msg))
				}
			}
			// An upgraded connection does not hold an in-flight slot.
			resp, err := env.client.Get(env.url + "/other")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable {
				t.Error("request refused while a WebSocket was open: the upgrade still counts as in flight")
			}
			// Close ends the relay.
			if err := env.proxy.Close(); err != nil {
				t.Fatal(err)
			}
			_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
			var got string
			if err := websocket.Message.Receive(ws, &got); err == nil {
				t.Error("WebSocket still open after Proxy.Close")
			}
			_ = ws.Close()
		})
	}
}

func TestUpgradeRefusedAndMismatched(t *testing.T) {
	checkGoroutines(t)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/switch-other" {
			c, brw, _ := http.NewResponseController(w).Hijack()
			_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
			_ = brw.Flush()
			_ = c.Close()
			return
		}
		w.WriteHeader(http.StatusForbidden) // declines the upgrade
	})
	for _, front := range fronts {
		env := newEnv(t, front, up, Config{})
		addr := strings.TrimPrefix(env.url, "http://")
		got := rawRequest(t, addr, "GET /declined HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n", 2*time.Second)
		if !strings.HasPrefix(got, "HTTP/1.1 403") {
			t.Errorf("%s: declined upgrade answered %q", front, firstLine(got))
		}
		got = rawRequest(t, addr, "GET /switch-other HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n", 2*time.Second)
		if !strings.HasPrefix(got, "HTTP/1.1 502") {
			t.Errorf("%s: upstream switching to another protocol answered %q", front, firstLine(got))
		}
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\r\n")
	return l
}

func TestServerSentEvents(t *testing.T) {
	checkGoroutines(t)
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			next := make(chan struct{})
			up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				for i := range 3 {
					fmt.Fprintf(w, "data: event %d\n\n", i)
					w.(http.Flusher).Flush()
					select {
					case <-next:
					case <-r.Context().Done():
						return
					}
				}
			})
			env := newEnv(t, front, up, Config{})
			resp, err := env.client.Get(env.url + "/events")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			for i := range 3 {
				// Each event arrives before the upstream is allowed to send
				// the next: the proxy flushed it.
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatal(err)
				}
				if want := fmt.Sprintf("data: event %d\n", i); line != want {
					t.Errorf("got %q, want %q", line, want)
				}
				_, _ = br.ReadString('\n')
				next <- struct{}{}
			}
		})
	}
}

// TestStreamHeadBeforeBody: an upstream that sends the head of a response
// of unknown length (server-sent events, a stream) and then waits, for an
// event or for the client, has the head reach the client at once: a client
// that waits for the head before it sends (full duplex) or shows the
// stream as open must not wait for the first event. The handler front end
// held the head in net/http's buffer until the first body bytes.
func TestStreamHeadBeforeBody(t *testing.T) {
	checkGoroutines(t)
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			release := make(chan struct{})
			up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
				fmt.Fprint(w, "data: late\n\n")
			})
			env := newEnv(t, front, up, Config{})
			type result struct {
				resp *http.Response
				err  error
			}
			got := make(chan result, 1)
			go func() {
				resp, err := env.client.Get(env.url + "/events")
				got <- result{resp, err}
			}()
			select {
			case r := <-got:
				close(release)
				if r.err != nil {
					t.Fatal(r.err)
				}
				body, _ := io.ReadAll(r.resp.Body)
				r.resp.Body.Close()
				if string(body) != "data: late\n\n" {
					t.Errorf("body %q", body)
				}
			case <-time.After(3 * time.Second):
				close(release)
				if r := <-got; r.err == nil {
					r.resp.Body.Close()
				}
				t.Fatal("no response head within 3 s while the upstream waited with its head sent")
			}
		})
	}
}

// TestStreamsLeaveInFlight: a response of unknown length whose head has
// gone to the client (server-sent events, a chunked stream) stops holding
// an in-flight slot, up to MaxStreams such streams: an app with more open
// event streams than MaxInFlight still answers other requests. Past
// MaxStreams a stream keeps its slot, and a response with a Content-Length
// always does.
func TestStreamsLeaveInFlight(t *testing.T) {
	checkGoroutines(t)
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			done := make(chan struct{})
			release := done
			up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.Path {
				case "/events":
					w.Header().Set("Content-Type", "text/event-stream")
				case "/download":
					w.Header().Set("Content-Length", "100")
				default:
					fmt.Fprint(w, "plain")
					return
				}
				fmt.Fprint(w, "data: first\n\n")
				w.(http.Flusher).Flush()
				select {
				case <-release:
					if r.URL.Path == "/download" {
						fmt.Fprint(w, strings.Repeat("x", 100-len("data: first\n\n")))
					}
				case <-r.Context().Done():
				}
			})
			env := newEnv(t, front, up, Config{MaxInFlight: 1, MaxStreams: 2})
			var open []*http.Response
			defer func() {
				if done != nil {
					close(done)
				}
				for _, resp := range open {
					resp.Body.Close()
				}
			}()
			get := func(path string) *http.Response {
				t.Helper()
				resp, err := env.client.Get(env.url + path)
				if err != nil {
					t.Fatal(err)
				}
				return resp
			}
			stream := func(path string) {
				t.Helper()
				resp := get(path)
				open = append(open, resp)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("%s with %d streams open: status %d", path, len(open)-1, resp.StatusCode)
				}
				line, err := bufio.NewReader(resp.Body).ReadString('\n')
				if err != nil || line != "data: first\n" {
					t.Fatalf("%s: first line %q, %v", path, line, err)
				}
			}
			idle := func() {
				t.Helper()
				// A slot given back on one event loop may come back just
				// after its response reached the client, who may already
				// be on another loop.
				eventually(t, 5*time.Second, "no slot held", func() bool { return env.proxy.InFlight() == 0 })
			}
			plain := func(want int) {
				t.Helper()
				if want == http.StatusOK {
					idle()
				}
				resp := get("/plain")
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Fatalf("plain request with %d streams open: status %d, want %d", len(open), resp.StatusCode, want)
				}
			}
			stream("/events")
			stream("/events")
			eventually(t, 5*time.Second, "two streams", func() bool { return env.proxy.Streams() == 2 })
			if got := env.proxy.InFlight(); got != 0 {
				t.Errorf("InFlight() = %d with two streams open, want 0", got)
			}
			if got := env.metrics.inFlight.Load(); got != 0 {
				t.Errorf("metrics in flight = %d with two streams open, want 0", got)
			}
			plain(http.StatusOK)
			// MaxStreams reached: the third stream keeps its slot.
			idle()
			stream("/events")
			plain(http.StatusServiceUnavailable)
			open[2].Body.Close()
			open = open[:2]
			plain(http.StatusOK)
			// A response of known length holds its slot to its end (its
			// head waits in the proxy's buffer for more of the body, as
			// with nginx's proxy buffering: the client sees nothing yet).
			idle()
			downloaded := make(chan error, 1)
			go func() {
				resp, err := env.client.Get(env.url + "/download")
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				downloaded <- err
			}()
			eventually(t, 5*time.Second, "the download in flight", func() bool { return env.proxy.InFlight() == 1 })
			plain(http.StatusServiceUnavailable)
			if got := env.proxy.Streams(); got != 2 {
				t.Errorf("Streams() = %d, want 2", got)
			}
			for _, resp := range open {
				resp.Body.Close()
			}
			open = nil
			eventually(t, 5*time.Second, "the streams ended", func() bool { return env.proxy.Streams() == 0 })
			if got := env.proxy.InFlight(); got != 1 {
				t.Errorf("InFlight() = %d with the download going, want 1", got)
			}
			close(done)
			done = nil
			if err := <-downloaded; err != nil {
				t.Errorf("download: %v", err)
			}
			eventually(t, 5*time.Second, "the slots back", func() bool { return env.proxy.InFlight() == 0 })
			// Each admitted request is recorded once, when it ends: three
			// streams, two plain requests and the download.
			eventually(t, 5*time.Second, "the requests recorded", func() bool { return env.metrics.requests.Load() >= 6 })
			if got := env.metrics.requests.Load(); got != 6 {
				t.Errorf("%d requests recorded, want 6: %v", got, env.metrics.codes)
			}
			if got := env.metrics.refused.Load(); got != 2 {
				t.Errorf("%d requests refused, want 2", got)
			}
			if got := env.metrics.inFlight.Load(); got != 0 {
				t.Errorf("metrics in flight = %d at the end, want 0", got)
			}
		})
	}
}

func TestHTTP2OverTLS(t *testing.T) {
	checkGoroutines(t)
	up := httptest.NewServer(http.HandlerFunc(echoHandler))
	defer up.Close()
	target, _ := url.Parse(up.URL)
	p, err := New(target, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// Borrow httptest's test certificate.
	front := httptest.NewUnstartedServer(nil)
	front.StartTLS()
	srvTLS := &tls.Config{Certificates: front.TLS.Certificates}
	front.Close()

	srv := NewServer(p, ServerConfig{TLSConfig: srvTLS})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ServeTLS(ln, "", "") }()
	defer func() { _ = srv.Close(); <-done }()

	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // test certificate
		ForceAttemptHTTP2: true,
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	body := strings.Repeat("h2", 50000)
	resp, err := c.Post("https://"+ln.Addr().String()+"/h2?x=1", "text/plain", io.MultiReader(strings.NewReader(body)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("client spoke %s, want HTTP/2", resp.Proto)
	}
	if string(got) != body || resp.Header.Get("X-Uri") != "/h2?x=1" {
		t.Errorf("echo: %d bytes, X-Uri %q", len(got), resp.Header.Get("X-Uri"))
	}
	if resp.Header.Get("X-Te") != "chunked" {
		t.Errorf("upstream body framing %q, want chunked (an h2 body of unknown length)", resp.Header.Get("X-Te"))
	}
}

func TestProxyProtocolClientAddress(t *testing.T) {
	checkGoroutines(t)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Got-Xff"] = r.Header["X-Forwarded-For"]
		w.Header()["Got-Forwarded"] = r.Header["Forwarded"]
	})
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			env := newEnv(t, front, up, Config{})
			_ = env // the env's own front is unused here: this one sits behind a PROXY listener
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			pln := &proxyproto.Listener{Listener: ln, ReadHeaderTimeout: 5 * time.Second}
			base := serveOn(t, env.proxy, front, pln)

			// The PROXY header comes first, TLS (serve-tls) after it.
			c, err := dialFrontErr(t, strings.Replace(base, "https://", "http://", 1))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			hdr := &proxyproto.Header{
				Version:           2,
				Command:           proxyproto.PROXY,
				TransportProtocol: proxyproto.TCPv4,
				SourceAddr:        &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 4242},
				DestinationAddr:   &net.TCPAddr{IP: net.ParseIP("192.168.127.2"), Port: 443},
			}
			if _, err := hdr.WriteTo(c); err != nil {
				t.Fatal(err)
			}
			proto := "http"
			if strings.HasPrefix(base, "https://") {
				c = tls.Client(c, testClientTLS())
				proto = "https"
			}
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: enclave\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			got := []string{resp.Header.Get("Got-Xff"), resp.Header.Get("Got-Forwarded")}
			want := []string{"203.0.113.7", "for=203.0.113.7;host=enclave;proto=" + proto}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestServeProtocol(t *testing.T) {
	for _, front := range serveFronts {
		t.Run(front, func(t *testing.T) { testServeProtocol(t, front) })
	}
}

func testServeProtocol(t *testing.T, front string) {
	checkGoroutines(t)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			_, _ = io.WriteString(w, "abc")
			w.(http.Flusher).Flush() // chunked: length unknown
			_, _ = io.WriteString(w, "def")
			return
		}
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %q", r.Method, r.URL.Path, body)
	})
	env := newEnv(t, front, up, Config{MaxHeaderBytes: 1024})
	addr := strings.TrimPrefix(env.url, "http://")
	tests := []struct {
		name string
		req  string
		want []string // substrings of the reply, in order
		not  []string
	}{
		{"pipelined", "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			[]string{"200 OK", `GET /a ""`, "Connection: close", `GET /b ""`}, nil},
		{"expect continue", "POST /c HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
			[]string{"HTTP/1.1 100 Continue\r\n\r\n", "200 OK", `POST /c "hi"`}, nil},
		{"unknown expectation", "POST /c HTTP/1.1\r\nHost: x\r\nExpect: magic\r\nContent-Length: 2\r\n\r\nhi",
			[]string{"417 Expectation Failed"}, nil},
		{"missing host", "GET / HTTP/1.1\r\n\r\n", []string{"400 Bad Request"}, nil},
		{"bad second request", "GET /a HTTP/1.1\r\nHost: x\r\n\r\nBAD\r\n\r\n", []string{"200 OK", "400 Bad Request"}, nil},
		{"bad request line", "NOT A REQUEST\r\n\r\n", []string{"400 Bad Request"}, nil},
		{"http2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", []string{"505 HTTP Version Not Supported"}, nil},
		{"header too large", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 8000) + "\r\n\r\n",
			[]string{"431 Request Header Fields Too Large"}, nil},
		{"connect", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", []string{"405 Method Not Allowed"}, nil},
		{"http/1.0 close-delimited stream", "GET /stream HTTP/1.0\r\n\r\n",
			[]string{"200 OK", "Connection: close", "abcdef"}, []string{"chunked"}},
		{"http/1.1 chunked stream", "GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			[]string{"Transfer-Encoding: chunked", "abc", "def", "\r\n0\r\n\r\n"}, nil},
		{"head", "HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", []string{"200 OK"}, []string{"HEAD /h"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkReply(t, rawRequest(t, addr, tt.req, 3*time.Second), tt.want, tt.not)
		})
	}
}

func TestHTTP10KeepAlive(t *testing.T) {
	for _, front := range serveFronts {
		t.Run(front, func(t *testing.T) { testHTTP10KeepAlive(t, front) })
	}
}

func testHTTP10KeepAlive(t *testing.T, front string) {
	checkGoroutines(t)
	env := newEnv(t, front, http.HandlerFunc(echoHandler), Config{})
	c, err := dialFrontErr(t, env.url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for i := range 2 {
		fmt.Fprintf(c, "GET /%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", i)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.Header.Get("Connection") != "keep-alive" {
			t.Errorf("request %d: Connection %q, want keep-alive", i, resp.Header.Get("Connection"))
		}
	}
}

func TestMetrics(t *testing.T) {
	checkGoroutines(t)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/404" {
			http.NotFound(w, r)
		}
	})
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			env := newEnv(t, front, up, Config{})
			for _, path := range []string{"/", "/", "/404"} {
				resp, err := env.client.Get(env.url + path)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			eventually(t, 5*time.Second, "three requests recorded", func() bool { return env.metrics.requests.Load() == 3 })
			env.metrics.mu.Lock()
			got := env.metrics.codes
			env.metrics.mu.Unlock()
			if diff := cmp.Diff(map[int]int{200: 2, 404: 1}, got); diff != "" {
				t.Errorf("codes (-want +got):\n%s", diff)
			}
			if n := env.metrics.inFlight.Load(); n != 0 {
				t.Errorf("in flight %d after all requests, want 0", n)
			}
		})
	}
}

func TestNewServerDefaults(t *testing.T) {
	srv := NewServer(http.NotFoundHandler(), ServerConfig{})
	got := []any{srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout, srv.MaxHeaderBytes, srv.TLSConfig == nil}
	want := []any{DefaultReadHeaderTimeout, DefaultServerReadTimeout, DefaultServerWriteTimeout, DefaultIdleTimeout, DefaultMaxHeaderBytes, true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	tsrv := NewServer(http.NotFoundHandler(), ServerConfig{TLSConfig: &tls.Config{}})
	if diff := cmp.Diff([]string{"h2", "http/1.1"}, tsrv.TLSConfig.NextProtos); diff != "" {
		t.Errorf("NextProtos (-want +got):\n%s", diff)
	}
	if tsrv.Protocols == nil || !tsrv.Protocols.HTTP2() {
		t.Error("HTTP/2 not enabled with a TLS config")
	}
}

// TestServeRefusals checks the prebuilt 503 responses of Serve in each of
// their forms.
func TestServeRefusals(t *testing.T) {
	for _, front := range serveFronts {
		t.Run(front, func(t *testing.T) { testServeRefusals(t, front) })
	}
}

func testServeRefusals(t *testing.T, front string) {
	checkGoroutines(t)
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
	})
	env := newEnv(t, front, up, Config{MaxInFlight: 1, RetryAfter: 2 * time.Second})
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := env.client.Get(env.url + "/held")
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-arrived
	defer func() { close(release); <-done }()
	addr := strings.TrimPrefix(env.url, "http://")
	const body = "503 Service Unavailable\n"
	head := "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: 24\r\nRetry-After: 2\r\n"
	tests := []struct {
		name, req, want string
	}{
		{"keep-alive, then close", "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			head + "\r\n" + body + head + "Connection: close\r\n\r\n" + body},
		{"head", "HEAD /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", head + "Connection: close\r\n\r\n"},
		{"http/1.0 keep-alive", "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /a HTTP/1.0\r\n\r\n",
			head + "Connection: keep-alive\r\n\r\n" + body + head + "Connection: close\r\n\r\n" + body},
		{"unread body: close", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", head + "Connection: close\r\n\r\n" + body},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, rawRequest(t, addr, tt.req, 3*time.Second)); diff != "" {
				t.Errorf("reply (-want +got):\n%s", diff)
			}
		})
	}
}

// TestNagleUpstream checks that an upstream which writes a response's head
// and body apart without TCP_NODELAY (Python's http.server) is not held
// back by the proxy's delayed ACK: Nagle's algorithm keeps the body until
// the head is acknowledged, and Linux delays that ACK by at least 40 ms,
// so 20 responses would take 800 ms or more; the proxy acknowledges at
// once (TCP_QUICKACK) and they take a few. Linux only (the ACK timer).
func TestNagleUpstream(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("TCP_QUICKACK is Linux's")
	}
	checkGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.ServeConns(t, ln, func(c net.Conn) {
		_ = c.(*net.TCPConn).SetNoDelay(false)
		br := bufio.NewReader(c)
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, r.Body)
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
			_, _ = io.WriteString(c, "hello")
		}
	})
	target, _ := url.Parse("http://" + ln.Addr().String())
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			p, err := New(target, Config{})
			if err != nil {
				t.Fatal(err)
			}
			c := dialFront(t, serveFront(t, p, front))
			defer c.Close()
			br := bufio.NewReader(c)
			start := time.Now()
			for range 20 {
				_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != "hello" {
					t.Fatalf("body %q", b)
				}
			}
			if d := time.Since(start); d > 400*time.Millisecond {
				t.Errorf("20 responses took %v: the upstream waited for delayed ACKs", d)
			}
		})
	}
}
