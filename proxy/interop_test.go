package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The interop tests put real Node.js (http, http2) and Python
// (http.server) apps behind the proxy, as users do: testdata/interop has
// the apps, which use their language's standard library only.

// startApp runs the interpreter bin on testdata/interop/script with args,
// reads the port the app prints once it listens, and returns it. The test
// skips if bin is not in PATH; the app is killed in t.Cleanup.
func startApp(t testing.TB, bin, script string, args ...string) string {
	t.Helper()
	path, err := exec.LookPath(bin)
	if err != nil {
		t.Skipf("%s not in PATH: %v", bin, err)
	}
	cmd := exec.Command(path, append([]string{"testdata/interop/" + script}, args...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(waited) }()
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		select {
		case <-waited:
		case <-time.After(5 * time.Second):
			t.Errorf("%s %s did not exit", bin, script)
		}
		if t.Failed() && stderr.String() != "" {
			t.Logf("%s %s stderr:\n%s", bin, script, stderr.String())
		}
	})
	port := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		port <- strings.TrimSpace(line)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case p := <-port:
		if p == "" {
			t.Fatalf("%s %s printed no port; stderr:\n%s", bin, script, stderr.String())
		}
		return p
	case <-time.After(10 * time.Second):
		t.Fatalf("%s %s printed no port within 10 s; stderr:\n%s", bin, script, stderr.String())
	}
	return ""
}

// eachFront runs fn on every front end, each with a Proxy in front of
// target (an app) with cfg, and its client; clients wait up to 5 s for
// 100 Continue.
func eachFront(t *testing.T, target string, cfg Config, fn func(t *testing.T, front string, env *testEnv)) {
	t.Helper()
	checkGoroutines(t)
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			env := newTargetEnv(t, front, target, cfg)
			env.client.Transport.(*http.Transport).ExpectContinueTimeout = 5 * time.Second
			fn(t, front, env)
		})
	}
}

// rawExchange sends req as it is on a new connection to env's front end
// and reads the response head; the connection (closed in t.Cleanup) and
// its reader carry on from there.
func rawExchange(t *testing.T, env *testEnv, req string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	c := dialFront(t, env.url)
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c, br, resp
}

// do sends a request through env and returns the response and its whole
// body; a failure to read the body fails the test.
func (env *testEnv) do(t *testing.T, method, path string, body io.Reader, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, env.url+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := env.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return resp, b
}

func wantResponse(t *testing.T, what string, resp *http.Response, body []byte, status int, wantBody string) {
	t.Helper()
	if resp.StatusCode != status || string(body) != wantBody {
		t.Errorf("%s: %d %q, want %d %q", what, resp.StatusCode, body, status, wantBody)
	}
}

func frontProto(front string) string {
	if strings.HasPrefix(front, "serve-tls") {
		return "https"
	}
	return "http"
}

