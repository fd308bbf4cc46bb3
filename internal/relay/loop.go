package relay

import (
	"fmt"
	"io"
	"net"
)

// LoopConfig configures a Loop. The zero value is usable.
type LoopConfig struct {
	// Loops is the number of event loops (goroutines) sharing the relayed
	// connections. Default: runtime.GOMAXPROCS(0).
	Loops int
}

// A Handle stops one relayed connection pair.
type Handle interface {
	// Close closes both connections. The relay's done function is still
	// called exactly once (with a nil error when Close ended it).
	Close() error
}

// connsHandle closes the two connections of a goroutine relay.
type connsHandle struct{ a, b net.Conn }

func (h connsHandle) Close() error {
	_ = h.a.Close()
	_ = h.b.Close()
	return nil
}

// goHandle starts a goroutine relay and returns its Handle; Loop falls back
// to it for connections it cannot poll itself.
func goHandle(a, b net.Conn, opts Options, done func(Stats, error)) Handle {
	Go(a, b, opts, done)
	return connsHandle{a, b}
}

var _ io.Closer = Handle(nil)

// refuse is Loop.Go after Close: both connections closed, done told.
func refuse(a, b net.Conn, done func(Stats, error)) Handle {
	_ = a.Close()
	_ = b.Close()
	if done != nil {
		done(Stats{}, fmt.Errorf("relay: %w", net.ErrClosed))
	}
	return connsHandle{a, b}
}
