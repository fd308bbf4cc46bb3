package host

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/quenchnet/quench/internal/ethlink"
	"github.com/quenchnet/quench/tap"
)

// switchEndpoint is the gateway's Ethernet NIC and a learning switch in one:
// a gVisor link endpoint whose "wire" is the set of attached enclave streams.
//
// Unlike gvisor-tap-vsock's switch (one write syscall per frame under a
// global lock, a new buffer per frame), frames bound for one enclave are
// coalesced into writes of at most MaxWrite bytes, frames from an enclave are
// decoded in batches from one large read, and nothing is allocated per frame
// on the stream side.
type switchEndpoint struct {
	ethlink.Base
	log *slog.Logger

	// arpAllowed lists the protocol addresses the gateway may announce in ARP
	// replies. The stack runs in promiscuous mode (it terminates connections
	// to any address, for NAT), so without this filter it would answer ARP
	// for every address, including other enclaves'.
	arpAllowed map[tcpip.Address]bool

	// zw works around gVisor's zero-window ACK bug (see
	// ethlink.ZeroWindowACKs): it sees every packet the stack sends and
	// fixes the pure ACKs from enclaves that gVisor would drop.
	zw ethlink.ZeroWindowACKs

	// ackDelay is how long pure TCP ACKs to an enclave may be held
	// (Config.AckDelay; see ackhold.go). Zero or less: never.
	ackDelay time.Duration

	mu    sync.RWMutex
	macs  map[tcpip.LinkAddress]*port // guarded by mu; learned source addresses
	ports map[*port]struct{}          // guarded by mu

	stats switchStats
}

type switchStats struct {
	framesIn, framesOut, bytesIn, bytesOut atomic.Uint64
	dropped                                atomic.Uint64 // runts, unknown destinations, spoofed ARP
	acksHeld, acksSuperseded               atomic.Uint64 // pure ACKs held; of those, dropped for a later segment
}

// port is one attached enclave stream.
type port struct {
	conn   *tap.Conn
	remote string
	mac    tcpip.LinkAddress // last learned source address; only the rx goroutine writes it
	dead   atomic.Bool

	// The transmit queue: the stack's packets for this enclave wait here
	// until the port's writer goroutine sends everything queued in as few
	// stream writes as possible. While one write is in the kernel, the
	// next batch builds up, so the write rate adapts to the load.
	mu      sync.Mutex
	pending []*stack.PacketBuffer // guarded by mu; each holds a reference
	spare   []*stack.PacketBuffer // guarded by mu; the writer's emptied batch, for reuse
	wake    chan struct{}         // capacity 1: the writer has work
	done    chan struct{}         // closed when the port is detached

	// Pure ACKs held back (see ackhold.go). ackTimer fires when the first
	// one is due; the writer then queues it. It is armed whenever acks
	// goes from empty to not empty.
	acks     ackHold[*stack.PacketBuffer] // guarded by mu
	ackTimer *time.Timer
}

// maxPending bounds a port's transmit queue; past it packets are dropped
// (and counted) as a full NIC queue would, and TCP backs off.
const maxPending = 4096

var (
	_ stack.LinkEndpoint       = (*switchEndpoint)(nil)
	_ stack.QueueingDiscipline = (*switchEndpoint)(nil)
)

func newSwitch(mtu int, mac net.HardwareAddr, arpAllowed []tcpip.Address, ackDelay time.Duration, log *slog.Logger) *switchEndpoint {
	e := &switchEndpoint{
		log:        log,
		ackDelay:   ackDelay,
		arpAllowed: map[tcpip.Address]bool{},
		macs:       map[tcpip.LinkAddress]*port{},
		ports:      map[*port]struct{}{},
	}
	e.Init(uint32(mtu), tcpip.LinkAddress(mac))
	for _, a := range arpAllowed {
		e.arpAllowed[a] = true
	}
	return e
}

// attach adds a stream to the switch.
func (e *switchEndpoint) attach(c *tap.Conn, remote string) *port {
	p := &port{conn: c, remote: remote, wake: make(chan struct{}, 1), done: make(chan struct{})}
	p.acks.delay = e.ackDelay
	p.ackTimer = time.NewTimer(time.Hour)
	p.ackTimer.Stop()
	e.mu.Lock()
	e.ports[p] = struct{}{}
	e.mu.Unlock()
	return p
}

// detach removes p and forgets the addresses learned on it.
func (e *switchEndpoint) detach(p *port) {
	p.dead.Store(true)
	e.mu.Lock()
	delete(e.ports, p)
	for mac, q := range e.macs {
		if q == p {
			delete(e.macs, mac)
		}
	}
	e.mu.Unlock()
	_ = p.conn.Close()
}

