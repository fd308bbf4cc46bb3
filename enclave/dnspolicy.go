package enclave

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"sync"

	"github.com/quenchnet/quench/policy"
)

// policedResolver returns a resolver that asks base's servers only about
// names p allows (AllowName); any other question is answered here, NXDOMAIN,
// without leaving the enclave. Otherwise a name would carry data out to
// whichever DNS servers the host forwards to, whatever the policy: a lookup
// is a message to the world even when no connection follows.
func policedResolver(base *net.Resolver, p *policy.Policy, log *slog.Logger) *net.Resolver {
	dial := base.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	return &net.Resolver{
		PreferGo:     true,
		StrictErrors: base.StrictErrors,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			pc := &policedDNSConn{Conn: c, p: p, log: log}
			// Go's resolver frames its messages by the conn's type, not
			// the network's name: length-prefixed unless the conn is a
			// net.PacketConn. The wrapper keeps the framing.
			if _, ok := c.(net.PacketConn); ok {
				return policedDNSPacketConn{pc}, nil
			}
			pc.stream = true
			return pc, nil
		},
	}
}

// policedDNSPacketConn is a policedDNSConn over a datagram conn: a
// net.PacketConn, so that Go's resolver sends each message whole.
type policedDNSPacketConn struct{ *policedDNSConn }

func (c policedDNSPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, err := c.Read(b)
	return n, c.RemoteAddr(), err
}

// WriteTo is refused: the conn talks to its server only.
func (c policedDNSPacketConn) WriteTo(_ []byte, addr net.Addr) (int, error) {
	return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: net.ErrWriteToConnected}
}

// errDNSQuery: a message written to a policed resolver's connection that is
// not a DNS query with questions. Go's resolver never writes one.
var errDNSQuery = policy.ErrNotQuery

// policedDNSConn is a resolver's connection to a DNS server that passes on
// only queries whose questions the policy allows. A query it refuses is not
// sent; its NXDOMAIN answer is read back from here.
type policedDNSConn struct {
	net.Conn
	stream bool // TCP: each message has a 2-byte length prefix
	p      *policy.Policy
	log    *slog.Logger

	mu      sync.Mutex
	answers []byte // guarded by mu: refusals not yet read
}

// Write passes b on, or keeps an NXDOMAIN answer for Read. Go's resolver
// writes one whole message per Write (with its length prefix over TCP).
func (c *policedDNSConn) Write(b []byte) (int, error) {
	msg := b
	if c.stream {
		if len(b) < 2 || int(binary.BigEndian.Uint16(b)) != len(b)-2 {
			return 0, errDNSQuery
		}
		msg = b[2:]
	}
	answer, name, err := c.p.RefuseQuery(msg)
	if err != nil {
		return 0, err
	}
	if answer == nil {
		return c.Conn.Write(b)
	}
	c.log.Warn("egress: DNS question for a name the egress policy does not allow; answered NXDOMAIN here", "name", name)
	if c.stream {
		answer = append(binary.BigEndian.AppendUint16(nil, uint16(len(answer))), answer...)
	}
	c.mu.Lock()
	c.answers = append(c.answers, answer...)
	c.mu.Unlock()
	return len(b), nil
}

// Read returns the answers to refused queries first.
func (c *policedDNSConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if len(c.answers) > 0 {
		n := copy(b, c.answers)
		c.answers = c.answers[n:]
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(b)
}
