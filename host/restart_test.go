package host_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/host"
)

// TestPublishedPortAfterSilentEnclaveRestart: an enclave restarts (same
// MAC, same address, a new stream) and sends nothing: a server that only
// answers. The host's stack still had the enclave's address resolved to
// its MAC, which the switch forgot with the old stream, so every SYN to a
// published port was dropped until the neighbour entry failed (about 40 s)
// or the enclave happened to send a frame. The host now forgets the
// addresses of a stream that ends, and resolves them afresh.
func TestPublishedPortAfterSilentEnclaveRestart(t *testing.T) {
	pub, err := host.ParsePublish("127.0.0.1:0:8080")
	if err != nil {
		t.Fatal(err)
	}
	h, path := startHost(t, host.Config{Publish: []host.Publish{pub}})
	url := fmt.Sprintf("http://%s/", h.Published()[0])
	serve := func(e *enclave.Enclave, body string) {
		ln, err := e.Listen("tcp", ":8080")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) })}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
	}
	get := func(timeout time.Duration) (string, error) {
		c := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e1 := l4StartEnclave(t, ctx, path)
	serve(e1, "first")
	for {
		if body, err := get(time.Second); err == nil && body == "first" {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the first enclave was never reached through the published port")
		}
	}
	if err := e1.Close(); err != nil {
		t.Fatal(err)
	}
	e2 := l4StartEnclave(t, ctx, path)
	serve(e2, "second")
	// One SYN retransmission (1 s) is allowed, not the neighbour entry's
	// tens of seconds.
	start := time.Now()
	body, err := get(5 * time.Second)
	if err != nil || body != "second" {
		t.Fatalf("after the enclave restarted: %q, %v after %v", body, err, time.Since(start))
	}
	t.Logf("the restarted enclave answered after %v", time.Since(start).Round(time.Millisecond))
}
