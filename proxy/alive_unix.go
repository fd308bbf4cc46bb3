//go:build unix

package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
)

// peekState is what a non-blocking peek at a connection's socket found.
type peekState int

const (
	peekUnknown peekState = iota // the connection has no socket to peek at
	peekEmpty                    // nothing to read: open and quiet
	peekData                     // bytes waiting
	peekClosed                   // the peer closed it, or it failed
)

// peek looks at c's socket without reading from it and without blocking.
// It must not be called while another goroutine reads from c: it waits for
// the read lock.
func peek(c net.Conn) peekState { return peekWith(c, false) }

// peekBusy is peek for a connection another goroutine may be blocked
// reading from: it takes no lock (the peek itself never blocks).
func peekBusy(c net.Conn) peekState { return peekWith(c, true) }

func peekWith(c net.Conn, busy bool) peekState {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if b, ok := c.(*tlsBase); ok && b.io == nil {
		c = b.Conn // a TLSServer connection served on a goroutine
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return peekUnknown
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return peekUnknown
	}
	st := peekUnknown
	var buf [1]byte
	f := func(fd uintptr) {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case n > 0:
			st = peekData
		case errors.Is(err, syscall.EAGAIN):
			st = peekEmpty
		default: // n == 0 without error is EOF
			st = peekClosed
		}
	}
	if busy {
		err = rc.Control(f)
	} else {
		err = rc.Read(func(fd uintptr) bool { f(fd); return true })
	}
	if err != nil {
		return peekClosed
	}
	return st
}
