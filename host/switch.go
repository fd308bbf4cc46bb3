package host

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/quenchnet/quench/internal/ethlink"
	"github.com/quenchnet/quench/tap"
)

// switchEndpoint is the gateway's Ethernet NIC and a learning switch in one:
// a gVisor link endpoint whose "wire" is the set of attached enclave streams.
//
// Unlike gvisor-tap-vsock's switch (one write syscall per frame under a
// global lock, a new buffer per frame), frames bound for one enclave are
// coalesced into writes of at most MaxWrite bytes, frames from an enclave are
// decoded in batches from one large read, and nothing is allocated per frame
// on the stream side.
type switchEndpoint struct {
	ethlink.Base
	log *slog.Logger

	// arpAllowed lists the protocol addresses the gateway may announce in ARP
	// replies. The stack runs in promiscuous mode (it terminates connections
	// to any address, for NAT), so without this filter it would answer ARP
	// for every address, including other enclaves'.
	arpAllowed map[tcpip.Address]bool

	// gateway is the address that refuses ICMP echo requests to addresses
	// outside arpAllowed (refuseEcho); set by isolate.
	gateway tcpip.Address

	// zw works around gVisor's zero-window ACK bug (see
	// ethlink.ZeroWindowACKs): it sees every packet the stack sends and
	// fixes the pure ACKs from enclaves that gVisor would drop.
	zw ethlink.ZeroWindowACKs

	// ackDelay is how long pure TCP ACKs to an enclave may be held
	// (Config.AckDelay; see ackhold.go). Zero or less: never.
	ackDelay time.Duration

	// Isolation between enclaves (see rx, learn and checkSender). They are
	// set before the first attach and never change.
	subnet         *tcpip.Subnet                      // the virtual network; nil: every IPv4 address (tests)
	hostOwned      map[tcpip.Address]bool             // addresses no enclave may send from: gateway, host loopback, broadcast
	leaseOf        func(tcpip.Address) (string, bool) // DHCP lease or reservation of an address (its client key); nil: no DHCP
	maxMACsPerPort int                                // source MACs one stream may use
	maxMACs        int                                // source MACs of all streams together
	maxIPsPerPort  int                                // IPv4 addresses one stream may send from

	mu    sync.RWMutex
	macs  map[tcpip.LinkAddress]*port // guarded by mu; learned source addresses
	ips   map[tcpip.Address]*port     // guarded by mu; IPv4 addresses bound to a stream (DHCP lease or first use)
	ports map[*port]struct{}          // guarded by mu

	// ipGen changes whenever an address is bound to another stream than
	// before, so that a port's cached binding (port.ip) is checked again.
	ipGen atomic.Uint64

	// forget, if set, is called (without e.mu) with the MACs and IPv4
	// addresses a detached stream owned: the host's stack must resolve
	// them afresh (see Host.forgetNeighbors).
	forget func(macs []tcpip.LinkAddress, ips []tcpip.Address)

	stats switchStats
}

type switchStats struct {
	framesIn, framesOut, bytesIn, bytesOut atomic.Uint64
	dropped                                atomic.Uint64 // every dropped frame, including those counted below
	queueFull                              atomic.Uint64 // frames for an enclave dropped because its queue was full (a slow or stalled reader)
	spoofed                                atomic.Uint64 // frames from an enclave with another stream's or the host's MAC or IP address
	overLimit                              atomic.Uint64 // frames from an enclave past the MAC or address limits
	notIPv4                                atomic.Uint64 // frames from an enclave neither IPv4 nor ARP
	echoRefused                            atomic.Uint64 // ICMP echo requests to addresses the host does not answer for (refuseEcho)
	acksHeld, acksSuperseded               atomic.Uint64 // pure ACKs held; of those, dropped for a later segment
}

