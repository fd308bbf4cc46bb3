package host

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/quenchnet/quench/internal/ethlink"
	"github.com/quenchnet/quench/internal/relay"
)

type natStats struct {
	dials, failed, refused atomic.Uint64
	udpRefused             atomic.Uint64 // UDP packets dropped by policy
	dnsQueries, dnsRefused atomic.Uint64 // upstream DNS questions; refused by policy

	// Limits against hostile clients and enclaves (layer 4); set up by
	// installNAT from Config, taken once per connection or flow.
	natConns     flowLimit[tcpip.Address] // NAT TCP connections, per enclave address
	natUDPFlows  flowLimit[tcpip.Address] // NAT UDP flows, per enclave address
	udpEvicted   atomic.Uint64            // NAT UDP flows ended to make room (evictUDPFlow)
	dialSlots    flowLimit[tcpip.Address] // MaxInFlightDials shares, per enclave address
	portConns    flowLimit[tcpip.Address] // published TCP ports' client connections (total)
	portUDPFlows flowLimit[tcpip.Address] // published UDP ports' client sources (total)
	proxyConns   flowLimit[string]        // vsock-proxy connections, per peer (peerID)
	firstByte    atomic.Uint64            // published-port clients closed by FirstByteTimeout

	// The live NAT UDP flows per enclave address, for evictUDPFlow.
	udpMu       sync.Mutex
	udpFlows    map[tcpip.Address]map[*natUDPFlow]struct{} // guarded by udpMu
	udpNoVictim map[tcpip.Address]int64                    // guarded by udpMu; no eviction scan for the address until (unix ns)
}

// flowLimit counts live flows (connections, UDP flows, dials) against a
// total and a per-source cap, negative meaning none. It is taken when a
// flow starts and released when it ends, never per packet.
type flowLimit[K comparable] struct {
	max, perSrc int
	refused     atomic.Uint64

	mu    sync.Mutex
	n     int       // guarded by mu
	bySrc map[K]int // guarded by mu; when perSrc >= 0
}

func (l *flowLimit[K]) init(max, perSrc int) {
	l.max, l.perSrc = max, perSrc
	if perSrc >= 0 {
		l.bySrc = map[K]int{}
	}
}

// acquire takes one flow for src, or counts a refusal and reports false.
func (l *flowLimit[K]) acquire(src K) bool {
	if !l.acquireQuiet(src) {
		l.refused.Add(1)
		return false
	}
	return true
}

// acquireQuiet is acquire without counting a refusal.
func (l *flowLimit[K]) acquireQuiet(src K) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if (l.max >= 0 && l.n >= l.max) || (l.bySrc != nil && l.bySrc[src] >= l.perSrc) {
		return false
	}
	l.n++
	if l.bySrc != nil {
		l.bySrc[src]++
	}
	return true
}

// release ends one flow that acquire took for src.
func (l *flowLimit[K]) release(src K) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if l.bySrc != nil {
		if l.bySrc[src] <= 1 {
			delete(l.bySrc, src)
		} else {
			l.bySrc[src]--
		}
	}
}

func (l *flowLimit[K]) live() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// LimitStats reports the limits against hostile clients and enclaves
// (layer 4; see Config): what is held now and what was refused.
type LimitStats struct {
	NATConns, NATConnsRefused       uint64 // enclave TCP connections through the NAT; reset at MaxNATConns(PerEnclave)
	NATUDPFlows, NATUDPFlowsRefused uint64 // enclave UDP flows; new flows dropped at MaxNATUDPFlows(PerEnclave)
	NATUDPFlowsEvicted              uint64 // enclave UDP flows of one answered request ended there to make room
	DialsDeferred                   uint64 // SYNs dropped at MaxDialsPerEnclave (the enclave retransmits)
	PortConns, PortConnsRefused     uint64 // published TCP ports' clients; reset at MaxPortConns(PerPort)
	PortFirstByteTimeouts           uint64 // published TCP ports' clients closed by FirstByteTimeout
	PortUDPFlows, PortUDPRefused    uint64 // published UDP ports' client sources; datagrams dropped at MaxPortUDPFlows
	ProxyConns, ProxyConnsRefused   uint64 // vsock-proxy connections; closed at MaxVSockProxyConns(PerPeer)
}

