package proxy

import (
	"context"
	"time"
)

// States of a connection served by Serve (clientConn.state).
const (
	connActive   int32 = iota // reading or serving a request
	connIdle                  // waiting for the next request
	connClosing               // closed by Shutdown while idle
	connHijacked              // taken over (upgrade or Hijack): Shutdown neither closes nor waits for it
)

// Shutdown stops [Proxy.Serve] gracefully: it closes the listeners, so that
// Serve returns, closes the connections that are waiting for a request, and
// lets the requests in flight finish; their responses carry
// "Connection: close" and each connection closes as soon as its response
// is out. Shutdown returns nil once every connection Serve accepted is
// gone. If ctx ends first, it calls [Proxy.Close], which closes what is
// left, and returns ctx.Err().
//
// Connections that were upgraded (WebSocket and others) or hijacked by an
// intercepted handler are neither closed nor waited for, as in
// [http.Server.Shutdown]; Close ends the upgraded ones. Requests that
// ServeHTTP is serving for another server are that server's to drain.
// After Shutdown, Serve returns an error wrapping [net.ErrClosed] at once;
// call Close to release the upstream connections.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.shuttingDown.Store(true)
	p.mu.Lock()
	for c := range p.closers {
		switch c.(type) {
		case *clientConn, *loopSet:
		default:
			_ = c.Close() // a listener
		}
	}
	p.mu.Unlock()

	// Poll as net/http's Shutdown does: often at first, then less.
	const maxPoll = 100 * time.Millisecond
	wait := time.Millisecond
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		if p.closeIdleConns() {
			return nil
		}
		select {
		case <-ctx.Done():
			_ = p.Close()
			return ctx.Err()
		case <-t.C:
			wait = min(2*wait, maxPoll)
			t.Reset(wait)
		}
	}
}

// closeIdleConns closes the connections waiting for a request, unless a
// request has just arrived on one, and reports whether no connection is
// left to wait for.
func (p *Proxy) closeIdleConns() (done bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	done = true
	for c := range p.closers {
		if ls, ok := c.(*loopSet); ok {
			if !ls.drain() {
				done = false
			}
			continue
		}
		cc, ok := c.(*clientConn)
		if !ok {
			continue
		}
		switch cc.state.Load() {
		case connHijacked:
			continue
		case connIdle:
			// A request whose bytes are already here is served (with
			// Connection: close) rather than lost.
			if peekBusy(cc.conn) != peekData && cc.state.CompareAndSwap(connIdle, connClosing) {
				_ = cc.conn.Close()
			}
		}
		done = false
	}
	return done
}
