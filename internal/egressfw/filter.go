// Package egressfw is the enclave's egress firewall for TAP mode: it sits
// between the kernel's TAP device and the tunnel to the host and passes out
// only the frames an egress policy (package policy) allows, so that the
// policy, part of the enclave's attested configuration, holds for every
// program's kernel sockets and not only for Go code that dials through
// package enclave.
//
// What leaves the enclave, with a policy:
//
//   - TCP: a connection the policy allows (its SYN opens a flow), and the
//     replies of connections the host opened into the enclave (an inbound SYN
//     opens a flow; with Config.Gateway, one straight from another enclave
//     on the host's switch only if the policy allows that enclave). A SYN to anywhere else is answered at once, in the
//     enclave, with a reset: connect fails with "connection refused".
//   - UDP: datagrams to destinations the policy allows, and replies to peers
//     that sent to that port first. Others are answered with ICMP
//     "communication administratively prohibited".
//   - DNS queries to the enclave's DNS servers (UDP port 53) only when the
//     policy allows every name they ask about; others are answered NXDOMAIN
//     here. The answers to the queries that pass teach the filter which
//     addresses allowed names have, for hostname rules. An answer that leads
//     an allowed name back into the enclave (loopback, the enclave's own
//     addresses, broadcast, ...) is dropped, and so is one in fragments,
//     which the filter cannot check.
//   - ARP for addresses in the enclave's subnet, from the enclave's address
//     and without room for data; ICMP echo replies to peers
//     that sent an echo request.
//
// Everything else is dropped: other ICMP (pings out, errors), IPv6, IPv4
// with options (a source route would make the destination checked only
// the first hop) or from another address than the enclave's, IPv4 in an
// Ethernet frame for another link address than its destination's (the
// host's switch delivers frames by their Ethernet destination, to other
// enclaves too: see Config.Gateway), fragments of datagrams whose first
// fragment did not pass, other protocols and ethertypes. DNS over TCP is
// not inspected: it is refused unless an address rule names the server
// ("*" does not); the enclave's DNS proxy has whole messages checked
// instead (Query, Answer) on connections PermitFrom lets through. Frames from the host are passed in unchanged, except for
// the DNS answers above (and, with Config.Gateway, frames in an outside
// address's name not from the gateway); the filter only learns from them.
//
// The flow table is bounded (Config.MaxFlows); past it, new connections are
// refused until old ones expire.
package egressfw

import (
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"

	"github.com/quenchnet/quench/internal/ratelog"
	"github.com/quenchnet/quench/policy"
)

// Flow lifetimes without traffic.
const (
	// TCPOpenTimeout bounds a TCP flow from its SYN until it carries data
	// both ways, and after it has closed (FIN both ways).
	TCPOpenTimeout = time.Minute
	// TCPIdleTimeout bounds an established TCP flow without any frame.
	// Long, like Linux conntrack's (5 days): an idle database connection
	// without keep-alives must not break.
	TCPIdleTimeout = 24 * time.Hour
	// UDPTimeout bounds a UDP flow without any datagram.
	UDPTimeout = 2 * time.Minute
	// EchoTimeout bounds the permission to answer an ICMP echo request.
	EchoTimeout = 30 * time.Second
	// PermitTimeout bounds a permission given by PermitFrom or PermitName.
	PermitTimeout = 10 * time.Second
	// fragTimeout bounds the permission for a datagram's later fragments.
	fragTimeout = 30 * time.Second
	// sweepEvery is how often expired flows are removed.
	sweepEvery = 30 * time.Second
)

// maxAnswer bounds the NXDOMAIN answers the filter writes: an answer
// repeats the query's questions, which compression may have made much
// shorter than their names.
const maxAnswer = 4096

// DefaultMaxFlows is Config.MaxFlows's default.
const DefaultMaxFlows = 1 << 16

// Config configures a Filter.
type Config struct {
	// Policy is the egress allow-list. Required.
	Policy *policy.Policy
	// Subnet is the enclave's address and subnet: ARP is passed for
	// addresses in it, and IPv4 only from the address.
	Subnet netip.Prefix
	// Gateway is the enclave's gateway. When set, IPv4 routed through it
	// (to its address or outside Subnet) passes only in frames to its
	// Ethernet address, which the filter learns from the gateway's ARP
	// and IPv4 (the host's switch lets no enclave send in its name):
	// the host's switch forwards frames to the enclave their Ethernet
	// destination names, so a frame to an allowed address but another
	// enclave's MAC would hand the data to that enclave; IPv4 to other
	// addresses in Subnet passes only in frames to the link address their
	// ARP gave. And the host's IPv4 from the gateway's address or outside
	// Subnet is believed (opens flows, teaches DNS answers) and delivered
	// only from the gateway's Ethernet address: another enclave on the
	// switch may send in an outside address's name.
	Gateway netip.Addr
	// MAC is the enclave's link address. When set, only frames from it
	// pass out: a raw socket's from other addresses would carry data in
	// them (ARP requests, flooded to every enclave on the host's switch)
	// and claim other enclaves' link addresses at the switch.
	MAC net.HardwareAddr
	// DNS lists the enclave's DNS servers: UDP queries to their port 53 are
	// checked name by name, and their answers learned.
	DNS []netip.Addr
	// Inside reports whether an address a DNS answer gives leads into the
	// enclave rather than out (loopback, own addresses, broadcast, ...);
	// such answers are dropped unless an address rule names the address.
	// Nil: loopback, 0.0.0.0/8, multicast, 255.255.255.255 and Subnet's
	// own address.
	Inside func(netip.Addr) bool
	// MaxFlows bounds the flow table. Default DefaultMaxFlows.
	MaxFlows int
	// Logger gets a warning for refusals, at most one a second. Nil
	// discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now (tests set it).
	Now func() time.Time
}

