package relay

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func newTestLoop(t testing.TB, n int) *Loop {
	t.Helper()
	l, err := NewLoop(LoopConfig{Loops: n})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// TestLoopBackpressure sends more than the sockets can buffer to a reader
// that is slow at first: the loop must keep the surplus, stop reading the
// source, and lose nothing.
func TestLoopBackpressure(t *testing.T) {
	l := newTestLoop(t, 1)
	client, a := unixPair(t)
	b, server := unixPair(t)
	var ab atomic.Int64
	done := make(chan result, 1)
	l.Go(a, b, Options{AToB: &ab}, func(st Stats, err error) { done <- result{st, err} })
	data := make([]byte, 16<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	go func() { _, _ = client.Write(data); closeWrite(client) }()
	time.Sleep(100 * time.Millisecond) // the relay fills b's buffers and parks
	h := sha256.New()
	n, err := io.Copy(h, server)
	if err != nil || n != int64(len(data)) {
		t.Fatalf("read %d bytes, %v; want %d", n, err, len(data))
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("data corrupted")
	}
	_ = server.Close()
	r := <-done
	if r.err != nil || r.st.AToB != int64(len(data)) || ab.Load() != int64(len(data)) {
		t.Fatalf("done(%+v, %v), counter %d", r.st, r.err, ab.Load())
	}
}

// TestLoopHandleClose stops an idle relay from outside.
func TestLoopHandleClose(t *testing.T) {
	l := newTestLoop(t, 2)
	client, a := unixPair(t)
	b, server := unixPair(t)
	done := make(chan result, 2)
	h := l.Go(a, b, Options{}, func(st Stats, err error) { done <- result{st, err} })
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	_ = h.Close()
	r := <-done
	if r.err != nil || r.st.AToB != 1 {
		t.Fatalf("done(%+v, %v)", r.st, r.err)
	}
	for _, c := range []net.Conn{client, server} {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("read after Close: %v, want EOF", err)
		}
	}
	_ = h.Close() // again: nothing happens
	select {
	case <-done:
		t.Fatal("done called twice")
	case <-time.After(50 * time.Millisecond):
	}
}

// TestLoopClose ends every pair, and refuses new ones afterwards.
func TestLoopClose(t *testing.T) {
	l, err := NewLoop(LoopConfig{Loops: 2})
	if err != nil {
		t.Fatal(err)
	}
	const pairs = 20
	done := make(chan result, pairs)
	var outer []net.Conn
	for range pairs {
		client, a := unixPair(t)
		b, server := unixPair(t)
		outer = append(outer, client, server)
		l.Go(a, b, Options{}, func(st Stats, err error) { done <- result{st, err} })
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for range pairs {
		select {
		case r := <-done:
			if r.err != nil {
				t.Errorf("done: %v", r.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not end every pair")
		}
	}
	for _, c := range outer {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("read after Loop.Close: %v, want EOF", err)
		}
	}
	client, a := unixPair(t)
	b, _ := unixPair(t)
	var gotErr error
	l.Go(a, b, Options{}, func(_ Stats, err error) { gotErr = err })
	if !errors.Is(gotErr, net.ErrClosed) {
		t.Errorf("Go after Close: done error %v, want net.ErrClosed", gotErr)
	}
	_ = client.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("connection given after Close still open: %v", err)
	}
}

// TestLoopPeerReset: a side that resets ends the pair quietly.
func TestLoopPeerReset(t *testing.T) {
	l := newTestLoop(t, 1)
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	done := make(chan result, 1)
	l.Go(a, b, Options{}, func(st Stats, err error) { done <- result{st, err} })
	_ = server.SetLinger(0)
	_ = server.Close() // RST
	select {
	case r := <-done:
		if r.err != nil {
			t.Errorf("done: %v", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reset did not end the relay")
	}
	_ = client.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Error("client still open")
	}
}

// TestLoopManyPairs runs request/response traffic on many pairs spread
// over the loops at once.
func TestLoopManyPairs(t *testing.T) {
	l := newTestLoop(t, 2)
	const pairs, rounds = 50, 20
	errc := make(chan error, pairs)
	for i := range pairs {
		client, a := unixPair(t)
		b, server := tcpPair(t)
		l.Go(a, b, Options{}, nil)
		go func() { // echo server
			_, _ = io.Copy(server, server)
			closeWrite(server)
		}()
		go func() {
			msg := bytes.Repeat([]byte{byte(i)}, 100+i*37)
			got := make([]byte, len(msg))
			for range rounds {
				if _, err := client.Write(msg); err != nil {
					errc <- err
					return
				}
				if _, err := io.ReadFull(client, got); err != nil {
					errc <- err
					return
				}
				if !bytes.Equal(got, msg) {
					errc <- errors.New("echo corrupted")
					return
				}
			}
			errc <- nil
		}()
	}
	for range pairs {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// TestLoopChurn runs pairs that end every way a pair can end (both sides
// finish, the client vanishes mid-transfer, the server resets, the handle
// is closed, the loop is closed) at once: done is called exactly once per
// pair, finished transfers are intact, and no file descriptor is left.
func TestLoopChurn(t *testing.T) {
	fdsBefore := openFDs(t)
	l, err := NewLoop(LoopConfig{Loops: 2})
	if err != nil {
		t.Fatal(err)
	}
	const pairs = 60
	var doneCount [pairs]atomic.Int32
	errc := make(chan error, pairs)
	var handles []Handle
	for i := range pairs {
		client, a := tcpPair(t)
		b, server := unixPair(t)
		handles = append(handles, l.Go(a, b, Options{}, func(Stats, error) { doneCount[i].Add(1) }))
		data := bytes.Repeat([]byte{byte(i)}, 64<<10+i*999)
		switch i % 4 {
		case 0: // a full exchange with half-closes
			go func() {
				go func() { _, _ = client.Write(data); closeWrite(client) }()
				got, err := io.ReadAll(server)
				if err == nil && !bytes.Equal(got, data) {
					err = errors.New("transfer corrupted")
				}
				closeWrite(server)
				_, _ = io.ReadAll(client)
				errc <- err
			}()
		case 1: // the client vanishes mid-transfer
			go func() {
				_, _ = client.Write(data[:1000])
				_ = client.Close()
				_, _ = io.Copy(io.Discard, server)
				errc <- nil
			}()
		case 2: // the server resets
			go func() {
				_, _ = client.Write(data[:10])
				_ = client.SetLinger(0)
				_ = client.Close()
				_, _ = io.Copy(io.Discard, server)
				errc <- nil
			}()
		case 3: // left open: the handle or the loop ends it
			errc <- nil
		}
	}
	for range pairs {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	for i, h := range handles {
		if i%8 == 3 {
			_ = h.Close()
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for i := range pairs {
		if n := doneCount[i].Load(); n != 1 {
			t.Errorf("pair %d: done called %d times", i, n)
		}
	}
	// The outer ends (client, server) are closed by the test's cleanups,
	// the relayed ends were closed by Go; what the loop owned (the
	// duplicates of the relayed ends) must already be gone.
	if after := openFDs(t); after > fdsBefore+2*pairs+8 {
		t.Errorf("%d descriptors open after Close: %d before, plus the test's %d outer ends", after, fdsBefore, 2*pairs)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	return len(ents)
}

// TestLoopMaxWrite relays 4 MiB each way with MaxWriteA and MaxWriteB set,
// on the loop (sockets) and on its goroutine fallback (connections without
// a descriptor): no write may exceed its side's bound, nothing may be lost.
func TestLoopMaxWrite(t *testing.T) {
	var mu sync.Mutex
	var maxSeen [2]int
	testWrite = func(_ *pair, i, n int) {
		mu.Lock()
		maxSeen[i] = max(maxSeen[i], n)
		mu.Unlock()
	}
	t.Cleanup(func() { testWrite = nil }) // after the loop's Close (cleanups run last first)
	l := newTestLoop(t, 1)
	const limA, limB = 32 << 10, 5000
	for _, kind := range []string{"loop", "goroutines"} {
		t.Run(kind, func(t *testing.T) {
			maxSeen = [2]int{}
			client, a := unixPair(t)
			b, server := unixPair(t)
			var ca, cb net.Conn = a, b
			var wa, wb *maxWriter
			if kind == "goroutines" {
				wa, wb = &maxWriter{Conn: a}, &maxWriter{Conn: b}
				ca, cb = wa, wb
			}
			done := make(chan result, 1)
			l.Go(ca, cb, Options{MaxWriteA: limA, MaxWriteB: limB}, func(st Stats, err error) { done <- result{st, err} })
			data := make([]byte, 4<<20)
			for i := range data {
				data[i] = byte(i * 13)
			}
			errs := make(chan error, 2)
			send := func(c *net.UnixConn) {
				_, err := c.Write(data)
				_ = c.CloseWrite()
				errs <- err
			}
			go send(client)
			go send(server)
			for _, c := range []*net.UnixConn{client, server} {
				got, err := io.ReadAll(c)
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("read %d bytes, %v; want the %d sent", len(got), err, len(data))
				}
			}
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			if r := <-done; r.err != nil {
				t.Fatal(r.err)
			}
			if kind == "goroutines" {
				mu.Lock()
				maxSeen = [2]int{wa.max, wb.max}
				mu.Unlock()
			}
			mu.Lock()
			defer mu.Unlock()
			if maxSeen[0] == 0 || maxSeen[0] > limA || maxSeen[1] == 0 || maxSeen[1] > limB {
				t.Fatalf("largest writes to a and b: %d and %d; want at most %d and %d", maxSeen[0], maxSeen[1], limA, limB)
			}
		})
	}
}

// maxWriter hides its connection's descriptor (so the loop relays it with
// goroutines) and records its largest write.
type maxWriter struct {
	net.Conn
	max int
}

func (w *maxWriter) Write(b []byte) (int, error) {
	w.max = max(w.max, len(b))
	return w.Conn.Write(b)
}

func (w *maxWriter) CloseWrite() error { return w.Conn.(*net.UnixConn).CloseWrite() }

// TestLoopReplyBeforePeerClose: a server that answers and closes without
// reading the whole request (an HTTP 413, say) has its answer relayed to
// the client, although the relay's next write to it fails: the answer was
// sent before the close, and a client connected directly would read it.
func TestLoopReplyBeforePeerClose(t *testing.T) {
	for _, kind := range []string{"unix", "tcp"} {
		t.Run(kind, func(t *testing.T) {
			l := newTestLoop(t, 1)
			var client, a, b, server net.Conn
			if kind == "unix" {
				client, a = unixPair(t)
				b, server = unixPair(t)
			} else {
				client, a = tcpPair(t)
				var ts *net.TCPConn
				b, ts = tcpPair(t)
				server = ts
				_ = ts.SetLinger(0) // its close resets: the relay's writes fail
			}
			reply := answerThenClose(t, client, server)
			done := make(chan result, 1)
			l.Go(a, b, Options{}, func(st Stats, err error) { done <- result{st, err} })
			expectReply(t, client, reply, done)
		})
	}
}
