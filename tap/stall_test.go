package tap_test

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/quenchnet/quench/tap"
	"github.com/quenchnet/quench/tap/taptest"
)

// testStall is the StallTimeout of tests that expect a stall. Tests that
// expect none use okStall, with pauses far below it, so that a loaded
// machine does not make them fail.
const (
	testStall = 300 * time.Millisecond
	okStall   = 500 * time.Millisecond
)

// nextErr runs Next in a goroutine and returns its error and how long
// it took, or fails after limit.
func nextErr(t *testing.T, c *tap.Conn, limit time.Duration) (error, time.Duration) {
	t.Helper()
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := c.Next()
		done <- err
	}()
	select {
	case err := <-done:
		return err, time.Since(start)
	case <-time.After(limit):
		t.Fatalf("Next still blocked after %v", limit)
		return nil, 0
	}
}

// eachTransport runs f in a subtest per transport (in parallel if
// parallel) with one end a of the transport's pair and a Conn c with
// StallTimeout stall on the other.
func eachTransport(t *testing.T, parallel bool, stall time.Duration, f func(t *testing.T, a net.Conn, c *tap.Conn)) {
	t.Helper()
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			if parallel {
				t.Parallel()
			}
			a, b := tr.pair(t)
			f(t, a, newConn(t, b, tap.Config{StallTimeout: stall}))
		})
	}
}

// TestStallReadPartialFrame: a peer that sends 12 bytes of a 1000-byte
// frame and then nothing is detected within 1.5 × StallTimeout, with a
// sticky ErrStalled.
func TestStallReadPartialFrame(t *testing.T) {
	eachTransport(t, false, testStall, func(t *testing.T, a net.Conn, c *tap.Conn) {
		go a.Write(append(prefix(1000), make([]byte, 10)...))
		err, took := nextErr(t, c, 5*time.Second)
		if !errors.Is(err, tap.ErrStalled) {
			t.Fatalf("Next = %v, want ErrStalled", err)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("Next = %v: a stall must not look like a caller's deadline (not sticky)", err)
		}
		t.Logf("Next failed after %v: %v", took.Round(time.Millisecond), err)
		if took < testStall-20*time.Millisecond {
			t.Errorf("stall detected after %v, before StallTimeout %v", took, testStall)
		}
		if _, err := c.Next(); !errors.Is(err, tap.ErrStalled) {
			t.Errorf("second Next = %v, want the sticky ErrStalled", err)
		}
	})
}

// TestStallReadTrickle: a frame whose bytes trickle in steadily but too
// slowly to complete within StallTimeout is a stall too: the deadline is
// the frame's, not renewed by each byte.
func TestStallReadTrickle(t *testing.T) {
	a, b := unixPair(t)
	c := newConn(t, b, tap.Config{StallTimeout: testStall})
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		if _, err := a.Write(prefix(1000)); err != nil {
			return
		}
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := a.Write([]byte{0}); err != nil {
				return
			}
		}
	}()
	// 50 bytes a second would take 20 s for the frame.
	err, took := nextErr(t, c, 5*time.Second)
	if !errors.Is(err, tap.ErrStalled) {
		t.Fatalf("Next = %v, want ErrStalled", err)
	}
	t.Logf("Next failed after %v: %v", took.Round(time.Millisecond), err)
}

// TestStallIdleIsFine: a stream without traffic never times out, before
// any frame and after frames that arrived in pieces.
func TestStallIdleIsFine(t *testing.T) {
	eachTransport(t, true, okStall, func(t *testing.T, a net.Conn, c *tap.Conn) {
		frame := encode(make([]byte, 1000))
		send := func(after time.Duration, p []byte) {
			time.Sleep(after)
			if _, err := a.Write(p); err != nil {
				t.Error(err)
			}
		}
		// Idle from the start, then a frame.
		go send(2*okStall, frame)
		if err, took := nextErr(t, c, 10*time.Second); err != nil {
			t.Fatalf("Next after %v idle = %v", took, err)
		}
		// A frame in two pieces (the read deadline is set), then idle.
		go func() {
			send(0, frame[:100])
			send(10*time.Millisecond, frame[100:])
		}()
		if err, _ := nextErr(t, c, 10*time.Second); err != nil {
			t.Fatalf("Next of a frame in pieces = %v", err)
		}
		go send(2*okStall, frame)
		if err, took := nextErr(t, c, 10*time.Second); err != nil {
			t.Fatalf("Next after %v idle following a split frame = %v", took, err)
		}
	})
}

// TestStallBusyStream: frames that keep arriving split across reads, for
// several times StallTimeout, are no stall, however long the stream runs.
func TestStallBusyStream(t *testing.T) {
	a, b := unixPair(t)
	c := newConn(t, b, tap.Config{StallTimeout: okStall})
	frames := sizedFrames(8, 1000)
	wire := encode(frames...)
	const rounds = 200 // 12 writes 1 ms apart each: 2.5 s or more, 5 × StallTimeout
	go func() {
		for range rounds {
			for p := wire; len(p) > 0; {
				k := min(len(p), 700) // split inside frames
				if _, err := a.Write(p[:k]); err != nil {
					return
				}
				p = p[k:]
				time.Sleep(time.Millisecond)
			}
		}
	}()
	for i := range rounds * len(frames) {
		if _, err := c.Next(); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
	}
}

// TestStallWrite: writes to a peer that reads nothing fail with ErrStalled
// once a write has made no progress for StallTimeout; an idle writer does
// not time out.
func TestStallWrite(t *testing.T) {
	eachTransport(t, true, testStall, func(t *testing.T, _ net.Conn, c *tap.Conn) {
		frames := sizedFrames(64, 65534) // 4 MiB: beyond any socket buffer
		time.Sleep(2 * testStall)        // idle first
		start := time.Now()
		var err error
		for err == nil && time.Since(start) < 10*time.Second {
			_, err = c.WriteFrames(frames, 0)
		}
		took := time.Since(start)
		if !errors.Is(err, tap.ErrStalled) {
			t.Fatalf("WriteFrames = %v after %v, want ErrStalled", err, took)
		}
		t.Logf("WriteFrames failed after %v: %v", took.Round(time.Millisecond), err)
		if _, err := c.WriteFrames(frames[:1], 0); !errors.Is(err, tap.ErrStalled) {
			t.Errorf("next WriteFrames = %v, want the sticky ErrStalled", err)
		}
	})
}

// TestStallOff: a negative StallTimeout waits for ever.
func TestStallOff(t *testing.T) {
	a, b := unixPair(t)
	c := newConn(t, b, tap.Config{StallTimeout: -1})
	go a.Write(append(prefix(1000), make([]byte, 10)...))
	done := make(chan error, 1)
	go func() { _, err := c.Next(); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("Next = %v with StallTimeout off", err)
	case <-time.After(4 * testStall):
	}
	_ = c.Close()
	<-done
}

// TestStallEndsPumpRun: the Pump's Run returns ErrStalled when the host
// stalls mid-frame, so the caller can reconnect.
func TestStallEndsPumpRun(t *testing.T) {
	dev := taptest.NewChannelDevice(0)
	p := tap.NewPump(dev, nil)
	defer p.Close()
	a, b := unixPair(t)
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background(), newConn(t, a, tap.Config{StallTimeout: testStall})) }()
	if _, err := b.Write(append(prefix(1000), make([]byte, 10)...)); err != nil {
		t.Fatal(err)
	}
	if err := waitRun(t, done); !errors.Is(err, tap.ErrStalled) {
		t.Fatalf("Run = %v, want ErrStalled", err)
	}
}
