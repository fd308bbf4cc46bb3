package proxy

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
)

// upgradeUpstream answers every request with 101 (websocket) and then
// echoes what the client sends, until the test ends.
func upgradeUpstream(t *testing.T) *url.URL {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.ServeConns(t, ln, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		fmt.Fprint(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		b := make([]byte, 512)
		for {
			n, err := br.Read(b)
			if err != nil {
				return
			}
			if _, err := c.Write(b[:n]); err != nil {
				return
			}
		}
	})
	return &url.URL{Scheme: "http", Host: ln.Addr().String()}
}

// upgrade opens an upgraded connection through the front at addr and
// returns it with its reader, or the status of a refusal.
func upgrade(t *testing.T, addr string) (net.Conn, *bufio.Reader, int) {
	t.Helper()
	c := dialFront(t, addr)
	t.Cleanup(func() { _ = c.Close() })
	fmt.Fprint(c, "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	return c, br, resp.StatusCode
}

// closedWithin reports whether the server closes c within d.
func closedWithin(c net.Conn, br *bufio.Reader, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := br.ReadByte()
	return err != nil && !isTimeout(err)
}

// TestTunnelIdleTimeout: an upgraded connection with no byte either way
// for TunnelIdleTimeout is closed; one with traffic in one direction only
// stays open. They used to stay open forever, whatever the timeouts.
func TestTunnelIdleTimeout(t *testing.T) {
	target := upgradeUpstream(t)
	for _, front := range []string{"handler", "serve"} {
		t.Run(front, func(t *testing.T) {
			p, err := New(target, Config{TunnelIdleTimeout: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			addr := strings.TrimPrefix(serveFront(t, p, front), "http://")
			idle, idleBR, code := upgrade(t, addr)
			if code != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %d", code)
			}
			busy, busyBR, _ := upgrade(t, addr)
			// busy: the client sends a byte every 100 ms and never reads
			// the echo until the end; the upstream→client way is idle
			// from the tunnel's point of view only between echoes.
			deadline := time.Now().Add(time.Second)
			for time.Now().Before(deadline) {
				if _, err := busy.Write([]byte{'x'}); err != nil {
					t.Fatalf("busy tunnel closed: %v", err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if !closedWithin(idle, idleBR, 2*time.Second) {
				t.Error("idle tunnel still open 1 s after a 300 ms TunnelIdleTimeout")
			}
			_ = busy.SetReadDeadline(time.Now().Add(time.Second))
			if b, err := busyBR.ReadByte(); err != nil || b != 'x' {
				t.Errorf("busy tunnel: %q, %v", b, err)
			}
		})
	}
}

// TestMaxTunnels: an upgrade beyond MaxTunnels is refused with 503 before
// it is forwarded; once a tunnel closes, the next one opens.
func TestMaxTunnels(t *testing.T) {
	target := upgradeUpstream(t)
	for _, front := range []string{"handler", "serve"} {
		t.Run(front, func(t *testing.T) {
			p, err := New(target, Config{MaxTunnels: 2})
			if err != nil {
				t.Fatal(err)
			}
			addr := strings.TrimPrefix(serveFront(t, p, front), "http://")
			first, _, c1 := upgrade(t, addr)
			_, _, c2 := upgrade(t, addr)
			if c1 != http.StatusSwitchingProtocols || c2 != http.StatusSwitchingProtocols {
				t.Fatalf("upgrades within the limit: %d, %d", c1, c2)
			}
			if _, _, c3 := upgrade(t, addr); c3 != http.StatusServiceUnavailable {
				t.Fatalf("upgrade beyond MaxTunnels: %d, want 503", c3)
			}
			_ = first.Close()
			var code int
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if _, _, code = upgrade(t, addr); code == http.StatusSwitchingProtocols {
					return
				}
			}
			t.Fatalf("upgrade after a tunnel closed: %d", code)
		})
	}
}
