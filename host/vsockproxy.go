package host

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/quenchnet/quench/internal/relay"
)

// VSockProxy is one port of AWS vsock-proxy's role: programs in an enclave
// connect to the parent's VSOCK port Port (vsock://3:Port from the enclave:
// CID 3 is the parent) and each connection is relayed over TCP to Target
// on the host's network. Apps built for vsock-proxy, such as the Nitro
// Enclaves SDK's kmstool reaching KMS on VSOCK port 8000, work unchanged
// against quench-host, with its limits, metrics and event-loop relays.
//
// The host's operator names the target, so Config.Egress does not apply to
// it; as with vsock-proxy, the enclave's TLS to the target is what keeps the
// host out of the bytes.
type VSockProxy struct {
	// Port is the VSOCK port the host listens on.
	Port uint32
	// Target is the host:port dialled for each connection. A name is
	// resolved at each connection, so DNS changes (KMS endpoints rotate
	// addresses) take effect without a restart.
	Target string
}

func (p VSockProxy) String() string { return fmt.Sprintf("%d:%s", p.Port, p.Target) }

// ParseVSockProxy parses VSOCKPORT:HOST:PORT, the form of quench-host's
// -vsock-proxy (an IPv6 address in brackets: 8000:[2001:db8::1]:443).
// `vsock-proxy 8000 kms.us-east-1.amazonaws.com 443` is
// 8000:kms.us-east-1.amazonaws.com:443.
func ParseVSockProxy(s string) (VSockProxy, error) {
	bad := func(format string, args ...any) (VSockProxy, error) {
		return VSockProxy{}, fmt.Errorf("host: vsock-proxy %q: %s", s, fmt.Sprintf(format, args...))
	}
	port, target, ok := strings.Cut(s, ":")
	if !ok {
		return bad("want VSOCKPORT:HOST:PORT")
	}
	vp, err := strconv.ParseUint(port, 10, 32)
	if err != nil || vp == 0 || vp == 0xffffffff {
		// 0xffffffff is VMADDR_PORT_ANY: the kernel would pick a port.
		return bad("VSOCK port %q: want 1-4294967294", port)
	}
	p := VSockProxy{Port: uint32(vp), Target: target}
	if err := p.validate(); err != nil {
		return bad("%v", err)
	}
	return p, nil
}

// validate checks p.Target (and p.Port, for values built in Go).
func (p VSockProxy) validate() error {
	if p.Port == 0 || p.Port == 0xffffffff {
		return fmt.Errorf("VSOCK port %d: want 1-4294967294", p.Port)
	}
	h, port, err := net.SplitHostPort(p.Target)
	if err != nil {
		if strings.Count(p.Target, ":") > 1 && !strings.ContainsAny(p.Target, "[/") {
			return fmt.Errorf("target %q: want HOST:PORT, an IPv6 address in brackets ([2001:db8::1]:443)", p.Target)
		}
		return fmt.Errorf("target %q: want HOST:PORT", p.Target)
	}
	if h == "" {
		return fmt.Errorf("target %q: no host", p.Target)
	}
	if strings.ContainsAny(h, " /\\%") || strings.ContainsFunc(h, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
		return fmt.Errorf("target %q: host is neither a name nor an address", p.Target)
	}
	a, err := netip.ParseAddr(h)
	if err == nil && a.Unmap().IsUnspecified() {
		// connect(2) to 0.0.0.0 or :: reaches the host's own services,
		// which the NAT refuses for that reason; name 127.0.0.1 to mean it.
		return fmt.Errorf("target %q: the unspecified address reaches the host itself; name 127.0.0.1 if that is meant", p.Target)
	}
	if err != nil && endsInNumber(h) {
		// getaddrinfo (Go's cgo resolver) reads inet_aton's forms:
		// 010.0.0.1 is 8.0.0.1, 127.1 and 2130706433 are 127.0.0.1. No
		// name's last label is a number.
		return fmt.Errorf("target %q: host is not an address as written (IPv4 in dotted decimal, IPv6 in brackets) nor a name", p.Target)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("target %q: port %q: want 1-65535", p.Target, port)
	}
	return nil
}

// endsInNumber reports whether the last label of h (a trailing dot aside)
// is a decimal or 0x-hexadecimal number, as in inet_aton's forms of IPv4
// addresses (the WHATWG URL standard's "ends in a number").
func endsInNumber(h string) bool {
	h = strings.TrimSuffix(h, ".")
	last := h[strings.LastIndexByte(h, '.')+1:]
	if len(last) > 1 && (last[:2] == "0x" || last[:2] == "0X") {
		last = last[2:]
		return !strings.ContainsFunc(last, func(r rune) bool { return !strings.ContainsRune("0123456789abcdefABCDEF", r) })
	}
	return last != "" && !strings.ContainsFunc(last, func(r rune) bool { return r < '0' || r > '9' })
}

// VSockProxyStatus describes one VSockProxy served by ServeVSockProxy and
// its counters.
type VSockProxyStatus struct {
	Proxy    VSockProxy
	Addr     string // the listener's address
	Accepted uint64 // connections from enclaves accepted (within the limits), Failed ones too
	Failed   uint64 // accepted connections closed because the target could not be dialled
	Refused  uint64 // connections closed at once at MaxVSockProxyConns(PerPeer)
	Active   int64  // connections being relayed now
	BytesIn  int64  // enclave → target, of relayed and ended connections
	BytesOut int64  // target → enclave
}

