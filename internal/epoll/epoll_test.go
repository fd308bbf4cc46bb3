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
	if err := l.Add(fds[0]); err != nil {
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