// Stats counts what the filter refused.
type Stats struct {
	TCP     uint64 // connections refused (SYNs answered with a reset)
	UDP     uint64 // datagrams refused
	DNS     uint64 // DNS queries answered NXDOMAIN
	Dropped uint64 // other frames dropped (ICMP, IPv6, stray TCP, bad frames, ...)
	Answers uint64 // DNS answers from the host dropped (they led into the enclave, or could not be checked)
	Full    uint64 // flows not opened because the table was full
	Flows   int    // flows in the table
}

// Filter decides frame by frame. Safe for concurrent use by one reader of
// the enclave's frames and one writer of the host's (the two directions of
// a tap.Pump).
type Filter struct {
	p        *policy.Policy
	learned  *policy.Learned
	subnet   netip.Prefix
	own      [4]byte // subnet's address: the source of the enclave's packets
	checkSrc bool    // own is set
	mac      uint64  // Config.MAC as macBits gives it; 0: unset
	bcast    [4]byte // subnet's broadcast address
	gateway  [4]byte // Config.Gateway
	hasGw    bool    // gateway is set
	// gwMAC is the gateway's Ethernet address, learned from its ARP, in
	// the low 48 bits, with bit 48 set once known.
	gwMAC  atomic.Uint64
	dns    []netip.Addr
	inside func(netip.Addr) bool
	max    int
	log    *slog.Logger
	now    func() time.Time

	mu        sync.Mutex
	permits   map[flowKey]int64      // guarded by mu: PermitFrom's flows (local address zero) → expiry
	names     map[string]int64       // guarded by mu: PermitName's names → expiry
	resets    map[flowKey]resetLeave // guarded by mu: stray segments from the host the kernel may reset
	flows     map[flowKey]flow       // guarded by mu
	neigh     map[[4]byte]uint64     // guarded by mu: link addresses (as gwMAC) of the subnet's other addresses, learned from ARP
	frags     map[fragKey]int64      // guarded by mu: first fragments passed → expiry (unix ns)
	nextSweep int64                  // guarded by mu

	warns ratelog.Limiter // the filter's warnings

	tcp, udp, dnsRefused, dropped, answers, full atomic.Uint64
}

// flowKey is one flow as the enclave sees it: local is the enclave's end.
// For ICMP echo, lport is the echo identifier and rport 0.
type flowKey struct {
	proto        uint8
	lport, rport uint16
	lip, rip     [4]byte
}

// flow is a flow's state.
type flow struct {
	expires int64 // unix ns
	state   uint8
	isn     uint32 // with synOut: the sequence number of the enclave's SYN
}

// TCP flow states (bits).
const (
	synAck      = 1 << iota // the responder's SYN-ACK was seen
	established             // a segment without SYN followed it
	finOut                  // the enclave sent FIN
	finIn                   // the host sent FIN
	synOut                  // the enclave's SYN opened it (isn)
)

// resetLeave is the reset the kernel sends for a stray segment from the
// host: with seq = the segment's acknowledgement number if it had ACK, or
// else with RST|ACK, seq 0 and ack = the sequence number after it.
type resetLeave struct {
	expires  int64
	seq, ack uint32
	hadAck   bool
}

type fragKey struct {
	proto uint8
	id    uint16
	dst   [4]byte
}

// New returns a Filter for cfg.
func New(cfg Config) *Filter {
	f := &Filter{
		p:       cfg.Policy,
		learned: policy.NewLearned(0, 0),
		subnet:  cfg.Subnet,
		dns:     cfg.DNS,
		inside:  cfg.Inside,
		max:     cfg.MaxFlows,
		log:     cfg.Logger,
		now:     cfg.Now,
		flows:   map[flowKey]flow{},
		permits: map[flowKey]int64{},
		names:   map[string]int64{},
		resets:  map[flowKey]resetLeave{},
		frags:   map[fragKey]int64{},
		neigh:   map[[4]byte]uint64{},
	}
	if a := cfg.Subnet.Addr().Unmap(); a.Is4() {
		f.own, f.checkSrc = a.As4(), true
		if b := cfg.Subnet.Bits(); b >= 0 && b < 31 {
			v := binary.BigEndian.Uint32(f.own[:]) | (1<<(32-b) - 1)
			binary.BigEndian.PutUint32(f.bcast[:], v)
		}
	}
	if len(cfg.MAC) == 6 {
		f.mac = macBits(cfg.MAC)
	}
	if g := cfg.Gateway.Unmap(); g.Is4() {
		f.gateway, f.hasGw = g.As4(), true
	}
	if f.max <= 0 {
		f.max = DefaultMaxFlows
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	if f.now == nil {
		f.now = time.Now
	}
	f.warns.Now = f.now
	if f.inside == nil {
		own := cfg.Subnet.Addr()
		f.inside = func(ip netip.Addr) bool {
			return ip.IsLoopback() || ip.IsUnspecified() || ip.IsMulticast() ||
				ip.Is4() && (ip.As4()[0] == 0 || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255})) ||
				ip == own
		}
	}
	return f
}

// Stats returns the filter's counters.
func (f *Filter) Stats() Stats {
	f.mu.Lock()
	n := len(f.flows)
	f.mu.Unlock()
	return Stats{
		TCP: f.tcp.Load(), UDP: f.udp.Load(), DNS: f.dnsRefused.Load(),
		Dropped: f.dropped.Load(), Answers: f.answers.Load(), Full: f.full.Load(), Flows: n,
	}
}

