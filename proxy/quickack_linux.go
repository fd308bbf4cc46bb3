package proxy

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// quickAck makes the upstream's pending ACK go out now (TCP_QUICKACK), when
// part of a response is in and more is wanted: a server that writes the
// head and the body apart without TCP_NODELAY (Python's http.server, for
// one) holds the body back until the head is acknowledged, and Linux delays
// that ACK by 40 ms. Connections without a TCP socket are left alone.
func (uc *upConn) quickAck() {
	if uc.noQuickAck {
		return
	}
	uc.noQuickAck = true // unless it works
	sc, ok := uc.conn.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1) == nil {
			uc.noQuickAck = false
		}
	})
}
