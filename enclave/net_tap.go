package enclave

import (
	"context"
	"net"
	"net/netip"

	"github.com/quenchnet/quench/tap"
)

// tapNetwork is NetworkTAP: a kernel TAP device; the app uses kernel sockets.
type tapNetwork struct {
	dev tap.Device
	res *net.Resolver
}

func newTAPNetwork(cfg Config) (*tapNetwork, error) {
	resolv := cfg.ResolvConf
	if resolv == "-" {
		resolv = ""
	}
	servers := cfg.DNS
	if a, ok := cfg.dnsProxyAddr(); ok {
		// Programs, and the enclave's own lookups, ask the DNS proxy
		// (Enclave.Start starts it), which asks cfg.DNS.
		servers = []netip.Addr{a}
	}
	dev, err := tap.CreateTAP(tap.TAPConfig{
		Name:       cfg.TAPName,
		MTU:        cfg.MTU,
		MAC:        cfg.MAC,
		Address:    cfg.Address,
		Gateway:    cfg.Gateway,
		DNS:        servers,
		ResolvConf: resolv,
	})
	if err != nil {
		return nil, err
	}
	dns := net.JoinHostPort(servers[0].String(), "53")
	res := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, dns)
		},
	}
	return &tapNetwork{dev: dev, res: res}, nil
}

func (t *tapNetwork) device() tap.Device { return t.dev }

func (t *tapNetwork) listen(network, addr string) (net.Listener, error) {
	return net.Listen(network, addr)
}

func (t *tapNetwork) listenPacket(network, addr string) (net.PacketConn, error) {
	return net.ListenPacket(network, addr)
}

func (t *tapNetwork) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Resolver: t.res}
	return d.DialContext(ctx, network, addr)
}

func (t *tapNetwork) resolver() *net.Resolver { return t.res }

// ownAddr reports whether ip is assigned to any of the kernel's interfaces
// (a connection to it stays in the enclave). Addresses are read at each
// call, as they may change; an error counts as "own", to refuse rather
// than risk it.
func (t *tapNetwork) ownAddr(ip netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true
	}
	for _, a := range addrs {
		var aip net.IP
		switch a := a.(type) {
		case *net.IPNet:
			aip = a.IP
		case *net.IPAddr:
			aip = a.IP
		}
		if x, ok := netip.AddrFromSlice(aip); ok && x.Unmap() == ip {
			return true
		}
	}
	return false
}

// close: the device itself is closed by the Pump (tap.Pump.Close closes it).
func (t *tapNetwork) close() error { return nil }
