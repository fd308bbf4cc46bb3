package host

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/containers/gvisor-tap-vsock/pkg/services/forwarder"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/quenchnet/quench/internal/relay"
)

// published is one host port forwarded into the enclave.
type published struct {
	spec   Publish
	addr   net.Addr // the bound address (port resolved when 0 was asked)
	closer func()
	once   sync.Once

	conns, active atomic.Int64
}

func (p *published) close() { p.once.Do(p.closer) }

// Published returns the bound address of each published port, in the order
// of Config.Publish.
func (h *Host) Published() []net.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]net.Addr, len(h.published))
	for i, p := range h.published {
		out[i] = p.addr
	}
	return out
}

func (h *Host) publishLocked(spec Publish) error {
	target := tcpip.FullAddress{NIC: nicID, Addr: addr(h.cfg.EnclaveIP), Port: spec.EnclavePort}
	switch spec.Network {
	case "tcp":
		ln, err := net.Listen("tcp", spec.Host.String())
		if err != nil {
			return fmt.Errorf("host: publish %s: %w", spec, err)
		}
		p := &published{spec: spec, addr: ln.Addr(), closer: func() { _ = ln.Close() }}
		h.published = append(h.published, p)
		h.closers = append(h.closers, p.close)
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			h.servePublished(p, ln, target)
		}()
	case "udp":
		pc, err := net.ListenPacket("udp", spec.Host.String())
		if err != nil {
			return fmt.Errorf("host: publish %s: %w", spec, err)
		}
		proxy, err := forwarder.NewUDPProxy(pc, func() (net.Conn, error) {
			return gonet.DialUDP(h.stack, nil, &target, ipv4.ProtocolNumber)
		})
		if err != nil {
			_ = pc.Close()
			return fmt.Errorf("host: publish %s: %w", spec, err)
		}
		p := &published{spec: spec, addr: pc.LocalAddr(), closer: func() { _ = proxy.Close() }}
		h.published = append(h.published, p)
		h.closers = append(h.closers, p.close)
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			proxy.Run()
		}()
	}
	h.log.Info("published port", "host", spec.Host.String(), "network", spec.Network, "enclave", fmt.Sprintf("%s:%d", h.cfg.EnclaveIP, spec.EnclavePort))
	return nil
}

// servePublished accepts clients on a published TCP port and relays each to
// the enclave through the virtual network.
func (h *Host) servePublished(p *published, ln net.Listener, target tcpip.FullAddress) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) && h.ctx.Err() == nil {
				h.log.Error("published port stopped", "addr", p.addr.String(), "err", err)
			}
			return
		}
		p.conns.Add(1)
		ok := h.goTracked(func() {
			p.active.Add(1)
			defer p.active.Add(-1)
			h.relayIn(c, target)
		})
		if !ok {
			_ = c.Close()
			return
		}
	}
}

func (h *Host) relayIn(c net.Conn, target tcpip.FullAddress) {
	if !h.track(c) {
		_ = c.Close()
		return
	}
	defer h.untrack(c)
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.DialTimeout)
	in, err := gonet.DialContextTCP(ctx, h.stack, target, ipv4.ProtocolNumber)
	cancel()
	if err != nil {
		h.log.Debug("published port: enclave unreachable", "target", fmt.Sprintf("%v:%d", target.Addr, target.Port), "err", err)
		_ = c.Close()
		return
	}
	if !h.track(in) {
		_ = in.Close()
		_ = c.Close()
		return
	}
	defer h.untrack(in)
	_, _ = relay.Relay(c, in, relay.Options{})
}
