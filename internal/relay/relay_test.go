package relay

import (
	"bytes"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// unixPair returns both ends of a unix stream connection.
func unixPair(tb testing.TB) (*net.UnixConn, *net.UnixConn) {
	tb.Helper()
	ln, err := net.Listen("unix", filepath.Join(tb.TempDir(), "s"))
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.Accept(); ch <- res{c, err} }()
	c1, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		tb.Fatal(r.err)
	}
	tb.Cleanup(func() { _ = c1.Close(); _ = r.c.Close() })
	return c1.(*net.UnixConn), r.c.(*net.UnixConn)
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(tb testing.TB) (*net.TCPConn, *net.TCPConn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); ch <- c }()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	c2 := <-ch
	if c2 == nil {
		tb.Fatal("accept failed")
	}
	tb.Cleanup(func() { _ = c1.Close(); _ = c2.Close() })
	return c1.(*net.TCPConn), c2.(*net.TCPConn)
}

// relayed sets up client ⇄ [a relay b] ⇄ server and returns the outer ends
// and a channel with Relay's result. Kinds: unix, pipe (no syscall.Conn:
// the buffer-holding path), and loop-unix, loop-tcp, loop-pipe (the same
// relayed by a Loop; loop-pipe falls back to goroutines).
func relayed(tb testing.TB, kind string, opts Options) (client, server net.Conn, done <-chan result) {
	tb.Helper()
	var a, b net.Conn
	loop := strings.HasPrefix(kind, "loop-")
	switch strings.TrimPrefix(kind, "loop-") {
	case "unix":
		client, a = unixPair(tb)
		b, server = unixPair(tb)
	case "tcp":
		client, a = tcpPair(tb)
		b, server = tcpPair(tb)
	case "pipe":
		c1, c2 := net.Pipe()
		client, a = c1, c2
		c3, c4 := net.Pipe()
		b, server = c3, c4
	default:
		tb.Fatalf("unknown kind %q", kind)
	}
	ch := make(chan result, 1)
	if loop {
		l, err := NewLoop(LoopConfig{})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = l.Close() })
		l.Go(a, b, opts, func(st Stats, err error) { ch <- result{st, err} })
		return client, server, ch
	}
	go func() { st, err := Relay(a, b, opts); ch <- result{st, err} }()
	return client, server, ch
}

type result struct {
	st  Stats
	err error
}

var streamKinds = []string{"unix", "loop-unix", "loop-tcp"}

func TestHalfClose(t *testing.T) {
	for _, kind := range streamKinds {
		t.Run(kind, func(t *testing.T) { testHalfClose(t, kind) })
	}
}