// Frame layout.
const (
	ethLen       = 14
	typeIPv4     = 0x0800
	typeARP      = 0x0806
	protoICMP    = 1
	protoTCP     = 6
	protoUDP     = 17
	tcpFIN       = 0x01
	tcpSYN       = 0x02
	tcpRST       = 0x04
	tcpACK       = 0x10
	icmpEchoRepl = 0
	icmpUnreach  = 3
	icmpEcho     = 8
)

// packet is a parsed IPv4 frame.
type packet struct {
	frame    []byte
	ip       []byte // IPv4 header and payload, up to the total length
	l4       []byte // transport header and payload (first fragment), or nil
	proto    uint8
	src, dst [4]byte
	id       uint16
	more     bool // more fragments follow
	offset   int  // fragment offset in bytes
}

// flow is the flow of pk's TCP or UDP header (at least 4 bytes of it), a
// packet from the enclave (out) or from the host.
func (pk packet) flow(out bool) flowKey {
	a, b := binary.BigEndian.Uint16(pk.l4[0:]), binary.BigEndian.Uint16(pk.l4[2:])
	if out {
		return flowKey{proto: pk.proto, lport: a, rport: b, lip: pk.src, rip: pk.dst}
	}
	return flowKey{proto: pk.proto, lport: b, rport: a, lip: pk.dst, rip: pk.src}
}

