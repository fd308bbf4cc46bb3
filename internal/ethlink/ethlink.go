// Package ethlink holds what quench's gVisor Ethernet link endpoints share:
// the host's switch (package host) and the enclave's userspace stack
// (package internal/netstack). Embed Base and add WritePackets,
// Capabilities and Close to get a stack.LinkEndpoint.
package ethlink

import (
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Base implements the parts of stack.NetworkLinkEndpoint that do not depend
// on where frames go: MTU, link address, Ethernet headers and the attached
// dispatcher. Its zero value has MTU 0; call Init.
type Base struct {
	mtu        atomic.Uint32
	mac        tcpip.LinkAddress
	dispatcher atomic.Pointer[box] // nil until attached
}

type box struct{ d stack.NetworkDispatcher }

// Init sets the MTU and the (fixed) link address. Call it before the
// endpoint is given to a stack.
func (b *Base) Init(mtu uint32, mac tcpip.LinkAddress) {
	b.mtu.Store(mtu)
	b.mac = mac
}

// Deliver hands frame, a whole Ethernet frame, to the attached stack as a
// packet of type typ. frame is copied and not retained. It reports false
// (and delivers nothing) when no stack is attached or the frame is shorter
// than an Ethernet header.
func (b *Base) Deliver(frame []byte, typ tcpip.PacketType) bool {
	d := b.dispatcher.Load()
	if d == nil || len(frame) < header.EthernetMinimumSize {
		return false
	}
	proto := header.Ethernet(frame).Type()
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
	defer pkt.DecRef()
	if _, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize); !ok {
		return false
	}
	pkt.PktType = typ
	d.d.DeliverNetworkPacket(proto, pkt)
	return true
}

// MTU implements stack.NetworkLinkEndpoint.
func (b *Base) MTU() uint32 { return b.mtu.Load() }

// SetMTU implements stack.NetworkLinkEndpoint.
func (b *Base) SetMTU(mtu uint32) { b.mtu.Store(mtu) }

// MaxHeaderLength implements stack.NetworkLinkEndpoint.
func (b *Base) MaxHeaderLength() uint16 { return header.EthernetMinimumSize }

// LinkAddress implements stack.NetworkLinkEndpoint.
func (b *Base) LinkAddress() tcpip.LinkAddress { return b.mac }

// SetLinkAddress implements stack.NetworkLinkEndpoint. The address is fixed
// by Init (the other end of the tunnel knows it), so this does nothing.
func (b *Base) SetLinkAddress(tcpip.LinkAddress) {}

// Attach implements stack.NetworkLinkEndpoint.
func (b *Base) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		b.dispatcher.Store(nil)
		return
	}
	b.dispatcher.Store(&box{d: d})
}

// IsAttached implements stack.NetworkLinkEndpoint.
func (b *Base) IsAttached() bool { return b.dispatcher.Load() != nil }

// Wait implements stack.NetworkLinkEndpoint. Goroutines that feed an
// endpoint belong to its owner, which waits for them.
func (b *Base) Wait() {}

// ARPHardwareType implements stack.NetworkLinkEndpoint.
func (b *Base) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

// AddHeader implements stack.NetworkLinkEndpoint.
func (b *Base) AddHeader(pkt *stack.PacketBuffer) {
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	src := pkt.EgressRoute.LocalLinkAddress
	if src == "" {
		src = b.mac
	}
	eth.Encode(&header.EthernetFields{
		SrcAddr: src,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader implements stack.NetworkLinkEndpoint.
func (b *Base) ParseHeader(pkt *stack.PacketBuffer) bool {
	_, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	return ok
}

// SetOnCloseAction implements stack.NetworkLinkEndpoint.
func (b *Base) SetOnCloseAction(func()) {}
