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
func peek(c net.Conn) peekState {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
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
	err = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case n > 0:
			st = peekData
		case errors.Is(err, syscall.EAGAIN):
			st = peekEmpty
		default: // n == 0 without error is EOF
			st = peekClosed
		}
		return true
	})
	if err != nil {
		return peekClosed
	}
	return st
}