// port is one attached enclave stream.
type port struct {
	conn   *tap.Conn
	remote string
	peer   string            // who is at the other end (peerID): only the same peer may replace this stream
	mac    tcpip.LinkAddress // last learned source address; only the rx goroutine writes it
	dead   atomic.Bool

	nmacs, nips int // guarded by e.mu: entries of e.macs and e.ips that point here

	// The last sender IPv4 address found bound to this port and e.ipGen
	// at that time: the rx goroutine's cache of e.ips.
	ip    tcpip.Address
	ipGen uint64

	// The transmit queue: the stack's packets for this enclave wait here
	// until the port's writer goroutine sends everything queued in as few
	// stream writes as possible. While one write is in the kernel, the
	// next batch builds up, so the write rate adapts to the load.
	mu       sync.Mutex
	pending  []*stack.PacketBuffer // guarded by mu; each holds a reference
	spare    []*stack.PacketBuffer // guarded by mu; the writer's emptied batch, for reuse
	fwd      [][]byte              // guarded by mu; copies of frames from other enclaves, sent with pending
	fwdBytes int                   // guarded by mu; their total size, at most maxFwdBytes
	fwdSpare [][]byte              // guarded by mu; the writer's emptied fwd, for reuse
	wake     chan struct{}         // capacity 1: the writer has work
	done     chan struct{}         // closed when the port is detached

	// Pure ACKs held back (see ackhold.go). ackTimer fires when the first
	// one is due; the writer then queues it. It is armed whenever acks
	// goes from empty to not empty.
	acks     ackHold[*stack.PacketBuffer] // guarded by mu
	ackTimer *time.Timer
}

// maxPending bounds a port's transmit queue; past it packets are dropped
// (and counted) as a full NIC queue would, and TCP backs off.
const maxPending = 4096

// maxFwdBytes bounds the frames from other enclaves (unicast between
// enclaves and floods of their broadcasts) waiting in one port's queue.
// They are copied; past the bound they are dropped and counted, so an
// enclave that does not read its stream costs the others nothing.
const maxFwdBytes = 1 << 20

// Defaults of the switch's isolation limits (see Config).
const (
	defaultMaxMACsPerStream = 16
	defaultMaxIPsPerStream  = 8
)

var (
	_ stack.LinkEndpoint       = (*switchEndpoint)(nil)
	_ stack.QueueingDiscipline = (*switchEndpoint)(nil)
)

func newSwitch(mtu int, mac net.HardwareAddr, arpAllowed []tcpip.Address, ackDelay time.Duration, log *slog.Logger) *switchEndpoint {
	e := &switchEndpoint{
		log:        log,
		ackDelay:   ackDelay,
		arpAllowed: map[tcpip.Address]bool{},
		hostOwned:  map[tcpip.Address]bool{},
		macs:       map[tcpip.LinkAddress]*port{},
		ips:        map[tcpip.Address]*port{},

		maxMACsPerPort: defaultMaxMACsPerStream,
		maxMACs:        defaultMaxMACsPerStream * DefaultMaxEnclaveStreams,
		maxIPsPerPort:  defaultMaxIPsPerStream,
		ports:          map[*port]struct{}{},
	}
	e.Init(uint32(mtu), tcpip.LinkAddress(mac))
	for _, a := range arpAllowed {
		e.arpAllowed[a] = true
		e.hostOwned[a] = true
	}
	return e
}

// attach adds a stream to the switch, from a peer named remote.
func (e *switchEndpoint) attach(c *tap.Conn, remote string) *port {
	return e.attachPeer(c, remote, remote)
}

// attachPeer adds a stream from peer (see peerID) to the switch.
func (e *switchEndpoint) attachPeer(c *tap.Conn, remote, peer string) *port {
	p := &port{conn: c, remote: remote, peer: peer, wake: make(chan struct{}, 1), done: make(chan struct{})}
	p.acks.delay = e.ackDelay
	p.ackTimer = time.NewTimer(time.Hour)
	p.ackTimer.Stop()
	e.mu.Lock()
	e.ports[p] = struct{}{}
	e.mu.Unlock()
	return p
}

