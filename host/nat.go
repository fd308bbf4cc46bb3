package host

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/containers/gvisor-tap-vsock/pkg/services/forwarder"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/quenchnet/quench/internal/relay"
)

type natStats struct {
	dials, failed, refused atomic.Uint64
	udpRefused             atomic.Uint64 // UDP packets dropped by policy
	dnsQueries, dnsRefused atomic.Uint64 // upstream DNS questions; refused by policy
}

// installNAT terminates the enclave's outbound TCP and UDP in the stack and
// re-originates it from the host: connections to HostLoopbackIP go to the
// host's 127.0.0.1, link-local addresses (EC2 metadata) are refused unless
// allowed, and everything else is dialled as addressed.
func (h *Host) installNAT() {
	c := h.cfg
	tcpFwd := tcp.NewForwarder(h.stack, 0, c.MaxInFlightDials, h.forwardTCP)
	h.stack.SetTransportProtocolHandler(tcp.ProtocolNumber, tcpFwd.HandlePacket)

	// UDP reuses gvisor-tap-vsock's forwarder (a connection-tracking proxy).
	nat := map[tcpip.Address]tcpip.Address{}
	if !c.DisableHostLoopback {
		nat[addr(c.HostLoopbackIP)] = tcpip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	var natLock sync.Mutex
	udpFwd := forwarder.UDP(h.stack, nat, &natLock, c.AllowMetadata)
	handle := udpFwd.HandlePacket
	if c.Egress != nil {
		handle = func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
			if _, ok := h.natTargetNet("udp", id.LocalAddress, id.LocalPort); !ok {
				h.natStats.udpRefused.Add(1)
				return true // consumed: dropped
			}
			return udpFwd.HandlePacket(id, pkt)
		}
	}
	h.stack.SetTransportProtocolHandler(udp.ProtocolNumber, handle)
}

// natTarget maps a destination on the virtual network to the host-side
// address to dial, or reports false if it must be refused.
func (h *Host) natTarget(dst tcpip.Address, port uint16) (string, bool) {
	return h.natTargetNet("tcp", dst, port)
}

func (h *Host) natTargetNet(network string, dst tcpip.Address, port uint16) (string, bool) {
	a, ok := netip.AddrFromSlice(dst.AsSlice())
	if !ok {
		return "", false
	}
	c := h.cfg
	orig := a // as the enclave addressed it
	switch {
	case !c.DisableHostLoopback && a == c.HostLoopbackIP:
		a = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case a == c.GatewayIP, c.Subnet.Contains(a):
		// Nothing of the host's listens on the virtual network except the
		// services the stack itself serves.
		return "", false
	case !c.AllowMetadata && defaultMetadataPrefix.Contains(a):
		return "", false
	case a.IsUnspecified(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "", false
	}
	if c.Egress != nil && !c.Egress.Allow(network, orig, port, h.learned.Names(orig)) {
		return "", false
	}
	return net.JoinHostPort(a.String(), strconv.Itoa(int(port))), true
}

// forwardTCP handles one new enclave connection to the outside. gVisor runs
// it in a goroutine of its own; at most MaxInFlightDials run before Complete.
func (h *Host) forwardTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	target, ok := h.natTarget(id.LocalAddress, id.LocalPort)
	if !ok {
		h.natStats.refused.Add(1)
		r.Complete(true)
		return
	}
	h.natStats.dials.Add(1)
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.DialTimeout)
	out, err := h.cfg.Dial(ctx, "tcp", target)
	cancel()
	if err != nil {
		h.natStats.failed.Add(1)
		h.log.Debug("outbound dial failed", "target", target, "err", err)
		r.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	r.Complete(false)
	if terr != nil {
		_ = out.Close()
		h.log.Debug("outbound: enclave side endpoint", "target", target, "err", terr)
		return
	}
	ep.SocketOptions().SetKeepAlive(true)
	in := gonet.NewTCPConn(&wq, ep)
	if !h.track(in) {
		_ = in.Close()
		_ = out.Close()
		return
	}
	defer h.untrack(in)
	if !h.track(out) {
		_ = in.Close()
		_ = out.Close()
		return
	}
	defer h.untrack(out)
	_, _ = relay.Relay(in, out, relay.Options{})
}
