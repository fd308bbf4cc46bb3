package enclave_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/internal/testutil"
)

// TestServeAppURLH2C: with an h2c AppURL (a gRPC-style app: HTTP/2
// without TLS, prior knowledge), HTTP/2 clients of the enclave's TLS
// reach it with te: trailers and get its trailers back, a bidirectional
// stream works message by message, HTTP/1.1 clients reach it too, and the
// enclave's own endpoints are still the enclave's.
func TestServeAppURLH2C(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			var protos http.Protocols
			protos.SetUnencryptedHTTP2(true)
			app := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/chat" {
					testutil.EchoLines(w, r, "re: ")
					return
				}
				w.Header().Set("Trailer", "Grpc-Status")
				w.Header().Set("Content-Type", "application/grpc")
				fmt.Fprintf(w, "%s %s te=%s via %s", r.Proto, r.URL.Path, r.Header.Get("Te"), r.Header.Get("X-Forwarded-Proto"))
				w.Header().Set("Grpc-Status", "0")
			})}
			ln := listenLocal(t, network)
			go func() { _ = app.Serve(ln) }()
			t.Cleanup(func() { _ = app.Close() })
			appURL := &url.URL{Scheme: "h2c", Host: ln.Addr().String()}
			if network == "unix" {
				appURL = &url.URL{Scheme: "h2c+unix", Path: ln.Addr().String()}
			}
			env := svStart(t, func(c *enclave.Config) {
				c.Handler = nil
				c.AppURL = appURL
			})

			var h2 http.Protocols
			h2.SetHTTP2(true)
			tr := &http.Transport{Protocols: &h2, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			req, _ := http.NewRequest("POST", env.public+"/pkg.Svc/Get", strings.NewReader("x"))
			req.Header.Set("Te", "trailers")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := "HTTP/2.0 /pkg.Svc/Get te=trailers via https"; string(b) != want || resp.ProtoMajor != 2 {
				t.Fatalf("got HTTP/%d %q, want %q", resp.ProtoMajor, b, want)
			}
			if g := resp.Trailer.Get("Grpc-Status"); g != "0" {
				t.Errorf("trailers %v, want Grpc-Status 0", resp.Trailer)
			}

			// Full duplex: message N+1 goes only once reply N is in.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			pr, pw := io.Pipe()
			req, _ = http.NewRequestWithContext(ctx, "POST", env.public+"/chat", pr)
			// net/http's client gives up on ctx only once its body read returns.
			defer context.AfterFunc(ctx, func() { pw.CloseWithError(ctx.Err()) })()
			req.Header.Set("Te", "trailers")
			go func() { _, _ = io.WriteString(pw, "m0\n") }()
			resp, err = c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(resp.Body)
			for i := range 5 {
				line, err := br.ReadString('\n')
				if want := fmt.Sprintf("re: m%d\n", i); err != nil || line != want {
					t.Fatalf("reply %d: %q %v, want %q", i, line, err, want)
				}
				if i < 4 {
					fmt.Fprintf(pw, "m%d\n", i+1)
				}
			}
			_ = pw.Close()
			_, _ = io.Copy(io.Discard, br)
			resp.Body.Close()
			if g := resp.Trailer.Get("Grpc-Status"); g != "0" {
				t.Errorf("stream trailers %v, want Grpc-Status 0", resp.Trailer)
			}

			// The enclave's endpoints, over HTTP/2 and HTTP/1.1.
			h1tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}}
			defer h1tr.CloseIdleConnections()
			h1 := &http.Client{Transport: h1tr, Timeout: 10 * time.Second}
			for _, cl := range []*http.Client{c, h1} {
				code, body := svGet(t, cl, env.public+"/enclave/health")
				if code != http.StatusOK || !strings.Contains(body, `"status":"ok"`) {
					t.Fatalf("health: %d %q", code, body)
				}
			}
			resp, err = h1.Get(env.public + "/p")
			if err != nil {
				t.Fatal(err)
			}
			b, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := "HTTP/2.0 /p te= via https"; resp.ProtoMajor != 1 || string(b) != want {
				t.Errorf("HTTP/1.1 client: HTTP/%d %q, want HTTP/1 %q", resp.ProtoMajor, b, want)
			}
		})
	}
}

// TestServeAppURLH2CTrailersOnly: a gRPC trailers-only response (the app
// answers an error with one HEADERS frame ending the stream, grpc-status
// in it, no body) reaches an HTTP/2 client as one HEADERS frame ending the
// stream. The public handler's flush after the app's handler returned
// split it into HEADERS and an empty DATA frame ending the stream, which
// grpc-go's client fails with Internal ("server closed the stream without
// sending trailers") instead of the app's status; found by
// scripts/grpcinterop.
func TestServeAppURLH2CTrailersOnly(t *testing.T) {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	app := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "5")
		w.Header().Set("Grpc-Message", "x")
		w.WriteHeader(200)
	})}
	ln := listenLocal(t, "tcp")
	go func() { _ = app.Serve(ln) }()
	t.Cleanup(func() { _ = app.Close() })
	env := svStart(t, func(c *enclave.Config) {
		c.Handler = nil
		c.AppURL = &url.URL{Scheme: "h2c", Host: ln.Addr().String()}
	})

	f, err := testutil.H2First(t, strings.TrimPrefix(env.public, "https://"), [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":authority", "app"},
		{":path", "/pkg.Svc/Get"}, {"content-type", "application/grpc"}, {"te", "trailers"},
	}, []byte("\x00\x00\x00\x00\x00"), 10*time.Second) // a gRPC request: an empty message
	if err != nil {
		t.Fatal(err)
	}
	if f.Kind != "HEADERS" {
		t.Fatalf("first frame %v, want the response HEADERS", f)
	}
	if f.Fields[":status"] != "200" || f.Fields["grpc-status"] != "5" || f.Fields["grpc-message"] != "x" {
		t.Errorf("response header %v, want 200 with grpc-status 5", f.Fields)
	}
	if !f.EndStream {
		t.Errorf("the response HEADERS frame did not end the stream: not a trailers-only response")
	}
}
