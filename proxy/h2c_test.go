package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestH2CUpgradeNotTunnelled: an "Upgrade: h2c" request (RFC 9113
// section 3.1 deprecates it) goes upstream as a plain request, without
// Upgrade and HTTP2-Settings. It was forwarded as an upgrade, and when the
// upstream switched, the proxy tunnelled raw bytes: the client then talked
// to the upstream's HTTP/2 server directly, past the proxy's checks, with
// its own X-Forwarded-For (h2c smuggling).
func TestH2CUpgradeNotTunnelled(t *testing.T) {
	var mu sync.Mutex
	var smuggledXFF []string
	up := newRawUp(t, func(r *http.Request) []string {
		if strings.EqualFold(r.Header.Get("Upgrade"), "h2c") {
			// What an h2c-capable upstream (Apache mod_http2 H2Upgrade,
			// for one) does; then (here) it keeps parsing HTTP/1.1 for brevity.
			return []string{"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"}
		}
		if r.URL.Path == "/internal" {
			mu.Lock()
			smuggledXFF = append(smuggledXFF, r.Header.Get("X-Forwarded-For"))
			mu.Unlock()
		}
		return []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
	})
	for _, front := range fronts {
		t.Run(front, func(t *testing.T) {
			before := len(up.received())
			p, err := New(up.url(), Config{})
			if err != nil {
				t.Fatal(err)
			}
			base := serveFront(t, p, front)
			c := dialFront(t, strings.TrimPrefix(strings.TrimPrefix(base, "http://"), "https://"))
			if strings.HasPrefix(base, "https://") {
				tc := tls.Client(c, testClientTLS())
				c = tc
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			fwd := up.received()[before:]
			if strings.Contains(fwd, "Upgrade: h2c") && strings.Contains(fwd, "Http2-Settings:") {
				t.Errorf("Upgrade: h2c forwarded upstream:\n%s", fwd)
			}
			if resp.StatusCode != http.StatusSwitchingProtocols {
				return
			}
			t.Errorf("proxy relayed 101 to h2c")
			// Now in the tunnel: a request the proxy never parses.
			fmt.Fprint(c, "GET /internal HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 203.0.113.66\r\n\r\n")
			resp, err = http.ReadResponse(br, nil)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				mu.Lock()
				t.Errorf("request sent through the h2c tunnel reached the upstream with X-Forwarded-For %q", smuggledXFF)
				smuggledXFF = nil
				mu.Unlock()
			}
		})
	}
}
