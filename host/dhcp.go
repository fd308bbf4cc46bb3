package host

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containers/gvisor-tap-vsock/pkg/services/dhcp"
	gvtap "github.com/containers/gvisor-tap-vsock/pkg/tap"
	"github.com/containers/gvisor-tap-vsock/pkg/types"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// gvisor-tap-vsock's DHCP service binds its socket to NIC 1, hard-coded
// (dhcp.New). This fails to compile unless the Host's one NIC is NIC 1.
var _ = [1]struct{}{}[nicID-1]

// DHCP pool keys of the addresses no client may lease. They are not MAC
// addresses (a DHCP client's key is its hardware address, as
// net.HardwareAddr.String prints it), so no client ever matches them, not
// even one that claims the gateway's MAC.
const (
	dhcpKeyGateway      = "gateway"
	dhcpKeyHostLoopback = "host-loopback"
	dhcpKeyBroadcast    = "broadcast"
)

// maxDHCPInFlight bounds the DHCP messages handled at once; further ones
// are dropped (clients retransmit). server4 starts a goroutine per message.
const maxDHCPInFlight = 16

// defaultDHCPOfferTimeout: how long an offered address waits for the
// client's REQUEST (Config.DHCPOfferTimeout). Clients request within
// seconds; a minute covers their retransmissions.
const defaultDHCPOfferTimeout = 60 * time.Second

// dhcpLeaseExpiry is how long a confirmed lease lasts after the client's
// last REQUEST before its address returns to the pool: the lease time the
// DHCP service gives (one hour, fixed by gvisor-tap-vsock's dhcp.New) and a
// grace period. Clients renew halfway through (RFC 2131 T1), so a client
// that is still there never loses its lease; one that is gone, or that
// only took addresses, does. A variable for tests (SetDHCPLeaseExpiry).
var dhcpLeaseExpiry = func() *atomic.Int64 {
	var d atomic.Int64 // a time.Duration; atomic because tests change it while handlers of closed hosts may still run
	d.Store(int64(time.Hour + 5*time.Minute))
	return &d
}()

// dhcpPool returns the address pool of the DHCP service: the gateway, the
// host-loopback and the broadcast addresses are never leased, and the
// enclave's default MAC (DefaultEnclaveMAC, the one quench-enclave and
// stock gvforwarder use) always gets EnclaveIP, as with gvproxy. Other
// clients get the lowest free address, kept for as long as the Host runs
// once a REQUEST confirmed it (an offer alone expires: dhcpHandler).
func dhcpPool(c Config) *gvtap.IPPool {
	subnet := &net.IPNet{IP: c.Subnet.Addr().AsSlice(), Mask: net.CIDRMask(c.Subnet.Bits(), 32)}
	pool := gvtap.NewIPPool(subnet)
	pool.Reserve(c.GatewayIP.AsSlice(), dhcpKeyGateway)
	pool.Reserve(c.HostLoopbackIP.AsSlice(), dhcpKeyHostLoopback)
	bcast := c.Subnet.Addr().As4()
	for i := range bcast {
		bcast[i] |= ^subnet.Mask[i]
	}
	pool.Reserve(bcast[:], dhcpKeyBroadcast)
	pool.Reserve(c.EnclaveIP.AsSlice(), DefaultEnclaveMAC.String())
	return pool
}

// startDHCPLocked serves DHCP on port 67 of the virtual network with
// gvisor-tap-vsock's DHCP service (the one gvproxy runs), so that a stock
// gvforwarder, which runs udhcpc or dhclient on its TAP device, configures
// itself. Replies carry the subnet mask, the gateway as router and DNS
// server, the MTU and a one-hour lease (all fixed by that service).
//
// The service's socket is bound to port 67 of any address, so the enclave's
// UDP to port 67 of any address reaches it and is not NATed.
func (h *Host) startDHCPLocked() error {
	c := h.cfg
	conf := &types.Configuration{
		MTU:               c.MTU,
		Subnet:            c.Subnet.String(),
		GatewayIP:         c.GatewayIP.String(),
		GatewayMacAddress: c.GatewayMAC.String(),
	}
	pool := dhcpPool(c)
	srv, err := dhcp.New(conf, h.stack, pool)
	if err != nil {
		return fmt.Errorf("host: DHCP: %w", err)
	}
	d := &dhcpHandler{
		inner:        srv.Underlying.Handler,
		pool:         pool,
		log:          h.log,
		sem:          make(chan struct{}, maxDHCPInFlight),
		offerTimeout: c.DHCPOfferTimeout,
		offers:       map[string]time.Time{},
		confirmed:    map[string]time.Time{DefaultEnclaveMAC.String(): {}}, // reserved in dhcpPool: never expires
		bind:         h.sw.bindLease,
	}
	h.sw.leaseOf = func(a tcpip.Address) (string, bool) {
		key, ok := pool.Leases()[a.String()]
		return key, ok
	}
	srv.Underlying.Handler = d.handle
	// Closed by a closer (Close, or a Start that failed later, such as a
	// published port that could not bind): Serve's error (EOF) then says
	// nothing about the service.
	var closed atomic.Bool
	h.closers = append(h.closers, func() { closed.Store(true); _ = srv.Underlying.Close() })
	// As with DNS: closing on ctx.Done ends Serve before Close waits.
	stop := context.AfterFunc(h.ctx, func() { _ = srv.Underlying.Close() })
	h.closers = append(h.closers, func() { stop() })
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		err := srv.Serve()
		d.close()
		if h.ctx.Err() == nil && !closed.Load() {
			h.log.Error("DHCP service stopped", "err", err)
		}
	}()
	return nil
}

