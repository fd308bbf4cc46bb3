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

	"github.com/mdlayher/vsock"
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

	mu           sync.Mutex
	started      bool                    // guarded by mu
	closed       bool                    // guarded by mu
	conns        map[io.Closer]struct{}  // guarded by mu; relayed and enclave conns, closed by Close
	listeners    map[net.Listener]string // guarded by mu; enclave listeners given to Serve
	closers      []func()                // guarded by mu; run by Close in reverse order
	published    []*published            // guarded by mu
	vsockProxies []*vsockProxy           // guarded by mu; in ServeVSockProxy's order

	stack    *stack.Stack
	sw       *switchEndpoint
	natStats natStats
	logStats enclaveLogStats
	relays   *relay.Loop     // published ports' relays; nil: goroutines (relay.Go)
	learned  *policy.Learned // names behind addresses, for Config.Egress hostname rules

	lastDialWarn atomic.Int64 // unix nanoseconds of the last published-port dial warning

	// Enclave streams attached or in their handshake, those in their
	// handshake, and connections refused for Config.MaxEnclaveStreams or
	// MaxEnclaveHandshakes.
	streams, handshakes atomic.Int64
	streamsRefused      atomic.Uint64
	lastStreamWarn      atomic.Int64 // unix nanoseconds
	peerMu              sync.Mutex
	peerStreams         map[string]int // guarded by peerMu; streams per peerID
}

// New validates cfg and returns a Host. It does no I/O and starts nothing.
func New(cfg Config) (*Host, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Host{
		cfg:       cfg,
		log:       cfg.Logger,
		ctx:       ctx,
		cancel:    cancel,
		conns:     map[io.Closer]struct{}{},
		listeners: map[net.Listener]string{},
		learned:   policy.NewLearned(0, 0),

		peerStreams: map[string]int{},
	}
	h.logStats.streams.init(cfg.MaxEnclaveLogStreams, maxLogStreamsPerPeer)
	return h, nil
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

// forgetNeighbors removes from the host's neighbour table the entries for
// addresses and MACs of an enclave stream that ended. The switch forgets
// which stream a MAC lives behind when its stream ends, and drops frames
// for MACs it does not know (never floods them to other enclaves); an entry
// left in the table would keep the stack sending to that MAC, and so
// dropping every packet for the address, until the entry failed (tens of
// seconds) or the enclave happened to send a frame. An enclave restarted
// with the same MAC and address that only answers (a server in userspace
// mode sends nothing first) was unreachable that long. Without the entry,
// the next packet is preceded by a broadcast ARP request, which reaches
// the new stream, whose answer teaches the switch and the stack at once.
func (h *Host) forgetNeighbors(macs []tcpip.LinkAddress, ips []tcpip.Address) {
	entries, terr := h.stack.Neighbors(nicID, ipv4.ProtocolNumber)
	if terr != nil {
		return
	}
	gone := make(map[tcpip.Address]bool, len(ips))
	for _, ip := range ips {
		gone[ip] = true
	}
	for _, mac := range macs {
		for _, n := range entries {
			if n.LinkAddr == mac {
				gone[n.Addr] = true
			}
		}
	}
	for _, n := range entries {
		if gone[n.Addr] {
			_ = h.stack.RemoveNeighbor(nicID, ipv4.ProtocolNumber, n.Addr)
		}
	}
}

func (h *Host) createStackLocked() error {
	c := h.cfg
	arpAllowed := []tcpip.Address{addr(c.GatewayIP)}
	if !c.DisableHostLoopback {
		arpAllowed = append(arpAllowed, addr(c.HostLoopbackIP))
	}
	h.sw = newSwitch(c.MTU, c.GatewayMAC, arpAllowed, c.AckDelay, h.log)
	h.sw.isolate(c)
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
	h.sw.forget = h.forgetNeighbors
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
	return h.acceptOn(ln, "Serve", "", func() error {
		h.log.Info("accepting enclave streams", "addr", ln.Addr().String())
		return nil
	}, nil, func(c net.Conn) bool {
		peer := peerID(c)
		release := h.admitStream(peer)
		if release == nil {
			_ = c.Close()
			return true
		}
		if !h.track(c) {
			release()
			h.handshakes.Add(-1)
			_ = c.Close()
			return false
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer release()
			defer h.untrack(c)
			h.serveStream(c, peer)
		}()
		return true
	})
}

// acceptOn is the accept loop of Serve and ServeVSockProxy (method names
// the caller in errors, label prefixes its log and error messages): it
// refuses ln before Start and after Close, registers it for Close (register
// runs under h.mu first and may refuse ln with an error; unregister, if not
// nil, runs under h.mu when the loop ends), retries failed accepts with
// backoff, and gives each connection to handle, which reports false when
// the Host is closing. It closes ln before returning and returns nil after
// Close.
func (h *Host) acceptOn(ln net.Listener, method, label string, register func() error, unregister func(), handle func(net.Conn) bool) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		_ = ln.Close()
		return fmt.Errorf("host: %w", net.ErrClosed)
	}
	if !h.started {
		h.mu.Unlock()
		_ = ln.Close()
		return fmt.Errorf("host: %s called before Start", method)
	}
	if err := register(); err != nil {
		h.mu.Unlock()
		_ = ln.Close()
		return err
	}
	h.listeners[ln] = ln.Addr().String()
	h.wg.Add(1)
	h.mu.Unlock()
	defer h.wg.Done()
	defer func() {
		h.mu.Lock()
		delete(h.listeners, ln)
		if unregister != nil {
			unregister()
		}
		h.mu.Unlock()
		_ = ln.Close()
	}()
	var backoff endpoint.AcceptBackoff
	for {
		c, err := ln.Accept()
		if err != nil {
			if h.ctx.Err() != nil {
				return nil
			}
			if backoff.Wait(h.ctx, err) {
				h.log.Warn(label+"accept failed; retrying", append([]any{"addr", ln.Addr().String(), "err", err, "after", backoff.Delay()}, fdHint(err)...)...)
				continue
			}
			if h.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("host: %saccept: %w", label, err)
		}
		backoff.Reset()
		if !handle(c) {
			return nil
		}
	}
}

