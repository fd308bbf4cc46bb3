package enclave

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/proxy"
)

// frontDoorHandshakeTimeout bounds a client's TLS handshake.
var frontDoorHandshakeTimeout = 10 * time.Second

// frontDoor serves the public HTTPS listeners when the app sits behind the
// proxy (Config.AppURL). It completes each TLS handshake and hands the
// connection on by the protocol the client chose: HTTP/1.1 to the proxy's
// own front end (proxy.Serve, which skips net/http's server, serves the
// connection on its epoll event loops when it has a socket - TCP in TAP
// mode, the ingress fast path - and serves the enclave's endpoints through
// Config.Intercept), HTTP/2 to net/http's server. docs/bench/proxy.md and
// docs/bench/enclave.md measure the difference (quench-enclave's CPU per
// HTTPS request: 34 µs with a goroutine per connection, 21 on the loops).
type frontDoor struct {
	tlsConfig *tls.Config
	h1, h2    *connListener
	timeout   time.Duration // TLS handshake deadline

	wg      sync.WaitGroup // accept loops and handshakes
	mu      sync.Mutex
	pending map[net.Conn]struct{} // guarded by mu; connections in their handshake
	closed  bool                  // guarded by mu
}

func newFrontDoor(tlsConfig *tls.Config, addr net.Addr, timeout time.Duration) *frontDoor {
	return &frontDoor{
		tlsConfig: tlsConfig,
		h1:        newConnListener(addr),
		h2:        newConnListener(addr),
		timeout:   timeout,
		pending:   map[net.Conn]struct{}{},
	}
}

// accept runs the accept loop of ln until ln fails or is closed.
func (f *frontDoor) accept(ln net.Listener) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		var backoff endpoint.AcceptBackoff
		for {
			c, err := ln.Accept()
			if err != nil {
				if !f.h1.isClosed() && backoff.Wait(context.Background(), err) {
					continue
				}
				return
			}
			backoff.Reset()
			f.mu.Lock()
			if f.closed {
				f.mu.Unlock()
				_ = c.Close()
				return
			}
			f.pending[c] = struct{}{}
			f.wg.Add(1)
			f.mu.Unlock()
			go func() {
				defer f.wg.Done()
				f.handshake(c)
			}()
		}
	}()
}

func (f *frontDoor) handshake(c net.Conn) {
	// proxy.TLSServer: once the handshake is done, proxy.Serve moves an
	// HTTP/1.1 connection onto its event loops.
	tc := proxy.TLSServer(c, f.tlsConfig)
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	f.mu.Lock()
	delete(f.pending, c)
	f.mu.Unlock()
	if err != nil {
		proxy.RefusePlainHTTP(err)
		_ = c.Close()
		return
	}
	dst := f.h1
	switch tc.ConnectionState().NegotiatedProtocol {
	case "h2":
		dst = f.h2
	case "acme-tls/1":
		// A TLS-ALPN-01 validation: the handshake was all it wanted.
		_ = tc.Close()
		return
	}
	if !dst.deliver(tc) {
		_ = tc.Close()
	}
}

// close stops handing on connections, closes those still in their
// handshake and waits for the accept loops (their listeners must be closed
// by then).
func (f *frontDoor) close() {
	f.mu.Lock()
	f.closed = true
	for c := range f.pending {
		_ = c.Close()
	}
	f.mu.Unlock()
	_ = f.h1.Close()
	_ = f.h2.Close()
	f.wg.Wait()
}

// connListener is a net.Listener fed with connections by the front door.
type connListener struct {
	addr   net.Addr
	ch     chan net.Conn
	done   chan struct{}
	closer sync.Once
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) deliver(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.closer.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) isClosed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

func (l *connListener) Addr() net.Addr { return l.addr }

// enclavePaths reports whether r is for the enclave's own endpoints
// (/enclave and below) rather than the app.
func enclavePaths(r *http.Request) bool {
	p := r.URL.Path
	return p == IndexPath || strings.HasPrefix(p, IndexPath+"/")
}
