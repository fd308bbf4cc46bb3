//go:build !unix

package proxy

import "net"

// peekState is what a non-blocking peek at a connection's socket found.
type peekState int

const (
	peekUnknown peekState = iota // the connection has no socket to peek at
	peekEmpty                    // nothing to read: open and quiet
	peekData                     // bytes waiting
	peekClosed                   // the peer closed it, or it failed
)

// peek cannot look at sockets on this platform: the retry of idempotent
// requests covers upstream connections closed while idle, and client
// disconnects are noticed on the next write.
func peek(net.Conn) peekState { return peekUnknown }

// peekBusy is peek for a connection another goroutine may be reading from.
func peekBusy(net.Conn) peekState { return peekUnknown }
