package enclave

import (
	"net"
	"net/netip"
	"sync"

	"github.com/quenchnet/quench/policy"
)

// maxPacketPeers bounds how many peers a policed PacketConn remembers as
// having written to it first (see policedPacketConn).
const maxPacketPeers = 4096

// policedPacketConn applies Config.Egress to a PacketConn from
// ListenPacket: WriteTo reaches a destination the policy allows by address
// (a UDP socket has no name to check), or a peer that wrote to this socket
// first (a reply, such as a UDP server's). Peers are remembered in arrival
// order, at most maxPacketPeers; the oldest is forgotten first.
type policedPacketConn struct {
	net.PacketConn
	egress *policy.Policy

	mu    sync.Mutex
	peers map[netip.AddrPort]struct{}
	order []netip.AddrPort // ring of the keys of peers, oldest at next
	next  int
}

func newPolicedPacketConn(pc net.PacketConn, egress *policy.Policy) *policedPacketConn {
	return &policedPacketConn{PacketConn: pc, egress: egress, peers: make(map[netip.AddrPort]struct{})}
}

// ReadFrom reads a packet and remembers its sender as a peer WriteTo may
// answer.
func (c *policedPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, addr, err := c.PacketConn.ReadFrom(p)
	if ap, ok := addrPort(addr); ok {
		c.remember(ap)
	}
	return n, addr, err
}

func (c *policedPacketConn) remember(ap netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.peers[ap]; ok {
		return
	}
	if len(c.order) < maxPacketPeers {
		c.order = append(c.order, ap)
	} else {
		delete(c.peers, c.order[c.next])
		c.order[c.next] = ap
		c.next = (c.next + 1) % maxPacketPeers
	}
	c.peers[ap] = struct{}{}
}

// WriteTo sends p to addr if the policy allows addr or addr wrote to this
// socket first; otherwise it fails with ErrEgressRefused (in a
// *net.OpError) and sends nothing.
func (c *policedPacketConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ap, ok := addrPort(addr)
	if !ok || !c.allowed(ap) {
		return 0, &net.OpError{Op: "write", Net: "udp", Source: c.LocalAddr(), Addr: addr, Err: ErrEgressRefused}
	}
	return c.PacketConn.WriteTo(p, addr)
}

func (c *policedPacketConn) allowed(ap netip.AddrPort) bool {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if c.egress.Allow("udp", ap.Addr(), ap.Port(), nil) {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.peers[ap]
	return ok
}

// addrPort returns addr as an address and port, for the *net.UDPAddr that
// both the kernel's and the userspace stack's PacketConns use.
func addrPort(addr net.Addr) (netip.AddrPort, bool) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok || ua == nil {
		return netip.AddrPort{}, false
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.IsValid()
}
