package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// listenBacklog bounds a listener's connections the app has not accepted
// yet (and, about as many again, its handshakes in progress; past those,
// SYN cookies). It is Linux's somaxconn of old, not today's 4096: each of
// these connections has a receive buffer the host can fill
// (ethlink.TCPBufDefault, 1 MiB) and, unlike Linux's tcp_mem, nothing
// bounds their sum, so a listener whose app stops accepting could be made
// to hold 4 to 8 GiB; at 128, at most 255 MiB. A burst of clients past
// it waits for room rather than being reset (cookieResets).
const listenBacklog = 128

var loopbackAddr = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// transport returns "tcp" or "udp" for the networks the stack serves
// (IPv4 only).
func transport(network string) (string, bool) {
	switch network {
	case "tcp", "tcp4":
		return "tcp", true
	case "udp", "udp4":
		return "udp", true
	}
	return "", false
}

// Listen listens for TCP connections on the stack. network is "tcp" or
// "tcp4"; address is "host:port", where an empty or unspecified host (":80",
// "0.0.0.0:80") means every address of the stack, including 127.0.0.1, and
// port 0 picks a free port. The caller must Close the listener.
func (n *Net) Listen(network, address string) (net.Listener, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "listen", Net: network, Err: err}
	}
	if proto, ok := transport(network); !ok || proto != "tcp" {
		return nil, opErr(net.UnknownNetworkError(network))
	}
	fa, err := n.localAddress(network, address)
	if err != nil {
		return nil, opErr(err)
	}
	laddr := &net.TCPAddr{IP: addrIP(fa.Addr), Port: int(fa.Port)}
	if n.isClosed() {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: net.ErrClosed}
	}
	wq := new(waiter.Queue)
	ep, terr := n.stack.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, wq)
	if terr != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: stackError("socket", terr)}
	}
	ep.SocketOptions().SetReuseAddress(true) // as the standard library does
	if terr := ep.Bind(fa); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: stackError("bind", terr)}
	}
	if terr := ep.Listen(listenBacklog); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: stackError("listen", terr)}
	}
	bound, terr := ep.GetLocalAddress()
	if terr == nil {
		laddr = &net.TCPAddr{IP: addrIP(bound.Addr), Port: int(bound.Port)}
	}
	l := &listener{n: n, ep: ep, wq: wq, addr: laddr, done: make(chan struct{})}
	if !n.track(l) {
		ep.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: net.ErrClosed}
	}
	return l, nil
}

// ListenPacket opens a UDP socket on the stack. network is "udp" or "udp4";
// address is as for Listen. The caller must Close it.
func (n *Net) ListenPacket(network, address string) (net.PacketConn, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "listen", Net: network, Err: err}
	}
	if proto, ok := transport(network); !ok || proto != "udp" {
		return nil, opErr(net.UnknownNetworkError(network))
	}
	fa, err := n.localAddress(network, address)
	if err != nil {
		return nil, opErr(err)
	}
	laddr := &net.UDPAddr{IP: addrIP(fa.Addr), Port: int(fa.Port)}
	if n.isClosed() {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: net.ErrClosed}
	}
	wq := new(waiter.Queue)
	ep, terr := n.stack.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, wq)
	if terr != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: stackError("socket", terr)}
	}
	if terr := ep.Bind(fa); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: stackError("bind", terr)}
	}
	c := newUDPConn(n, wq, ep, false)
	if !n.track(c) {
		ep.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: net.ErrClosed}
	}
	return c, nil
}

// localAddress parses a local "host:port" for Listen and ListenPacket.
func (n *Net) localAddress(network, address string) (tcpip.FullAddress, error) {
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return tcpip.FullAddress{}, err
	}
	port, err := n.res.LookupPort(context.Background(), network, portStr)
	if err != nil {
		return tcpip.FullAddress{}, err
	}
	var fa tcpip.FullAddress
	fa.Port = uint16(port)
	switch {
	case host == "":
	case isLocalhost(host):
		fa.Addr = tcpAddr(loopbackAddr)
	default:
		a, err := netip.ParseAddr(host)
		if err != nil {
			return fa, &net.AddrError{Err: "not an IP address (names are not resolved for listening)", Addr: host}
		}
		a = a.Unmap()
		switch {
		case a.IsUnspecified():
		case a.Is4():
			fa.Addr = tcpAddr(a)
		default:
			return fa, &net.AddrError{Err: "IPv6 is not supported", Addr: host}
		}
	}
	return fa, nil
}