// closeAll closes every attached stream (their rx loops then detach them).
func (e *switchEndpoint) closeAll() {
	e.mu.RLock()
	defer e.mu.RUnlock()
	for p := range e.ports {
		_ = p.conn.Close()
	}
}

// learn records that mac lives behind p. A MAC already owned by another
// stream moves to p, and the old stream is closed: the enclave reconnected.
func (e *switchEndpoint) learn(p *port, mac tcpip.LinkAddress) {
	e.mu.Lock()
	old := e.macs[mac]
	e.macs[mac] = p
	e.mu.Unlock()
	p.mac = mac
	if old != nil && old != p {
		e.log.Info("enclave reconnected; replacing its old stream", "mac", net.HardwareAddr(mac), "old", old.remote, "new", p.remote)
		_ = old.conn.Close()
	}
}

// serve reads frames from p until the stream fails, delivering them to the
// stack or to another enclave, and runs p's writer. It returns why the
// stream ended, after the writer has stopped.
func (e *switchEndpoint) serve(p *port) error {
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		e.writer(p)
	}()
	defer func() {
		e.detach(p)
		close(p.done)
		<-writerDone
		p.ackTimer.Stop()
		p.mu.Lock()
		for _, pkt := range p.acks.drain(p.pending) {
			pkt.DecRef()
		}
		p.pending = nil
		p.mu.Unlock()
	}()
	for {
		frame, err := p.conn.Next()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		e.rx(p, frame)
	}
}

// rx handles one frame from an enclave. frame is only valid during the call.
func (e *switchEndpoint) rx(p *port, frame []byte) {
	if len(frame) < header.EthernetMinimumSize {
		e.stats.dropped.Add(1)
		return
	}
	e.stats.framesIn.Add(1)
	e.stats.bytesIn.Add(uint64(len(frame)))
	eth := header.Ethernet(frame)
	src, dst := eth.SourceAddress(), eth.DestinationAddress()
	if src == e.LinkAddress() || header.IsMulticastEthernetAddress(src) {
		e.stats.dropped.Add(1) // spoofed or invalid source
		return
	}
	if src != p.mac {
		e.learn(p, src)
	}
	switch {
	case dst == e.LinkAddress():
		e.deliver(e.zw.Fix(frame), tcpip.PacketHost)
	case dst == header.EthernetBroadcastAddress || header.IsMulticastEthernetAddress(dst):
		e.deliver(frame, tcpip.PacketBroadcast)
		e.flood(p, frame)
	default:
		e.mu.RLock()
		q := e.macs[dst]
		e.mu.RUnlock()
		if q == nil || q == p {
			e.stats.dropped.Add(1)
			return
		}
		e.sendFrame(q, frame)
	}
}

func (e *switchEndpoint) deliver(frame []byte, typ tcpip.PacketType) {
	if !e.Deliver(frame, typ) {
		e.stats.dropped.Add(1)
	}
}

// flood sends a broadcast frame from one enclave to every other one.
func (e *switchEndpoint) flood(from *port, frame []byte) {
	e.mu.RLock()
	targets := make([]*port, 0, len(e.ports))
	for p := range e.ports {
		if p != from {
			targets = append(targets, p)
		}
	}
	e.mu.RUnlock()
	for _, p := range targets {
		e.sendFrame(p, frame)
	}
}

func (e *switchEndpoint) sendFrame(p *port, frame []byte) {
	p.conn.LockWrite()
	err := p.conn.AppendFrame(frame)
	if err == nil {
		err = p.conn.Flush()
	}
	p.conn.UnlockWrite()
	e.afterWrite(p, 1, len(frame), err)
}

func (e *switchEndpoint) afterWrite(p *port, frames, bytes int, err error) {
	if err != nil {
		if !p.dead.Swap(true) {
			e.log.Debug("enclave stream write failed; closing it", "remote", p.remote, "err", err)
		}
		_ = p.conn.Close()
		return
	}
	e.stats.framesOut.Add(uint64(frames))
	e.stats.bytesOut.Add(uint64(bytes))
}

