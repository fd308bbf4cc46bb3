package endpoint

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
)

func acceptErr(errno syscall.Errno) error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestAcceptRetryable(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"EMFILE", acceptErr(syscall.EMFILE), true},
		{"ENFILE", acceptErr(syscall.ENFILE), true},
		{"ENOBUFS", acceptErr(syscall.ENOBUFS), true},
		{"ENOMEM", acceptErr(syscall.ENOMEM), true},
		{"ECONNABORTED", acceptErr(syscall.ECONNABORTED), true},
		{"wrapped EMFILE", fmt.Errorf("listener: %w", acceptErr(syscall.EMFILE)), true},
		{"timeout", &net.OpError{Op: "accept", Err: timeoutErr{}}, true},
		{"closed", &net.OpError{Op: "accept", Err: net.ErrClosed}, false},
		{"EBADF", acceptErr(syscall.EBADF), false},
		{"EINVAL", acceptErr(syscall.EINVAL), false},
		{"other", errors.New("boom"), false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		if got := AcceptRetryable(tt.err); got != tt.want {
			t.Errorf("%s: AcceptRetryable(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

func TestAcceptBackoffDelays(t *testing.T) {
	var b AcceptBackoff
	ctx := context.Background()
	want := []time.Duration{5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond}
	for i, w := range want {
		start := time.Now()
		if !b.Wait(ctx, acceptErr(syscall.EMFILE)) {
			t.Fatalf("Wait %d on EMFILE returned false", i)
		}
		if b.Delay() != w {
			t.Fatalf("delay %d = %v, want %v", i, b.Delay(), w)
		}
		if el := time.Since(start); el < w {
			t.Fatalf("Wait %d returned after %v, before its delay %v", i, el, w)
		}
	}
	b.Reset()
	if b.Delay() != 0 {
		t.Fatalf("Delay after Reset = %v", b.Delay())
	}
	for range 12 {
		b.delay = min(max(2*b.delay, minAcceptDelay), maxAcceptDelay)
	}
	if b.Delay() != maxAcceptDelay {
		t.Fatalf("delay capped at %v, want %v", b.Delay(), maxAcceptDelay)
	}
	if b.Wait(ctx, acceptErr(syscall.EBADF)) {
		t.Fatal("Wait on EBADF returned true")
	}
}

func TestAcceptBackoffCancel(t *testing.T) {
	var b AcceptBackoff
	b.delay = maxAcceptDelay
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	start := time.Now()
	if b.Wait(ctx, acceptErr(syscall.EMFILE)) {
		t.Fatal("Wait returned true after its context was cancelled")
	}
	if el := time.Since(start); el > 500*time.Millisecond {
		t.Fatalf("Wait took %v to see the cancellation", el)
	}
	if b.Wait(ctx, acceptErr(syscall.EMFILE)) {
		t.Fatal("Wait on a done context returned true")
	}
}

// TestFailingListener: the helper other packages' accept-loop tests use.
func TestFailingListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := testutil.FailAccepts(ln, syscall.EMFILE, 2)
	defer fl.Close()
	for i := range 2 {
		if _, err := fl.Accept(); !errors.Is(err, syscall.EMFILE) || !AcceptRetryable(err) {
			t.Fatalf("Accept %d: %v, want a retryable EMFILE", i, err)
		}
	}
	if fl.Left() != 0 {
		t.Fatalf("Left = %d", fl.Left())
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := fl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	_ = sc.Close()
}
