package host_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/host/hosttest"
	"github.com/quenchnet/quench/internal/testutil"
	"github.com/quenchnet/quench/logship"
)

// startLogHost starts a Host with ServeEnclaveLogs on a unix socket and
// returns the socket's path.
func startLogHost(t *testing.T, cfg host.Config) (*host.Host, string) {
	h := hosttest.Start(t, cfg)
	return h, hosttest.ServeLogs(t, h)
}

// flood opens a log stream to path and sends count records of line on
// stream without waiting for them to be taken; the acknowledgements are
// read and dropped.
func flood(t *testing.T, path, stream string, line []byte, count int) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go io.Copy(io.Discard, c)
	b := []byte(logship.Header)
	for range count {
		b = append(b, byte(len(stream)))
		b = append(b, stream...)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(line)))
		b = append(b, line...)
	}
	go c.Write(b)
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEnclaveLogsReachTheHostLog(t *testing.T) {
	var out testutil.SyncBuffer
	h, path := startLogHost(t, host.Config{Logger: slog.New(slog.NewTextHandler(&out, nil))})
	s, err := logship.New(logship.Config{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}})
	if err != nil {
		t.Fatal(err)
	}
	w, _ := s.Writer("stdout")
	// A line that would forge a log record and colour a terminal.
	fmt.Fprint(w, "served / in 3ms\nevil \x1b[31mred level=ERROR msg=forged\n")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	log := out.String()
	for _, want := range []string{
		`msg=enclave enclave="unix:uid=`,
		` stream=stdout line="served / in 3ms"`,
		` stream=stdout line="evil \x1b[31mred level=ERROR msg=forged"`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("host log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "\x1b") {
		t.Errorf("an escape reached the host log raw:\n%q", log)
	}
	st := h.EnclaveLogStats()
	if st.Lines != 2 || st.Accepted != 1 || st.Errors != 0 || st.Bytes != uint64(len("served / in 3ms")+len("evil \x1b[31mred level=ERROR msg=forged")) {
		t.Fatalf("stats %+v", st)
	}
	eventually(t, "the stream to end", func() bool { return h.EnclaveLogStats().Streams == 0 })
}

func TestEnclaveLogsMalformedAndLimits(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	h, path := startLogHost(t, host.Config{EnclaveLog: func(enclave, stream string, line []byte) {
		mu.Lock()
		lines = append(lines, stream+": "+string(line))
		mu.Unlock()
	}})
	dial := func() net.Conn {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	// Not a log stream: closed, counted.
	c := dial()
	io.WriteString(c, "POST /connect HTTP/1.1\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("malformed stream not closed: %v", err)
	}
	// The error is counted before the stream's slot is given back: wait for
	// both, or one of the four streams below could be refused.
	eventually(t, "the error to be counted and its stream gone", func() bool {
		st := h.EnclaveLogStats()
		return st.Errors == 1 && st.Streams == 0
	})

	// Four streams from one peer are held; the fifth is closed at once.
	for i := range 4 {
		c := dial()
		io.WriteString(c, logship.Header)
		rec := fmt.Sprintf("\x03out%c\x00line %d", byte(len(fmt.Sprintf("line %d", i))), i)
		io.WriteString(c, rec)
	}
	eventually(t, "four streams", func() bool { return h.EnclaveLogStats().Streams == 4 })
	c = dial()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("fifth stream not closed: %v", err)
	}
	eventually(t, "the refusal", func() bool { return h.EnclaveLogStats().Refused == 1 })
	eventually(t, "four lines", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(lines) == 4
	})
}

// TestEnclaveLogsRate: an enclave that floods its log streams (a buggy or
// hostile app's stdout) gets EnclaveLogRate lines a second, all its
// streams together, not the whole of the host's log: the host reads its
// streams no faster (the enclave's Shipper buffers, then drops and says
// so).
func TestEnclaveLogsRate(t *testing.T) {
	var mu sync.Mutex
	perStream := map[string]int{}
	h, path := startLogHost(t, host.Config{EnclaveLogRate: 100, EnclaveLog: func(enclave, stream string, line []byte) {
		mu.Lock()
		perStream[stream]++
		mu.Unlock()
	}})
	start := time.Now()
	flood(t, path, "a", []byte("x"), 1000)
	flood(t, path, "b", []byte("x"), 1000)
	time.Sleep(time.Second)
	mu.Lock()
	n := perStream["a"] + perStream["b"]
	mu.Unlock()
	// A burst of 100, then 100 a second (slack for a slow machine).
	if limit := 100 + int(time.Since(start).Seconds()*100) + 20; n > limit {
		t.Fatalf("%d lines in %s from one enclave flooding two streams at 100 lines/s", n, time.Since(start))
	}
	if n < 100 {
		t.Fatalf("only %d lines in a second", n)
	}
	if d := h.EnclaveLogStats().Delayed; d == 0 {
		t.Fatal("no line counted as delayed")
	}
}

// TestEnclaveLogsRateLongLines: the rate counts a long line as many (one
// per KiB): lines of 16 KiB, each some 64 KiB once slog quotes their
// control characters, must not pass at the rate of short ones.
func TestEnclaveLogsRateLongLines(t *testing.T) {
	var mu sync.Mutex
	n := 0
	_, path := startLogHost(t, host.Config{EnclaveLogRate: 100, EnclaveLog: func(enclave, stream string, line []byte) {
		mu.Lock()
		n++
		mu.Unlock()
	}})
	flood(t, path, "a", bytes.Repeat([]byte{1}, 10<<10), 300)
	start := time.Now()
	time.Sleep(time.Second)
	mu.Lock()
	got := n
	mu.Unlock()
	// 11 each: a burst of 9, then 9 a second (slack for a slow machine).
	if limit := 9 + int(time.Since(start).Seconds()*100/11) + 5; got > limit {
		t.Fatalf("%d lines of 10 KiB in %s at 100 lines/s, each counting 11", got, time.Since(start))
	}
}

// TestEnclaveLogsRateAtClose: a host that shuts down (a restart) while it
// holds an enclave's stream back by its rate must not write out, past the
// rate, what it has read ahead: those lines are not acknowledged, so the
// enclave sends them again to the next host, and they appeared twice
// (3000 lines of a rate-limited `seq 1 3000` written at shutdown, then
// again after the restart).
func TestEnclaveLogsRateAtClose(t *testing.T) {
	var mu sync.Mutex
	n := 0
	h, path := startLogHost(t, host.Config{EnclaveLogRate: 100, EnclaveLog: func(enclave, stream string, line []byte) {
		mu.Lock()
		n++
		mu.Unlock()
	}})
	flood(t, path, "a", []byte("x"), 3000)
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	before := n
	mu.Unlock()
	if err := h.Close(); err != nil { // waits for the streams' goroutines
		t.Fatalf("Close: %v", err)
	}
	mu.Lock()
	after := n
	mu.Unlock()
	if after > before+5 {
		t.Fatalf("%d lines written at Close past the rate (%d before it)", after-before, before)
	}
}
