package enclave

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/quenchnet/quench/internal/relay"
)

// DefaultForwardDialTimeout bounds how long a forward waits for its target
// to accept a connection.
const DefaultForwardDialTimeout = 5 * time.Second

// Forward is a port forward of quench's ingress fast path to a program in
// the enclave that does not use this package: an app in any language, in
// either network mode. quench-host -publish-vsock HOSTPORT:VSOCKPORT opens
// one VSOCK connection per client connection, with a PROXY protocol header
// first; the Enclave reads the header and relays the connection to Target
// on the enclave's kernel network, usually its loopback. No frame tunnel and
// no TCP stack in user space are on the way: at the same cost as the
// public server's fast path, programs that Listen on ordinary sockets get
// it too.
//
// Each relayed pair is moved into a few epoll event loops (no goroutine per
// connection); writes back to VSOCK are bounded by Config.MaxWrite.
type Forward struct {
	// Listen opens the listener quench-host connects to: a VSOCK listener
	// in production (endpoint.Listen of vsock://:PORT). The Enclave closes
	// it. Required.
	Listen func() (net.Listener, error)

	// Target is where the program listens: "host:port" (TCP, e.g.
	// "127.0.0.1:3000") or "unix:///path". It is dialled with kernel
	// sockets, so in userspace mode it must be on the enclave's loopback.
	// When serving, it must not be the internal server (Config.InternalAddr's
	// port on a loopback, unspecified or "localhost" address): New refuses
	// it, as the host would reach /enclave/hash. Required.
	Target string

	// ProxyHeader passes the client's address on to Target in a PROXY
	// protocol v2 header (for servers that read one: nginx proxy_protocol,
	// HAProxy accept-proxy, go-proxyproto). The address is what the
	// untrusted host claims (see IngressListener). The header is written
	// by the enclave, with the source and destination addresses only:
	// whatever else the host's header held (TLVs, version 1) is dropped. Default: false, the
	// header is removed and Target sees a plain connection.
	ProxyHeader bool

	// DialTimeout bounds the dial of Target; a client whose connection
	// cannot be made in time is closed. Default: DefaultForwardDialTimeout.
	DialTimeout time.Duration
}

// ForwardStats counts one forward's connections.
type ForwardStats struct {
	Target     string
	Accepted   uint64 // connections with a valid header, dialled or not
	Refused    uint64 // connections closed for a missing or bad header
	DialErrors uint64 // accepted connections whose Target could not be reached
	Active     int64  // connections being relayed now
}

// parseTarget splits a Forward's Target into network and address.
func parseTarget(t string) (network, addr string, err error) {
	if p, ok := strings.CutPrefix(t, "unix://"); ok {
		if p == "" {
			return "", "", fmt.Errorf("target %q: empty unix socket path", t)
		}
		return "unix", p, nil
	}
	host, port, err := net.SplitHostPort(t)
	if err != nil {
		return "", "", fmt.Errorf("target %q: want host:port or unix:///path: %w", t, err)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", "", fmt.Errorf("target %q: bad port %q", t, port)
	}
	if host == "" {
		return "", "", fmt.Errorf("target %q: no host (use 127.0.0.1:%s for the enclave's loopback)", t, port)
	}
	return "tcp", t, nil
}

func (f Forward) validate() (Forward, error) {
	if f.Listen == nil {
		return f, fmt.Errorf("enclave: Forward to %q: Listen is nil", f.Target)
	}
	if _, _, err := parseTarget(f.Target); err != nil {
		return f, fmt.Errorf("enclave: Forward: %w", err)
	}
	if f.DialTimeout < 0 {
		return f, fmt.Errorf("enclave: Forward to %q: negative DialTimeout", f.Target)
	}
	if f.DialTimeout == 0 {
		f.DialTimeout = DefaultForwardDialTimeout
	}
	return f, nil
}