// TestInteropNodeHTTP: plain exchanges with a Node http server.
func TestInteropNodeHTTP(t *testing.T) {
	port := startApp(t, "node", "app.js", "http")
	eachFront(t, "http://127.0.0.1:"+port, Config{}, func(t *testing.T, front string, env *testEnv) {

		resp, body := env.do(t, "GET", "/hello", nil)
		wantResponse(t, "GET /hello", resp, body, 200, "hello from node\n")
		if resp.ContentLength != 16 || resp.Header.Get("Content-Type") != "text/plain" {
			t.Errorf("GET /hello: length %d, type %q", resp.ContentLength, resp.Header.Get("Content-Type"))
		}

		resp, body = env.do(t, "GET", "/chunked", nil)
		wantResponse(t, "GET /chunked", resp, body, 200, "one,two,three,end")

		resp, body = env.do(t, "HEAD", "/hello", nil)
		wantResponse(t, "HEAD /hello", resp, body, 200, "")
		if resp.ContentLength != 16 {
			t.Errorf("HEAD /hello: Content-Length %d, want 16", resp.ContentLength)
		}
		// The connection is still good after HEAD.
		resp, body = env.do(t, "GET", "/hello", nil)
		wantResponse(t, "GET after HEAD", resp, body, 200, "hello from node\n")
		// HEAD of a chunked response: Node sends the head with
		// Transfer-Encoding: chunked and no body at all.
		for i := range 2 {
			resp, body = env.do(t, "HEAD", "/chunked", nil)
			wantResponse(t, fmt.Sprintf("HEAD /chunked %d", i), resp, body, 200, "")
			resp, body = env.do(t, "GET", "/hello", nil)
			wantResponse(t, "GET after HEAD /chunked", resp, body, 200, "hello from node\n")
		}

		resp, body = env.do(t, "POST", "/echo", strings.NewReader("ping pong"), "Content-Type", "text/x-test")
		wantResponse(t, "POST /echo", resp, body, 200, "ping pong")
		if resp.Header.Get("X-Seen-Length") != "9" || resp.Header.Get("Content-Type") != "text/x-test" {
			t.Errorf("POST /echo: app saw length %q, type %q", resp.Header.Get("X-Seen-Length"), resp.Header.Get("Content-Type"))
		}

		resp, body = env.do(t, "GET", "/nocontent", nil)
		wantResponse(t, "GET /nocontent", resp, body, 204, "")
		if resp.Header.Get("X-App") != "node" {
			t.Errorf("204: X-App %q", resp.Header.Get("X-App"))
		}

		resp, body = env.do(t, "GET", "/notmodified", nil, "If-None-Match", `"v1"`)
		wantResponse(t, "GET /notmodified", resp, body, 304, "")
		if resp.Header.Get("Etag") != `"v1"` || resp.Header.Get("Cache-Control") != "max-age=60" {
			t.Errorf("304: header %v", resp.Header)
		}

		resp, body = env.do(t, "GET", "/trailers", nil, "TE", "trailers")
		wantResponse(t, "GET /trailers", resp, body, 200, "part one;part two")
		if got := resp.Trailer.Get("X-Checksum"); got != "abc123" {
			t.Errorf("trailers %v, want X-Checksum abc123", resp.Trailer)
		}

		resp, body = env.do(t, "GET", "/headers", nil, "X-Forwarded-For", "10.9.9.9")
		var seen struct {
			XFF, XFProto, XFHost, Forwarded, Host, Connection *string
		}
		if err := json.Unmarshal(body, &seen); err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET /headers: %d %q %v", resp.StatusCode, body, err)
		}
		host := strings.TrimPrefix(strings.TrimPrefix(env.url, "http://"), "https://")
		str := func(p *string) string {
			if p == nil {
				return "<none>"
			}
			return *p
		}
		if str(seen.XFF) != "127.0.0.1" || str(seen.XFProto) != frontProto(front) || str(seen.XFHost) != host || str(seen.Host) != host {
			t.Errorf("the app saw X-Forwarded-For %s, -Proto %s, -Host %s, Host %s", str(seen.XFF), str(seen.XFProto), str(seen.XFHost), str(seen.Host))
		}
		if f := str(seen.Forwarded); !strings.Contains(f, "for=127.0.0.1") || !strings.Contains(f, "proto="+frontProto(front)) {
			t.Errorf("the app saw Forwarded %s", f)
		}

		resp, body = env.do(t, "GET", "/cookies", nil)
		wantResponse(t, "GET /cookies", resp, body, 200, "cookies")
		if c := resp.Header["Set-Cookie"]; len(c) != 3 || c[0] != "a=1; Path=/" || c[2] != "c=3; HttpOnly" {
			t.Errorf("Set-Cookie %q, want the app's three", c)
		}
		if m := resp.Header.Values("X-Multi"); strings.Join(m, ",") != "one,two" {
			t.Errorf("X-Multi %q", m)
		}

		// 103 Early Hints (res.writeEarlyHints) reach the client
		// before the response.
		c := dialFront(t, env.url)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "GET /early HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(c)
		var statuses []string
		var link string
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("GET /early: %v after %q", err, statuses)
			}
			if strings.HasPrefix(line, "HTTP/1.1 ") {
				statuses = append(statuses, strings.TrimSpace(line))
			}
			if v, ok := strings.CutPrefix(strings.ToLower(line), "link: "); ok {
				link = strings.TrimSpace(v)
			}
			if strings.HasPrefix(line, "HTTP/1.1 200") {
				break
			}
		}
		if len(statuses) != 2 || !strings.HasPrefix(statuses[0], "HTTP/1.1 103") || !strings.Contains(link, "style.css") {
			t.Errorf("GET /early: status lines %q, link %q; want 103 with the Link, then 200", statuses, link)
		}

		// A response with Connection: close, then more requests: the
		// proxy must not reuse the connection Node closes.
		for i := range 3 {
			resp, body = env.do(t, "GET", "/close", nil)
			wantResponse(t, fmt.Sprintf("GET /close %d", i), resp, body, 200, "closing after this")
			resp, body = env.do(t, "GET", "/close-chunked", nil)
			wantResponse(t, fmt.Sprintf("GET /close-chunked %d", i), resp, body, 200, "closing chunked")
			resp, body = env.do(t, "GET", "/hello", nil)
			wantResponse(t, fmt.Sprintf("GET /hello after close %d", i), resp, body, 200, "hello from node\n")
		}
	})
}

