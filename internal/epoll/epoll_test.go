package epoll

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// recorder is a Handler that records what it is given and stops on op -1.
type recorder struct {
	ops     []int
	events  chan int32
	batches int
	stop    bool
}

func (r *recorder) Batch() { r.batches++ }
func (r *recorder) Event(fd int32, ev uint32) {
	if ev&unix.EPOLLIN != 0 {
		r.events <- fd
	}
}
func (r *recorder) Ops(ops []int) {
	for _, o := range ops {
		if o == -1 {
			r.stop = true
			continue
		}
		r.ops = append(r.ops, o)
	}
}
func (r *recorder) Stopped() bool { return r.stop }

func TestLoop(t *testing.T) {
	l, err := New[int]("test")
	if err != nil {
		t.Fatal(err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if err := l.AddReader(fds[0]); err != nil {
		t.Fatal(err)
	}
	r := &recorder{events: make(chan int32, 16)}
	type result struct {
		left []int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		left, err := l.Run(r)
		done <- result{left, err}
	}()
	for i := range 100 {
		if !l.Post(i) {
			t.Fatalf("Post(%d) refused while running", i)
		}
	}
	if _, err := unix.Write(fds[1], []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case fd := <-r.events:
		if fd != int32(fds[0]) {
			t.Errorf("event for fd %d, want %d", fd, fds[0])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event for a readable socket")
	}
	l.Post(-1)
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if len(r.ops) != 100 {
		t.Fatalf("handled %d ops, want 100", len(r.ops))
	}
	for i, o := range r.ops {
		if o != i {
			t.Fatalf("op %d is %d: out of order", i, o)
		}
	}
	if r.batches == 0 {
		t.Error("Batch never called")
	}
	if l.Post(7) {
		t.Error("Post after Run returned was accepted")
	}
}

// pending returns the events epoll has ready for fd, without blocking.
func pending(t *testing.T, l *Loop[int], fd int) uint32 {
	t.Helper()
	n, err := epollWaitNow(l.ep, l.events)
	if err != nil {
		t.Fatal(err)
	}
	var ev uint32
	for _, e := range l.events[:n] {
		if e.Fd == int32(fd) {
			ev |= e.Events
		}
	}
	return ev
}

func TestAddReaderWatchWrites(t *testing.T) {
	l, err := New[int]("test")
	if err != nil {
		t.Fatal(err)
	}
	defer l.file.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	a, b := fds[0], fds[1]
	if err := l.AddReader(a); err != nil {
		t.Fatal(err)
	}
	pending(t, l, a) // whatever registration reported
	buf := make([]byte, 64<<10)

	// The peer reading what a wrote wakes nobody.
	if _, err := unix.Write(a, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Read(b, buf); err != nil {
		t.Fatal(err)
	}
	if ev := pending(t, l, a); ev&unix.EPOLLOUT != 0 {
		t.Fatalf("EPOLLOUT reported for a socket registered with AddReader: %#x", ev)
	}

	// Armed on a writable socket: reported at once.
	if err := l.WatchWrites(a, true); err != nil {
		t.Fatal(err)
	}
	if ev := pending(t, l, a); ev&unix.EPOLLOUT == 0 {
		t.Fatalf("WatchWrites(true) on a writable socket reported %#x, want EPOLLOUT", ev)
	}

	// Full, then drained by the peer: the edge arrives.
	for {
		if _, err := unix.Write(a, buf); err == unix.EAGAIN {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	pending(t, l, a)
	for {
		if _, err := unix.Read(b, buf); err == unix.EAGAIN {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if ev := pending(t, l, a); ev&unix.EPOLLOUT == 0 {
		t.Fatalf("a full socket drained by its peer reported %#x, want EPOLLOUT", ev)
	}

	// Disarmed: quiet again, reads still reported.
	if err := l.WatchWrites(a, false); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(a, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Read(b, buf); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(b, []byte("pong")); err != nil {
		t.Fatal(err)
	}
	if ev := pending(t, l, a); ev&unix.EPOLLOUT != 0 || ev&unix.EPOLLIN == 0 {
		t.Fatalf("after WatchWrites(false): %#x, want EPOLLIN without EPOLLOUT", ev)
	}
	if err := l.WatchWrites(-1, true); err == nil {
		t.Error("WatchWrites on a bad descriptor: no error")
	}
}