// LimitStats returns the current counters of the layer-4 limits.
func (h *Host) LimitStats() LimitStats {
	n := &h.natStats
	return LimitStats{
		NATConns:              uint64(n.natConns.live()),
		NATConnsRefused:       n.natConns.refused.Load(),
		NATUDPFlows:           uint64(n.natUDPFlows.live()),
		NATUDPFlowsRefused:    n.natUDPFlows.refused.Load(),
		NATUDPFlowsEvicted:    n.udpEvicted.Load(),
		DialsDeferred:         n.dialSlots.refused.Load(),
		PortConns:             uint64(n.portConns.live()),
		PortConnsRefused:      n.portConns.refused.Load(),
		PortFirstByteTimeouts: n.firstByte.Load(),
		PortUDPFlows:          uint64(n.portUDPFlows.live()),
		PortUDPRefused:        n.portUDPFlows.refused.Load(),
		ProxyConns:            uint64(n.proxyConns.live()),
		ProxyConnsRefused:     n.proxyConns.refused.Load(),
	}
}

// installNAT terminates the enclave's outbound TCP and UDP in the stack and
// re-originates it from the host: connections to HostLoopbackIP go to the
// host's 127.0.0.1, link-local addresses (EC2 metadata) are refused unless
// allowed, and everything else is dialled as addressed.
func (h *Host) installNAT() {
	c := h.cfg
	n := &h.natStats
	n.natConns.init(c.MaxNATConns, c.MaxNATConnsPerEnclave)
	n.natUDPFlows.init(c.MaxNATUDPFlows, c.MaxNATUDPFlowsPerEnclave)
	n.dialSlots.init(-1, c.MaxDialsPerEnclave)
	n.portConns.init(c.MaxPortConns, c.MaxPortConnsPerClient)
	n.portUDPFlows.init(c.MaxPortUDPFlows, -1)
	n.proxyConns.init(c.MaxVSockProxyConns, c.MaxVSockProxyConnsPerPeer)

	tcpFwd := tcp.NewForwarder(h.stack, 0, c.MaxInFlightDials, h.forwardTCP)
	h.stack.SetTransportProtocolHandler(tcp.ProtocolNumber, tcpFwd.HandlePacket)

	// The stack calls the UDP forwarder only for datagrams no endpoint
	// claims (a flow's first), never per packet of a flow.
	udpFwd := udp.NewForwarder(h.stack, h.forwardUDP)
	h.stack.SetTransportProtocolHandler(udp.ProtocolNumber, udpFwd.HandlePacket)
}

// natTarget maps a destination on the virtual network to the host-side
// address to dial, or reports false if it must be refused.
func (h *Host) natTarget(dst tcpip.Address, port uint16) (string, bool) {
	return h.natTargetNet("tcp", dst, port)
}