// TestInteropNodeLargeBodies: several MiB up, streamed back by the app as
// it reads them (Content-Length and chunked uploads), byte for byte; and
// Expect: 100-continue.
func TestInteropNodeLargeBodies(t *testing.T) {
	port := startApp(t, "node", "app.js", "http")
	payload := make([]byte, 6<<20)
	_, _ = rand.Read(payload)
	eachFront(t, "http://127.0.0.1:"+port, Config{}, func(t *testing.T, front string, env *testEnv) {
		resp, body := env.do(t, "POST", "/echo", bytes.NewReader(payload))
		if resp.StatusCode != 200 || !bytes.Equal(body, payload) {
			t.Errorf("6 MiB echo: status %d, %d bytes back, equal %v", resp.StatusCode, len(body), bytes.Equal(body, payload))
		}
		if resp.Header.Get("X-Seen-Length") != fmt.Sprint(len(payload)) {
			t.Errorf("the app saw Content-Length %q", resp.Header.Get("X-Seen-Length"))
		}
		// Chunked upload (no length), echoed with a length.
		resp, body = env.do(t, "POST", "/echo-length", io.MultiReader(bytes.NewReader(payload[:3<<20])))
		if resp.StatusCode != 200 || !bytes.Equal(body, payload[:3<<20]) {
			t.Errorf("3 MiB chunked upload: status %d, %d bytes back", resp.StatusCode, len(body))
		}
		// Expect: 100-continue with net/http's client, which waits
		// for the 100 before it sends the body.
		resp, body = env.do(t, "POST", "/echo", bytes.NewReader(payload[:1<<20]), "Expect", "100-continue")
		if resp.StatusCode != 200 || !bytes.Equal(body, payload[:1<<20]) {
			t.Errorf("Expect: 100-continue: status %d, %d bytes back", resp.StatusCode, len(body))
		}
		// And by hand: the 100 must come before the body is sent.
		c := dialFront(t, env.url)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "POST /echo-length HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
			t.Fatalf("before the body: %q, %v; want 100 Continue", line, err)
		}
		for line != "\r\n" && err == nil {
			line, err = br.ReadString('\n')
		}
		_, _ = io.WriteString(c, "abcde")
		r, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r.Body)
		if r.StatusCode != 200 || string(b) != "abcde" || err != nil {
			t.Errorf("after 100 Continue: %d %q %v", r.StatusCode, b, err)
		}
	})
}

// TestInteropNodeSSE: server-sent events from Node reach the client as
// the app sends them, the head first; with MaxInFlight 1, open streams do
// not keep a plain request out (Config.MaxStreams).
func TestInteropNodeSSE(t *testing.T) {
	port := startApp(t, "node", "app.js", "http")
	eachFront(t, "http://127.0.0.1:"+port, Config{MaxInFlight: 1}, func(t *testing.T, front string, env *testEnv) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		type stream struct {
			resp *http.Response
			br   *bufio.Reader
		}
		var streams []stream
		defer func() {
			for _, s := range streams {
				s.resp.Body.Close()
			}
		}()
		for i := range 3 {
			req, _ := http.NewRequestWithContext(ctx, "GET", env.url+"/sse", nil)
			// Do returns with the head, which Node sends before any
			// event.
			resp, err := env.client.Do(req)
			if err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
			streams = append(streams, stream{resp, bufio.NewReader(resp.Body)})
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("stream %d: %d %v", i, resp.StatusCode, resp.Header)
			}
			eventually(t, 5*time.Second, "the slot back", func() bool { return env.proxy.InFlight() == 0 })
		}
		for round := range 3 {
			// A plain request, while three streams are open with
			// MaxInFlight 1; it makes the app send an event.
			resp, body := env.do(t, "GET", "/sse/next", nil)
			var n, k int
			if _, err := fmt.Sscanf(string(body), "sent %d to %d", &n, &k); resp.StatusCode != 200 || err != nil {
				t.Fatalf("round %d: /sse/next: %d %q", round, resp.StatusCode, body)
			}
			for i, s := range streams {
				line, err := s.br.ReadString('\n')
				want := fmt.Sprintf("data: event %d\n", n)
				if err != nil || line != want {
					t.Fatalf("round %d, stream %d: %q, %v; want %q", round, i, line, err, want)
				}
				if blank, err := s.br.ReadString('\n'); blank != "\n" || err != nil {
					t.Fatalf("round %d, stream %d: %q, %v after the event", round, i, blank, err)
				}
			}
		}
		if got := env.proxy.Streams(); got != 3 {
			t.Errorf("Streams() = %d, want 3", got)
		}
		// The client goes: the app sees its streams close.
		for _, s := range streams {
			s.resp.Body.Close()
		}
		streams = nil
		eventually(t, 5*time.Second, "the app's streams closed", func() bool {
			_, body := env.do(t, "GET", "/sse/next", nil)
			return strings.HasSuffix(string(body), " to 0")
		})
		eventually(t, 5*time.Second, "no stream left", func() bool { return env.proxy.Streams() == 0 })
	})
}

