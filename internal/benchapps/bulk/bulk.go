// Package bulk is a minimal bulk-throughput protocol for benchmarks that
// must run where iperf3 cannot (inside a userspace network stack): the
// client sends one byte, 'S' to send to the server or 'R' to receive from
// it, then data flows one way for the test's duration.
package bulk

import (
	"errors"
	"io"
	"net"
	"time"
)

const bufSize = 256 << 10

// Serve answers bulk clients on ln until it fails.
func Serve(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go handle(c)
	}
}

func handle(c net.Conn) {
	defer c.Close()
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	buf := make([]byte, bufSize)
	switch mode[0] {
	case 'S':
		_, _ = io.CopyBuffer(io.Discard, c, buf)
	case 'R':
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}
}

// Run measures one direction for d and returns bits per second. receive
// means the server sends.
func Run(c net.Conn, receive bool, d time.Duration) (float64, error) {
	defer c.Close()
	mode := byte('S')
	if receive {
		mode = 'R'
	}
	if _, err := c.Write([]byte{mode}); err != nil {
		return 0, err
	}
	buf := make([]byte, bufSize)
	var n int64
	start := time.Now()
	_ = c.SetDeadline(start.Add(d))
	for {
		var k int
		var err error
		if receive {
			k, err = c.Read(buf)
		} else {
			k, err = c.Write(buf)
		}
		n += int64(k)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			return 0, err
		}
	}
	return float64(n*8) / time.Since(start).Seconds(), nil
}