func (h *Host) natTargetNet(network string, dst tcpip.Address, port uint16) (string, bool) {
	a, ok := netip.AddrFromSlice(dst.AsSlice())
	if !ok {
		return "", false
	}
	c := h.cfg
	orig := a // as the enclave addressed it
	switch {
	case !c.DisableHostLoopback && a == c.HostLoopbackIP:
		a = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case a == c.GatewayIP, c.Subnet.Contains(a):
		// Nothing of the host's listens on the virtual network except the
		// services the stack itself serves.
		return "", false
	case !c.AllowMetadata && defaultMetadataPrefix.Contains(a):
		return "", false
	case a.IsUnspecified(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "", false
	case a.IsLoopback(), a.Is4() && a.As4()[0] == 0:
		// 127/8 is the host itself (only HostLoopbackIP may map there);
		// 0/8 is "this host on this network" (RFC 1122), which Linux
		// also connects to itself.
		return "", false
	}
	if c.Egress != nil && !c.Egress.Allow(network, orig, port, h.learned.Names(orig)) {
		return "", false
	}
	return net.JoinHostPort(a.String(), strconv.Itoa(int(port))), true
}

// forwardTCP handles one new enclave connection to the outside. gVisor runs
// it in a goroutine of its own; at most MaxInFlightDials run before Complete,
// at most MaxDialsPerEnclave of them for one enclave address.
func (h *Host) forwardTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	src := id.RemoteAddress
	n := &h.natStats
	if !n.dialSlots.acquire(src) {
		// This enclave holds its share of the dial slots: drop the SYN
		// (no reset) as gVisor does when all are taken; it retransmits.
		r.Complete(false)
		return
	}
	target, ok := h.natTarget(id.LocalAddress, id.LocalPort)
	if !ok {
		n.dialSlots.release(src)
		n.refused.Add(1)
		r.Complete(true)
		return
	}
	if !n.natConns.acquire(src) {
		n.dialSlots.release(src)
		h.log.Debug("outbound: connection limit reached; reset", "enclave", src, "target", target)
		r.Complete(true)
		return
	}
	defer n.natConns.release(src)
	n.dials.Add(1)
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.DialTimeout)
	out, err := h.cfg.Dial(ctx, "tcp", target)
	cancel()
	n.dialSlots.release(src)
	if err != nil {
		n.failed.Add(1)
		h.log.Debug("outbound dial failed", "target", target, "err", err)
		// A refusal is reset at once, as the target's own reset would have
		// reached a direct connection. A dial that timed out (the target,
		// or a firewall on the way, drops SYNs) is not: the SYN is dropped
		// as that blackhole dropped it, and the enclave's retransmission
		// dials again, so its app reads its own connect timeout (ETIMEDOUT)
		// or connects once the target answers, as on a direct path, rather
		// than ECONNREFUSED after DialTimeout.
		r.Complete(!dialTimedOut(err) || h.ctx.Err() != nil)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	r.Complete(false)
	if terr != nil {
		_ = out.Close()
		h.log.Debug("outbound: enclave side endpoint", "target", target, "err", terr)
		return
	}
	ep.SocketOptions().SetKeepAlive(true)
	in := boundOrphan(gonet.NewTCPConn(&wq, ep), ep)
	untrack, ok := h.trackPair(in, out)
	if !ok {
		return
	}
	defer untrack()
	_, _ = relay.Relay(in, out, relay.Options{IdleTimeout: max(h.cfg.NATIdleTimeout, 0)})
}

// orphanBounded is a connection of the host's stack whose endpoint is
// bounded as an orphan when it is closed (ethlink.BoundOrphan): an enclave
// that half-closed and never read could otherwise leave the host any number
// of closed connections with their send buffers, outside the NAT and port
// limits, which end with the relay.
type orphanBounded struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
}

func boundOrphan(c *gonet.TCPConn, ep tcpip.Endpoint) net.Conn { return orphanBounded{c, ep} }

func (c orphanBounded) Close() error {
	ethlink.BoundOrphan(c.ep)
	return c.TCPConn.Close()
}

// Read is gonet's, with a reset by the peer reported as ECONNRESET (gonet
// reports gVisor's errors as plain strings), so that the relay passes the
// reset on (relay.Abort) instead of a FIN.
func (c orphanBounded) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	return n, errnoOf("read", err)
}

// Write is gonet's, with a reset by the peer reported as ECONNRESET and a
// connection closed for sending as EPIPE, as on a kernel socket, so that
// the relay ends only the direction towards the peer that went away and
// still relays what that peer sent before (an answer, then a reset).
func (c orphanBounded) Write(b []byte) (int, error) {
	n, err := c.TCPConn.Write(b)
	return n, errnoOf("write", err)
}

var gonetErrnos = map[string]syscall.Errno{
	(&tcpip.ErrConnectionReset{}).String(): syscall.ECONNRESET,
	(&tcpip.ErrClosedForSend{}).String():   syscall.EPIPE,
}

// errnoOf turns the gVisor error in gonet's err, a plain string, into the
// errno a kernel socket would return, for the errors in gonetErrnos.
func errnoOf(op string, err error) error {
	var oe *net.OpError
	if err == nil || !errors.As(err, &oe) || oe.Err == nil {
		return err
	}
	if errno, ok := gonetErrnos[oe.Err.Error()]; ok {
		oe.Err = os.NewSyscallError(op, errno)
	}
	return err
}

// SetLinger is (*net.TCPConn).SetLinger for the stack's endpoint: with 0,
// Close resets the connection (relay.Abort).
func (c orphanBounded) SetLinger(sec int) error {
	c.ep.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: sec >= 0, Timeout: time.Duration(max(sec, 0)) * time.Second})
	return nil
}

