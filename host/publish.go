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
	refused           atomic.Uint64 // clients reset (TCP) or datagrams dropped (UDP) at a limit
	active            atomic.Int64
	bytesIn, bytesOut atomic.Int64 // client→enclave (of ended connections: see connCloser.in), enclave→client
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
	Refused  uint64 // clients reset (TCP) or new sources' datagrams dropped (UDP) at a limit (Config.MaxPortConns, ...)
	Active   int64  // client connections being relayed now
	BytesIn  int64  // client → enclave (TCP)
	BytesOut int64  // enclave → client (TCP)
}

func (p *published) status() PortStatus {
	p.mu.Lock()
	in := p.bytesIn.Load()
	for cc := range p.conns {
		in += cc.in.Load()
	}
	p.mu.Unlock()
	return PortStatus{
		Spec:     p.spec,
		Addr:     p.addr.String(),
		Accepted: p.accepted.Load(),
		Failed:   p.failed.Load(),
		Refused:  p.refused.Load(),
		Active:   p.active.Load(),
		BytesIn:  in,
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
		ln, err := listenPublished(listenNetwork("tcp", spec.Host), spec.Host.String())
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
		pc, err := net.ListenUDP(listenNetwork("udp", spec.Host), net.UDPAddrFromAddrPort(spec.Host))
		if err != nil {
			return nil, fmt.Errorf("host: publish %s: %w", spec, err)
		}
		p.addr = pc.LocalAddr()
		p.closer = func() { _ = pc.Close() }
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer close(p.served)
			h.servePublishedUDP(p, pc, target)
		}()
	}
	h.published = append(h.published, p)
	h.log.Info("published port", "host", p.addr.String(), "spec", spec.String())
	return p, nil
}

// listenNetwork returns the network to listen on host with: network ("tcp"
// or "udp") with a 4 appended for an IPv4 address. Given plain "tcp", Go
// listens on an unspecified IPv4 address such as 0.0.0.0 with a dual-stack
// IPv6 socket: a port published on 0.0.0.0 then took IPv6 clients too, and
// was listed as [::]:PORT, not by the address RemovePort is given. Docker's
// -p 0.0.0.0:... is IPv4 only as well; [::] stays dual-stack.
func listenNetwork(network string, host netip.AddrPort) string {
	if host.Addr().Unmap().Is4() {
		return network + "4"
	}
	return network
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
		cc := &connCloser{conns: []net.Conn{c}, client: clientAddr(c)}
		if !h.admitPortConn(p, cc) {
			// At the limit: reset at once rather than leave the client in
			// the backlog, where it would hold a kernel slot until it
			// gives up and then be accepted for nothing.
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = c.Close()
			h.warnDial("published port: connection limit reached; client reset", errConnLimit, "port", p.addr.String())
			continue
		}
		p.accepted.Add(1)
		if d := h.cfg.FirstByteTimeout; d > 0 {
			cc.firstByte = time.AfterFunc(d, func() {
				if cc.in.Load() == 0 {
					h.natStats.firstByte.Add(1)
					h.log.Debug("published port: client sent nothing; closed", "port", p.addr.String(), "after", d)
					_ = cc.Close()
				}
			})
		}
		ok := h.goTracked(func() { h.serveConn(p, c, cc) })
		if !ok {
			h.releasePortConn(p, cc)
			_ = c.Close()
			return
		}
	}
}

// errConnLimit: a published port's client was reset at MaxPortConns,
// MaxPortConnsPerPort or MaxPortConnsPerClient.
var errConnLimit = errors.New("too many client connections (Config.MaxPortConns, MaxPortConnsPerPort, MaxPortConnsPerClient; quench-host -max-port-conns, -max-port-conns-per-port, -max-port-conns-per-client)")

