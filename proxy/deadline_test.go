package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quenchnet/quench/internal/testutil"
)

func TestLazyDeadline(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name  string
		known lazyDeadline
		set   time.Time
		slack time.Duration
		want  bool // the deadline is moved
	}{
		{"unknown", lazyDeadline{}, t0, time.Second, true},
		{"within slack", lazyDeadline{t: t0, known: true}, t0.Add(999 * time.Millisecond), time.Second, false},
		{"same", lazyDeadline{t: t0, known: true}, t0, time.Second, false},
		{"past slack", lazyDeadline{t: t0, known: true}, t0.Add(time.Second), time.Second, true},
		{"earlier", lazyDeadline{t: t0, known: true}, t0.Add(-time.Millisecond), time.Second, true},
		{"no slack", lazyDeadline{t: t0, known: true}, t0.Add(time.Nanosecond), 0, true},
		{"to none", lazyDeadline{t: t0, known: true}, time.Time{}, time.Second, true},
		{"none to none", lazyDeadline{known: true}, time.Time{}, time.Second, false},
		{"none to some", lazyDeadline{known: true}, t0, time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := tt.known
			var got []time.Time
			l.set(func(d time.Time) error { got = append(got, d); return nil }, tt.set, tt.slack)
			var want []time.Time
			if tt.want {
				want = []time.Time{tt.set}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("deadlines set (-want +got):\n%s", diff)
			}
			if l.t != tt.set && tt.want || !l.known {
				t.Errorf("remembered %v (known %v), want %v", l.t, l.known, tt.set)
			}
		})
	}
}

// TestSlowUpstreamAcrossPolls checks that an upstream that pauses longer
// than the client check interval in the middle of a response head and of
// a chunked body, but within UpstreamTimeout, is not cut off by the polling
// deadline or the lazily kept one.
func TestSlowUpstreamAcrossPolls(t *testing.T) {
	checkGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const check = 100 * time.Millisecond // the client check interval
	pause := check + 100*time.Millisecond
	testutil.ServeConns(t, ln, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			if err := skipHead(br); err != nil {
				return
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n")
			time.Sleep(pause)
			_, _ = io.WriteString(c, "Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
			time.Sleep(pause / 2)
			_, _ = io.WriteString(c, "1")
			time.Sleep(pause / 2)
			_, _ = io.WriteString(c, "\r\n!\r\n0\r\n\r\n")
		}
	})
	target, _ := url.Parse("http://" + ln.Addr().String())
	p, err := New(target, Config{UpstreamTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	p.clientCheck = check
	base := serveFront(t, p, "serve")
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for i := range 2 { // the second on the kept-alive upstream connection
		resp, err := client.Get(base + "/")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != "ok!" || resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %q %v; want 200 ok!", i, resp.StatusCode, b, err)
		}
	}
}