// TestInteropNodeUpgrade: Node's 'upgrade' handler answers 101 and echoes
// raw bytes; the proxy relays the tunnel both ways.
func TestInteropNodeUpgrade(t *testing.T) {
	port := startApp(t, "node", "app.js", "http")
	eachFront(t, "http://127.0.0.1:"+port, Config{}, func(t *testing.T, front string, env *testEnv) {
		c, br, resp := rawExchange(t, env, "GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		if resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "echo" || resp.Header.Get("X-App") != "node" {
			t.Fatalf("upgrade: %d %v", resp.StatusCode, resp.Header)
		}
		for i := range 5 {
			msg := fmt.Sprintf("message %d over the tunnel", i)
			if i == 0 {
				msg = "first"
			}
			if _, err := io.WriteString(c, msg); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(br, got); err != nil || string(got) != msg {
				t.Fatalf("echo %d: %q, %v", i, got, err)
			}
		}
		// The client ends its side with a last message: the app
		// echoes it and ends its side too, which the client sees.
		_, _ = io.WriteString(c, "last words")
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			if err := cw.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			rest, err := io.ReadAll(br)
			if err != nil || string(rest) != "last words" {
				t.Errorf("after the client's half-close: %q, %v; want the echo, then EOF", rest, err)
			}
		}
	})
}

// TestInteropNodeClients: clients other than net/http's: HTTP/1.0 ones
// get Node's chunked responses decoded (and close-delimited), HTTP/1.1
// ones asking for Connection: close get it; large response heads pass.
func TestInteropNodeClients(t *testing.T) {
	port := startApp(t, "node", "app.js", "http")
	eachFront(t, "http://127.0.0.1:"+port, Config{}, func(t *testing.T, front string, env *testEnv) {
		for _, c := range []struct{ path, body string }{
			{"/chunked", "one,two,three,end"},
			{"/trailers", "part one;part two"},
			{"/hello", "hello from node\n"},
		} {
			for _, req := range []string{
				"GET " + c.path + " HTTP/1.0\r\nHost: x\r\n\r\n",
				"GET " + c.path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			} {
				reply := rawRequest(t, env.url, req, 5*time.Second)
				resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(reply)), nil)
				if err != nil {
					t.Fatalf("%q: %v in %q", req, err, reply)
				}
				b, err := io.ReadAll(resp.Body)
				if err != nil || resp.StatusCode != 200 || string(b) != c.body {
					t.Errorf("%q: %d %q %v, want 200 %q; reply:\n%s", req, resp.StatusCode, b, err, c.body, reply)
				}
				if strings.HasPrefix(req, "GET "+c.path+" HTTP/1.0") && len(resp.TransferEncoding) > 0 {
					t.Errorf("%q: Transfer-Encoding %v sent to an HTTP/1.0 client", req, resp.TransferEncoding)
				}
			}
		}
		resp, body := env.do(t, "GET", "/bigheaders", nil)
		wantResponse(t, "GET /bigheaders", resp, body, 200, "ok")
		if len(resp.Header.Get("X-Long")) != 12<<10 || resp.Header.Get("X-Field-27") != strings.Repeat("27", 1000) {
			t.Errorf("GET /bigheaders: X-Long of %d bytes, X-Field-27 of %d", len(resp.Header.Get("X-Long")), len(resp.Header.Get("X-Field-27")))
		}
		resp, body = env.do(t, "GET", "/hello", nil)
		wantResponse(t, "GET /hello after /bigheaders", resp, body, 200, "hello from node\n")
	})
}

// TestInteropNodeUpgradeRejected: Node's 'upgrade' handler refuses with a
// plain 403 and closes; the client gets that response whole, and its
// connection is not a tunnel.
func TestInteropNodeUpgradeRejected(t *testing.T) {
	port := startApp(t, "node", "app.js", "http")
	eachFront(t, "http://127.0.0.1:"+port, Config{}, func(t *testing.T, front string, env *testEnv) {
		_, _, resp := rawExchange(t, env, "GET /reject HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		b, err := io.ReadAll(resp.Body)
		if resp.StatusCode != 403 || string(b) != "rejected" || err != nil {
			t.Errorf("refused upgrade: %d %q %v", resp.StatusCode, b, err)
		}
		resp2, body := env.do(t, "GET", "/hello", nil)
		wantResponse(t, "GET /hello after the refusal", resp2, body, 200, "hello from node\n")
	})
}

// TestInteropNodeUpgradeAppFirst: the app sends bytes in the same write
// as its 101 head, before the client sends anything (a server-first
// protocol): they reach the client without waiting for it.
func TestInteropNodeUpgradeAppFirst(t *testing.T) {
	port := startApp(t, "node", "app.js", "http")
	eachFront(t, "http://127.0.0.1:"+port, Config{}, func(t *testing.T, front string, env *testEnv) {
		c, br, resp := rawExchange(t, env, "GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\nX-Greet: 1\r\n\r\n")
		if resp.StatusCode != 101 {
			t.Fatalf("upgrade: %d", resp.StatusCode)
		}
		line, err := br.ReadString('\n')
		if err != nil || line != "greetings\n" {
			t.Fatalf("the app's first bytes: %q, %v", line, err)
		}
		_, _ = io.WriteString(c, "ping")
		got := make([]byte, 4)
		if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping" {
			t.Fatalf("echo: %q, %v", got, err)
		}
	})
}