// clientAddr is the key of MaxPortConnsPerClient for c: its remote IPv4
// address, or the /64 of its IPv6 address (the smallest block a client is
// usually given: one client can use any address in it).
func clientAddr(c net.Conn) tcpip.Address {
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return tcpip.Address{}
	}
	a := ta.AddrPort().Addr().Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		a = p.Addr()
	}
	return tcpip.AddrFromSlice(a.AsSlice())
}

// admitPortConn registers cc as a client of p within Config.MaxPortConnsPerPort,
// MaxPortConns and MaxPortConnsPerClient, or counts a refusal and reports
// false. Each admitted client is released once, by releasePortConn.
func (h *Host) admitPortConn(p *published, cc *connCloser) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	limit := h.cfg.MaxPortConnsPerPort
	if (limit >= 0 && len(p.conns) >= limit) || !h.natStats.portConns.acquire(cc.client) {
		if limit >= 0 && len(p.conns) >= limit {
			h.natStats.portConns.refused.Add(1)
		}
		p.refused.Add(1)
		return false
	}
	p.conns[cc] = struct{}{}
	p.wg.Add(1)
	return true
}

// releasePortConn ends a client that admitPortConn registered.
func (h *Host) releasePortConn(p *published, cc *connCloser) {
	if cc.firstByte != nil {
		cc.firstByte.Stop()
	}
	p.mu.Lock()
	p.bytesIn.Add(cc.in.Load())
	delete(p.conns, cc)
	p.mu.Unlock()
	h.natStats.portConns.release(cc.client)
	p.wg.Done()
}

// connCloser is what Host.Close and a port's drain close for one client:
// its connections until the relay has them, then the relay.
type connCloser struct {
	mu     sync.Mutex
	conns  []net.Conn
	relay  relay.Handle
	closed bool

	client    tcpip.Address // the client's IP address (MaxPortConnsPerClient)
	in        atomic.Int64  // bytes client → enclave (relay.Options.AToB)
	firstByte *time.Timer   // Config.FirstByteTimeout; set before serveConn runs
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
		p.active.Add(-1)
		h.releasePortConn(p, cc)
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
		// The enclave refused or is unreachable: reset the client, the
		// nearest to the refusal a direct connection gets, rather than a
		// FIN, which reads as a server that accepted and said nothing.
		relay.Abort(c)
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
		cc.started(h.relays.Go(c, enc, h.relayOptions(p, cc), done))
		return
	}
	relay.Go(c, enc, h.relayOptions(p, cc), done)
	cc.started(relayConns{c, enc})
}

// relayConns stops a goroutine relay by closing its connections.
type relayConns struct{ a, b net.Conn }

func (r relayConns) Close() error {
	_ = r.a.Close()
	_ = r.b.Close()
	return nil
}

// relayOptions counts client bytes per connection (cc.in, for
// FirstByteTimeout; status adds them up) and enclave bytes per port.
func (h *Host) relayOptions(p *published, cc *connCloser) relay.Options {
	return relay.Options{IdleTimeout: h.cfg.IdleTimeout, AToB: &cc.in, BToA: &p.bytesOut}
}

// dialIn connects to the enclave's address on the virtual network; nil
// if it is unreachable.
func (h *Host) dialIn(p *published) net.Conn {
	target := tcpip.FullAddress{NIC: nicID, Addr: addr(h.cfg.EnclaveIP), Port: p.spec.EnclavePort}
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.DialTimeout)
	in, err := dialStack(ctx, h.stack, target)
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

