package host_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/logship"
)

// BenchmarkEnclaveLogs: lines from a logship.Shipper through
// ServeEnclaveLogs to Config.EnclaveLog (discarding), on the unix-socket
// stand-in for VSOCK, the rate limit off: what one enclave's log costs
// both ends per line. b.N lines of 100 bytes; the clock stops when the
// host has taken them all.
//
// discard: EnclaveLog does nothing; text: it writes the line as
// quench-host does (slog's text handler), to io.Discard.
func BenchmarkEnclaveLogs(b *testing.B) {
	text := slog.New(slog.NewTextHandler(io.Discard, nil))
	b.Run("discard", func(b *testing.B) { benchEnclaveLogs(b, func(string, string, []byte) {}) })
	b.Run("text", func(b *testing.B) {
		benchEnclaveLogs(b, func(enclave, stream string, line []byte) {
			text.Info("enclave", "enclave", enclave, "stream", stream, "line", string(line))
		})
	})
}

func benchEnclaveLogs(b *testing.B, sink func(enclave, stream string, line []byte)) {
	var got atomic.Int64
	done := make(chan struct{})
	var want atomic.Int64
	want.Store(-1)
	h, err := host.New(host.Config{EnclaveLogRate: -1, EnclaveLog: func(enclave, stream string, line []byte) {
		sink(enclave, stream, line)
		if n := got.Add(1); n == want.Load() {
			close(done)
		}
	}})
	if err != nil {
		b.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	path := b.TempDir() + "/logs.sock"
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	go h.ServeEnclaveLogs(ln)
	s, err := logship.New(logship.Config{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}, BufferSize: 64 << 20})
	if err != nil {
		b.Fatal(err)
	}
	w, _ := s.Writer("stdout")
	line := []byte(fmt.Sprintf("%099d\n", 0))
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	want.Store(int64(b.N))
	b.ResetTimer()
	for i := range b.N {
		w.Write(line)
		// Steady state: keep the writer ahead of the host, not so far
		// ahead that lines are dropped.
		for i%1024 == 0 && s.Stats().Pending > 16<<20 {
			time.Sleep(100 * time.Microsecond)
		}
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		b.Fatalf("%d of %d lines arrived (dropped: %d)", got.Load(), b.N, s.Stats().Dropped)
	}
	b.StopTimer()
	if d := s.Stats().Dropped; d != 0 {
		b.Fatalf("%d lines dropped", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = s.Close(ctx)
}