// TestInteropNodeKeepAliveTimeout: Node closes a keep-alive connection
// idle for server.keepAliveTimeout plus a fixed second (Node 20's
// HTTP_SERVER_KEEP_ALIVE_TIMEOUT_BUFFER), here 100 ms + 1 s, and says
// "Keep-Alive: timeout=0". Requests spaced around that time must all
// succeed: the proxy must not send a request on a connection Node has
// closed, or must send it again when Node closed it unread.
func TestInteropNodeKeepAliveTimeout(t *testing.T) {
	port := startApp(t, "node", "app.js", "http", "100")
	checkGoroutines(t)
	// Every front at once: the waits are the test's time.
	envs := make([]*testEnv, len(fronts))
	for i, front := range fronts {
		envs[i] = newTargetEnv(t, front, "http://127.0.0.1:"+port, Config{})
	}
	get := func(what string) {
		t.Helper()
		for i, env := range envs {
			resp, body := env.do(t, "GET", "/hello", nil)
			wantResponse(t, fronts[i]+": "+what, resp, body, 200, "hello from node\n")
		}
	}
	get("GET /hello")
	for _, ms := range []int{1090, 1098, 1102, 1106, 1115} {
		time.Sleep(time.Duration(ms) * time.Millisecond)
		get(fmt.Sprintf("GET /hello after %d ms idle", ms))
	}
}

// TestInteropNodeMaxRequestsPerSocket: Node's server.maxRequestsPerSocket
// (here 2) ends a connection with "Connection: close" on its last
// response; sequential and concurrent requests all succeed.
func TestInteropNodeMaxRequestsPerSocket(t *testing.T) {
	port := startApp(t, "node", "app.js", "http", "5000", "2")
	eachFront(t, "http://127.0.0.1:"+port, Config{}, func(t *testing.T, front string, env *testEnv) {
		ports := map[float64]int{}
		for i := range 8 {
			resp, body := env.do(t, "GET", "/headers", nil)
			var seen struct{ RemotePort float64 }
			if err := json.Unmarshal(body, &seen); err != nil || resp.StatusCode != 200 {
				t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
			}
			ports[seen.RemotePort]++
		}
		for p, n := range ports {
			if n > 2 {
				t.Errorf("%d requests on the connection from port %v, Node allows 2", n, p)
			}
		}
		errs := make(chan error, 16)
		for i := range 16 {
			go func() {
				req, _ := http.NewRequest("POST", env.url+"/echo-length", strings.NewReader(fmt.Sprint("body ", i)))
				resp, err := env.client.Do(req)
				if err == nil {
					var b []byte
					b, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && (resp.StatusCode != 200 || string(b) != fmt.Sprint("body ", i)) {
						err = fmt.Errorf("%d %q", resp.StatusCode, b)
					}
				}
				errs <- err
			}()
		}
		for range 16 {
			if err := <-errs; err != nil {
				t.Errorf("concurrent POST: %v", err)
			}
		}
	})
}

// TestInteropNodeAbort: Node drops the connection mid-response; the client
// must see an aborted response, not a shorter one that looks complete.
func TestInteropNodeAbort(t *testing.T) {
	port := startApp(t, "node", "app.js", "http")
	eachFront(t, "http://127.0.0.1:"+port, Config{}, func(t *testing.T, front string, env *testEnv) {
		for _, path := range []string{"/abort-length", "/abort-chunked"} {
			resp, err := env.client.Get(env.url + path)
			if err != nil {
				continue // aborted before the head: fine
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				t.Errorf("%s: complete %d response of %d bytes (%q...), want an error", path, resp.StatusCode, len(b), b[:min(len(b), 10)])
			}
		}
		resp, body := env.do(t, "GET", "/hello", nil)
		wantResponse(t, "GET /hello after the aborts", resp, body, 200, "hello from node\n")
	})
}

