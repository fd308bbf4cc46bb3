package relay

import (
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// newWaiter returns a function that blocks until rc has data to read (or
// EOF, or an error for Read to report), without a read buffer: it peeks one
// byte with MSG_PEEK|MSG_DONTWAIT and lets the runtime poller park the
// goroutine while the socket is empty. The poller wakes it on new data, so
// the wait costs the same one EAGAIN syscall a blocking Read would.
func newWaiter(rc syscall.RawConn) func() error {
	w := &waiter{rc: rc}
	w.f = w.check
	return w.wait
}

type waiter struct {
	rc     syscall.RawConn
	f      func(fd uintptr) bool // w.check, bound once so waiting does not allocate
	parked bool
	err    error // the socket's error that the peek took
	b      [1]byte
}

func (w *waiter) wait() error {
	w.parked, w.err = false, nil
	if err := w.rc.Read(w.f); err != nil {
		return err
	}
	return w.err
}

func (w *waiter) check(fd uintptr) bool {
	if w.parked {
		// Woken by the poller: there is something (data, EOF or an error)
		// for Read to pick up. A spurious wake-up only costs Read an EAGAIN.
		return true
	}
	_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&w.b[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	switch errno {
	case unix.EAGAIN:
		w.parked = true
		return false
	case 0, unix.EINTR:
	default:
		// The peek took the socket's pending error (ECONNRESET after
		// the peer's reset): Linux reports it once, so the next read
		// would see a clean EOF. wait returns it instead.
		w.err = os.NewSyscallError("read", errno)
	}
	// Data, EOF (0 bytes) or an error: Read reports it.
	return true
}