// detach removes p and forgets the addresses learned on it, here and
// (forget) in the host's stack.
func (e *switchEndpoint) detach(p *port) {
	p.dead.Store(true)
	var macs []tcpip.LinkAddress
	var ips []tcpip.Address
	e.mu.Lock()
	delete(e.ports, p)
	for mac, q := range e.macs {
		if q == p {
			delete(e.macs, mac)
			macs = append(macs, mac)
		}
	}
	for ip, q := range e.ips {
		if q == p {
			delete(e.ips, ip)
			ips = append(ips, ip)
		}
	}
	p.nmacs, p.nips = 0, 0
	e.mu.Unlock()
	_ = p.conn.Close()
	if e.forget != nil && (len(macs) > 0 || len(ips) > 0) {
		e.forget(macs, ips)
	}
}

// closeAll closes every attached stream (their rx loops then detach them).
func (e *switchEndpoint) closeAll() {
	e.mu.RLock()
	defer e.mu.RUnlock()
	for p := range e.ports {
		_ = p.conn.Close()
	}
}

// learn records that mac lives behind p, and reports false when p may not
// send from mac (the frame is then dropped and counted).
//
// A MAC already owned by another stream moves to p only when p replaces
// that stream (mayReplace): the enclave reconnected. Then everything the
// old stream owned (MACs, IPv4 addresses) moves to p, and the old stream is
// closed. Otherwise the frame is dropped: one enclave cannot evict another,
// or receive its traffic, by sending from its MAC.
func (e *switchEndpoint) learn(p *port, mac tcpip.LinkAddress) bool {
	e.mu.Lock()
	old := e.macs[mac]
	switch {
	case old == p:
	case old == nil:
		if p.nmacs >= e.maxMACsPerPort || len(e.macs) >= e.maxMACs {
			e.mu.Unlock()
			e.stats.overLimit.Add(1)
			return false
		}
		e.macs[mac] = p
		p.nmacs++
	case !mayReplace(old, p):
		e.mu.Unlock()
		e.stats.spoofed.Add(1)
		return false
	default:
		old.dead.Store(true)
		for m, q := range e.macs {
			if q == old {
				e.macs[m] = p
				p.nmacs++
			}
		}
		for a, q := range e.ips {
			if q == old {
				e.ips[a] = p
				p.nips++
			}
		}
		old.nmacs, old.nips = 0, 0
		e.ipGen.Add(1)
	}
	e.mu.Unlock()
	p.mac = mac
	if old != nil && old != p {
		e.log.Info("enclave reconnected; replacing its old stream", "mac", net.HardwareAddr(mac), "old", old.remote, "new", p.remote, "peer", p.peer)
		_ = old.conn.Close()
	}
	return true
}

// mayReplace reports whether the new stream p may take over old's
// addresses and close it, because it is the same enclave reconnecting (a
// documented feature: after a restart, the enclave's new stream takes over
// its MAC and IP at once, while the old stream may still look open).
//
// The rule: p and old come from the same peer (peerID: the same VSOCK CID;
// for unix sockets, the same user id, SO_PEERCRED, since processes of one
// user can already interfere with each other), and p is fresh: the frame
// is the first p sends from any MAC (a reconnecting enclave starts with its
// own MAC). A stream already established with a MAC of its own never takes
// another stream's. A stream that has failed (dead) may always be replaced.
// Callers hold e.mu.
func mayReplace(old, p *port) bool {
	if old.dead.Load() {
		return true
	}
	return old.peer == p.peer && p.nmacs == 0 && p.nips == 0
}

