// Package rawio reads and writes non-blocking descriptors with raw system
// calls.
//
// A read or write on a non-blocking socket never blocks, so it needs none of
// what syscall.Syscall adds around the call: entering and leaving the
// scheduler's syscall state. That bookkeeping is cheap by itself, but Go's
// sysmon thread, which retakes a P that it finds in the same syscall across
// one of its ticks, keeps polling every 20 µs for as long as it retakes
// any; on a busy machine, a goroutine doing tens of thousands of short
// syscalls a second is regularly caught descheduled inside one, and sysmon
// never backs off. In a perf profile of quench-enclave relaying the ingress
// fast path, sysmon's usleep and retake were 21 % of the process's CPU
// time; with raw calls they are gone, and the CPU per request fell by half
// (docs/bench/tunnel.md).
//
// Use these only on descriptors in non-blocking mode: a raw call that
// blocks holds its P (and so one of GOMAXPROCS) until it returns.
package rawio

import (
	"errors"
	"net"
	"os"
	"syscall"
	"unsafe"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// Read is read(2), retried on EINTR. It returns unix.EAGAIN when nothing
// is there.
func Read(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}

// Write is write(2), retried on EINTR. It returns unix.EAGAIN when the
// descriptor cannot take anything now.
func Write(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}

// ReadRaw reads into b through rc: one read, after waiting in Go's poller
// until there is something to read (deadlines apply). As read(2), n == 0
// with a nil error is the end of the stream (not io.EOF).
func ReadRaw(rc syscall.RawConn, b []byte) (n int, err error) {
	var serr error
	err = rc.Read(func(fd uintptr) bool {
		n, serr = Read(int(fd), b)
		return serr != unix.EAGAIN
	})
	if err == nil && serr != nil {
		err = serr
	}
	return n, err
}

// WriteRaw writes all of b through rc, waiting in the poller while the
// descriptor is full (deadlines apply). It returns the bytes written.
func WriteRaw(rc syscall.RawConn, b []byte) (n int, err error) {
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			k, e := Write(int(fd), b[n:])
			if e == unix.EAGAIN {
				return false
			}
			if e != nil {
				serr = e
				return true
			}
			n += k
		}
		return true
	})
	if err == nil && serr != nil {
		err = serr
	}
	return n, err
}

// Of returns c's syscall.RawConn when c's descriptor may be read and written
// directly: for the stream sockets whose Read and Write are the plain
// system calls, *net.UnixConn, *net.TCPConn and *vsock.Conn. Other
// connections, including wrappers of those (which may buffer), get nil.
func Of(c any) syscall.RawConn {
	var sc syscall.Conn
	switch c := c.(type) {
	case *net.UnixConn:
		sc = c
	case *net.TCPConn:
		sc = c
	case *vsock.Conn:
		sc = c
	default:
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// Cause strips the *net.OpError that a RawConn puts around poller errors,
// so that the caller's own error holds the cause (net.ErrClosed,
// os.ErrDeadlineExceeded) directly; an errno from the raw call becomes an
// *os.SyscallError named op, as net's own reads and writes report it.
func Cause(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	if errno, ok := err.(syscall.Errno); ok {
		return os.NewSyscallError(op, errno)
	}
	return err
}