// dialStack is gonet.DialContextTCP returning a connection whose Close
// bounds the orphan it may leave (orphanBounded).
func dialStack(ctx context.Context, s *stack.Stack, addr tcpip.FullAddress) (net.Conn, error) {
	var wq waiter.Queue
	ep, terr := s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	terr = ep.Connect(addr)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, ctx.Err()
		case <-notify:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "connect", Net: "tcp", Addr: &net.TCPAddr{IP: net.IP(addr.Addr.AsSlice()), Port: int(addr.Port)}, Err: errors.New(terr.String())}
	}
	return boundOrphan(gonet.NewTCPConn(&wq, ep), ep), nil
}

// udpFlowTimeout ends a UDP flow (NAT or published port) when no datagram
// went either way for this long, as gvisor-tap-vsock's UDP proxy did.
const udpFlowTimeout = 90 * time.Second

// udpBufSize holds the largest UDP payload.
const udpBufSize = 65507

// forwardUDP handles the first datagram of an enclave UDP flow to the
// outside: natTargetNet, policy or not, then a flow within
// MaxNATUDPFlows(PerEnclave). It runs in the stack's receive path and
// starts the flow's relay in goroutines.
//
// It replaces gvisor-tap-vsock's forwarder.UDP, which had no hook to
// bound the flows it tracks (each a host socket and two goroutines with a
// 64 KiB buffer, for 90 s).
func (h *Host) forwardUDP(r *udp.ForwarderRequest) {
	id := r.ID()
	n := &h.natStats
	target, ok := h.natTargetNet("udp", id.LocalAddress, id.LocalPort)
	if !ok {
		// Without this check (it ran only with an egress policy), a
		// datagram to 0.0.0.0 was dialled as "0.0.0.0:port", which Linux
		// connects to the host itself, even with DisableHostLoopback.
		// Refused as a rejecting firewall does (and as a TCP SYN is
		// reset): a connected socket reads ECONNREFUSED.
		n.udpRefused.Add(1)
		h.udpUnreachable(id)
		return
	}
	src := id.RemoteAddress
	if !n.natUDPFlows.acquireQuiet(src) {
		// At the limit: take the slot of one of this enclave's flows that
		// was a single answered request, if there is one.
		if !n.evictUDPFlow(src) {
			n.natUDPFlows.refused.Add(1)
			return
		}
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		n.natUDPFlows.release(src)
		h.log.Debug("outbound UDP: enclave side endpoint", "target", target, "err", terr)
		return
	}
	in := gonet.NewUDPConn(&wq, ep)
	if !h.goTracked(func() {
		ctx, cancel := context.WithTimeout(h.ctx, h.cfg.DialTimeout)
		var d net.Dialer
		out, err := d.DialContext(ctx, "udp", target)
		cancel()
		if err != nil {
			n.natUDPFlows.release(src)
			_ = in.Close()
			h.log.Debug("outbound UDP: dial failed", "target", target, "err", err)
			return
		}
		f := &natUDPFlow{id: id, in: in, out: out}
		f.last.Store(time.Now().UnixNano())
		n.addUDPFlow(f)
		defer func() {
			n.removeUDPFlow(f)
			// An evicted flow's slot went to the flow that evicted it.
			if f.state.CompareAndSwap(flowLive, flowEnded) {
				n.natUDPFlows.release(src)
			}
		}()
		h.relayUDP(f)
	}) {
		_ = in.Close()
		n.natUDPFlows.release(src)
	}
}

// natUDPFlow is one NAT UDP flow, known to the flow registry (natStats) so
// that at the flow limit it can make room.
type natUDPFlow struct {
	id      stack.TransportEndpointID // as the stack saw it: Remote is the enclave
	in, out net.Conn                  // the enclave side (gonet) and the host socket
	last    atomic.Int64              // unix nanoseconds of the last datagram either way
	replied atomic.Bool               // a datagram came back
	assured atomic.Bool               // the enclave sent again after a reply: a conversation
	state   atomic.Int32              // flowLive, then flowEnded or flowEvicted
}

const (
	flowLive int32 = iota
	flowEnded
	flowEvicted
)

