package host

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"

	"github.com/containers/gvisor-tap-vsock/pkg/services/dns"
	"github.com/containers/gvisor-tap-vsock/pkg/types"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
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
	srv, err := dns.NewWithUpstreamResolver(udpConn, tcpLn, zones, h.resolver())
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
