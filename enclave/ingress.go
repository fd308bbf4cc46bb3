package enclave

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/tap"
)

// IngressPolicy says what an ingress listener does with a connection that
// does not start with a PROXY protocol header.
type IngressPolicy int

const (
	// IngressRequire refuses (closes and counts) connections without a
	// valid PROXY protocol v1/v2 header. The default.
	IngressRequire IngressPolicy = iota
	// IngressOptional accepts connections without a header, with the
	// underlying connection's addresses. Malformed headers are still refused.
	IngressOptional
)

// Defaults for IngressConfig.
const (
	DefaultIngressHeaderTimeout = 5 * time.Second
	DefaultIngressMaxPending    = 1024
)

// IngressConfig configures ListenIngress. The zero value is usable.
type IngressConfig struct {
	// Policy for connections without a PROXY header. Default: IngressRequire.
	Policy IngressPolicy

	// HeaderTimeout bounds how long a new connection may take to send its
	// header; slower ones are refused. Default: 5s.
	HeaderTimeout time.Duration

	// MaxPending bounds the connections taken off the underlying listener
	// and not yet returned by Accept: those whose header is being read and
	// those waiting for Accept. While that many are pending the listener
	// stops accepting, and further connections wait in the kernel's
	// backlog (as they would while nobody calls Accept, for instance until
	// the app is ready). Default: 1024.
	MaxPending int

	// MaxWrite bounds every write to the underlying connection: a longer
	// Write is split. Writes from an enclave to VSOCK must stay at 32 KiB
	// or less (on kernels since a vsock change of August 2025 the Nitro
	// hypervisor corrupts larger guest writes; see tap.DefaultMaxWrite).
	// Negative means unbounded (the unix sockets of the VSOCK stand-in
	// need no bound). Default: tap.DefaultMaxWrite (32 KiB).
	MaxWrite int

	// Logger receives refused connections at debug level. Default: discard.
	Logger *slog.Logger
}

// IngressListener yields the connections of quench's ingress fast path:
// each starts with a PROXY protocol header written by quench-host, which is
// read and removed, so that RemoteAddr is the client's address (and
// LocalAddr the address the client connected to).
//
// The header comes from the host, which is untrusted: a compromised host can
// claim any client address. Treat RemoteAddr as informational (logs, rate
// limits that tolerate lies), never as proof of the client's identity; that
// needs TLS client authentication inside the enclave.
//
// Headers are read in a goroutine per connection, so a slow or silent peer
// does not hold up Accept. IngressListener implements net.Listener; its
// connections are *IngressConn.
type IngressListener struct {
	ln  net.Listener
	cfg IngressConfig

	ready  chan *IngressConn // good connections waiting for Accept
	ctx    context.Context   // cancelled by Close
	cancel context.CancelFunc
	sem    chan struct{} // one token per connection taken off ln and not yet returned by Accept
	wg     sync.WaitGroup

	mu      sync.Mutex
	pending map[net.Conn]struct{} // guarded by mu; closed by Close
	errMu   sync.Mutex
	err     error // guarded by errMu; the accept loop's final error

	accepted, refused atomic.Uint64
}

var (
	_ net.Listener = (*IngressListener)(nil)
	_ net.Conn     = (*IngressConn)(nil)
)