// dhcpHandler wraps the DHCP service's handler, which server4.Server runs
// in a goroutine of its own for each message. It lets Close wait for those
// handlers, bounds how many run at once, and drops messages the service
// would only report through logrus (which quench does not configure):
// message types other than DISCOVER and REQUEST, non-Ethernet clients and,
// once the pool is exhausted, new clients. What the service can still log
// through logrus's standard logger is a failed reply write (a reply racing
// Close) or a failed transaction-ID read from crypto/rand.
type dhcpHandler struct {
	inner func(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4)
	pool  *gvtap.IPPool
	log   *slog.Logger
	sem   chan struct{} // one token per running handler

	mu       sync.Mutex
	closed   bool           // guarded by mu
	running  sync.WaitGroup // handlers started before closed; Add under mu
	lastWarn time.Time      // guarded by mu

	// Addresses offered (DISCOVER) but not yet requested return to the
	// pool after offerTimeout, so that DISCOVERs alone cannot exhaust it;
	// leases a REQUEST confirmed, dhcpLeaseExpiry after the last REQUEST.
	offerTimeout time.Duration
	offers       map[string]time.Time // guarded by mu; client key: when its offer expires
	confirmed    map[string]time.Time // guarded by mu; client key: when its lease expires (zero: never)

	// bind ties a leased address to the enclave stream of the client's
	// MAC (switchEndpoint.bindLease).
	bind func(mac net.HardwareAddr, ip net.IP)
}

func (d *dhcpHandler) handle(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	select {
	case d.sem <- struct{}{}:
	default:
		d.mu.Unlock()
		d.log.Debug("DHCP: too many messages at once; dropped one")
		return
	}
	d.running.Add(1)
	d.mu.Unlock()
	defer func() {
		<-d.sem
		d.running.Done()
	}()

	mt := m.MessageType()
	switch {
	case m.OpCode != dhcpv4.OpcodeBootRequest,
		mt != dhcpv4.MessageTypeDiscover && mt != dhcpv4.MessageTypeRequest:
		d.log.Debug("DHCP: ignored message", "op", m.OpCode, "type", mt, "client", m.ClientHWAddr.String())
		return
	case m.HWType != iana.HWTypeEthernet || len(m.ClientHWAddr) != 6:
		d.log.Debug("DHCP: ignored non-Ethernet client", "htype", m.HWType, "client", m.ClientHWAddr.String())
		return
	}
	key := m.ClientHWAddr.String()
	d.expire()
	ip, err := d.pool.GetOrAssign(key)
	if err == nil {
		d.mu.Lock()
		exp, confirmed := d.confirmed[key]
		switch {
		case mt == dhcpv4.MessageTypeRequest:
			delete(d.offers, key)
			if !confirmed || !exp.IsZero() {
				d.confirmed[key] = time.Now().Add(time.Duration(dhcpLeaseExpiry.Load()))
			}
			confirmed = true
		case confirmed:
		case d.offers[key].IsZero():
			d.offers[key] = time.Now().Add(d.offerTimeout)
		}
		d.mu.Unlock()
		if confirmed && d.bind != nil {
			d.bind(m.ClientHWAddr, ip)
		}
	}
	if err != nil {
		d.mu.Lock()
		warn := time.Since(d.lastWarn) > time.Minute
		if warn {
			d.lastWarn = time.Now()
		}
		d.mu.Unlock()
		if warn {
			d.log.Warn("DHCP: address pool exhausted; client gets no lease", "client", m.ClientHWAddr.String(), "err", err)
		}
		return
	}
	d.log.Debug("DHCP: answering", "type", mt, "client", m.ClientHWAddr.String(), "ip", ip)
	d.inner(conn, peer, m)
}

// expire returns the addresses of expired offers and leases to the pool.
func (d *dhcpHandler) expire() {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for key, exp := range d.offers {
		if now.After(exp) {
			delete(d.offers, key)
			d.pool.Release(key)
		}
	}
	for key, exp := range d.confirmed {
		if !exp.IsZero() && now.After(exp) {
			delete(d.confirmed, key)
			d.pool.Release(key)
		}
	}
}

// close makes later messages be dropped and waits for running handlers.
func (d *dhcpHandler) close() {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.running.Wait()
}
