package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/internal/ethlink"
	"github.com/quenchnet/quench/internal/relay"
	"github.com/quenchnet/quench/policy"
	"github.com/quenchnet/quench/tap"
)

const nicID tcpip.NICID = 1

// Host is the host side of quench: a virtual network (a gVisor TCP/IP stack)
// that enclaves join over stream connections, with NAT to the host's network,
// DNS, and host ports published into the enclave.
//
// Create it with New, bring it up with Start, attach enclave listeners with
// Serve, and end it with Close, which must be called once the Host is no
// longer needed.
type Host struct {
	cfg Config
	log *slog.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine Host starts

	mu        sync.Mutex
	started   bool                    // guarded by mu
	closed    bool                    // guarded by mu
	conns     map[io.Closer]struct{}  // guarded by mu; relayed and enclave conns, closed by Close
	listeners map[net.Listener]string // guarded by mu; enclave listeners given to Serve
	closers   []func()                // guarded by mu; run by Close in reverse order
	published []*published            // guarded by mu

	stack    *stack.Stack
	sw       *switchEndpoint
	natStats natStats
	relays   *relay.Loop     // published ports' relays; nil: goroutines (relay.Go)
	learned  *policy.Learned // names behind addresses, for Config.Egress hostname rules

	lastDialWarn atomic.Int64 // unix nanoseconds of the last published-port dial warning
}

// New validates cfg and returns a Host. It does no I/O and starts nothing.
func New(cfg Config) (*Host, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Host{
		cfg:       cfg,
		log:       cfg.Logger,
		ctx:       ctx,
		cancel:    cancel,
		conns:     map[io.Closer]struct{}{},
		listeners: map[net.Listener]string{},
		learned:   policy.NewLearned(0, 0),
	}, nil
}

// Config returns the configuration in effect, with defaults filled in.
func (h *Host) Config() Config { return h.cfg }

// Start brings up the virtual network, the DNS and DHCP services and the
// published ports. It returns once every published port is bound, or with
// the first error (and then releases what it had started). ctx bounds
// start-up only.
func (h *Host) Start(ctx context.Context) (err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("host: %w", net.ErrClosed)
	}
	if h.started {
		return errors.New("host: already started")
	}
	defer func() {
		if err != nil {
			for _, p := range h.published {
				p.close()
			}
			h.runClosersLocked()
		}
	}()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("host: start: %w", err)
	}
	if err := h.createStackLocked(); err != nil {
		return err
	}
	if err := h.startDNSLocked(); err != nil {
		return err
	}
	if !h.cfg.DisableDHCP {
		if err := h.startDHCPLocked(); err != nil {
			return err
		}
	}
	if h.cfg.GoroutineRelay {
		h.log.Info("relaying published ports with goroutines (GoroutineRelay)")
	} else if loop, err := relay.NewLoop(relay.LoopConfig{}); err != nil {
		h.log.Warn("relay event loop unavailable; relaying with goroutines", "err", err)
	} else {
		h.relays = loop
		h.closers = append(h.closers, func() { _ = loop.Close() })
	}
	for _, p := range h.cfg.Publish {
		if _, err := h.publishLocked(p); err != nil {
			return err
		}
	}
	h.started = true
	return nil
}

