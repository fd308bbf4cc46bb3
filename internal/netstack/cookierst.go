package netstack

import (
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// cookieWindow is how long after the stack last sent a SYN cookie the
// resets of its listeners are held back (cookieResets): gVisor accepts a
// cookie for up to two 64-second timestamp periods.
const cookieWindow = 3 * time.Minute

// cookieResets holds back the resets a listener sends for segments that do
// not complete a SYN-cookie handshake, while the stack uses SYN cookies.
//
// Past the listen backlog (a burst of clients), a gVisor listener answers
// SYNs with cookies. A cookie handshake's ACK that finds the accept queue
// full is dropped (the app is behind with Accept), and the client's
// following segments, its FIN or more data, no longer carry a valid cookie
// (their sequence number has moved on): gVisor answers them with a reset
// (though its own comment there says such an ACK is silently dropped), so
// the client of an app that was merely behind loses its connection.
// Dropping these resets instead leaves the client retransmitting its first
// unacknowledged segment, whose sequence number still carries the cookie,
// and the connection completes once the accept queue has room again: the
// outcome Linux gives a handshake whose ACK overflowed the accept queue.
//
// Only resets of a listener are held back (a reset from a connection, or
// for a port nothing listens on, is never), and only within cookieWindow of
// a cookie sent. A segment of a connection the listener no longer has
// (stale, from a host that has not noticed a reset) then gets no answer,
// and its sender gives up on its own timeouts.
type cookieResets struct {
	s        *stack.Stack
	cookies  atomic.Uint64 // ListenOverflowSynCookieSent when last looked at
	lastSent atomic.Int64  // unix nanoseconds when it was seen to grow
	held     atomic.Uint64
}

// drop reports whether pkt, a packet the stack sends, is a listener's reset
// to hold back.
func (c *cookieResets) drop(pkt *stack.PacketBuffer) bool {
	if c.s == nil || pkt.NetworkProtocolNumber != header.IPv4ProtocolNumber || pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return false
	}
	th := header.TCP(pkt.TransportHeader().Slice())
	// A listener's reset of an ACK-bearing segment is RST alone
	// (replyWithReset); a connection's carries ACK too.
	if len(th) < header.TCPMinimumSize || th.Flags() != header.TCPFlagRst {
		return false
	}
	sent := c.s.Stats().TCP.ListenOverflowSynCookieSent.Value()
	if sent == 0 {
		return false
	}
	now := time.Now().UnixNano()
	if c.cookies.Swap(sent) != sent {
		c.lastSent.Store(now)
	}
	if time.Duration(now-c.lastSent.Load()) > cookieWindow {
		return false
	}
	ip := header.IPv4(pkt.NetworkHeader().Slice())
	if len(ip) < header.IPv4MinimumSize {
		return false
	}
	id := stack.TransportEndpointID{
		LocalPort:     th.SourcePort(),
		LocalAddress:  ip.SourceAddress(),
		RemotePort:    th.DestinationPort(),
		RemoteAddress: ip.DestinationAddress(),
	}
	ep, ok := c.s.FindTransportEndpoint(header.IPv4ProtocolNumber, header.TCPProtocolNumber, id, nicLink).(*tcp.Endpoint)
	if !ok || ep.EndpointState() != tcp.StateListen {
		return false
	}
	c.held.Add(1)
	return true
}