// Dial connects to address over the stack. network is "tcp", "tcp4", "udp"
// or "udp4"; address is "host:port", where host is an IPv4 address or a
// name, resolved through Resolver ("localhost" is 127.0.0.1, the stack's
// own loopback). It has the signature of net.Dialer.DialContext, so it can
// be an http.Transport's DialContext. ctx bounds name resolution and the
// connection's establishment only.
//
// A "udp" conn is also a net.PacketConn, as the standard library's is, and
// as there its WriteTo fails with net.ErrWriteToConnected.
func (n *Net) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	opErr := func(addr net.Addr, err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: addr, Err: err}
	}
	proto, ok := transport(network)
	if !ok {
		return nil, opErr(nil, net.UnknownNetworkError(network))
	}
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return nil, opErr(nil, err)
	}
	port, err := n.res.LookupPort(ctx, network, portStr)
	if err != nil {
		return nil, opErr(nil, err)
	}
	addrs, err := n.lookupHost(ctx, host)
	if err != nil {
		return nil, opErr(nil, err)
	}
	var first error
	for i, a := range addrs {
		dctx := ctx
		if deadline, ok := ctx.Deadline(); ok && len(addrs)-i > 1 {
			// Like net.Dialer: share the remaining time among the
			// remaining addresses, with a sane minimum.
			if d, ok := partialDeadline(time.Now(), deadline, len(addrs)-i); ok {
				var cancel context.CancelFunc
				dctx, cancel = context.WithDeadline(ctx, d)
				defer cancel()
			}
		}
		c, err := n.dialAddr(dctx, network, proto, netip.AddrPortFrom(a, uint16(port)))
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

func partialDeadline(now, deadline time.Time, remaining int) (time.Time, bool) {
	left := deadline.Sub(now)
	if left <= 0 {
		return deadline, false
	}
	timeout := left / time.Duration(remaining)
	const saneMinimum = 2 * time.Second
	if timeout < saneMinimum {
		timeout = min(left, saneMinimum)
	}
	return now.Add(timeout), true
}

// lookupHost resolves host to IPv4 addresses.
func (n *Net) lookupHost(ctx context.Context, host string) ([]netip.Addr, error) {
	if host == "" || isLocalhost(host) {
		// RFC 6761 section 6.3: "localhost" is the loopback address, never
		// asked of a name server. An empty host is the local system.
		return []netip.Addr{loopbackAddr}, nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		a = a.Unmap()
		if !a.Is4() {
			return nil, &net.AddrError{Err: "IPv6 is not supported", Addr: host}
		}
		return []netip.Addr{a}, nil
	}
	addrs, err := n.res.LookupNetIP(ctx, "ip4", host)
	if err != nil {
		return nil, err
	}
	out := addrs[:0]
	for _, a := range addrs {
		if a = a.Unmap(); a.Is4() {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, &net.DNSError{Err: "no IPv4 address", Name: host, IsNotFound: true}
	}
	return out, nil
}

// dialAddr connects to one address. network is the caller's name for it.
func (n *Net) dialAddr(ctx context.Context, network, proto string, ap netip.AddrPort) (net.Conn, error) {
	var raddr net.Addr
	if proto == "tcp" {
		raddr = net.TCPAddrFromAddrPort(ap)
	} else {
		raddr = net.UDPAddrFromAddrPort(ap)
	}
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: raddr, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return nil, opErr(contextError(err))
	}
	if n.isClosed() {
		return nil, opErr(net.ErrClosed)
	}
	fa := tcpip.FullAddress{Addr: tcpAddr(ap.Addr()), Port: ap.Port()}
	if proto == "udp" {
		return n.dialUDP(fa, opErr)
	}
	wq := new(waiter.Queue)
	ep, terr := n.stack.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, wq)
	if terr != nil {
		return nil, opErr(stackError("socket", terr))
	}
	// Register before Connect, which always returns an error to wait on.
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	terr = ep.Connect(fa)
	if _, started := terr.(*tcpip.ErrConnectStarted); started {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, opErr(contextError(ctx.Err()))
		case <-notify:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, opErr(stackError("connect", terr))
	}
	setKeepalive(ep)
	c := newTCPConn(n, wq, ep)
	if !n.track(c) {
		_ = c.c.Close()
		return nil, opErr(net.ErrClosed)
	}
	return c, nil
}

func (n *Net) dialUDP(fa tcpip.FullAddress, opErr func(error) error) (net.Conn, error) {
	wq := new(waiter.Queue)
	ep, terr := n.stack.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, wq)
	if terr != nil {
		return nil, opErr(stackError("socket", terr))
	}
	if terr := ep.Connect(fa); terr != nil {
		ep.Close()
		return nil, opErr(stackError("connect", terr))
	}
	c := newUDPConn(n, wq, ep, true)
	if !n.track(c) {
		_ = c.c.Close()
		return nil, opErr(net.ErrClosed)
	}
	return c, nil
}

// dialDNS is the Resolver's Dial: it ignores the server the Go resolver
// read from resolv.conf and connects to the next of Config.DNS instead, so
// that retries go round the configured servers.
func (n *Net) dialDNS(ctx context.Context, network, _ string) (net.Conn, error) {
	if len(n.dns) == 0 {
		return nil, errors.New("netstack: no DNS servers")
	}
	proto, ok := transport(network)
	if !ok {
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	fa := n.dns[int(n.next.Add(1)-1)%len(n.dns)]
	ap := netip.AddrPortFrom(netip.AddrFrom4(fa.Addr.As4()), fa.Port)
	return n.dialAddr(ctx, network, proto, ap)
}

// isLocalhost reports whether host is "localhost" or a name under it
// (RFC 6761 section 6.3).
func isLocalhost(host string) bool {
	host = strings.TrimSuffix(host, ".")
	return strings.EqualFold(host, "localhost") || len(host) > len(".localhost") &&
		strings.EqualFold(host[len(host)-len(".localhost"):], ".localhost")
}

func addrIP(a tcpip.Address) net.IP {
	if a.BitLen() == 0 {
		return net.IPv4zero
	}
	return net.IP(a.AsSlice())
}