func (n *natStats) addUDPFlow(f *natUDPFlow) {
	n.udpMu.Lock()
	defer n.udpMu.Unlock()
	if n.udpFlows == nil {
		n.udpFlows = map[tcpip.Address]map[*natUDPFlow]struct{}{}
	}
	m := n.udpFlows[f.id.RemoteAddress]
	if m == nil {
		m = map[*natUDPFlow]struct{}{}
		n.udpFlows[f.id.RemoteAddress] = m
	}
	m[f] = struct{}{}
}

func (n *natStats) removeUDPFlow(f *natUDPFlow) {
	n.udpMu.Lock()
	defer n.udpMu.Unlock()
	m := n.udpFlows[f.id.RemoteAddress]
	delete(m, f)
	if len(m) == 0 {
		delete(n.udpFlows, f.id.RemoteAddress)
		delete(n.udpNoVictim, f.id.RemoteAddress)
	}
}

// evictUDPFlow ends the least recently active of src's flows that were one
// answered request (replied, never a request after the answer), whose slot
// in natUDPFlows then passes to the caller's new flow, and reports whether
// there was one. An application that makes each request from a fresh
// socket (a stub resolver, a metrics client) leaves such a flow behind per
// request, held for udpFlowTimeout: without this, at MaxNATUDPFlows(PerEnclave)
// its new requests were dropped for up to 90 s while the old flows served
// no one. Conversations are never ended for room (Linux's conntrack, full,
// likewise drops only entries not yet "assured").
//
// A scan that found none is not repeated for src for 100 ms, so that an
// enclave sending from new ports at its limit costs no scan per datagram.
func (n *natStats) evictUDPFlow(src tcpip.Address) bool {
	now := time.Now().UnixNano()
	n.udpMu.Lock()
	if now < n.udpNoVictim[src] {
		n.udpMu.Unlock()
		return false
	}
	var victim *natUDPFlow
	for f := range n.udpFlows[src] {
		if f.assured.Load() || !f.replied.Load() || f.state.Load() != flowLive {
			continue
		}
		if victim == nil || f.last.Load() < victim.last.Load() {
			victim = f
		}
	}
	if victim == nil || !victim.state.CompareAndSwap(flowLive, flowEvicted) {
		if n.udpNoVictim == nil {
			n.udpNoVictim = map[tcpip.Address]int64{}
		}
		n.udpNoVictim[src] = now + int64(100*time.Millisecond)
		n.udpMu.Unlock()
		return false
	}
	delete(n.udpFlows[src], victim)
	n.udpMu.Unlock()
	n.udpEvicted.Add(1)
	_ = victim.in.Close()
	_ = victim.out.Close()
	return true
}

// relayUDP relays the datagrams of flow f between its two connected UDP
// sockets until neither moved one for udpFlowTimeout or Close, then closes
// both. It marks f replied and assured as datagrams go, and answers an
// ECONNREFUSED on the host socket (an ICMP port unreachable for a datagram
// written to it) with udpUnreachable.
func (h *Host) relayUDP(f *natUDPFlow) {
	a, b := f.in, f.out
	untrack, ok := h.trackPair(a, b)
	if !ok {
		return
	}
	defer untrack()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pumpUDP(b, a, &f.last, func() {
			if !f.replied.Load() {
				f.replied.Store(true)
			}
		}, func() { h.udpUnreachable(f.id) })
	}()
	pumpUDP(a, b, &f.last, func() {
		if !f.assured.Load() && f.replied.Load() {
			f.assured.Store(true)
		}
	}, nil)
	<-done
}

// pumpUDP copies datagrams from src to dst until src fails or both were
// idle for udpFlowTimeout, then closes both (ending the other direction).
// Per datagram it costs a clock read and an atomic store; the read
// deadline is re-armed only when it passes.
//
// Each datagram read calls read; an ECONNREFUSED calls refused (if not nil).
func pumpUDP(src, dst net.Conn, last *atomic.Int64, read, refused func()) {
	defer func() { _ = src.Close(); _ = dst.Close() }()
	buf := make([]byte, udpBufSize)
	_ = src.SetReadDeadline(time.Now().Add(udpFlowTimeout))
	for {
		n, err := src.Read(buf)
		if err != nil {
			if isNetTimeout(err) {
				if udpRearm(src, last) {
					continue
				}
				return
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				// ICMP port unreachable for an earlier datagram.
				if refused != nil {
					refused()
				}
				continue
			}
			return
		}
		last.Store(time.Now().UnixNano())
		read()
		if _, err := dst.Write(buf[:n]); err != nil && isClosedConn(err) {
			return
		} // other errors lose this datagram only
	}
}