// admitStream counts a new enclave connection from peer against
// Config.MaxEnclaveStreams, MaxEnclaveStreamsPerPeer and
// MaxEnclaveHandshakes. It returns the function that gives the stream slot
// back when the stream ends (serveStream gives the handshake slot back), or
// nil: refused. Refusals are counted and logged at most once a minute.
func (h *Host) admitStream(peer string) (release func()) {
	maxStreams, maxHS := int64(h.cfg.MaxEnclaveStreams), int64(h.cfg.MaxEnclaveHandshakes)
	maxPeer := h.cfg.MaxEnclaveStreamsPerPeer
	h.peerMu.Lock()
	ok := maxPeer < 0 || h.peerStreams[peer] < maxPeer
	if ok {
		h.peerStreams[peer]++
	}
	h.peerMu.Unlock()
	n := h.streams.Add(1)
	hs := h.handshakes.Add(1)
	release = func() {
		h.streams.Add(-1)
		h.peerMu.Lock()
		if h.peerStreams[peer]--; h.peerStreams[peer] <= 0 {
			delete(h.peerStreams, peer)
		}
		h.peerMu.Unlock()
	}
	if ok && (maxStreams < 0 || n <= maxStreams) && (maxHS < 0 || hs <= maxHS) {
		return release
	}
	if ok {
		release()
	} else {
		h.streams.Add(-1)
	}
	h.handshakes.Add(-1)
	h.streamsRefused.Add(1)
	now := time.Now().UnixNano()
	if last := h.lastStreamWarn.Load(); now-last > int64(time.Minute) && h.lastStreamWarn.CompareAndSwap(last, now) {
		h.log.Warn("too many enclave streams; refusing new ones", "peer", peer, "streams", n-1, "handshakes", hs-1,
			"max_streams", maxStreams, "max_per_peer", maxPeer, "max_handshakes", maxHS)
	}
	return nil
}