func (h *Host) createStackLocked() error {
	c := h.cfg
	arpAllowed := []tcpip.Address{addr(c.GatewayIP)}
	if !c.DisableHostLoopback {
		arpAllowed = append(arpAllowed, addr(c.HostLoopbackIP))
	}
	h.sw = newSwitch(c.MTU, c.GatewayMAC, arpAllowed, c.AckDelay, h.log)
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	h.stack = s
	h.closers = append(h.closers, func() {
		s.Close()
		s.Wait()
	})
	if err := ethlink.TuneTCP(s); err != nil {
		return fmt.Errorf("host: %w", err)
	}
	// The switch is also the NIC's queueing discipline: per-enclave queues
	// drained in batches (see switchEndpoint.WritePacket).
	if terr := s.CreateNICWithOptions(nicID, h.sw, stack.NICOptions{QDisc: h.sw}); terr != nil {
		return fmt.Errorf("host: create NIC: %v", terr)
	}
	if terr := s.AddProtocolAddress(nicID, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: addr(c.GatewayIP).WithPrefix(),
	}, stack.AddressProperties{}); terr != nil {
		return fmt.Errorf("host: add gateway address: %v", terr)
	}
	// Promiscuous + spoofing: the stack terminates connections to any
	// address (that is the NAT) and answers from any address.
	if terr := s.SetSpoofing(nicID, true); terr != nil {
		return fmt.Errorf("host: spoofing: %v", terr)
	}
	if terr := s.SetPromiscuousMode(nicID, true); terr != nil {
		return fmt.Errorf("host: promiscuous: %v", terr)
	}
	subnet, terr := tcpip.NewSubnet(addr(c.Subnet.Addr()), tcpip.MaskFromBytes(net.CIDRMask(c.Subnet.Bits(), 32)))
	if terr != nil {
		return fmt.Errorf("host: subnet: %w", terr)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: subnet, NIC: nicID}})
	h.installNAT()
	return nil
}

func addr(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }

// Serve accepts enclave streams on ln until ln fails or Close is called, and
// attaches each to the virtual network. Each stream must begin with the
// /connect handshake of gvisor-tap-vsock (see package tap). Serve may be
// called for several listeners at once. It closes ln before returning and
// returns nil after Close.
func (h *Host) Serve(ln net.Listener) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		_ = ln.Close()
		return fmt.Errorf("host: %w", net.ErrClosed)
	}
	if !h.started {
		h.mu.Unlock()
		_ = ln.Close()
		return errors.New("host: Serve called before Start")
	}
	h.listeners[ln] = ln.Addr().String()
	h.wg.Add(1)
	h.mu.Unlock()
	defer h.wg.Done()
	defer func() {
		h.mu.Lock()
		delete(h.listeners, ln)
		h.mu.Unlock()
		_ = ln.Close()
	}()
	h.log.Info("accepting enclave streams", "addr", ln.Addr().String())
	var backoff endpoint.AcceptBackoff
	for {
		c, err := ln.Accept()
		if err != nil {
			if h.ctx.Err() != nil {
				return nil
			}
			if backoff.Wait(h.ctx, err) {
				h.log.Warn("accept failed; retrying", "err", err, "after", backoff.Delay())
				continue
			}
			if h.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("host: accept: %w", err)
		}
		backoff.Reset()
		if !h.track(c) {
			_ = c.Close()
			return nil
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer h.untrack(c)
			h.serveStream(c)
		}()
	}
}

// serveStream runs one enclave stream: handshake, attach, frames until it ends.
func (h *Host) serveStream(c net.Conn) {
	remote := c.RemoteAddr().String()
	if remote == "" {
		remote = c.LocalAddr().String()
	}
	tc, err := tap.NewConn(c, tap.Config{MTU: h.cfg.MTU, MaxWrite: h.cfg.MaxWrite})
	if err != nil {
		h.log.Error("enclave stream setup failed", "remote", remote, "err", err)
		_ = c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(h.cfg.HandshakeTimeout))
	if err := tc.ServerHandshake(); err != nil {
		h.log.Warn("enclave stream rejected", "remote", remote, "err", err)
		_ = tc.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	h.log.Info("enclave connected", "remote", remote)
	p := h.sw.attach(tc, remote)
	err = h.sw.serve(p)
	st := tc.Stats()
	h.log.Info("enclave disconnected", "remote", remote, "err", err, "frames_in", st.FramesRead, "read_calls", st.ReadCalls, "frames_out", st.FramesWritten, "write_calls", st.WriteCalls)
}

// track registers c to be closed by Close; it reports false when closing.
func (h *Host) track(c io.Closer) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.conns[c] = struct{}{}
	return true
}

func (h *Host) untrack(c io.Closer) {
	h.mu.Lock()
	delete(h.conns, c)
	h.mu.Unlock()
}

