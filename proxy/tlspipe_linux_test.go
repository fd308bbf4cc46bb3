package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestTLSPipeKeptOnHandoff: a TLS client on the event loops that
// half-closes while its first response is pending has its pipelined
// bytes decrypted into ltls.pipe (clientClosed). readRequest moves them
// into c.in a buffer at a time; when the next request is one the loop
// hands to the goroutine front end (chunked body, Expect, Upgrade,
// HTTP/1.0...), handoff passed on c.in only: what was left in ltls.pipe was
// dropped, and the goroutine front end read on from the socket past it.
func TestTLSPipeKeptOnHandoff(t *testing.T) {
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(300 * time.Millisecond)
		}
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s %d", r.URL.Path, n)
	})
	env := newEnv(t, "serve-tls", up, Config{})
	addr := strings.TrimPrefix(env.url, "https://")
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c := tls.Client(raw, testClientTLS())
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // on a loop by now
	body := strings.Repeat("x", 8000)
	reqs := "GET /slow HTTP/1.1\r\nHost: app\r\n\r\n" +
		"POST /chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n" +
		fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body) +
		"GET /last HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(c, reqs); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)  // /slow is being served
	_ = c.CloseWrite()                  // close_notify
	_ = raw.(*net.TCPConn).CloseWrite() // FIN: EPOLLRDHUP while /slow is pending
	br := bufio.NewReader(c)
	var got []string
	for range 3 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			break
		}
		b, _ := io.ReadAll(resp.Body)
		got = append(got, fmt.Sprintf("%d %s", resp.StatusCode, b))
	}
	want := []string{"200 /slow 0", fmt.Sprintf("200 /chunked %d", len(body)), "200 /last 0"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("pipelined responses %q, want %q", got, want)
	}
}