// ListenIngress wraps ln (a VSOCK listener in production) and starts
// accepting on it. Close must be called when the listener is no longer
// needed; it closes ln. Connections already returned by Accept are not
// closed.
func ListenIngress(ln net.Listener, cfg IngressConfig) *IngressListener {
	if cfg.HeaderTimeout <= 0 {
		cfg.HeaderTimeout = DefaultIngressHeaderTimeout
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultIngressMaxPending
	}
	if cfg.MaxWrite == 0 {
		cfg.MaxWrite = tap.DefaultMaxWrite
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &IngressListener{
		ln:      ln,
		cfg:     cfg,
		ready:   make(chan *IngressConn),
		ctx:     ctx,
		cancel:  cancel,
		sem:     make(chan struct{}, cfg.MaxPending),
		pending: map[net.Conn]struct{}{},
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// IngressStats counts an IngressListener's connections.
type IngressStats struct {
	Accepted uint64 // connections with a valid header (or none, if optional)
	Refused  uint64 // connections closed for a missing, malformed or slow header
}

// Stats returns the listener's counters.
func (l *IngressListener) Stats() IngressStats {
	return IngressStats{Accepted: l.accepted.Load(), Refused: l.refused.Load()}
}

func (l *IngressListener) acceptLoop() {
	defer l.wg.Done()
	var backoff endpoint.AcceptBackoff
	for {
		select {
		case l.sem <- struct{}{}:
		case <-l.ctx.Done():
			return
		}
		c, err := l.ln.Accept()
		if err != nil {
			<-l.sem
			if backoff.Wait(l.ctx, err) {
				l.cfg.Logger.Warn("ingress: accept failed; retrying", "addr", l.ln.Addr().String(), "err", err, "after", backoff.Delay())
				continue
			}
			l.errMu.Lock()
			l.err = err
			l.errMu.Unlock()
			l.cancel()
			return
		}
		backoff.Reset()
		l.mu.Lock()
		if l.ctx.Err() != nil {
			l.mu.Unlock()
			_ = c.Close()
			<-l.sem
			return
		}
		l.pending[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.handshake(c)
	}
}

// handshake reads c's header and hands it to Accept, or refuses it; it
// releases c's slot in sem once Accept has taken c or c is closed.
func (l *IngressListener) handshake(c net.Conn) {
	defer l.wg.Done()
	// The connection keeps its slot in sem until Accept takes it, so that
	// while nobody calls Accept (an app not ready yet) at most MaxPending
	// connections are off the underlying listener; the rest wait in the
	// kernel's backlog.
	defer func() { <-l.sem }()
	ic, err := readIngressHeader(c, l.cfg.Policy, l.cfg.HeaderTimeout, l.cfg.MaxWrite)
	l.mu.Lock()
	delete(l.pending, c)
	l.mu.Unlock()
	if err != nil {
		l.refused.Add(1)
		l.cfg.Logger.Debug("ingress connection refused", "from", c.RemoteAddr(), "err", err)
		_ = c.Close()
		return
	}
	l.accepted.Add(1)
	select {
	case l.ready <- ic:
	case <-l.ctx.Done():
		_ = c.Close()
	}
}

// readIngressHeader reads the PROXY header at the start of c.
func readIngressHeader(c net.Conn, policy IngressPolicy, timeout time.Duration, maxWrite int) (*IngressConn, error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, fmt.Errorf("enclave: ingress: %w", err)
	}
	// 512 bytes hold any header quench-host writes (v2 with IPv6 is 52).
	br := bufio.NewReaderSize(c, 512)
	h, err := proxyproto.Read(br)
	ic := &IngressConn{Conn: c, br: br, remote: c.RemoteAddr(), local: c.LocalAddr(), maxWrite: maxWrite}
	switch {
	case errors.Is(err, proxyproto.ErrNoProxyProtocol):
		if policy != IngressOptional {
			return nil, errors.New("enclave: ingress: no PROXY protocol header")
		}
	case err != nil:
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("enclave: ingress: no header within %v", timeout)
		}
		return nil, fmt.Errorf("enclave: ingress: bad PROXY header: %w", err)
	case h.Command.IsLocal():
		if policy != IngressOptional {
			return nil, errors.New("enclave: ingress: PROXY header without addresses (LOCAL)")
		}
		ic.header = h
	default:
		src, dst, ok := h.TCPAddrs()
		if !ok {
			return nil, fmt.Errorf("enclave: ingress: PROXY header for %v, want TCP", h.TransportProtocol)
		}
		ic.header, ic.remote, ic.local = h, src, dst
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("enclave: ingress: %w", err)
	}
	if br.Buffered() == 0 {
		ic.br = nil
	}
	return ic, nil
}

// Accept returns the next connection whose header was read. After Close it
// returns an error wrapping net.ErrClosed; after the underlying listener
// fails, that error.
func (l *IngressListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.ctx.Done():
		l.errMu.Lock()
		err := l.err
		l.errMu.Unlock()
		if err == nil {
			err = net.ErrClosed
		}
		return nil, &net.OpError{Op: "accept", Net: l.ln.Addr().Network(), Addr: l.ln.Addr(), Err: err}
	}
}

// Close closes the underlying listener and the connections whose header is
// still being read, and waits for its goroutines. Connections already
// returned by Accept stay open.
func (l *IngressListener) Close() error {
	l.mu.Lock()
	l.cancel()
	for c := range l.pending {
		_ = c.Close()
	}
	l.mu.Unlock()
	err := l.ln.Close()
	l.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// Addr returns the underlying listener's address.
func (l *IngressListener) Addr() net.Addr { return l.ln.Addr() }

// IngressConn is a connection accepted by an IngressListener. RemoteAddr and
// LocalAddr come from the PROXY header (see IngressListener about trust).
type IngressConn struct {
	net.Conn
	br            *bufio.Reader // bytes read past the header; nil once drained
	header        *proxyproto.Header
	remote, local net.Addr
	maxWrite      int // > 0: split writes longer than this
}

// Write writes b in pieces of at most IngressConfig.MaxWrite bytes.
func (c *IngressConn) Write(b []byte) (int, error) {
	if c.maxWrite <= 0 || len(b) <= c.maxWrite {
		return c.Conn.Write(b)
	}
	var n int
	for len(b) > 0 {
		k, err := c.Conn.Write(b[:min(len(b), c.maxWrite)])
		n += k
		if err != nil {
			return n, err
		}
		b = b[k:]
	}
	return n, nil
}

// Read reads the bytes that followed the header, then from the connection.
// Like any net.Conn, it must not be called from two goroutines at once.
func (c *IngressConn) Read(b []byte) (int, error) {
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br.Read(b)
		}
		c.br = nil
	}
	return c.Conn.Read(b)
}