func testHalfClose(t *testing.T, kind string) {
	client, server, done := relayed(t, kind, Options{})
	if _, err := client.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := client.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The server sees the request and then EOF, and can still answer.
	got, err := io.ReadAll(server)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "request" {
		t.Fatalf("server got %q", got)
	}
	if _, err := server.Write([]byte("response")); err != nil {
		t.Fatalf("write after peer's half-close: %v", err)
	}
	closeWrite(server)
	got, err = io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "response" {
		t.Fatalf("client got %q", got)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if diff := cmp.Diff(Stats{AToB: 7, BToA: 8}, r.st); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
}

func TestIdleTimeout(t *testing.T) {
	for _, kind := range []string{"unix", "pipe", "loop-unix", "loop-pipe"} {
		t.Run(kind, func(t *testing.T) {
			var ab, ba atomic.Int64
			client, server, done := relayed(t, kind, Options{IdleTimeout: 150 * time.Millisecond, AToB: &ab, BToA: &ba})
			// Traffic for longer than the timeout keeps it open.
			go func() { _, _ = io.Copy(io.Discard, server) }()
			for range 6 {
				if _, err := client.Write([]byte("ping")); err != nil {
					t.Fatalf("write while active: %v", err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			// Then silence closes both sides.
			start := time.Now()
			select {
			case r := <-done:
				if r.err != nil {
					t.Errorf("relay: %v", r.err)
				}
				if r.st.AToB != 24 || ab.Load() != 24 || ba.Load() != 0 {
					t.Errorf("stats %+v, counters %d/%d; want 24 bytes a→b", r.st, ab.Load(), ba.Load())
				}
			case <-time.After(5 * time.Second):
				t.Fatal("idle relay not closed")
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("closed after %v", d)
			}
			_ = client.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := client.Read(make([]byte, 1)); err == nil {
				t.Error("client still open after idle timeout")
			}
		})
	}
}

func TestBulkBothWays(t *testing.T) {
	for _, kind := range streamKinds {
		t.Run(kind, func(t *testing.T) { testBulkBothWays(t, kind) })
	}
}

func testBulkBothWays(t *testing.T, kind string) {
	client, server, done := relayed(t, kind, Options{})
	up := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	down := bytes.Repeat([]byte("fedcba9876543210"), 3<<15)
	errc := make(chan error, 4)
	var gotUp, gotDown []byte
	go func() { _, err := client.Write(up); closeWrite(client); errc <- err }()
	go func() { _, err := server.Write(down); closeWrite(server); errc <- err }()
	go func() { var err error; gotUp, err = io.ReadAll(server); errc <- err }()
	go func() { var err error; gotDown, err = io.ReadAll(client); errc <- err }()
	for range 4 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) {
		t.Fatalf("corrupted: up %d/%d bytes, down %d/%d", len(gotUp), len(up), len(gotDown), len(down))
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.st.AToB != int64(len(up)) || r.st.BToA != int64(len(down)) {
		t.Errorf("stats %+v", r.st)
	}
}

// TestBulkNoHalfClose covers conns without CloseWrite (and without
// syscall.Conn): EOF on one side closes the other.
func TestBulkNoHalfClose(t *testing.T) {
	client, server, done := relayed(t, "pipe", Options{})
	up := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	go func() { _, _ = client.Write(up); _ = client.Close() }()
	got, err := io.ReadAll(server)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, up) {
		t.Fatalf("got %d bytes, want %d", len(got), len(up))
	}
	select {
	case r := <-done:
		if r.err != nil || r.st.AToB != int64(len(up)) {
			t.Fatalf("relay: %+v, %v", r.st, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("relay did not end")
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// sizeRecorder records the size of every write.
type sizeRecorder struct{ sizes []int }

func (w *sizeRecorder) Write(p []byte) (int, error) {
	w.sizes = append(w.sizes, len(p))
	return len(p), nil
}

// fullReader fills every buffer until n bytes have been read.
type fullReader struct{ n int }

func (r *fullReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, io.EOF
	}
	k := min(len(p), r.n)
	r.n -= k
	return k, nil
}

func TestBufferGrowth(t *testing.T) {
	var w sizeRecorder
	n, err := Copy(&w, &fullReader{n: 4 << 20}, nil)
	if err != nil || n != 4<<20 {
		t.Fatalf("Copy = %d, %v", n, err)
	}
	// 4 reads at 4 KiB, 4 at 64 KiB, then 256 KiB.
	want := []int{4 << 10, 4 << 10, 4 << 10, 4 << 10, 64 << 10, 64 << 10, 64 << 10, 64 << 10, 256 << 10}
	if diff := cmp.Diff(want, w.sizes[:len(want)]); diff != "" {
		t.Errorf("write sizes (-want +got):\n%s", diff)
	}
	for _, s := range w.sizes[len(want):] {
		if s > 256<<10 {
			t.Fatalf("write of %d bytes", s)
		}
	}
}

// shortReader returns small chunks: the buffer must not grow.
type shortReader struct{ n int }

func (r *shortReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, io.EOF
	}
	r.n -= 100
	return min(100, len(p)), nil
}

func TestNoGrowthForSmallReads(t *testing.T) {
	var w sizeRecorder
	if _, err := Copy(&w, &shortReader{n: 100 * 1000}, nil); err != nil {
		t.Fatal(err)
	}
	if len(w.sizes) != 1000 {
		t.Fatalf("%d writes", len(w.sizes))
	}
}

type errWriter struct{}

func (errWriter) Write([]byte) (int, error) { return 0, errors.New("boom") }

func TestCopyWriteError(t *testing.T) {
	_, err := Copy(errWriter{}, &fullReader{n: 10}, nil)
	if err == nil || err.Error() != "boom" {
		t.Fatalf("err = %v", err)
	}
}

// TestParkedClose checks that a relay whose both directions wait without a
// buffer ends when a side is closed, and an EOF while parked half-closes.
func TestParkedClose(t *testing.T) {
	client, server, done := relayed(t, "unix", Options{})
	time.Sleep(20 * time.Millisecond) // both directions parked
	_ = client.Close()
	// The server sees EOF (half-close propagated), then closes too.
	_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := server.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("server read: %v, want EOF", err)
	}
	_ = server.Close()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("relay did not end")
	}
}

// TestParkedWakes checks data after a long idle period still flows.
func TestParkedWakes(t *testing.T) {
	client, server, _ := relayed(t, "unix", Options{})
	buf := make([]byte, 64)
	for i := range 20 {
		time.Sleep(time.Duration(i%3) * 5 * time.Millisecond)
		msg := []byte{byte(i), 'x', 'y'}
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := io.ReadFull(server, buf[:3])
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("round %d: %q, %v", i, buf[:n], err)
		}
		if _, err := server.Write(msg); err != nil {
			t.Fatal(err)
		}
		_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(client, buf[:3]); err != nil {
			t.Fatalf("round %d back: %v", i, err)
		}
	}
}

// BenchmarkRelayUnix measures one bulk stream through a relay between unix
// sockets (allocations per op must stay 0 in steady state).
func BenchmarkRelayUnix(b *testing.B) {
	for _, kind := range []string{"unix", "loop-unix"} {
		for _, size := range []int{1 << 10, 64 << 10} {
			b.Run(kind+"/"+byteSize(size), func(b *testing.B) { benchRelayUnix(b, kind, size) })
		}
	}
}

func benchRelayUnix(b *testing.B, kind string, size int) {
	client, server, _ := relayed(b, kind, Options{IdleTimeout: time.Minute})
	go func() { _, _ = io.Copy(io.Discard, server) }()
	msg := make([]byte, size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := client.Write(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRelayPingPong measures small request/response round trips, the
// path where a parked direction wakes up for every message.
func BenchmarkRelayPingPong(b *testing.B) {
	for _, kind := range []string{"unix", "loop-unix"} {
		b.Run(kind, func(b *testing.B) { benchPingPong(b, kind) })
	}
}

func benchPingPong(b *testing.B, kind string) {
	client, server, _ := relayed(b, kind, Options{})
	go func() {
		buf := make([]byte, 64)
		for {
			n, err := server.Read(buf)
			if err != nil {
				return
			}
			if _, err := server.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	msg := make([]byte, 64)
	buf := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := client.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf); err != nil {
			b.Fatal(err)
		}
	}
}

func byteSize(n int) string {
	if n >= 1<<10 {
		return itoa(n>>10) + "KiB"
	}
	return itoa(n) + "B"
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}

func TestGo(t *testing.T) {
	client, a := unixPair(t)
	b, server := unixPair(t)
	done := make(chan result, 2)
	Go(a, b, Options{}, func(st Stats, err error) { done <- result{st, err} })
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = client.CloseWrite()
	got, err := io.ReadAll(server)
	if err != nil || string(got) != "hello" {
		t.Fatalf("server read %q, %v", got, err)
	}
	_ = server.Close()
	r := <-done
	if r.err != nil || r.st.AToB != 5 {
		t.Fatalf("done(%+v, %v)", r.st, r.err)
	}
	select {
	case <-done:
		t.Fatal("done called twice")
	case <-time.After(50 * time.Millisecond):
	}
}

// slowWriter delays every write, so that the relay's other direction has
// done all it can meanwhile.
type slowWriter struct{ net.Conn }

func (w slowWriter) Write(b []byte) (int, error) {
	time.Sleep(200 * time.Millisecond)
	return w.Conn.Write(b)
}

// TestReplyBeforePeerClose is TestLoopReplyBeforePeerClose for the
// goroutine relay: the server's answer reaches the client although the
// relay's write of the request to the closed server fails first.
func TestReplyBeforePeerClose(t *testing.T) {
	client, a := unixPair(t)
	b, server := unixPair(t)
	reply := answerThenClose(t, client, server)
	done := make(chan result, 1)
	go func() { st, err := Relay(slowWriter{a}, b, Options{}); done <- result{st, err} }()
	expectReply(t, client, reply, done)
}

// answerThenClose has server answer (an HTTP 413) and close before the
// relay starts, and client send a request the server will not read; it
// returns the answer.
func answerThenClose(t *testing.T, client, server net.Conn) []byte {
	t.Helper()
	reply := []byte("HTTP/1.1 413 Content Too Large\r\nConnection: close\r\n\r\n")
	if _, err := server.Write(reply); err != nil {
		t.Fatal(err)
	}
	_ = server.Close()
	time.Sleep(50 * time.Millisecond) // the close reaches the relay's side
	if _, err := client.Write([]byte("POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	return reply
}

// expectReply checks that client reads exactly reply, and that the relay
// (reporting on done) ends without an error.
func expectReply(t *testing.T, client net.Conn, reply []byte, done <-chan result) {
	t.Helper()
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(client)
	if !bytes.Equal(got, reply) {
		t.Errorf("client read %q (%v), want the reply %q", got, err, reply)
	}
	select {
	case r := <-done:
		if r.err != nil {
			t.Errorf("relay: %v", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("relay did not end")
	}
}

// TestResetPropagates: a peer that resets (SO_LINGER 0) its connection
// makes the relay reset the other one, so the far end reads ECONNRESET, as
// on a direct connection, not a clean EOF; either way round.
func TestResetPropagates(t *testing.T) {
	for _, kind := range []string{"tcp", "loop-tcp"} {
		for _, dir := range []string{"server resets", "client resets"} {
			t.Run(kind+"/"+dir, func(t *testing.T) {
				client, server, done := relayed(t, kind, Options{})
				aborter, other := server, client
				if dir == "client resets" {
					aborter, other = client, server
				}
				// Bytes through first: both relayed connections are up.
				if _, err := aborter.Write([]byte("x")); err != nil {
					t.Fatal(err)
				}
				_ = other.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(other, make([]byte, 1)); err != nil {
					t.Fatal(err)
				}
				_ = aborter.(*net.TCPConn).SetLinger(0)
				_ = aborter.Close()
				if _, err := io.ReadAll(other); !errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("after the far peer's reset, read returned %v, want ECONNRESET", err)
				}
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					t.Fatal("relay did not end")
				}
			})
		}
	}
}