// goTracked runs f in a goroutine that Close waits for; it reports false
// (and does not run f) when the Host is closing.
func (h *Host) goTracked(f func()) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		f()
	}()
	return true
}

// Close stops the Host: it closes the enclave listeners, every enclave
// stream, published ports and relayed connections, stops the stack and waits
// for every goroutine it started. A second call returns an error wrapping
// net.ErrClosed.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return fmt.Errorf("host: %w", net.ErrClosed)
	}
	h.closed = true
	h.cancel()
	for ln := range h.listeners {
		_ = ln.Close()
	}
	for c := range h.conns {
		_ = c.Close()
	}
	for _, p := range h.published {
		p.close()
	}
	if h.sw != nil {
		h.sw.closeAll()
	}
	h.mu.Unlock()
	h.wg.Wait()
	h.mu.Lock()
	h.runClosersLocked()
	h.mu.Unlock()
	return nil
}

func (h *Host) runClosersLocked() {
	for i := len(h.closers) - 1; i >= 0; i-- {
		h.closers[i]()
	}
	h.closers = nil
}

// Stats is a snapshot of the virtual network's counters.
type Stats struct {
	Enclaves                         int    // attached enclave streams
	FramesIn, FramesOut              uint64 // frames from / to enclaves
	BytesIn, BytesOut                uint64
	FramesDropped                    uint64
	DialsRefused, DialsFailed, Dials uint64 // outbound NAT connections
	UDPRefused                       uint64 // outbound UDP packets dropped by Config.Egress
	DNSQueries, DNSRefused           uint64 // questions sent upstream; refused by Config.Egress

	// ZeroWindowACKsFixed counts pure ACKs from enclaves rewritten so that
	// gVisor reads them (ethlink.ZeroWindowACKs: a gVisor TCP bug that can
	// otherwise deadlock a connection under full-duplex load).
	ZeroWindowACKsFixed uint64
}

// Stats returns the current counters.
func (h *Host) Stats() Stats {
	var st Stats
	if h.sw != nil {
		h.sw.mu.RLock()
		st.Enclaves = len(h.sw.ports)
		h.sw.mu.RUnlock()
		st.FramesIn = h.sw.stats.framesIn.Load()
		st.FramesOut = h.sw.stats.framesOut.Load()
		st.BytesIn = h.sw.stats.bytesIn.Load()
		st.BytesOut = h.sw.stats.bytesOut.Load()
		st.FramesDropped = h.sw.stats.dropped.Load()
		st.ZeroWindowACKsFixed = h.sw.zw.Fixed()
	}
	st.Dials = h.natStats.dials.Load()
	st.DialsFailed = h.natStats.failed.Load()
	st.DialsRefused = h.natStats.refused.Load()
	st.UDPRefused = h.natStats.udpRefused.Load()
	st.DNSQueries = h.natStats.dnsQueries.Load()
	st.DNSRefused = h.natStats.dnsRefused.Load()
	return st
}

// EnclaveStatus describes one attached enclave stream.
type EnclaveStatus struct {
	Remote              string // the stream's peer address
	FramesIn, FramesOut uint64 // frames from / to the enclave
	BytesIn, BytesOut   uint64
}

// Enclaves returns the status of every attached enclave stream.
func (h *Host) Enclaves() []EnclaveStatus {
	if h.sw == nil {
		return nil
	}
	h.sw.mu.RLock()
	defer h.sw.mu.RUnlock()
	out := make([]EnclaveStatus, 0, len(h.sw.ports))
	for p := range h.sw.ports {
		st := p.conn.Stats()
		out = append(out, EnclaveStatus{
			Remote:   p.remote,
			FramesIn: st.FramesRead, FramesOut: st.FramesWritten,
			BytesIn: st.BytesRead, BytesOut: st.BytesWritten,
		})
	}
	slices.SortFunc(out, func(a, b EnclaveStatus) int { return strings.Compare(a.Remote, b.Remote) })
	return out
}