// parseIPv4 parses frame as an Ethernet frame with an IPv4 packet.
func parseIPv4(frame []byte) (pk packet, ok bool) {
	if len(frame) < ethLen+20 || binary.BigEndian.Uint16(frame[12:]) != typeIPv4 {
		return pk, false
	}
	ip := frame[ethLen:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ip[0]>>4 != 4 || ihl < 20 || total < ihl || total > len(ip) {
		return pk, false
	}
	ip = ip[:total]
	ff := binary.BigEndian.Uint16(ip[6:])
	pk = packet{
		frame: frame, ip: ip, proto: ip[9], id: binary.BigEndian.Uint16(ip[4:]),
		more: ff&0x2000 != 0, offset: int(ff&0x1fff) * 8,
	}
	copy(pk.src[:], ip[12:16])
	copy(pk.dst[:], ip[16:20])
	if pk.offset == 0 {
		pk.l4 = ip[ihl:]
	}
	return pk, true
}

// Outbound reports whether frame, from the enclave, may go to the host. For
// a refused frame it may also return reply, a frame to hand back to the
// enclave in its place (a TCP reset, an ICMP error, an NXDOMAIN answer);
// reply is freshly allocated.
func (f *Filter) Outbound(frame []byte) (pass bool, reply []byte) {
	if len(frame) < ethLen || f.mac != 0 && macBits(frame[6:12]) != f.mac {
		f.dropped.Add(1)
		return false, nil
	}
	switch binary.BigEndian.Uint16(frame[12:]) {
	case typeARP:
		if f.arpInSubnet(frame) {
			return true, nil
		}
		f.dropped.Add(1)
		return false, nil
	case typeIPv4:
	default:
		f.dropped.Add(1)
		return false, nil
	}
	pk, ok := parseIPv4(frame)
	if !ok || pk.ip[0]&0x0f != 5 {
		// Not IPv4, or with options: the kernel sends none of its own,
		// and a program's source route (IP_OPTIONS needs no privilege)
		// would make the destination checked here only the first hop.
		f.dropped.Add(1)
		return false, nil
	}
	if f.checkSrc && pk.src != f.own {
		// Not from the enclave's address: a program's raw socket,
		// sending in another's name (the replies go there).
		f.dropped.Add(1)
		return false, nil
	}
	if !f.linkOK(pk) {
		f.dropped.Add(1)
		return false, nil
	}
	now := f.now().UnixNano()
	if pk.offset != 0 {
		return f.laterFragment(pk, now), nil
	}
	switch pk.proto {
	case protoTCP:
		pass, reply = f.tcpOut(pk, now)
	case protoUDP:
		pass, reply = f.udpOut(pk, now)
	case protoICMP:
		pass = f.icmpOut(pk, now)
	default:
		f.dropped.Add(1)
	}
	if pass && pk.more {
		f.mu.Lock()
		if len(f.frags) < f.max {
			f.frags[fragKey{pk.proto, pk.id, pk.dst}] = now + int64(fragTimeout)
		}
		f.mu.Unlock()
	}
	return pass, reply
}

// macBits is an Ethernet address as gwMAC holds it.
func macBits(mac []byte) uint64 {
	return 1<<48 | uint64(binary.BigEndian.Uint16(mac[0:]))<<32 | uint64(binary.BigEndian.Uint32(mac[2:]))
}

// linkOK reports whether pk's Ethernet destination fits its IPv4
// destination: the host's switch delivers a frame to whichever enclave its
// Ethernet destination names (and a broadcast frame to all), whatever the
// IPv4 destination. A broadcast or multicast frame must be for a broadcast
// or multicast address; with Config.Gateway, a frame routed through the
// gateway (to its address or outside the subnet) must be for the gateway's
// Ethernet address, and one to another address in the subnet for the
// Ethernet address ARP gave for it.
func (f *Filter) linkOK(pk packet) bool {
	if pk.frame[0]&1 != 0 {
		return pk.dst == [4]byte{255, 255, 255, 255} || pk.dst[0]&0xf0 == 224 || f.checkSrc && pk.dst == f.bcast
	}
	if !f.hasGw {
		return true
	}
	if pk.dst == f.gateway || !f.subnet.Contains(netip.AddrFrom4(pk.dst)) {
		return f.gwMAC.Load() == macBits(pk.frame[0:6])
	}
	f.mu.Lock()
	mac, ok := f.neigh[pk.dst]
	f.mu.Unlock()
	return ok && mac == macBits(pk.frame[0:6])
}

// viaGateway reports whether the host's frame pk, if it comes from the
// gateway's address or from outside the subnet, comes from the gateway's
// Ethernet address. The host's switch forwards frames between enclaves, and
// lets an enclave send from any address outside the subnet (but not from
// the gateway's): a frame "from" an outside address in another enclave's
// name must not open flows, nor teach DNS answers, nor reach the kernel.
func (f *Filter) viaGateway(pk packet) bool {
	if !f.hasGw || pk.src != f.gateway && f.subnet.Contains(netip.AddrFrom4(pk.src)) {
		return true
	}
	return f.gwMAC.Load() == macBits(pk.frame[6:12])
}

// maxNeighbors bounds the link addresses learned for the subnet's
// addresses other than the gateway's.
const maxNeighbors = 4096

// mayOpen reports whether the host's frame pk may open a flow (its peer
// pk's source, port port of network): with Config.Gateway, one straight
// from another enclave on the host's switch (not from the gateway's
// Ethernet address) may only if an address rule names the peer, or (for
// TCP and UDP) the policy allows its address and port, as if this enclave
// connected to it. Otherwise a
// compromised enclave could connect in and read this enclave's data from
// the replies, past the policy.
func (f *Filter) mayOpen(pk packet, network string, port uint16) bool {
	if !f.hasGw || f.gwMAC.Load() == macBits(pk.frame[6:12]) {
		return true
	}
	src := netip.AddrFrom4(pk.src)
	return f.p.NamesAddress(src) || network != "" && f.p.Allow(network, src, port, nil)
}

// learnARP learns the link address of an ARP frame's sender: the
// gateway's, or that of another address in the subnet (the host's switch
// lets no enclave send ARP in the gateway's name, nor in the name of an
// address another stream holds).
func (f *Filter) learnARP(frame []byte) {
	a := frame[ethLen:]
	if !f.hasGw || len(a) < 28 || binary.BigEndian.Uint16(a[0:]) != 1 || binary.BigEndian.Uint16(a[2:]) != typeIPv4 || a[4] != 6 || a[5] != 4 {
		return
	}
	if string(a[8:14]) != string(frame[6:12]) || a[8]&1 != 0 {
		return
	}
	ip, mac := [4]byte(a[14:18]), macBits(a[8:14])
	switch {
	case ip == f.gateway:
		f.gwMAC.Store(mac)
	case ip != f.own && f.subnet.Contains(netip.AddrFrom4(ip)):
		f.mu.Lock()
		if _, ok := f.neigh[ip]; ok || len(f.neigh) < maxNeighbors {
			f.neigh[ip] = mac
		}
		f.mu.Unlock()
	}
}

// arpInSubnet reports whether an ARP frame asks or answers about an address
// in the enclave's subnet, as the enclave's kernel writes it: from the
// enclave's address and the frame's link address, a request with no target
// link address, a reply to the frame's destination, nothing after it but
// zero padding. ARP requests are flooded to every enclave on the host's
// switch: no field may carry a program's data beyond the choice of target.
func (f *Filter) arpInSubnet(frame []byte) bool {
	a := frame[ethLen:]
	if len(a) < 28 || binary.BigEndian.Uint16(a[0:]) != 1 || binary.BigEndian.Uint16(a[2:]) != typeIPv4 || a[4] != 6 || a[5] != 4 {
		return false
	}
	if string(a[8:14]) != string(frame[6:12]) || f.checkSrc && [4]byte(a[14:18]) != f.own {
		return false
	}
	switch binary.BigEndian.Uint16(a[6:]) {
	case 1:
		if string(a[18:24]) != "\x00\x00\x00\x00\x00\x00" {
			return false
		}
	case 2:
		if string(a[18:24]) != string(frame[0:6]) {
			return false
		}
	default:
		return false
	}
	for _, b := range a[28:] {
		if b != 0 {
			return false
		}
	}
	return f.subnet.Contains(netip.AddrFrom4([4]byte(a[24:28])))
}

func (f *Filter) laterFragment(pk packet, now int64) bool {
	f.mu.Lock()
	exp, ok := f.frags[fragKey{pk.proto, pk.id, pk.dst}]
	f.mu.Unlock()
	if ok && exp > now {
		return true
	}
	f.dropped.Add(1)
	return false
}

func (f *Filter) tcpOut(pk packet, now int64) (bool, []byte) {
	t := pk.l4
	if len(t) < 20 {
		f.dropped.Add(1)
		return false, nil
	}
	flags := t[13]
	seq := binary.BigEndian.Uint32(t[4:])
	k := pk.flow(true)
	f.mu.Lock()
	fl, ok := f.flows[k]
	if ok && fl.expires > now && !newSYN(fl, flags, seq) {
		f.tcpUpdateLocked(k, fl, flags, finOut, now)
		f.mu.Unlock()
		return true, nil
	}
	if ok && fl.expires > now {
		// A new connection from the port of a flow that lives on (after
		// its FINs, or after the enclave gave up on the handshake): it
		// may be another socket's, and must pass on its own: a
		// PermitFrom permission was for the old one only.
		delete(f.flows, k)
	}
	f.mu.Unlock()
	dst := netip.AddrFrom4(pk.dst)
	switch {
	case flags&tcpRST != 0:
		// The kernel's reset for a segment from the host that belongs
		// to no connection passes, once; no other.
		if f.resetAllowed(k, t, now) {
			return true, nil
		}
		f.dropped.Add(1)
		return false, nil
	case flags&tcpSYN == 0:
		// Mid-stream, without a flow: a connection older than this
		// filter (quench-enclave restarted while the program's socket
		// lived on) or whose flow expired. It is picked up if the host
		// spoke on it first (a connection into the enclave) or the
		// policy allows its destination; otherwise the program's socket
		// is reset, so that it fails now rather than after its
		// retransmissions.
		if f.pickUp(k, now) || f.allowTCP(dst, k.rport) {
			if f.open(k, flow{expires: now + int64(TCPIdleTimeout), state: synAck | established}, now) {
				return true, nil
			}
		}
		f.dropped.Add(1)
		return false, tcpReset(pk)
	case flags&tcpACK != 0:
		// A SYN-ACK without the host's SYN.
		f.dropped.Add(1)
		return false, nil
	}
	if !f.admit(k, f.allowTCP(dst, k.rport), flow{expires: now + int64(TCPOpenTimeout), state: synOut, isn: seq}, &f.tcp, now) {
		return false, tcpReset(pk)
	}
	return true, nil
}

// newSYN reports whether a segment with flags and sequence number seq from
// the enclave on live flow fl starts a new connection: a SYN without ACK
// once the handshake completed, or with another sequence number than the
// SYN that opened the flow (not a retransmission of it).
func newSYN(fl flow, flags byte, seq uint32) bool {
	if flags&(tcpSYN|tcpACK) != tcpSYN {
		return false
	}
	return fl.state&established != 0 || fl.state&synOut != 0 && fl.isn != seq
}

// admit opens flow k as fl, the first of a connection or datagram exchange
// the enclave starts, if the policy allows it (allowed) or Permit did;
// otherwise it counts the refusal in refused and reports false.
func (f *Filter) admit(k flowKey, allowed bool, fl flow, refused *atomic.Uint64, now int64) bool {
	if !allowed && !f.permitted(k, now) {
		refused.Add(1)
		proto := "tcp"
		if k.proto == protoUDP {
			proto = "udp"
		}
		f.warn("egress: refused by the egress policy", "to", netip.AddrPortFrom(netip.AddrFrom4(k.rip), k.rport).String(), "proto", proto)
		return false
	}
	if !f.open(k, fl, now) {
		refused.Add(1)
		return false
	}
	return true
}

// allowTCP reports whether the policy allows a TCP connection to dst:port.
// DNS over TCP is not inspected (its answers could lead an allowed name
// into the enclave), so a connection to a DNS server needs a rule that
// names the server ("*" does not).
func (f *Filter) allowTCP(dst netip.Addr, port uint16) bool {
	if f.isDNS(dst.As4(), port) {
		return f.p.AllowAddress("tcp", dst, port)
	}
	return f.p.Allow("tcp", dst, port, f.learned.Names(dst))
}

// tcpUpdateLocked records a segment of flow k with flags; fin is finOut or
// finIn for its direction. A flow is established once a segment without
// SYN follows the SYN-ACK (the handshake completed): from then on it lives
// TCPIdleTimeout without traffic, and TCPOpenTimeout before that and once
// both sides have sent FIN. A reset ends it.
func (f *Filter) tcpUpdateLocked(k flowKey, fl flow, flags byte, fin uint8, now int64) {
	if flags&tcpRST != 0 {
		delete(f.flows, k)
		return
	}
	switch {
	case flags&(tcpSYN|tcpACK) == tcpSYN|tcpACK:
		fl.state |= synAck
	case flags&tcpSYN == 0 && fl.state&synAck != 0:
		fl.state |= established
	}
	if flags&tcpFIN != 0 {
		fl.state |= fin
	}
	if fl.state&established != 0 && fl.state&(finOut|finIn) != finOut|finIn {
		fl.expires = now + int64(TCPIdleTimeout)
	} else {
		fl.expires = now + int64(TCPOpenTimeout)
	}
	f.flows[k] = fl
}

// open adds flow k unless the table is full of live flows.
func (f *Filter) open(k flowKey, fl flow, now int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.flows) >= f.max || now >= f.nextSweep {
		f.sweepLocked(now)
	}
	if len(f.flows) >= f.max {
		f.full.Add(1)
		return false
	}
	f.flows[k] = fl
	return true
}