// forwards runs an Enclave's Forwards.
type forwards struct {
	log      *slog.Logger
	maxWrite int // bound on writes to VSOCK; 0: none
	loop     *relay.Loop
	dialer   net.Dialer      // refuses the internal server (internalGuard)
	ctx      context.Context // cancelled by close: pending dials give up
	cancel   context.CancelFunc
	fw       []*forward
	accepts  sync.WaitGroup // accept loops and their dials
	relays   sync.WaitGroup // relayed pairs until done
	mu       sync.Mutex
	live     map[relay.Handle]struct{} // guarded by mu
	lastWarn atomic.Int64              // unix nanoseconds of the last dial warning
}

// forward is one Forward with its listener and counters.
type forward struct {
	Forward
	network, addr string
	dialer        *net.Dialer // fs.dialer, or its copy without keepalive for a loopback target
	ln            *IngressListener
	accepted      atomic.Uint64
	dialErrs      atomic.Uint64
	active        atomic.Int64
}

// startForwards opens every forward's listener and starts accepting. On
// error nothing is left running.
//
// Every forward's connections count against conns (Config.MaxConns) from
// the moment they are accepted, before their PROXY header is read, until
// their relayed pair ends; past the cap they are closed as accepted.
func startForwards(list []Forward, maxWrite int, guard *internalGuard, conns *connCap, log *slog.Logger) (*forwards, error) {
	loop, err := relay.NewLoop(relay.LoopConfig{})
	if err != nil {
		return nil, fmt.Errorf("enclave: forwards: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	fs := &forwards{log: log, loop: loop, ctx: ctx, cancel: cancel, live: map[relay.Handle]struct{}{}}
	fs.dialer.Control = guard.control
	// A target on the enclave's loopback cannot vanish without the kernel
	// knowing: TCP keepalive there only costs four setsockopt calls per
	// connection (a tenth of the forward's system calls when every client
	// request is a new connection).
	loopDialer := fs.dialer
	loopDialer.KeepAlive = -1
	if maxWrite > 0 {
		fs.maxWrite = maxWrite
	}
	for _, f := range list {
		ln, err := f.Listen()
		if err != nil {
			fs.close(0)
			return nil, fmt.Errorf("enclave: Forward to %s: listen: %w", f.Target, err)
		}
		fw := &forward{Forward: f, ln: ListenIngress(conns.listen(ln), IngressConfig{Logger: log, MaxWrite: maxWrite})}
		fw.network, fw.addr, _ = parseTarget(f.Target)
		fw.dialer = &fs.dialer
		if isLoopbackTarget(fw.network, fw.addr) {
			fw.dialer = &loopDialer
		}
		fs.fw = append(fs.fw, fw)
		log.Info("ingress forward", "listen", ln.Addr().String(), "target", f.Target, "proxy_header", f.ProxyHeader)
	}
	for _, fw := range fs.fw {
		fs.accepts.Add(1)
		go fs.acceptLoop(fw)
	}
	return fs, nil
}

func (fs *forwards) acceptLoop(fw *forward) {
	defer fs.accepts.Done()
	for {
		c, err := fw.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				fs.log.Error("ingress forward: accept", "target", fw.Target, "err", err)
			}
			return
		}
		fw.accepted.Add(1)
		fs.accepts.Add(1)
		go func() {
			defer fs.accepts.Done()
			fs.connect(fw, c.(*IngressConn))
		}()
	}
}

// connect dials fw's target for ic and hands the pair to the relay loop.
func (fs *forwards) connect(fw *forward, ic *IngressConn) {
	ctx, cancel := context.WithTimeout(fs.ctx, fw.DialTimeout)
	defer cancel()
	t, err := fw.dialer.DialContext(ctx, fw.network, fw.addr)
	if err == nil {
		err = fs.preamble(fw, ic, t)
		if err != nil {
			_ = t.Close()
		}
	}
	if err != nil {
		fw.dialErrs.Add(1)
		_ = ic.Close()
		fs.warnDial(fw, err)
		return
	}
	// The relay reads and writes the VSOCK connection itself: IngressConn's
	// buffered bytes went out in the preamble, its write bound is MaxWriteA.
	// The loop closes ic.Conn at once when it takes a duplicate of its
	// socket: the connection's MaxConns slot goes with the pair's end,
	// when done is called (exactly once, also after the loop's Close).
	fw.active.Add(1)
	fs.relays.Add(1)
	release := ic.Detach()
	var h relay.Handle
	fs.mu.Lock()
	h = fs.loop.Go(ic.Conn, t, relay.Options{MaxWriteA: fs.maxWrite}, func(_ relay.Stats, err error) {
		if err != nil {
			fs.log.Debug("ingress forward: relay ended", "target", fw.Target, "from", ic.RemoteAddr(), "err", err)
		}
		if release != nil {
			release()
		}
		fw.active.Add(-1)
		fs.mu.Lock()
		delete(fs.live, h)
		fs.mu.Unlock()
		fs.relays.Done()
	})
	fs.live[h] = struct{}{}
	fs.mu.Unlock()
}