// TestInteropNodeH2C: a Node http2 server (cleartext) as an h2c target,
// answering as gRPC servers do.
func TestInteropNodeH2C(t *testing.T) {
	port := startApp(t, "node", "app.js", "h2")
	checkGoroutines(t)
	target, _ := url.Parse("h2c://127.0.0.1:" + port)
	env := newH2CEnv(t, target, Config{})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", env.logs.String())
		}
	})
	grpcReq := func(ctx context.Context, path string, body io.Reader) *http.Request {
		req, _ := http.NewRequestWithContext(ctx, "POST", env.url(path), body)
		req.Header.Set("Te", "trailers")
		req.Header.Set("Content-Type", "application/grpc")
		return req
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("unary", func(t *testing.T) {
		resp, err := env.client.Do(grpcReq(ctx, "/pkg.Svc/Unary", strings.NewReader("hi")))
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || string(b) != "reply:hi:te=trailers" {
			t.Fatalf("%d %q %v", resp.StatusCode, b, err)
		}
		if resp.Header.Get("Content-Type") != "application/grpc" {
			t.Errorf("header %v", resp.Header)
		}
		if resp.Trailer.Get("Grpc-Status") != "0" || resp.Trailer.Get("Grpc-Message") != "ok" {
			t.Errorf("trailers %v, want grpc-status 0, grpc-message ok", resp.Trailer)
		}
	})

	t.Run("trailers-only", func(t *testing.T) {
		h, end := h2RawResponse(t, env.addr, [][2]string{
			{":method", "POST"}, {":scheme", "https"}, {":authority", env.addr}, {":path", "/pkg.Svc/Missing"},
			{"content-type", "application/grpc"}, {"te", "trailers"},
		}, nil)
		if !end || h[":status"] != "200" || h["grpc-status"] != "5" || h["grpc-message"] != "not found" {
			t.Errorf("response HEADERS %v, END_STREAM %v; want one HEADERS frame with grpc-status 5 ending the stream", h, end)
		}
	})

	t.Run("bidi", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer context.AfterFunc(ctx, func() { pw.CloseWithError(ctx.Err()) })()
		resp, err := env.client.Do(grpcReq(ctx, "/pkg.Svc/Chat", pr))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		for i := range 10 {
			if _, err := fmt.Fprintf(pw, "msg %d\n", i); err != nil {
				t.Fatal(err)
			}
			line, err := br.ReadString('\n')
			if want := fmt.Sprintf("re: msg %d\n", i); err != nil || line != want {
				t.Fatalf("reply %d: %q, %v; want %q", i, line, err, want)
			}
		}
		_ = pw.Close()
		if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
			t.Fatalf("after the last reply: %q, %v", rest, err)
		}
		if resp.Trailer.Get("Grpc-Status") != "0" {
			t.Errorf("trailers %v", resp.Trailer)
		}
	})

	t.Run("large", func(t *testing.T) {
		payload := make([]byte, 6<<20)
		_, _ = rand.Read(payload)
		req, _ := http.NewRequestWithContext(ctx, "POST", env.url("/echo"), bytes.NewReader(payload))
		resp, err := env.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(b, payload) {
			t.Errorf("6 MiB echo: %d, %d bytes back, %v", resp.StatusCode, len(b), err)
		}
	})

	t.Run("goaway", func(t *testing.T) {
		for i := range 4 {
			req, _ := http.NewRequestWithContext(ctx, "GET", env.url("/goaway"), nil)
			resp, err := env.client.Do(req)
			if err != nil {
				t.Fatalf("request %d after the app's GOAWAY: %v", i, err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || string(b) != "bye" {
				t.Errorf("request %d: %d %q %v", i, resp.StatusCode, b, err)
			}
		}
	})

	t.Run("client-cancel", func(t *testing.T) {
		// The client goes mid-stream: the app's stream is reset.
		wctx, wcancel := context.WithCancel(ctx)
		req, _ := http.NewRequestWithContext(wctx, "POST", env.url("/pkg.Svc/Watch"), nil)
		resp, err := env.client.Do(req)
		if err != nil {
			wcancel()
			t.Fatal(err)
		}
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || line != "tick\n" {
			t.Errorf("first tick: %q, %v", line, err)
		}
		watching := func() string {
			resp, err := env.client.Get(env.url("/watching"))
			if err != nil {
				return err.Error()
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return string(b)
		}
		if w := watching(); w != "1" {
			t.Errorf("the app has %s watch streams open, want 1", w)
		}
		wcancel()
		resp.Body.Close()
		eventually(t, 5*time.Second, "the app's stream closed", func() bool { return watching() == "0" })
	})

	t.Run("reset", func(t *testing.T) {
		resp, err := env.client.Do(grpcReq(ctx, "/pkg.Svc/Reset", strings.NewReader("x")))
		if err != nil {
			return // reset before the head reached the client: an error, fine
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Errorf("a stream the app reset ended cleanly: %d %q, trailers %v", resp.StatusCode, b, resp.Trailer)
		}
	})
}

// TestInteropPython: Python's http.server (HTTP/1.1, keep-alive, head and
// body written apart with Nagle's algorithm on).
func TestInteropPython(t *testing.T) {
	port := startApp(t, "python3", "app.py", "1.1")
	eachFront(t, "http://127.0.0.1:"+port, Config{}, func(t *testing.T, front string, env *testEnv) {
		resp, body := env.do(t, "GET", "/hello", nil)
		wantResponse(t, "GET /hello", resp, body, 200, "hello from python\n")
		peer := resp.Header.Get("X-Peer-Port")

		// Sequential requests reuse the upstream connection, and are
		// not slowed by delayed ACKs (40 ms each on Linux).
		start := time.Now()
		for i := range 20 {
			resp, body := env.do(t, "GET", "/hello", nil)
			wantResponse(t, fmt.Sprintf("GET /hello %d", i), resp, body, 200, "hello from python\n")
			if p := resp.Header.Get("X-Peer-Port"); p != peer {
				t.Errorf("request %d came from port %s, the first from %s: the upstream connection was not reused", i, p, peer)
			}
		}
		if d := time.Since(start); runtime.GOOS == "linux" && d > 300*time.Millisecond {
			t.Errorf("20 requests took %v: the app waited for delayed ACKs", d)
		}

		resp, body = env.do(t, "HEAD", "/hello", nil)
		wantResponse(t, "HEAD /hello", resp, body, 200, "")
		if resp.ContentLength != 18 {
			t.Errorf("HEAD: Content-Length %d", resp.ContentLength)
		}
		resp, body = env.do(t, "POST", "/echo", strings.NewReader("abc"))
		wantResponse(t, "POST", resp, body, 200, "got 3: abc")
		resp, body = env.do(t, "GET", "/chunked", nil)
		wantResponse(t, "GET /chunked", resp, body, 200, "alpha,beta,gamma")
		// A chunked upload: http.server reads Content-Length only.
		// Whatever the app answers, the requests after it must get
		// their own responses.
		for i := range 3 {
			resp, body = env.do(t, "POST", "/echo", io.MultiReader(strings.NewReader("chunked-up")))
			t.Logf("chunked POST %d: %d %q", i, resp.StatusCode, body)
			for j := range 3 {
				resp, body = env.do(t, "GET", "/hello", nil)
				wantResponse(t, fmt.Sprintf("GET /hello %d after chunked POST %d", j, i), resp, body, 200, "hello from python\n")
			}
		}
		for i := range 3 {
			resp, body = env.do(t, "GET", "/error", nil)
			if resp.StatusCode != 418 || !strings.Contains(string(body), "teapot") {
				t.Errorf("GET /error: %d %q", resp.StatusCode, body)
			}
			resp, body = env.do(t, "GET", "/hello", nil)
			wantResponse(t, fmt.Sprintf("GET /hello after /error %d", i), resp, body, 200, "hello from python\n")
		}
		// A GET with a body, which do_GET leaves unread: http.server
		// takes it for a request (here one for /smuggled) and answers
		// it (404). That answer must not go to the next request.
		for i := range 5 {
			resp, body = env.do(t, "GET", "/hello", strings.NewReader("GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"))
			wantResponse(t, "GET /hello with a body", resp, body, 200, "hello from python\n")
			resp, body = env.do(t, "GET", "/hello", nil)
			wantResponse(t, fmt.Sprintf("GET /hello %d after a GET with a body", i), resp, body, 200, "hello from python\n")
		}
		resp, body = env.do(t, "GET", "/big", nil)
		if resp.StatusCode != 200 || len(body) != 20000*11 || !strings.HasSuffix(string(body), "line 19999\n") {
			t.Errorf("GET /big: %d, %d bytes", resp.StatusCode, len(body))
		}
	})
}

// TestInteropPythonHTTP10: an HTTP/1.0 app (protocol_version "HTTP/1.0"):
// no keep-alive, bodies without a length that end when the app closes the
// connection; they reach the client whole.
func TestInteropPythonHTTP10(t *testing.T) {
	port := startApp(t, "python3", "app.py", "1.0")
	var want strings.Builder
	for i := range 20000 {
		fmt.Fprintf(&want, "line %05d\n", i)
	}
	eachFront(t, "http://127.0.0.1:"+port, Config{}, func(t *testing.T, front string, env *testEnv) {
		for i := range 3 {
			resp, body := env.do(t, "GET", "/big", nil)
			if resp.StatusCode != 200 || string(body) != want.String() {
				t.Errorf("GET /big %d: %d, %d bytes, want %d", i, resp.StatusCode, len(body), want.Len())
			}
			resp, body = env.do(t, "GET", "/hello", nil)
			wantResponse(t, "GET /hello", resp, body, 200, "hello from python\n")
			resp, body = env.do(t, "POST", "/echo", strings.NewReader("xyz"))
			wantResponse(t, "POST", resp, body, 200, "got 3: xyz")
		}
		// A close-delimited stream: its first event reaches the client
		// while the app waits to send the next.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", env.url+"/stream", nil)
		resp, err := env.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		if line, err := br.ReadString('\n'); err != nil || line != "data: first\n" {
			t.Fatalf("first event: %q, %v", line, err)
		}
		resp2, _ := env.do(t, "GET", "/release", nil)
		if resp2.StatusCode != 200 {
			t.Fatalf("release: %d", resp2.StatusCode)
		}
		rest, err := io.ReadAll(br)
		if err != nil || string(rest) != "\ndata: second\n\n" {
			t.Errorf("the rest of the stream: %q, %v", rest, err)
		}
	})
}

// TestInteropNodeH2CStreams: with MaxInFlight 1, open server streams of
// a Node http2 app count among the streams (Config.MaxStreams), and a
// unary call still gets through.
func TestInteropNodeH2CStreams(t *testing.T) {
	port := startApp(t, "node", "app.js", "h2")
	checkGoroutines(t)
	target, _ := url.Parse("h2c://127.0.0.1:" + port)
	env := newH2CEnv(t, target, Config{MaxInFlight: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		req, _ := http.NewRequestWithContext(ctx, "POST", env.url("/pkg.Svc/Watch"), nil)
		req.Header.Set("Content-Type", "application/grpc")
		resp, err := env.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if line, err := bufio.NewReader(resp.Body).ReadString('\n'); resp.StatusCode != 200 || err != nil || line != "tick\n" {
			t.Fatalf("watch %d: %d %q %v", i, resp.StatusCode, line, err)
		}
		eventually(t, 5*time.Second, "the slot back", func() bool { return env.proxy.InFlight() == 0 })
	}
	req, _ := http.NewRequestWithContext(ctx, "POST", env.url("/pkg.Svc/Unary"), strings.NewReader("u"))
	req.Header.Set("Te", "trailers")
	resp, err := env.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || string(b) != "reply:u:te=trailers" {
		t.Errorf("unary with three streams open: %d %q %v", resp.StatusCode, b, err)
	}
	if got := env.proxy.Streams(); got != 3 {
		t.Errorf("Streams() = %d, want 3", got)
	}
}

// TestInteropNodeH2CHTTP1Clients: HTTP/1.1 clients on every front, to the
// Node http2 app: the trailers come back after a chunked body, and a
// stream the app resets mid-body aborts the client's response.
func TestInteropNodeH2CHTTP1Clients(t *testing.T) {
	port := startApp(t, "node", "app.js", "h2")
	eachFront(t, "h2c://127.0.0.1:"+port, Config{}, func(t *testing.T, front string, env *testEnv) {
		resp, body := env.do(t, "POST", "/pkg.Svc/Unary", strings.NewReader("hey"),
			"Te", "trailers", "Content-Type", "application/grpc")
		wantResponse(t, "unary", resp, body, 200, "reply:hey:te=trailers")
		if resp.Trailer.Get("Grpc-Status") != "0" || resp.Trailer.Get("Grpc-Message") != "ok" {
			t.Errorf("trailers %v", resp.Trailer)
		}
		req, _ := http.NewRequest("POST", env.url+"/pkg.Svc/Reset", strings.NewReader("x"))
		req.Header.Set("Te", "trailers")
		resp, err := env.client.Do(req)
		if err == nil {
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				t.Errorf("a stream the app reset ended cleanly: %d %q, trailers %v", resp.StatusCode, b, resp.Trailer)
			}
		}
		resp, body = env.do(t, "POST", "/pkg.Svc/Unary", strings.NewReader("again"), "Te", "trailers")
		wantResponse(t, "unary after the reset", resp, body, 200, "reply:again:te=trailers")

		// The client closes its connection mid-stream: the app's
		// stream is reset.
		c, _, r := rawExchange(t, env, "POST /pkg.Svc/Watch HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
		if r.StatusCode != 200 {
			t.Fatalf("watch: %d", r.StatusCode)
		}
		if line, err := bufio.NewReader(r.Body).ReadString('\n'); err != nil || line != "tick\n" {
			t.Fatalf("watch: %q, %v", line, err)
		}
		_ = c.Close()
		eventually(t, 5*time.Second, "the app's stream closed", func() bool {
			_, body := env.do(t, "GET", "/watching", nil)
			return string(body) == "0"
		})
	})
}