// WritePacket implements stack.QueueingDiscipline: the switch is the NIC's
// queue. A packet for one enclave joins that enclave's transmit queue;
// broadcasts are sent to every enclave at once.
func (e *switchEndpoint) WritePacket(pkt *stack.PacketBuffer) tcpip.Error {
	e.zw.Sent(pkt)
	if e.spoofedARP(pkt) {
		e.stats.dropped.Add(1)
		return nil
	}
	dst := header.Ethernet(pkt.LinkHeader().Slice()).DestinationAddress()
	if dst == header.EthernetBroadcastAddress || header.IsMulticastEthernetAddress(dst) {
		e.broadcast(pkt)
		return nil
	}
	e.mu.RLock()
	p := e.macs[dst]
	e.mu.RUnlock()
	if p == nil || p.dead.Load() {
		e.stats.dropped.Add(1)
		return nil
	}
	p.mu.Lock()
	if len(p.pending) >= maxPending {
		p.mu.Unlock()
		e.stats.dropped.Add(1)
		return &tcpip.ErrNoBufferSpace{}
	}
	if p.acks.delay > 0 {
		prev, act, held, arm := p.acks.offer(pkt, parsePacket(pkt), monoNow())
		switch act {
		case holdDrop:
			prev.DecRef()
			e.stats.acksSuperseded.Add(1)
		case holdSendFirst:
			p.pending = append(p.pending, prev) // keeps the reference taken when held
		}
		if held { // then act is holdNone: nothing was queued
			pkt.IncRef()
			if arm {
				p.ackTimer.Reset(p.acks.delay)
			}
			p.mu.Unlock()
			e.stats.acksHeld.Add(1)
			return nil
		}
	}
	pkt.IncRef()
	p.pending = append(p.pending, pkt)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
}

// ackSlack: the writer sends held ACKs up to delay/ackSlack early, so that
// ACKs due close together leave in one write.
const ackSlack = 8

// monoEpoch is the origin of monoNow; set once, never changed.
var monoEpoch = time.Now()

// monoNow is the monotonic clock for ackHold.
func monoNow() time.Duration { return time.Since(monoEpoch) }

// writer sends p's queued packets, everything queued at once, and p's held
// ACKs when they are due, until p is detached.
func (e *switchEndpoint) writer(p *port) {
	for {
		select {
		case <-p.wake:
		case <-p.ackTimer.C:
			p.mu.Lock()
			now := monoNow()
			// ACKs due within ackSlack go now too: one wakeup, not several.
			p.pending = p.acks.expire(now+p.acks.delay/ackSlack, p.pending)
			if due, ok := p.acks.next(); ok {
				p.ackTimer.Reset(max(due-now, 0))
			}
			p.mu.Unlock()
		case <-p.done:
			return
		}
		p.mu.Lock()
		batch := p.pending
		p.pending = p.spare[:0]
		p.spare = nil
		p.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		var (
			err           error
			frames, bytes int
		)
		p.conn.LockWrite()
		for i, pkt := range batch {
			if err == nil && !p.dead.Load() {
				size := pkt.Size()
				if err = p.conn.AppendFrame(pkt.AsSlices()...); err == nil {
					frames++
					bytes += size
				}
			}
			pkt.DecRef()
			batch[i] = nil
		}
		if err == nil {
			err = p.conn.Flush()
		}
		p.conn.UnlockWrite()
		e.afterWrite(p, frames, bytes, err)
		p.mu.Lock()
		p.spare = batch[:0]
		p.mu.Unlock()
	}
}

// WritePackets implements stack.LinkWriter. The stack does not call it (the
// switch is the NIC's queueing discipline), but when something does, the
// packets join the same queues as WritePacket's, so that held ACKs and
// queued packets of a connection stay in order.
func (e *switchEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		n++
		_ = e.WritePacket(pkt) // failures are counted as drops
	}
	return n, nil
}

func (e *switchEndpoint) broadcast(pkt *stack.PacketBuffer) {
	e.mu.RLock()
	targets := make([]*port, 0, len(e.ports))
	for p := range e.ports {
		targets = append(targets, p)
	}
	e.mu.RUnlock()
	if len(targets) == 0 {
		return
	}
	parts := pkt.AsSlices()
	size := pkt.Size()
	for _, p := range targets {
		p.conn.LockWrite()
		err := p.conn.AppendFrame(parts...)
		if err == nil {
			err = p.conn.Flush()
		}
		p.conn.UnlockWrite()
		e.afterWrite(p, 1, size, err)
	}
}

// spoofedARP reports whether pkt is an ARP reply for an address the gateway
// does not own (see arpAllowed).
func (e *switchEndpoint) spoofedARP(pkt *stack.PacketBuffer) bool {
	if pkt.NetworkProtocolNumber != header.ARPProtocolNumber {
		return false
	}
	h := header.ARP(pkt.NetworkHeader().Slice())
	if !h.IsValid() || h.Op() != header.ARPReply {
		return false
	}
	return !e.arpAllowed[tcpip.AddrFromSlice(h.ProtocolAddressSender())]
}

// Capabilities implements stack.NetworkLinkEndpoint. Frames come from the
// enclave's kernel or stack over a reliable stream, so received checksums are
// not verified again.
func (e *switchEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityResolutionRequired | stack.CapabilityRXChecksumOffload
}

// Close implements stack.NetworkLinkEndpoint.
func (e *switchEndpoint) Close() { e.closeAll() }