func (f *Filter) sweepLocked(now int64) {
	f.nextSweep = now + int64(sweepEvery)
	for k, fl := range f.flows {
		if fl.expires <= now {
			delete(f.flows, k)
		}
	}
	for k, exp := range f.frags {
		if exp <= now {
			delete(f.frags, k)
		}
	}
}

func (f *Filter) isDNS(ip [4]byte, port uint16) bool {
	if port != 53 {
		return false
	}
	a := netip.AddrFrom4(ip)
	for _, d := range f.dns {
		if d.Unmap() == a {
			return true
		}
	}
	return false
}

func (f *Filter) udpOut(pk packet, now int64) (bool, []byte) {
	u := pk.l4
	if len(u) < 8 {
		f.dropped.Add(1)
		return false, nil
	}
	k := pk.flow(true)
	if f.isDNS(pk.dst, k.rport) {
		if pk.more {
			f.dropped.Add(1) // a fragmented query: not checked, not passed
			return false, nil
		}
		answer, err := f.query(udpPayload(u), now)
		if err != nil {
			f.dropped.Add(1)
			return false, nil
		}
		if answer != nil {
			if len(answer) > maxAnswer {
				return false, nil // a query built to make its answer huge
			}
			return false, udpReply(pk, answer)
		}
		return true, nil
	}
	if f.refreshUDP(k, now) {
		return true, nil
	}
	dst := netip.AddrFrom4(pk.dst)
	if !f.admit(k, f.p.Allow("udp", dst, k.rport, f.learned.Names(dst)), flow{expires: now + int64(UDPTimeout)}, &f.udp, now) {
		return false, icmpProhibited(pk)
	}
	return true, nil
}