// checkSender reports whether p may send frame (whose source MAC p owns),
// as far as addresses go. IPv4 source and ARP sender addresses of the
// subnet are bound to the stream that uses them first, or to the stream
// whose MAC holds the DHCP lease for them: another stream's address, or one
// the host owns (the gateway's, host loopback, broadcast), is refused. ARP
// must name the frame's source MAC as its sender. A DHCP request must name
// the frame's source MAC as its client, so that the leases one stream can
// hold are bounded by its MACs (maxMACsPerPort). The virtual network is
// IPv4 only: every other ethertype (IPv6, VLAN-tagged frames, ...) is
// refused, since the host's stack would drop it and, forwarded to another
// enclave, it would pass without any of these address checks.
func (e *switchEndpoint) checkSender(p *port, frame []byte) bool {
	var ip tcpip.Address
	switch header.Ethernet(frame).Type() {
	case header.IPv4ProtocolNumber:
		h := header.IPv4(frame[header.EthernetMinimumSize:])
		if !h.IsValid(len(h)) {
			return false // the stack would drop it too; do not flood it
		}
		ip = h.SourceAddress()
		if h.Protocol() == uint8(header.UDPProtocolNumber) && h.FragmentOffset() == 0 && !e.dhcpClientOK(frame, h) {
			e.stats.spoofed.Add(1)
			return false
		}
	case header.ARPProtocolNumber:
		h := header.ARP(frame[header.EthernetMinimumSize:])
		if !h.IsValid() {
			return false // the stack would ignore it; do not flood it
		}
		if tcpip.LinkAddress(h.HardwareAddressSender()) != header.Ethernet(frame).SourceAddress() {
			e.stats.spoofed.Add(1)
			return false
		}
		ip = tcpip.AddrFromSlice(h.ProtocolAddressSender())
		if ip != header.IPv4Any && !e.subnetContains(ip) {
			e.stats.spoofed.Add(1) // no ARP for foreign addresses
			return false
		}
	default:
		e.stats.notIPv4.Add(1)
		return false
	}
	if ip == p.ip && p.ipGen == e.ipGen.Load() {
		return true // the common case: the stream's own address
	}
	if ip == header.IPv4Any {
		return true // DHCP, ARP probes: no address yet
	}
	if e.hostOwned[ip] {
		e.stats.spoofed.Add(1)
		return false
	}
	if !e.subnetContains(ip) {
		return true // not on the virtual network: nobody's to steal (nothing routes back)
	}
	return e.bindSender(p, ip, header.Ethernet(frame).SourceAddress())
}

func (e *switchEndpoint) subnetContains(ip tcpip.Address) bool {
	return e.subnet == nil || e.subnet.Contains(ip)
}

