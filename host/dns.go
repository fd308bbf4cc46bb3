package host

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/containers/gvisor-tap-vsock/pkg/services/dns"
	"github.com/containers/gvisor-tap-vsock/pkg/types"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/quenchnet/quench/internal/dnswire"
)

// DNSZone is the zone the gateway answers itself: host.DNSZone is the host
// loopback address and gateway.DNSZone the gateway.
const DNSZone = "quench.internal."

// startDNSLocked serves DNS on GatewayIP:53 (UDP and TCP) with
// gvisor-tap-vsock's DNS service: names in DNSZone are answered locally, the
// rest through the host's resolver or Config.DNSUpstream.
func (h *Host) startDNSLocked() error {
	gw := tcpip.FullAddress{NIC: nicID, Addr: addr(h.cfg.GatewayIP), Port: 53}
	udpConn, err := gonet.DialUDP(h.stack, &gw, nil, ipv4.ProtocolNumber)
	if err != nil {
		return fmt.Errorf("host: DNS: bind UDP: %w", err)
	}
	tcpLn, err := gonet.ListenTCP(h.stack, gw, ipv4.ProtocolNumber)
	if err != nil {
		_ = udpConn.Close()
		return fmt.Errorf("host: DNS: bind TCP: %w", err)
	}
	records := []types.Record{{Name: "gateway", IP: h.cfg.GatewayIP.AsSlice()}}
	if !h.cfg.DisableHostLoopback {
		records = append(records, types.Record{Name: "host", IP: h.cfg.HostLoopbackIP.AsSlice()})
	}
	zones := []types.Zone{{Name: DNSZone, Records: records}}
	srv, err := dns.NewWithUpstreamResolver(udpConn, widenListener{tcpLn}, zones, &policyResolver{h: h, r: h.resolver()})
	if err != nil {
		_ = udpConn.Close()
		_ = tcpLn.Close()
		return fmt.Errorf("host: DNS: %w", err)
	}
	h.closers = append(h.closers, func() {
		_ = udpConn.Close()
		_ = tcpLn.Close()
	})
	// Close closes the conns (Close runs closers after cancelling), which
	// ends both Serve loops; closing them earlier on ctx.Done keeps the
	// WaitGroup wait in Close from blocking on them.
	stop := context.AfterFunc(h.ctx, func() {
		_ = udpConn.Close()
		_ = tcpLn.Close()
	})
	h.closers = append(h.closers, func() { stop() })
	h.wg.Add(2)
	go func() { defer h.wg.Done(); _ = srv.Serve() }()
	go func() { defer h.wg.Done(); _ = srv.ServeTCP() }()
	return nil
}

// resolver returns the upstream resolver for names outside DNSZone.
func (h *Host) resolver() *net.Resolver {
	if len(h.cfg.DNSUpstream) == 0 {
		return &net.Resolver{}
	}
	var next atomic.Uint32
	servers := h.cfg.DNSUpstream
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			s := servers[int(next.Add(1))%len(servers)]
			var d net.Dialer
			return d.DialContext(ctx, network, s)
		},
	}
}

// policyResolver answers upstream questions through r, counting them, and
// only for names Config.Egress allows (others get NXDOMAIN). Addresses of
// allowed names are recorded for the policy's hostname rules.
type policyResolver struct {
	h *Host
	r *net.Resolver
}

func (p *policyResolver) check(name string) error {
	// Names in our own zone are answered locally or not at all: a query
	// type the zone has no record for (AAAA, MX, ...) must not leak the
	// name to the host's upstream resolver.
	if n := strings.ToLower(strings.TrimSuffix(name, ".")) + "."; n == DNSZone || strings.HasSuffix(n, "."+DNSZone) {
		return &net.DNSError{Err: "no such record in " + DNSZone, Name: name, IsNotFound: true}
	}
	p.h.natStats.dnsQueries.Add(1)
	if !p.h.cfg.Egress.AllowName(name) {
		p.h.natStats.dnsRefused.Add(1)
		p.h.log.Debug("DNS: name refused by egress policy", "name", name)
		return &net.DNSError{Err: "refused by egress policy", Name: name, IsNotFound: true}
	}
	return nil
}

func (p *policyResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	if err := p.check(host); err != nil {
		return nil, err
	}
	ips, err := p.r.LookupIPAddr(ctx, host)
	if err == nil && p.h.cfg.Egress.NamesHost(host) {
		addrs := make([]netip.Addr, 0, len(ips))
		for _, ip := range ips {
			if a, ok := netip.AddrFromSlice(ip.IP); ok {
				addrs = append(addrs, a.Unmap())
			}
		}
		p.h.learned.Record(host, addrs...)
	}
	return ips, err
}

func (p *policyResolver) LookupCNAME(ctx context.Context, host string) (string, error) {
	if err := p.check(host); err != nil {
		return "", err
	}
	return p.r.LookupCNAME(ctx, host)
}

func (p *policyResolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	if err := p.check(name); err != nil {
		return nil, err
	}
	return p.r.LookupMX(ctx, name)
}

func (p *policyResolver) LookupNS(ctx context.Context, name string) ([]*net.NS, error) {
	if err := p.check(name); err != nil {
		return nil, err
	}
	return p.r.LookupNS(ctx, name)
}

func (p *policyResolver) LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error) {
	if err := p.check(name); err != nil {
		return "", nil, err
	}
	return p.r.LookupSRV(ctx, service, proto, name)
}

func (p *policyResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	if err := p.check(name); err != nil {
		return nil, err
	}
	return p.r.LookupTXT(ctx, name)
}

// widenListener hands the DNS server its TCP connections through
// dnswire.WidenConn: gvisor-tap-vsock's server truncates its answers over
// TCP to the EDNS payload size of the query, which glibc sets to 1200, so
// an answer that a resolver asked for again over TCP because it did not
// fit in a datagram came back truncated the same way.
type widenListener struct{ net.Listener }

func (l widenListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return dnswire.WidenConn(c), nil
}