// maxPermits bounds the permissions of PermitFrom and PermitName alive at once.
const maxPermits = 1024

// permit records PermitFrom's permission.
func (f *Filter) permit(network string, port uint16, dst netip.AddrPort) {
	if !dst.Addr().Unmap().Is4() {
		return
	}
	proto := uint8(protoTCP)
	if network == "udp" || network == "udp4" {
		proto = protoUDP
	}
	now := f.now().UnixNano()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expirePermitsLocked(now)
	if len(f.permits) < maxPermits {
		f.permits[flowKey{proto: proto, lport: port, rport: dst.Port(), rip: dst.Addr().Unmap().As4()}] = now + int64(PermitTimeout)
	}
}

// PermitName lets DNS questions about name through for PermitTimeout,
// whatever the policy (see PermitFrom): for the names of the enclave's own
// connections.
func (f *Filter) PermitName(name string) {
	now := f.now().UnixNano()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expirePermitsLocked(now)
	if len(f.names) < maxPermits {
		f.names[normName(name)] = now + int64(PermitTimeout)
	}
}

func normName(name string) string { return strings.TrimSuffix(strings.ToLower(name), ".") }

func (f *Filter) expirePermitsLocked(now int64) {
	for k, exp := range f.permits {
		if exp <= now {
			delete(f.permits, k)
		}
	}
	for k, exp := range f.names {
		if exp <= now {
			delete(f.names, k)
		}
	}
	for k, l := range f.resets {
		if l.expires <= now {
			delete(f.resets, k)
		}
	}
}

// permitted reports whether PermitFrom allowed flow k (its local port and
// destination), and uses the permission up.
func (f *Filter) permitted(k flowKey, now int64) bool {
	pk := flowKey{proto: k.proto, lport: k.lport, rport: k.rport, rip: k.rip}
	f.mu.Lock()
	defer f.mu.Unlock()
	exp, ok := f.permits[pk]
	if ok {
		delete(f.permits, pk)
	}
	return ok && exp > now
}

func (f *Filter) namePermitted(name string, now int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	exp, ok := f.names[normName(name)]
	return ok && exp > now
}

