package host

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containers/gvisor-tap-vsock/pkg/services/forwarder"
	"github.com/pires/go-proxyproto"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/internal/relay"
)

// Errors of the runtime port API.
var (
	// ErrPortNotFound: RemovePort was given an address no port is bound to.
	ErrPortNotFound = errors.New("host: no such published port")
	// ErrPortExists: AddPort was given a host address already published.
	ErrPortExists = errors.New("host: port already published")
)

// published is one host port forwarded into the enclave.
type published struct {
	spec   Publish
	addr   net.Addr // the bound address (port resolved when 0 was asked)
	closer func()   // stops accepting
	once   sync.Once
	served chan struct{} // closed when the accept loop (or UDP proxy) returns

	mu    sync.Mutex
	conns map[*connCloser]struct{} // guarded by mu; client connections being relayed
	wg    sync.WaitGroup           // connection goroutines

	accepted, failed  atomic.Uint64
	active            atomic.Int64
	bytesIn, bytesOut atomic.Int64 // client→enclave, enclave→client
}

func (p *published) close() { p.once.Do(p.closer) }

func (p *published) key() string { return portKey(p.spec.Network, p.addr.String()) }

func portKey(network, addr string) string { return network + "/" + addr }

// PortStatus describes one published port and its counters.
type PortStatus struct {
	Spec     Publish
	Addr     string // bound address, host:port
	Accepted uint64 // client connections accepted (TCP)
	Failed   uint64 // client connections closed because the enclave was unreachable
	Active   int64  // client connections being relayed now
	BytesIn  int64  // client → enclave (TCP)
	BytesOut int64  // enclave → client (TCP)
}

func (p *published) status() PortStatus {
	return PortStatus{
		Spec:     p.spec,
		Addr:     p.addr.String(),
		Accepted: p.accepted.Load(),
		Failed:   p.failed.Load(),
		Active:   p.active.Load(),
		BytesIn:  p.bytesIn.Load(),
		BytesOut: p.bytesOut.Load(),
	}
}

// Published returns the bound address of each published port: those of
// Config.Publish in order, followed by ports added with AddPort, without
// removed ones.
func (h *Host) Published() []net.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]net.Addr, len(h.published))
	for i, p := range h.published {
		out[i] = p.addr
	}
	return out
}

// Ports returns the status of every published port, in the order of
// Published.
func (h *Host) Ports() []PortStatus {
	h.mu.Lock()
	ps := append([]*published(nil), h.published...)
	h.mu.Unlock()
	out := make([]PortStatus, len(ps))
	for i, p := range ps {
		out[i] = p.status()
	}
	return out
}

// AddPort publishes a port while the Host runs, without touching existing
// connections. It returns the new port's status (with its bound address).
func (h *Host) AddPort(spec Publish) (PortStatus, error) {
	if err := h.cfg.validatePublish(spec); err != nil {
		return PortStatus{}, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return PortStatus{}, fmt.Errorf("host: %w", net.ErrClosed)
	}
	if !h.started {
		return PortStatus{}, errors.New("host: AddPort called before Start")
	}
	if spec.Host.Port() != 0 {
		for _, p := range h.published {
			if p.spec.Network == spec.Network && p.addr.String() == spec.Host.String() {
				return PortStatus{}, fmt.Errorf("%w: %s/%s", ErrPortExists, spec.Network, spec.Host)
			}
		}
	}
	p, err := h.publishLocked(spec)
	if err != nil {
		return PortStatus{}, err
	}
	return p.status(), nil
}

// RemovePort stops publishing the port bound to addr (as listed by Ports,
// e.g. "127.0.0.1:8443") for network "tcp" or "udp". It stops accepting at
// once, then waits for the port's connections to end until ctx is done or,
// if ctx has no deadline, Config.DrainTimeout has passed; connections still
// open then are closed. Other ports are not touched.
func (h *Host) RemovePort(ctx context.Context, network, addr string) error {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		addr = ap.String() // canonical form, as net.Addr prints it
	}
	key := portKey(network, addr)
	h.mu.Lock()
	var p *published
	for i, q := range h.published {
		if q.key() == key {
			p = q
			h.published = append(h.published[:i:i], h.published[i+1:]...)
			break
		}
	}
	h.mu.Unlock()
	if p == nil {
		return fmt.Errorf("%w: %s", ErrPortNotFound, key)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.cfg.DrainTimeout)
		defer cancel()
	}
	h.log.Info("unpublishing port", "port", key, "active", p.active.Load())
	p.close()
	<-p.served
	drained := make(chan struct{})
	go func() { p.wg.Wait(); close(drained) }()
	select {
	case <-drained:
		return nil
	case <-ctx.Done():
	}
	p.mu.Lock()
	n := len(p.conns)
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	<-drained
	h.log.Info("drain deadline passed; closed remaining connections", "port", key, "closed", n)
	return nil
}

