//go:build !linux

package relay

import (
	"net"
	"sync/atomic"
)

// Loop relays connection pairs. On this platform it starts two goroutines
// per pair (Go); on Linux it runs them on epoll event loops.
type Loop struct{ closed atomic.Bool }

// NewLoop returns a Loop.
func NewLoop(LoopConfig) (*Loop, error) { return &Loop{}, nil }

// Go relays a and b as Go does and returns a Handle that stops it.
func (l *Loop) Go(a, b net.Conn, opts Options, done func(Stats, error)) Handle {
	if l.closed.Load() {
		return refuse(a, b, done)
	}
	return goHandle(a, b, opts, done)
}

// Close makes later calls to Go refuse; running relays go on until their
// connections close.
func (l *Loop) Close() error { l.closed.Store(true); return nil }