// udpUnreachable sends the enclave of a NAT UDP flow (id, as the stack saw
// it) an ICMP port unreachable quoting the headers of one of its datagrams:
// the target refused what the host relayed, or the host refused the
// target, and an enclave application on a connected socket then reads
// ECONNREFUSED, as on a direct path, instead of waiting for an answer that
// never comes. Nothing is sent if the enclave's MAC is no longer known.
func (h *Host) udpUnreachable(id stack.TransportEndpointID) {
	if dst, ok := netip.AddrFromSlice(id.LocalAddress.AsSlice()); !ok || !dst.Is4() ||
		dst.IsMulticast() || dst.IsUnspecified() || dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) ||
		dst == subnetBroadcast(h.cfg.Subnet) {
		return // never an ICMP error for a broadcast or multicast datagram (RFC 1122)
	}
	entries, terr := h.stack.Neighbors(nicID, ipv4.ProtocolNumber)
	if terr != nil {
		return
	}
	var mac tcpip.LinkAddress
	for _, n := range entries {
		if n.Addr == id.RemoteAddress && n.LinkAddr != "" {
			mac = n.LinkAddr
			break
		}
	}
	if mac == "" {
		return
	}
	const quoted = header.IPv4MinimumSize + header.UDPMinimumSize
	b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+quoted)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         64,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     id.LocalAddress,
		DstAddr:     id.RemoteAddress,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	icmp := header.ICMPv4(b[header.IPv4MinimumSize:])
	icmp.SetType(header.ICMPv4DstUnreachable)
	icmp.SetCode(header.ICMPv4PortUnreachable)
	q := icmp.Payload()
	qip := header.IPv4(q)
	qip.Encode(&header.IPv4Fields{
		TotalLength: quoted,
		TTL:         64,
		Protocol:    uint8(header.UDPProtocolNumber),
		SrcAddr:     id.RemoteAddress,
		DstAddr:     id.LocalAddress,
	})
	qip.SetChecksum(^qip.CalculateChecksum())
	header.UDP(q[header.IPv4MinimumSize:]).Encode(&header.UDPFields{
		SrcPort: id.RemotePort,
		DstPort: id.LocalPort,
		Length:  header.UDPMinimumSize,
	})
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	_ = h.stack.WritePacketToRemote(nicID, mac, ipv4.ProtocolNumber, buffer.MakeWithData(b))
}

// trackPair tracks both connections of a relay (see track), or closes both
// and reports false when the host is closing. untrack ends the tracking.
func (h *Host) trackPair(a, b net.Conn) (untrack func(), ok bool) {
	if !h.track(a) {
		_ = a.Close()
		_ = b.Close()
		return nil, false
	}
	if !h.track(b) {
		h.untrack(a)
		_ = a.Close()
		_ = b.Close()
		return nil, false
	}
	return func() { h.untrack(b); h.untrack(a) }, true
}

// udpRearm handles a read timeout on a UDP flow's conn: when a datagram
// went either way (last, unix nanoseconds) less than udpFlowTimeout ago, it
// moves the read deadline to udpFlowTimeout after that datagram and reports
// true (keep reading); otherwise the flow is idle.
func udpRearm(conn interface{ SetReadDeadline(time.Time) error }, last *atomic.Int64) bool {
	idleSince := time.Unix(0, last.Load())
	if time.Since(idleSince) < udpFlowTimeout {
		_ = conn.SetReadDeadline(idleSince.Add(udpFlowTimeout))
		return true
	}
	return false
}

func isNetTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isClosedConn(err error) bool {
	return errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "endpoint is closed")
}

// subnetBroadcast returns p's directed broadcast address.
func subnetBroadcast(p netip.Prefix) netip.Addr {
	if !p.Addr().Is4() {
		return netip.Addr{}
	}
	a := p.Masked().Addr().As4()
	host := ^uint32(0) >> p.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// dialTimedOut reports whether a failed dial ran out of time rather than
// being refused or finding no route.
func dialTimedOut(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syscall.ETIMEDOUT) || (errors.As(err, &ne) && ne.Timeout())
}