// bindSender checks (and, if it is free, binds) ip for p, which sends
// from mac. The slow path of checkSender.
func (e *switchEndpoint) bindSender(p *port, ip tcpip.Address, mac tcpip.LinkAddress) bool {
	gen := e.ipGen.Load()
	e.mu.RLock()
	q := e.ips[ip]
	full := p.nips >= e.maxIPsPerPort
	e.mu.RUnlock()
	if q == p {
		p.ip, p.ipGen = ip, gen
		return true
	}
	if q != nil && !q.dead.Load() {
		e.stats.spoofed.Add(1)
		return false
	}
	if full {
		e.stats.overLimit.Add(1)
		return false
	}
	// Free (or its stream failed). A DHCP lease for another client's MAC
	// keeps it for that client.
	if e.leaseOf != nil {
		if key, ok := e.leaseOf(ip); ok && key != net.HardwareAddr(mac).String() {
			e.stats.spoofed.Add(1)
			return false
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	q = e.ips[ip]
	switch {
	case q == p:
	case q != nil && !q.dead.Load():
		e.stats.spoofed.Add(1)
		return false
	case p.nips >= e.maxIPsPerPort:
		e.stats.overLimit.Add(1)
		return false
	default:
		if q != nil {
			q.nips--
			e.ipGen.Add(1)
		}
		e.ips[ip] = p
		p.nips++
	}
	p.ip, p.ipGen = ip, e.ipGen.Load()
	return true
}

// bindLease binds ip to the stream that owns mac, the client DHCP just
// leased it to (an address squatted by another stream before the lease
// moves to the lessee).
func (e *switchEndpoint) bindLease(mac net.HardwareAddr, ip net.IP) {
	a := tcpip.AddrFromSlice(ip.To4())
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.macs[tcpip.LinkAddress(mac)]
	if p == nil {
		return
	}
	q := e.ips[a]
	if q == p {
		return
	}
	if q != nil {
		q.nips--
		e.ipGen.Add(1)
	}
	e.ips[a] = p
	p.nips++
}

// dhcpClientOK reports whether an IPv4 UDP frame is not a DHCP request
// naming another client hardware address than its source MAC.
func (e *switchEndpoint) dhcpClientOK(frame []byte, h header.IPv4) bool {
	u := header.UDP(h.Payload())
	if len(u) < header.UDPMinimumSize || u.DestinationPort() != 67 {
		return true
	}
	// BOOTP: op(1) htype(1) hlen(1) hops(1) xid(4) secs(2) flags(2)
	// ciaddr yiaddr siaddr giaddr (16) chaddr(16).
	b := u.Payload()
	if len(b) < 28+6 {
		return false
	}
	return tcpip.LinkAddress(b[28:34]) == header.Ethernet(frame).SourceAddress()
}

// serve reads frames from p until the stream fails, delivering them to the
// stack or to another enclave, and runs p's writer. It returns why the
// stream ended, after the writer has stopped.
func (e *switchEndpoint) serve(p *port) error {
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		e.writer(p)
	}()
	defer func() {
		e.detach(p)
		close(p.done)
		<-writerDone
		p.ackTimer.Stop()
		p.mu.Lock()
		for _, pkt := range p.acks.drain(p.pending) {
			pkt.DecRef()
		}
		p.pending = nil
		p.fwd, p.fwdSpare, p.fwdBytes = nil, nil, 0
		p.mu.Unlock()
	}()
	for {
		frame, err := p.conn.Next()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		e.rx(p, frame)
	}
}

// rx handles one frame from an enclave. frame is only valid during the call.
func (e *switchEndpoint) rx(p *port, frame []byte) {
	if len(frame) < header.EthernetMinimumSize {
		e.stats.dropped.Add(1)
		return
	}
	e.stats.framesIn.Add(1)
	e.stats.bytesIn.Add(uint64(len(frame)))
	if p.dead.Load() {
		e.stats.dropped.Add(1) // replaced or failed: what is left in its buffer
		return
	}
	eth := header.Ethernet(frame)
	src, dst := eth.SourceAddress(), eth.DestinationAddress()
	if src == e.LinkAddress() || header.IsMulticastEthernetAddress(src) {
		e.stats.dropped.Add(1) // spoofed or invalid source
		return
	}
	if src != p.mac && !e.learn(p, src) {
		e.stats.dropped.Add(1)
		return
	}
	if !e.checkSender(p, frame) {
		e.stats.dropped.Add(1)
		return
	}
	switch {
	case dst == e.LinkAddress():
		if e.echoElsewhere(frame) {
			e.refuseEcho(p, frame)
			return
		}
		e.deliver(e.zw.Fix(frame), tcpip.PacketHost)
	case dst == header.EthernetBroadcastAddress || header.IsMulticastEthernetAddress(dst):
		e.deliver(frame, tcpip.PacketBroadcast)
		e.flood(p, frame)
	default:
		e.mu.RLock()
		q := e.macs[dst]
		e.mu.RUnlock()
		if q == nil || q == p {
			e.stats.dropped.Add(1)
			return
		}
		e.forward(q, frame)
	}
}

// echoElsewhere reports whether frame (IPv4, checked by checkSender) is
// an ICMP echo request to an address the host does not answer for. The
// stack takes packets for every address (it is the enclaves' way out, for
// NAT), and gVisor answers an echo request to any of them itself: every
// address would answer ping from an enclave, reachable or not
// (gvisor-tap-vsock#428). ICMP is not forwarded.
func (e *switchEndpoint) echoElsewhere(frame []byte) bool {
	if e.gateway == (tcpip.Address{}) || header.Ethernet(frame).Type() != header.IPv4ProtocolNumber {
		return false
	}
	h := header.IPv4(frame[header.EthernetMinimumSize:])
	if h.Protocol() != uint8(header.ICMPv4ProtocolNumber) || h.FragmentOffset() != 0 || h.More() {
		return false
	}
	ic := header.ICMPv4(h.Payload())
	return len(ic) >= header.ICMPv4MinimumSize && ic.Type() == header.ICMPv4Echo && !e.arpAllowed[h.DestinationAddress()]
}

// refuseEcho answers an echo request to an address the host does not
// answer for (echoElsewhere) with "destination unreachable,
// communication administratively prohibited" from the gateway (RFC 1812
// section 5.2.7.1), so that ping says at once that it is filtered.
func (e *switchEndpoint) refuseEcho(p *port, frame []byte) {
	in := header.IPv4(frame[header.EthernetMinimumSize:])
	quote := in[:min(len(in), int(in.HeaderLength())+8)] // the header and 8 bytes of the request
	n := header.IPv4MinimumSize + header.ICMPv4MinimumSize + len(quote)
	b := make([]byte, header.EthernetMinimumSize+n)
	header.Ethernet(b).Encode(&header.EthernetFields{
		SrcAddr: e.LinkAddress(), DstAddr: header.Ethernet(frame).SourceAddress(), Type: header.IPv4ProtocolNumber,
	})
	ip := header.IPv4(b[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(n), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: e.gateway, DstAddr: in.SourceAddress(),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	ic := header.ICMPv4(ip[header.IPv4MinimumSize:])
	ic.SetType(header.ICMPv4DstUnreachable)
	ic.SetCode(header.ICMPv4AdminProhibited)
	copy(ic[header.ICMPv4MinimumSize:], quote)
	ic.SetChecksum(^checksum.Checksum(ic, 0))
	e.stats.echoRefused.Add(1)
	e.forward(p, b)
}

func (e *switchEndpoint) deliver(frame []byte, typ tcpip.PacketType) {
	if !e.Deliver(frame, typ) {
		e.stats.dropped.Add(1)
	}
}

// flood sends a broadcast frame from one enclave to every other one.
func (e *switchEndpoint) flood(from *port, frame []byte) {
	e.mu.RLock()
	targets := make([]*port, 0, len(e.ports))
	for p := range e.ports {
		if p != from {
			targets = append(targets, p)
		}
	}
	e.mu.RUnlock()
	for _, p := range targets {
		e.forward(p, frame)
	}
}

// forward queues a copy of a frame from another enclave for p's writer. It
// never blocks: a port whose queue is full (an enclave that does not read
// its stream) loses the frame, and the sender's receive loop goes on.
func (e *switchEndpoint) forward(p *port, frame []byte) {
	if p.dead.Load() {
		e.stats.dropped.Add(1)
		return
	}
	p.mu.Lock()
	if p.fwdBytes+len(frame) > maxFwdBytes {
		p.mu.Unlock()
		e.stats.queueFull.Add(1)
		e.stats.dropped.Add(1)
		return
	}
	p.fwd = append(p.fwd, append([]byte(nil), frame...))
	p.fwdBytes += len(frame)
	p.mu.Unlock()
	p.kick()
}

// kick wakes p's writer.
func (p *port) kick() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (e *switchEndpoint) afterWrite(p *port, frames, bytes int, err error) {
	if err != nil {
		if !p.dead.Swap(true) {
			e.log.Debug("enclave stream write failed; closing it", "remote", p.remote, "err", err)
		}
		_ = p.conn.Close()
		return
	}
	e.stats.framesOut.Add(uint64(frames))
	e.stats.bytesOut.Add(uint64(bytes))
}

// WritePacket implements stack.QueueingDiscipline: the switch is the NIC's
// queue. A packet for one enclave joins that enclave's transmit queue;
// broadcasts are sent to every enclave at once.
func (e *switchEndpoint) WritePacket(pkt *stack.PacketBuffer) tcpip.Error {
	e.zw.Sent(pkt)
	if e.spoofedARP(pkt) {
		e.stats.dropped.Add(1)
		return nil
	}
	dst := header.Ethernet(pkt.LinkHeader().Slice()).DestinationAddress()
	if dst == header.EthernetBroadcastAddress || header.IsMulticastEthernetAddress(dst) {
		e.broadcast(pkt)
		return nil
	}
	e.mu.RLock()
	p := e.macs[dst]
	e.mu.RUnlock()
	if p == nil || p.dead.Load() {
		e.stats.dropped.Add(1)
		return nil
	}
	p.mu.Lock()
	if len(p.pending) >= maxPending {
		p.mu.Unlock()
		e.stats.queueFull.Add(1)
		e.stats.dropped.Add(1)
		return &tcpip.ErrNoBufferSpace{}
	}
	if p.acks.delay > 0 {
		prev, act, held, arm := p.acks.offer(pkt, parsePacket(pkt), monoNow())
		switch act {
		case holdDrop:
			prev.DecRef()
			e.stats.acksSuperseded.Add(1)
		case holdSendFirst:
			p.pending = append(p.pending, prev) // keeps the reference taken when held
		}
		if held { // then act is holdNone: nothing was queued
			pkt.IncRef()
			if arm {
				p.ackTimer.Reset(p.acks.delay)
			}
			p.mu.Unlock()
			e.stats.acksHeld.Add(1)
			return nil
		}
	}
	pkt.IncRef()
	p.pending = append(p.pending, pkt)
	p.mu.Unlock()
	p.kick()
	return nil
}

// ackSlack: the writer sends held ACKs up to delay/ackSlack early, so that
// ACKs due close together leave in one write.
const ackSlack = 8

// monoEpoch is the origin of monoNow; set once, never changed.
var monoEpoch = time.Now()

// monoNow is the monotonic clock for ackHold.
func monoNow() time.Duration { return time.Since(monoEpoch) }

// writer sends p's queued packets, everything queued at once, and p's held
// ACKs when they are due, until p is detached.
func (e *switchEndpoint) writer(p *port) {
	for {
		select {
		case <-p.wake:
		case <-p.ackTimer.C:
			p.mu.Lock()
			now := monoNow()
			// ACKs due within ackSlack go now too: one wakeup, not several.
			p.pending = p.acks.expire(now+p.acks.delay/ackSlack, p.pending)
			if due, ok := p.acks.next(); ok {
				p.ackTimer.Reset(max(due-now, 0))
			}
			p.mu.Unlock()
		case <-p.done:
			return
		}
		p.mu.Lock()
		batch := p.pending
		p.pending = p.spare[:0]
		p.spare = nil
		fwd := p.fwd
		p.fwd = p.fwdSpare[:0]
		p.fwdSpare = nil
		p.fwdBytes = 0
		p.mu.Unlock()
		if len(batch) == 0 && len(fwd) == 0 {
			continue
		}
		var (
			err           error
			frames, bytes int
		)
		p.conn.LockWrite()
		for i, f := range fwd {
			if err == nil && !p.dead.Load() {
				if err = p.conn.AppendFrame(f); err == nil {
					frames++
					bytes += len(f)
				}
			}
			fwd[i] = nil
		}
		for i, pkt := range batch {
			if err == nil && !p.dead.Load() {
				size := pkt.Size()
				if err = p.conn.AppendFrame(pkt.AsSlices()...); err == nil {
					frames++
					bytes += size
				}
			}
			pkt.DecRef()
			batch[i] = nil
		}
		if err == nil {
			err = p.conn.Flush()
		}
		p.conn.UnlockWrite()
		e.afterWrite(p, frames, bytes, err)
		p.mu.Lock()
		p.spare = batch[:0]
		p.fwdSpare = fwd[:0]
		p.mu.Unlock()
	}
}

// WritePackets implements stack.LinkWriter. The stack does not call it (the
// switch is the NIC's queueing discipline), but when something does, the
// packets join the same queues as WritePacket's, so that held ACKs and
// queued packets of a connection stay in order.
func (e *switchEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		n++
		_ = e.WritePacket(pkt) // failures are counted as drops
	}
	return n, nil
}

func (e *switchEndpoint) broadcast(pkt *stack.PacketBuffer) {
	e.mu.RLock()
	targets := make([]*port, 0, len(e.ports))
	for p := range e.ports {
		targets = append(targets, p)
	}
	e.mu.RUnlock()
	// Queued, like unicast: the stack's goroutine never waits for an
	// enclave's stream.
	for _, p := range targets {
		if p.dead.Load() {
			continue
		}
		p.mu.Lock()
		if len(p.pending) >= maxPending {
			p.mu.Unlock()
			e.stats.queueFull.Add(1)
			e.stats.dropped.Add(1)
			continue
		}
		pkt.IncRef()
		p.pending = append(p.pending, pkt)
		p.mu.Unlock()
		p.kick()
	}
}

// spoofedARP reports whether pkt is an ARP reply for an address the gateway
// does not own (see arpAllowed).
func (e *switchEndpoint) spoofedARP(pkt *stack.PacketBuffer) bool {
	if pkt.NetworkProtocolNumber != header.ARPProtocolNumber {
		return false
	}
	h := header.ARP(pkt.NetworkHeader().Slice())
	if !h.IsValid() || h.Op() != header.ARPReply {
		return false
	}
	return !e.arpAllowed[tcpip.AddrFromSlice(h.ProtocolAddressSender())]
}

// Capabilities implements stack.NetworkLinkEndpoint. Frames come from the
// enclave's kernel or stack over a reliable stream, so received checksums are
// not verified again.
func (e *switchEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityResolutionRequired | stack.CapabilityRXChecksumOffload
}

// Close implements stack.NetworkLinkEndpoint.
func (e *switchEndpoint) Close() { e.closeAll() }

// isolationDefaults fills in the limits of the isolation between enclaves
// (layer 2); negative values stay: no limit.
func (c *Config) isolationDefaults() {
	for _, d := range []struct {
		v   *int
		def int
	}{
		{&c.MaxEnclaveStreams, DefaultMaxEnclaveStreams},
		{&c.MaxEnclaveStreamsPerPeer, 16},
		{&c.MaxEnclaveHandshakes, 32},
		{&c.MaxMACsPerEnclave, defaultMaxMACsPerStream},
		{&c.MaxAddressesPerEnclave, defaultMaxIPsPerStream},
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.DHCPOfferTimeout <= 0 {
		c.DHCPOfferTimeout = defaultDHCPOfferTimeout
	}
}

// isolate applies c's isolation settings to the switch; called before any
// stream is attached.
func (e *switchEndpoint) isolate(c Config) {
	subnet, err := tcpip.NewSubnet(addr(c.Subnet.Addr()), tcpip.MaskFromBytes(net.CIDRMask(c.Subnet.Bits(), 32)))
	if err == nil {
		e.subnet = &subnet
		e.hostOwned[subnet.ID()] = true
		e.hostOwned[subnet.Broadcast()] = true
	}
	// The gateway and host loopback (arpAllowed) are the host's; so is
	// host loopback when the mapping is off: no enclave may claim it.
	e.hostOwned[addr(c.GatewayIP)] = true
	e.gateway = addr(c.GatewayIP)
	e.hostOwned[addr(c.HostLoopbackIP)] = true
	limit := func(v int) int {
		if v < 0 {
			return int(^uint(0) >> 1)
		}
		return v
	}
	e.maxMACsPerPort = limit(c.MaxMACsPerEnclave)
	e.maxIPsPerPort = limit(c.MaxAddressesPerEnclave)
	e.maxMACs = limit(c.MaxMACsPerEnclave)
	if c.MaxEnclaveStreams > 0 && e.maxMACs < 1<<20 {
		e.maxMACs *= c.MaxEnclaveStreams
	} else if e.maxMACs < 1<<20 {
		e.maxMACs *= DefaultMaxEnclaveStreams
	}
}