func (h *Host) publishLocked(spec Publish) (*published, error) {
	p := &published{spec: spec, served: make(chan struct{}), conns: map[*connCloser]struct{}{}}
	switch {
	case spec.Network == "tcp":
		ln, err := listenPublished("tcp", spec.Host.String())
		if err != nil {
			return nil, fmt.Errorf("host: publish %s: %w", spec, err)
		}
		p.addr = ln.Addr()
		p.closer = func() { _ = ln.Close() }
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer close(p.served)
			h.servePublished(p, ln)
		}()
	case spec.Network == "udp":
		target := tcpip.FullAddress{NIC: nicID, Addr: addr(h.cfg.EnclaveIP), Port: spec.EnclavePort}
		pc, err := net.ListenPacket("udp", spec.Host.String())
		if err != nil {
			return nil, fmt.Errorf("host: publish %s: %w", spec, err)
		}
		proxy, err := forwarder.NewUDPProxy(pc, func() (net.Conn, error) {
			return gonet.DialUDP(h.stack, nil, &target, ipv4.ProtocolNumber)
		})
		if err != nil {
			_ = pc.Close()
			return nil, fmt.Errorf("host: publish %s: %w", spec, err)
		}
		p.addr = pc.LocalAddr()
		p.closer = func() { _ = proxy.Close() }
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer close(p.served)
			proxy.Run()
		}()
	}
	h.published = append(h.published, p)
	h.log.Info("published port", "host", p.addr.String(), "spec", spec.String())
	return p, nil
}

// listenPublished opens a published TCP port's listener; tests wrap it.
var listenPublished = net.Listen

// servePublished accepts clients on a published TCP port and relays each to
// the enclave: through the virtual network, or over VSOCK for the fast path.
func (h *Host) servePublished(p *published, ln net.Listener) {
	var backoff endpoint.AcceptBackoff
	for {
		c, err := ln.Accept()
		if err != nil {
			if backoff.Wait(h.ctx, err) {
				h.log.Warn("published port: accept failed; retrying", append([]any{"addr", p.addr.String(), "err", err, "after", backoff.Delay()}, fdHint(err)...)...)
				continue
			}
			if !errors.Is(err, net.ErrClosed) && h.ctx.Err() == nil {
				h.log.Error("published port stopped", "addr", p.addr.String(), "err", err)
			}
			return
		}
		backoff.Reset()
		p.accepted.Add(1)
		cc := &connCloser{conns: []net.Conn{c}}
		p.mu.Lock()
		p.conns[cc] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		ok := h.goTracked(func() { h.serveConn(p, c, cc) })
		if !ok {
			p.mu.Lock()
			delete(p.conns, cc)
			p.mu.Unlock()
			p.wg.Done()
			_ = c.Close()
			return
		}
	}
}

// connCloser is what Host.Close and a port's drain close for one client:
// its connections until the relay has them, then the relay.
type connCloser struct {
	mu     sync.Mutex
	conns  []net.Conn
	relay  relay.Handle
	closed bool
}

// add adds c; if the client was closed already, it closes c and reports
// false.
func (cc *connCloser) add(c net.Conn) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed {
		_ = c.Close()
		return false
	}
	cc.conns = append(cc.conns, c)
	return true
}

// started hands the client over to its relay.
func (cc *connCloser) started(hd relay.Handle) {
	cc.mu.Lock()
	cc.relay, cc.conns = hd, nil
	closed := cc.closed
	cc.mu.Unlock()
	if closed {
		_ = hd.Close()
	}
}

func (cc *connCloser) Close() error {
	cc.mu.Lock()
	cc.closed = true
	conns, hd := cc.conns, cc.relay
	cc.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	if hd != nil {
		_ = hd.Close()
	}
	return nil
}