// preamble writes to t what must precede the relayed bytes: the PROXY
// header if fw passes it on, and the bytes ic read past its own header.
// The header is made afresh, version 2 with the two addresses only: the
// host's header is not passed on as it came, since its TLVs (say, one that
// claims a verified client certificate) and its version are the untrusted
// host's choice.
func (fs *forwards) preamble(fw *forward, ic *IngressConn, t net.Conn) error {
	var pre []byte
	if fw.ProxyHeader && ic.header != nil {
		h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
		if !ic.header.Command.IsLocal() {
			h = proxyproto.HeaderProxyFromAddrs(2, ic.remote, ic.local)
		}
		b, err := h.Format()
		if err != nil {
			return fmt.Errorf("PROXY header: %w", err)
		}
		pre = b
	}
	if ic.br != nil && ic.br.Buffered() > 0 {
		b, _ := ic.br.Peek(ic.br.Buffered())
		pre = append(pre, b...)
		ic.br = nil
	}
	if len(pre) == 0 {
		return nil
	}
	_ = t.SetWriteDeadline(time.Now().Add(fw.DialTimeout))
	if _, err := t.Write(pre); err != nil {
		return err
	}
	return t.SetWriteDeadline(time.Time{})
}

// warnDial logs a failed dial at warning level at most once a second (a
// target that is down fails every connection), the rest at debug level.
func (fs *forwards) warnDial(fw *forward, err error) {
	now := time.Now().UnixNano()
	last := fs.lastWarn.Load()
	if now-last >= int64(time.Second) && fs.lastWarn.CompareAndSwap(last, now) {
		fs.log.Warn("ingress forward: cannot reach the target; client connection closed", "target", fw.Target, "err", err)
		return
	}
	fs.log.Debug("ingress forward: cannot reach the target", "target", fw.Target, "err", err)
}

// stats returns the counters of every forward, in Config order.
func (fs *forwards) stats() []ForwardStats {
	out := make([]ForwardStats, 0, len(fs.fw))
	for _, fw := range fs.fw {
		is := fw.ln.Stats()
		out = append(out, ForwardStats{
			Target:     fw.Target,
			Accepted:   fw.accepted.Load(),
			Refused:    is.Refused,
			DialErrors: fw.dialErrs.Load(),
			Active:     fw.active.Load(),
		})
	}
	return out
}

// close stops accepting, lets relayed connections finish for up to drain,
// then closes those left and waits for everything.
func (fs *forwards) close(drain time.Duration) error {
	var errs []error
	for _, fw := range fs.fw {
		if err := fw.ln.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	fs.cancel()
	fs.accepts.Wait()
	if drain > 0 {
		done := make(chan struct{})
		go func() { fs.relays.Wait(); close(done) }()
		t := time.NewTimer(drain)
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
	}
	fs.mu.Lock()
	left := len(fs.live)
	for h := range fs.live {
		_ = h.Close()
	}
	fs.mu.Unlock()
	if left > 0 {
		fs.log.Info("ingress forward: closed connections still open after the drain", "connections", left)
	}
	fs.relays.Wait()
	if err := fs.loop.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// isLoopbackTarget reports whether a TCP target is on the loopback
// interface: a literal loopback address, or localhost.
func isLoopbackTarget(network, addr string) bool {
	if network != "tcp" {
		return false
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap().IsLoopback()
	}
	return host == "localhost"
}
