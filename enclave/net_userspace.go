package enclave

import (
	"context"
	"net"
	"net/netip"

	"github.com/quenchnet/quench/internal/netstack"
	"github.com/quenchnet/quench/tap"
)

// userspaceNetwork is NetworkUserspace: a gVisor TCP/IP stack in the
// process (package internal/netstack); only this process gets a network,
// through Enclave.Listen, ListenPacket, Dial, Resolver and HTTPClient.
type userspaceNetwork struct {
	n *netstack.Net
}

func newUserspaceNetwork(cfg Config) (network, error) {
	n, err := netstack.New(netstack.Config{
		MTU:     cfg.MTU,
		MAC:     cfg.MAC,
		Address: cfg.Address,
		Gateway: cfg.Gateway,
		DNS:     cfg.DNS,
		Logger:  cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	return &userspaceNetwork{n: n}, nil
}

func (u *userspaceNetwork) device() tap.Device { return u.n.Device() }

func (u *userspaceNetwork) listen(network, addr string) (net.Listener, error) {
	return u.n.Listen(network, addr)
}

func (u *userspaceNetwork) listenPacket(network, addr string) (net.PacketConn, error) {
	return u.n.ListenPacket(network, addr)
}

func (u *userspaceNetwork) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return u.n.Dial(ctx, network, addr)
}

func (u *userspaceNetwork) resolver() *net.Resolver { return u.n.Resolver() }

// ownAddr: the stack has Config.Address and loopback only.
func (u *userspaceNetwork) ownAddr(netip.Addr) bool { return false }

// close stops the stack; listeners and conns it handed out are closed.
func (u *userspaceNetwork) close() error { return u.n.Close() }