// serveConn connects one client of a published port to the enclave and
// hands both connections to the relay (an event loop, or two goroutines
// owned by h.wg), so that the goroutine that dialled, with its grown stack,
// ends.
func (h *Host) serveConn(p *published, c net.Conn, cc *connCloser) {
	p.active.Add(1)
	end := func() {
		h.untrack(cc)
		p.mu.Lock()
		delete(p.conns, cc)
		p.mu.Unlock()
		p.active.Add(-1)
		p.wg.Done()
	}
	if !h.track(cc) {
		_ = c.Close()
		end()
		return
	}
	var enc net.Conn
	if p.spec.VSockPort != 0 {
		enc = h.dialVSock(p, c)
	} else {
		enc = h.dialIn(p)
	}
	if enc == nil {
		_ = c.Close()
		end()
		return
	}
	if !cc.add(enc) {
		_ = c.Close()
		end()
		return
	}
	h.wg.Add(1) // the relay's; h.wg is non-zero here (this goroutine holds it)
	done := func(relay.Stats, error) {
		end()
		h.wg.Done()
	}
	if h.relays != nil {
		cc.started(h.relays.Go(c, enc, h.relayOptions(p), done))
		return
	}
	relay.Go(c, enc, h.relayOptions(p), done)
	cc.started(relayConns{c, enc})
}

// relayConns stops a goroutine relay by closing its connections.
type relayConns struct{ a, b net.Conn }

func (r relayConns) Close() error {
	_ = r.a.Close()
	_ = r.b.Close()
	return nil
}

func (h *Host) relayOptions(p *published) relay.Options {
	return relay.Options{IdleTimeout: h.cfg.IdleTimeout, AToB: &p.bytesIn, BToA: &p.bytesOut}
}

// dialIn connects to the enclave's address on the virtual network; nil
// if it is unreachable.
func (h *Host) dialIn(p *published) net.Conn {
	target := tcpip.FullAddress{NIC: nicID, Addr: addr(h.cfg.EnclaveIP), Port: p.spec.EnclavePort}
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.DialTimeout)
	in, err := gonet.DialContextTCP(ctx, h.stack, target, ipv4.ProtocolNumber)
	cancel()
	if err != nil {
		p.failed.Add(1)
		h.warnDial("published port: enclave unreachable; client connection closed", err, "target", fmt.Sprintf("%v:%d", target.Addr, target.Port))
		return nil
	}
	return in
}

// dialVSock opens the ingress fast path for client c: one enclave
// connection, started with a PROXY protocol v2 header carrying c's
// addresses; nil if that fails.
func (h *Host) dialVSock(p *published, c net.Conn) net.Conn {
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.DialTimeout)
	vc, err := h.cfg.DialEnclave(ctx, p.spec.VSockPort)
	cancel()
	if err != nil {
		p.failed.Add(1)
		h.warnDial("ingress: enclave unreachable; client connection closed", err, "vsock_port", p.spec.VSockPort)
		return nil
	}
	hdr := proxyproto.HeaderProxyFromAddrs(2, c.RemoteAddr(), c.LocalAddr())
	_ = vc.SetWriteDeadline(time.Now().Add(h.cfg.DialTimeout))
	if _, err := hdr.WriteTo(vc); err != nil {
		p.failed.Add(1)
		h.log.Debug("ingress: writing PROXY header", "vsock_port", p.spec.VSockPort, "err", err)
		_ = vc.Close()
		return nil
	}
	_ = vc.SetWriteDeadline(time.Time{})
	return vc
}

// warnDial logs a failed dial into the enclave for a published port: a
// warning at most once a second (with the enclave down every client fails
// in turn), the rest at debug level. Out of file descriptors, it says so:
// each fast-path client holds two in quench-host.
func (h *Host) warnDial(msg string, err error, args ...any) {
	args = append(append(args, "err", err), fdHint(err)...)
	now := time.Now().UnixNano()
	last := h.lastDialWarn.Load()
	if now-last >= int64(time.Second) && h.lastDialWarn.CompareAndSwap(last, now) {
		h.log.Warn(msg, args...)
		return
	}
	h.log.Debug(msg, args...)
}

// fdHint returns a log attribute that names the open-file limit when err
// is the process or the system running out of descriptors, else nothing.
func fdHint(err error) []any {
	if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
		return []any{"hint", "out of file descriptors: raise the open-file limit (ulimit -n, systemd LimitNOFILE=)"}
	}
	return nil
}