// serveStream runs one enclave stream: handshake, attach, frames until it
// ends. admitStream counted it, handshake included.
func (h *Host) serveStream(c net.Conn, peer string) {
	handshaking := true
	defer func() {
		if handshaking {
			h.handshakes.Add(-1)
		}
	}()
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
	handshaking = false
	h.handshakes.Add(-1)
	h.log.Info("enclave connected", "remote", remote, "peer", peer)
	p := h.sw.attachPeer(tc, remote, peer)
	err = h.sw.serve(p)
	st := tc.Stats()
	if errors.Is(err, tap.ErrFrameTooLarge) {
		// The enclave's MTU is larger than ours: TCP still works (the
		// stack's MSS), but a large UDP datagram or ping ends the stream.
		h.log.Error("enclave sent a frame larger than this host's MTU allows; quench-enclave's -mtu must equal quench-host's -mtu",
			"remote", remote, "host_mtu", h.cfg.MTU, "err", err)
	}
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

	// Frames dropped (included in FramesDropped) because an enclave's
	// queue was full (it does not read its stream fast enough), because
	// they came from another enclave's or the host's MAC or IP address
	// (spoofing), or past the per-enclave MAC and address limits.
	FramesDroppedQueueFull, FramesDroppedSpoofed, FramesDroppedOverLimit uint64

	// FramesDroppedNotIPv4 counts frames from enclaves that were neither
	// IPv4 nor ARP (included in FramesDropped): the virtual network is
	// IPv4 only; an enclave kernel with IPv6 on sends a few at start.
	FramesDroppedNotIPv4 uint64

	// ICMPEchoRefused counts ICMP echo requests (ping) from enclaves to
	// addresses other than the gateway and the host loopback address,
	// answered "communication administratively prohibited": ICMP is not
	// forwarded.
	ICMPEchoRefused uint64

	// EnclaveStreamsRefused counts enclave connections closed at once for
	// Config.MaxEnclaveStreams or MaxEnclaveHandshakes.
	EnclaveStreamsRefused uint64

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
		st.FramesDroppedQueueFull = h.sw.stats.queueFull.Load()
		st.FramesDroppedSpoofed = h.sw.stats.spoofed.Load()
		st.FramesDroppedOverLimit = h.sw.stats.overLimit.Load()
		st.FramesDroppedNotIPv4 = h.sw.stats.notIPv4.Load()
		st.ICMPEchoRefused = h.sw.stats.echoRefused.Load()
		st.ZeroWindowACKsFixed = h.sw.zw.Fixed()
	}
	st.EnclaveStreamsRefused = h.streamsRefused.Load()
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

// peerID names who is at the other end of an enclave stream, for
// switchEndpoint.mayReplace: only a stream from the same peer may replace
// another (an enclave reconnecting). For VSOCK it is the peer's context ID
// (the enclave); for unix sockets (VSOCK stand-ins, tests) the peer
// process's user id (SO_PEERCRED): processes of one user can already
// interfere with each other. For TCP it is the peer's IP address.
// Otherwise it is the network name, so that all such streams are one peer.
func peerID(c net.Conn) string {
	switch a := c.RemoteAddr().(type) {
	case *vsock.Addr:
		return fmt.Sprintf("vsock:%d", a.ContextID)
	case *net.TCPAddr:
		return "tcp:" + a.IP.String()
	}
	if uc, ok := c.(*net.UnixConn); ok {
		if uid, ok := peerUID(uc); ok {
			return fmt.Sprintf("unix:uid=%d", uid)
		}
	}
	return c.RemoteAddr().Network()
}