// leaveReset notes the host's segment t, which belongs to no flow: the
// connection is gone from the enclave (after a restart, say), and the
// kernel may answer with the reset it sends for it, so that the host's end
// ends at once instead of retransmitting until it gives up (the reset's
// fields are the host's, so it carries nothing from the enclave); or the
// connection outlived the filter (quench-enclave restarted), and it may be
// picked up (pickUp).
func (f *Filter) leaveReset(k flowKey, t []byte, now int64) {
	l := resetLeave{expires: now + int64(PermitTimeout), hadAck: t[13]&tcpACK != 0}
	if l.hadAck {
		l.seq = binary.BigEndian.Uint32(t[8:])
	} else {
		n := uint32(0)
		if off := int(t[12]>>4) * 4; off >= 20 && off <= len(t) {
			n = uint32(len(t) - off)
		}
		if t[13]&tcpFIN != 0 {
			n++
		}
		l.ack = binary.BigEndian.Uint32(t[4:]) + n
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.resets[k]; !ok && len(f.resets) >= maxPermits {
		f.expirePermitsLocked(now)
		if len(f.resets) >= maxPermits {
			return
		}
	}
	f.resets[k] = l
}

// resetAllowed reports whether the reset t answers a stray segment as the
// kernel would (leaveReset), and uses the leave up.
func (f *Filter) resetAllowed(k flowKey, t []byte, now int64) bool {
	if off := int(t[12]>>4) * 4; off < 20 || off != len(t) {
		return false // options or data: not the kernel's reset
	}
	seq, ack := binary.BigEndian.Uint32(t[4:]), binary.BigEndian.Uint32(t[8:])
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.resets[k]
	switch {
	case !ok || l.expires <= now:
		return false
	case l.hadAck && (t[13] != tcpRST || seq != l.seq):
		return false
	case !l.hadAck && (t[13] != tcpRST|tcpACK || seq != 0 || ack != l.ack):
		return false
	}
	delete(f.resets, k)
	return true
}

// pickUp reports whether the host sent a segment on flow k, which the
// filter did not know, in the last PermitTimeout (leaveStray), and uses that
// up.
func (f *Filter) pickUp(k flowKey, now int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.resets[k]
	if ok {
		delete(f.resets, k)
	}
	return ok && l.expires > now
}

// refreshUDP reports whether UDP flow k is live, and if so extends it by
// UDPTimeout.
func (f *Filter) refreshUDP(k flowKey, now int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl, ok := f.flows[k]
	if !ok || fl.expires <= now {
		return false
	}
	fl.expires = now + int64(UDPTimeout)
	f.flows[k] = fl
	return true
}

// udpPayload returns a UDP datagram's payload, bounded by its length field.
func udpPayload(u []byte) []byte {
	n := int(binary.BigEndian.Uint16(u[4:]))
	if n < 8 || n > len(u) {
		n = len(u)
	}
	return u[8:n]
}

// icmpOut passes echo replies to peers that asked.
func (f *Filter) icmpOut(pk packet, now int64) bool {
	c := pk.l4
	if len(c) >= 8 && c[0] == icmpEchoRepl && !pk.more {
		k := flowKey{proto: protoICMP, lport: binary.BigEndian.Uint16(c[4:]), lip: pk.src, rip: pk.dst}
		f.mu.Lock()
		fl, ok := f.flows[k]
		if ok && fl.expires > now {
			delete(f.flows, k)
			f.mu.Unlock()
			return true
		}
		f.mu.Unlock()
	}
	f.dropped.Add(1)
	return false
}

// Inbound inspects frame, from the host, on its way into the enclave: it
// opens flows for connections the host opens, learns DNS answers, and
// reports whether the frame may be delivered (false for a DNS answer that
// leads into the enclave or that it cannot check, and, with
// Config.Gateway, for IPv4 from the gateway's address or outside the
// subnet that does not come from the gateway's Ethernet address).
func (f *Filter) Inbound(frame []byte) bool {
	if len(frame) >= ethLen && binary.BigEndian.Uint16(frame[12:]) == typeARP {
		f.learnARP(frame)
		return true
	}
	pk, ok := parseIPv4(frame)
	if !ok {
		return true
	}
	if f.hasGw && pk.src == f.gateway && frame[6]&1 == 0 {
		// The gateway's own IPv4 (the host's switch lets no enclave
		// send from its address) teaches its link address too: the
		// host's stack may connect in (a published port) without ARP.
		if mac := macBits(frame[6:12]); f.gwMAC.Load() != mac {
			f.gwMAC.Store(mac)
		}
	}
	if !f.viaGateway(pk) {
		f.dropped.Add(1)
		return false
	}
	if pk.l4 == nil {
		return true
	}
	now := f.now().UnixNano()
	switch pk.proto {
	case protoTCP:
		t := pk.l4
		if len(t) < 20 {
			return true
		}
		flags := t[13]
		k := pk.flow(false)
		f.mu.Lock()
		fl, ok := f.flows[k]
		if ok && fl.expires > now {
			f.tcpUpdateLocked(k, fl, flags, finIn, now)
			f.mu.Unlock()
			return true
		}
		f.mu.Unlock()
		switch {
		case !f.mayOpen(pk, "tcp", k.rport):
			// Straight from another enclave, not allowed: no flow, and
			// no leave to reset or pick up one.
		case flags&(tcpSYN|tcpACK|tcpRST) == tcpSYN:
			f.open(k, flow{expires: now + int64(TCPOpenTimeout)}, now)
		case flags&(tcpSYN|tcpRST) == 0:
			f.leaveReset(k, t, now)
		}
	case protoUDP:
		u := pk.l4
		if len(u) < 8 {
			return true
		}
		sport := binary.BigEndian.Uint16(u[0:])
		if f.isDNS(pk.src, sport) {
			if pk.more {
				// The first fragment of an answer: the filter cannot
				// check the addresses of the whole, which the enclave's
				// kernel would reassemble, so it drops it (the later
				// fragments are useless without it). Answers fit in a
				// frame (resolvers answer at most 1232 bytes by default).
				f.answers.Add(1)
				f.warn("egress: the host's DNS sent a fragmented answer; dropped")
				return false
			}
			return f.learn(udpPayload(u))
		}
		k := pk.flow(false)
		if f.refreshUDP(k, now) {
			return true
		}
		if f.mayOpen(pk, "udp", sport) {
			f.open(k, flow{expires: now + int64(UDPTimeout)}, now)
		}
	case protoICMP:
		c := pk.l4
		if len(c) >= 8 && c[0] == icmpEcho && !pk.more && f.mayOpen(pk, "", 0) {
			k := flowKey{proto: protoICMP, lport: binary.BigEndian.Uint16(c[4:]), lip: pk.dst, rip: pk.src}
			f.open(k, flow{expires: now + int64(EchoTimeout)}, now)
		}
	}
	return true
}

// learn records the addresses a DNS answer gives for the names the policy
// allows, and reports whether the answer may be delivered: not when it
// leads an allowed name into the enclave, nor when its answer records
// cannot all be read (a resolver might read what the filter cannot check).
// An answer without a question is checked too, and teaches nothing: some
// stub resolvers match answers by ID alone.
func (f *Filter) learn(msg []byte) bool {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || !h.Response {
		return true // not an answer: the resolver drops it
	}
	name := ""
	q, err := p.Question()
	switch err {
	case nil:
		name = q.Name.String()
		if err := p.SkipAllQuestions(); err != nil {
			return f.unreadable()
		}
	case dnsmessage.ErrSectionDone:
	default:
		return f.unreadable()
	}
	var ips []netip.Addr
	for {
		ah, err := p.AnswerHeader()
		if err == dnsmessage.ErrSectionDone {
			break
		}
		if err != nil {
			return f.unreadable()
		}
		start := len(ips) // this record's addresses follow
		switch ah.Type {
		case dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				return f.unreadable()
			}
			ips = append(ips, netip.AddrFrom4(r.A))
		case dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				return f.unreadable()
			}
			ips = append(ips, netip.AddrFrom16(r.AAAA).Unmap())
		case dnsmessage.TypeSVCB, dnsmessage.TypeHTTPS:
			// Address hints: clients that read HTTPS records (browsers,
			// curl) may connect to them before asking for A or AAAA.
			var r dnsmessage.SVCBResource
			if ah.Type == dnsmessage.TypeSVCB {
				r, err = p.SVCBResource()
			} else {
				var h dnsmessage.HTTPSResource
				h, err = p.HTTPSResource()
				r = h.SVCBResource
			}
			if err != nil {
				return f.unreadable()
			}
			var ok bool
			if ips, ok = appendHints(ips, r); !ok {
				return f.unreadable()
			}
		default:
			if err := p.SkipAnswer(); err != nil {
				return f.unreadable()
			}
			continue
		}
		for _, ip := range ips[start:] {
			if f.inside(ip) && !f.p.NamesAddress(ip) {
				f.answers.Add(1)
				f.warn("egress: the host's DNS answered an address inside the enclave; answer dropped", "name", name, "address", ip.String())
				return false
			}
		}
	}
	if len(ips) > 0 && name != "" && f.p.NamesHost(name) {
		f.learned.Record(name, ips...)
	}
	return true
}