// SyscallConn returns the socket's, for code that reads and writes the
// socket itself (proxy.Serve's event loops), once no bytes are left read
// past the header; until then it fails, as the socket alone would lose them.
func (c *IngressConn) SyscallConn() (syscall.RawConn, error) {
	if c.br != nil && c.br.Buffered() > 0 {
		return nil, errors.New("enclave: ingress: bytes buffered past the PROXY header")
	}
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("enclave: ingress: %T has no socket: %w", c.Conn, errors.ErrUnsupported)
	}
	return sc.SyscallConn()
}

// Detach is for proxy.Serve's event loops (see proxy.TLSServer), which
// take a duplicate of the socket and close the connection at once: it
// passes on the underlying connection's Detach, so that a connection
// limit under the listener (the Enclave's Config.MaxConns) releases its
// slot when the loops end the connection, not when they take it. It
// returns nil when the underlying connection has no Detach.
func (c *IngressConn) Detach() (release func()) {
	if d, ok := c.Conn.(interface{ Detach() func() }); ok {
		return d.Detach()
	}
	return nil
}

// MaxWrite is the bound on each write to the socket (IngressConfig.MaxWrite;
// 0: none), for code that writes the socket itself.
func (c *IngressConn) MaxWrite() int { return c.maxWrite }

// RemoteAddr is the client's address as the host reported it.
func (c *IngressConn) RemoteAddr() net.Addr { return c.remote }

// LocalAddr is the address the client connected to, as the host reported it.
func (c *IngressConn) LocalAddr() net.Addr { return c.local }

// ProxyHeader returns the PROXY header, or nil if there was none.
func (c *IngressConn) ProxyHeader() *proxyproto.Header { return c.header }

// CloseWrite half-closes the underlying connection if it supports it.
func (c *IngressConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("enclave: ingress: %T cannot half-close: %w", c.Conn, errors.ErrUnsupported)
}