// vsockProxy is one VSockProxy being served.
type vsockProxy struct {
	spec VSockProxy
	addr string

	accepted, failed, refused atomic.Uint64
	active                    atomic.Int64
	bytesIn, bytesOut         atomic.Int64
}

func (p *vsockProxy) status() VSockProxyStatus {
	return VSockProxyStatus{
		Proxy: p.spec, Addr: p.addr,
		Accepted: p.accepted.Load(), Failed: p.failed.Load(), Refused: p.refused.Load(),
		Active: p.active.Load(), BytesIn: p.bytesIn.Load(), BytesOut: p.bytesOut.Load(),
	}
}

// VSockProxies returns the status of every VSockProxy being served, in the
// order ServeVSockProxy was called; one whose ServeVSockProxy returned is
// not listed.
func (h *Host) VSockProxies() []VSockProxyStatus {
	h.mu.Lock()
	ps := append([]*vsockProxy(nil), h.vsockProxies...)
	h.mu.Unlock()
	out := make([]VSockProxyStatus, len(ps))
	for i, p := range ps {
		out[i] = p.status()
	}
	return out
}

// ServeVSockProxy accepts connections on ln, the host's listener for
// p.Port (quench-host listens on vsock://:PORT), and relays each to
// p.Target over TCP, dialled with Config.Dial within Config.DialTimeout,
// until ln fails or Close is called. Connections beyond
// Config.MaxVSockProxyConns, or MaxVSockProxyConnsPerPeer from one peer
// (VSOCK CID; for unix sockets, user id), are closed at once and counted;
// one whose target cannot be dialled is closed and counted too (the
// enclave sees its connection end before any byte). A connection is
// closed after Config.NATIdleTimeout without a byte either way. Like
// Serve, it may be called for several listeners at once, closes ln before
// returning and returns nil after Close. A VSOCK port is served by one call
// at a time: another for the same p.Port fails.
func (h *Host) ServeVSockProxy(ln net.Listener, p VSockProxy) error {
	if err := p.validate(); err != nil {
		_ = ln.Close()
		return fmt.Errorf("host: vsock-proxy %s: %w", p, err)
	}
	vp := &vsockProxy{spec: p, addr: ln.Addr().String()}
	return h.acceptOn(ln, "ServeVSockProxy", fmt.Sprintf("vsock-proxy %s: ", p), func() error {
		if slices.ContainsFunc(h.vsockProxies, func(o *vsockProxy) bool { return o.spec.Port == p.Port }) {
			// As on VSOCK, where the second listener fails with an address
			// in use; two would also be two series with the same labels,
			// which fail every /metrics scrape.
			return fmt.Errorf("host: vsock-proxy %s: VSOCK port %d is served already", p, p.Port)
		}
		h.vsockProxies = append(h.vsockProxies, vp)
		h.log.Info("vsock-proxy: accepting enclave connections", "addr", vp.addr, "target", p.Target)
		return nil
	}, func() {
		h.vsockProxies = slices.DeleteFunc(h.vsockProxies, func(o *vsockProxy) bool { return o == vp })
	}, func(c net.Conn) bool {
		peer := peerID(c)
		if !h.natStats.proxyConns.acquire(peer) {
			vp.refused.Add(1)
			h.warnDial("vsock-proxy: connection limit reached; enclave connection closed", errProxyLimit, "peer", peer, "target", p.Target)
			_ = c.Close()
			return true
		}
		vp.accepted.Add(1)
		cc := &connCloser{conns: []net.Conn{c}}
		if !h.goTracked(func() { h.serveProxyConn(vp, c, cc, peer) }) {
			h.natStats.proxyConns.release(peer)
			_ = c.Close()
			return false
		}
		return true
	})
}

// errProxyLimit: a vsock-proxy connection was closed at MaxVSockProxyConns
// or MaxVSockProxyConnsPerPeer.
var errProxyLimit = errors.New("too many vsock-proxy connections (Config.MaxVSockProxyConns, MaxVSockProxyConnsPerPeer; quench-host -max-vsock-proxy-conns, -max-vsock-proxy-conns-per-enclave)")

// serveProxyConn dials the target for the enclave's connection c and hands
// both to the relay.
func (h *Host) serveProxyConn(vp *vsockProxy, c net.Conn, cc *connCloser, peer string) {
	vp.active.Add(1)
	var once sync.Once
	end := func() {
		once.Do(func() {
			h.untrack(cc)
			vp.active.Add(-1)
			h.natStats.proxyConns.release(peer)
		})
	}
	if !h.track(cc) {
		_ = c.Close()
		end()
		return
	}
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.DialTimeout)
	out, err := h.cfg.Dial(ctx, "tcp", vp.spec.Target)
	cancel()
	if err != nil {
		vp.failed.Add(1)
		h.warnDial("vsock-proxy: target unreachable; enclave connection closed", err, "target", vp.spec.Target, "peer", peer)
		_ = c.Close()
		end()
		return
	}
	if !cc.add(out) {
		_ = c.Close()
		end()
		return
	}
	h.wg.Add(1) // the relay's; non-zero here (this goroutine holds it)
	opts := relay.Options{IdleTimeout: max(h.cfg.NATIdleTimeout, 0), AToB: &vp.bytesIn, BToA: &vp.bytesOut}
	done := func(relay.Stats, error) {
		end()
		h.wg.Done()
	}
	if h.relays != nil {
		cc.started(h.relays.Go(c, out, opts, done))
		return
	}
	relay.Go(c, out, opts, done)
	cc.started(relayConns{c, out})
}