// appendHints appends the addresses of r's ipv4hint and ipv6hint
// parameters to ips; false if a hint's length is not a whole number of
// addresses.
func appendHints(ips []netip.Addr, r dnsmessage.SVCBResource) ([]netip.Addr, bool) {
	for _, prm := range r.Params {
		size := 0
		switch prm.Key {
		case dnsmessage.SVCParamIPv4Hint:
			size = 4
		case dnsmessage.SVCParamIPv6Hint:
			size = 16
		default:
			continue
		}
		if len(prm.Value)%size != 0 {
			return ips, false
		}
		for v := prm.Value; len(v) > 0; v = v[size:] {
			a, _ := netip.AddrFromSlice(v[:size])
			ips = append(ips, a.Unmap())
		}
	}
	return ips, true
}

// unreadable drops a DNS answer whose records the filter cannot read.
func (f *Filter) unreadable() bool {
	f.answers.Add(1)
	f.warn("egress: the host's DNS sent an answer the filter cannot read; dropped")
	return false
}

// warn logs a refusal, at most once a second, with the count of those not
// logged.
func (f *Filter) warn(msg string, args ...any) { f.warns.Warn(f.log, msg, args...) }

// reply starts a frame back to pk's sender: Ethernet addresses swapped, an
// IPv4 header from pk's destination to its source with protocol proto, and
// room for n bytes of payload, which it returns.
func reply(pk packet, proto uint8, n int) (frame, payload []byte) {
	frame = make([]byte, ethLen+20+n)
	copy(frame[0:6], pk.frame[6:12])
	copy(frame[6:12], pk.frame[0:6])
	binary.BigEndian.PutUint16(frame[12:], typeIPv4)
	ip := frame[ethLen:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+n))
	ip[8] = 64
	ip[9] = proto
	copy(ip[12:16], pk.dst[:])
	copy(ip[16:20], pk.src[:])
	binary.BigEndian.PutUint16(ip[10:], ^checksum.Checksum(ip[:20], 0))
	return frame, ip[20:]
}

// l4Checksum fills in a TCP or UDP checksum (at offset off of seg).
func l4Checksum(pk packet, proto uint8, seg []byte, off int) {
	var ph [12]byte
	copy(ph[0:4], pk.dst[:]) // the reply's source
	copy(ph[4:8], pk.src[:])
	ph[9] = proto
	binary.BigEndian.PutUint16(ph[10:], uint16(len(seg)))
	sum := ^checksum.Checksum(seg, checksum.Checksum(ph[:], 0))
	if sum == 0 && proto == protoUDP {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(seg[off:], sum)
}

// tcpReset answers the segment pk with a reset, as RFC 793 has a closed
// port do: to a segment with ACK, sequence number its acknowledgement;
// otherwise RST|ACK acknowledging it (a SYN counts one).
func tcpReset(pk packet) []byte {
	t := pk.l4
	frame, seg := reply(pk, protoTCP, 20)
	copy(seg[0:2], t[2:4])
	copy(seg[2:4], t[0:2])
	seg[12] = 5 << 4
	if t[13]&tcpACK != 0 {
		copy(seg[4:8], t[8:12])
		seg[13] = tcpRST
	} else {
		n := uint32(0)
		if off := int(t[12]>>4) * 4; off >= 20 && off <= len(t) {
			n = uint32(len(t) - off)
		}
		if t[13]&tcpSYN != 0 {
			n++
		}
		if t[13]&tcpFIN != 0 {
			n++
		}
		binary.BigEndian.PutUint32(seg[8:], binary.BigEndian.Uint32(t[4:])+n)
		seg[13] = tcpRST | tcpACK
	}
	l4Checksum(pk, protoTCP, seg, 16)
	return frame
}

// udpReply answers the datagram pk with payload from its destination port.
func udpReply(pk packet, payload []byte) []byte {
	u := pk.l4
	frame, seg := reply(pk, protoUDP, 8+len(payload))
	copy(seg[0:2], u[2:4])
	copy(seg[2:4], u[0:2])
	binary.BigEndian.PutUint16(seg[4:], uint16(8+len(payload)))
	copy(seg[8:], payload)
	l4Checksum(pk, protoUDP, seg, 6)
	return frame
}

// icmpProhibited answers pk with ICMP "destination unreachable:
// communication administratively prohibited", quoting its header and first
// 8 bytes as RFC 792 asks.
func icmpProhibited(pk packet) []byte {
	ihl := int(pk.ip[0]&0x0f) * 4
	quote := pk.ip[:min(len(pk.ip), ihl+8)]
	frame, c := reply(pk, protoICMP, 8+len(quote))
	c[0] = icmpUnreach
	c[1] = 13
	copy(c[8:], quote)
	binary.BigEndian.PutUint16(c[2:], ^checksum.Checksum(c, 0))
	return frame
}