// servePublishedUDP relays a published UDP port: each client source
// (address:port) gets a UDP socket of the stack to the enclave, until no
// datagram went either way for udpFlowTimeout; at most
// Config.MaxPortUDPFlows sources for all ports together, and datagrams
// from new sources beyond it are dropped and counted.
//
// It replaces gvisor-tap-vsock's forwarder.UDPProxy, which tracks every
// source without bound (a gVisor endpoint, a goroutine and a 64 KiB
// buffer each, for 90 s): its only hook, the dialer, could refuse a
// source only by failing, which it logs at error level through logrus for
// every datagram, a log flood at the attacker's rate.
func (h *Host) servePublishedUDP(p *published, pc *net.UDPConn, target tcpip.FullAddress) {
	type flow struct {
		conn    *gonet.UDPConn
		last    atomic.Int64 // unix nanoseconds of the last datagram either way
		replied atomic.Bool  // the enclave answered
		assured atomic.Bool  // the client sent again after an answer: a conversation
		evicted bool         // guarded by mu; its slot passed to another flow
	}
	var (
		mu    sync.Mutex
		flows = map[netip.AddrPort]*flow{} // guarded by mu
		wg    sync.WaitGroup
	)
	defer func() {
		mu.Lock()
		for _, f := range flows {
			_ = f.conn.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	limit := &h.natStats.portUDPFlows
	var noVictimUntil time.Time // no flow to evict was found shortly before
	buf := make([]byte, udpBufSize)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || h.ctx.Err() != nil {
				return
			}
			continue
		}
		mu.Lock()
		f := flows[from]
		if f == nil {
			if !limit.acquireQuiet(tcpip.Address{}) {
				// At the limit: take the slot of this port's least
				// recently active flow that was one answered request
				// (see natStats.evictUDPFlow), if there is one.
				// A scan that found none is not repeated for 100 ms: a
				// flood from new sources costs no scan per datagram.
				var victim *flow
				if now := time.Now(); now.After(noVictimUntil) {
					for _, g := range flows {
						if g.replied.Load() && !g.assured.Load() && (victim == nil || g.last.Load() < victim.last.Load()) {
							victim = g
						}
					}
					if victim == nil {
						noVictimUntil = now.Add(100 * time.Millisecond)
					}
				}
				if victim == nil {
					mu.Unlock()
					limit.refused.Add(1)
					p.refused.Add(1)
					continue
				}
				for k, g := range flows {
					if g == victim {
						delete(flows, k)
					}
				}
				victim.evicted = true
				_ = victim.conn.Close()
				h.natStats.udpEvicted.Add(1)
			}
			conn, err := gonet.DialUDP(h.stack, nil, &target, ipv4.ProtocolNumber)
			if err != nil {
				mu.Unlock()
				limit.release(tcpip.Address{})
				p.failed.Add(1)
				h.warnDial("published UDP port: enclave socket", err, "port", p.addr.String())
				continue
			}
			f = &flow{conn: conn}
			f.last.Store(time.Now().UnixNano())
			flows[from] = f
			wg.Add(1)
			go func() {
				defer wg.Done()
				udpReplies(pc, from, conn, &f.last, &f.replied)
				mu.Lock()
				if flows[from] == f {
					delete(flows, from)
				}
				evicted := f.evicted
				mu.Unlock()
				_ = conn.Close()
				if !evicted {
					limit.release(tcpip.Address{})
				}
			}()
		}
		mu.Unlock()
		if !f.assured.Load() && f.replied.Load() {
			f.assured.Store(true)
		}
		f.last.Store(time.Now().UnixNano())
		_, _ = f.conn.Write(buf[:n]) // an error loses this datagram only
	}
}

// udpReplies sends the enclave's datagrams on conn to client from through
// pc until conn fails or no datagram went either way for udpFlowTimeout.
func udpReplies(pc *net.UDPConn, from netip.AddrPort, conn *gonet.UDPConn, last *atomic.Int64, replied *atomic.Bool) {
	buf := make([]byte, udpBufSize)
	_ = conn.SetReadDeadline(time.Now().Add(udpFlowTimeout))
	for {
		n, err := conn.Read(buf)
		if err != nil {
			if isNetTimeout(err) && udpRearm(conn, last) {
				continue
			}
			return
		}
		last.Store(time.Now().UnixNano())
		if !replied.Load() {
			replied.Store(true)
		}
		if _, err := pc.WriteToUDPAddrPort(buf[:n], from); err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
	}
}
