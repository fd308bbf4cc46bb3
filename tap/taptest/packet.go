package taptest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// EtherTypes used by the builders.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeIPv6 = 0x86dd
)

// IP protocol numbers used by the builders.
const (
	ProtocolTCP = 6
	ProtocolUDP = 17
)

// TCP flags for TCPv4Frame.
const (
	TCPFlagFIN = 1 << iota
	TCPFlagSYN
	TCPFlagRST
	TCPFlagPSH
	TCPFlagACK
)

// BroadcastMAC is the Ethernet broadcast address.
var BroadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

const (
	ethHeaderLen  = 14
	ipv4HeaderLen = 20
	udpHeaderLen  = 8
	tcpHeaderLen  = 20
	arpLen        = 28
)

// EthernetFrame returns an Ethernet II frame: dst, src, etherType, payload.
// It does not pad to the 60-byte minimum (TAP devices and gvproxy do not
// need it).
func EthernetFrame(dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	f := make([]byte, ethHeaderLen+len(payload))
	copy(f[0:6], mac6(dst))
	copy(f[6:12], mac6(src))
	binary.BigEndian.PutUint16(f[12:14], etherType)
	copy(f[ethHeaderLen:], payload)
	return f
}

// mac6 returns m, or six zero bytes if m is not 6 bytes long.
func mac6(m net.HardwareAddr) []byte {
	if len(m) != 6 {
		return make([]byte, 6)
	}
	return m
}

// ARPRequest returns a broadcast ARP request (Ethernet/IPv4) from srcMAC,
// srcIP asking who has targetIP. srcIP and targetIP must be IPv4.
func ARPRequest(srcMAC net.HardwareAddr, srcIP, targetIP netip.Addr) []byte {
	return EthernetFrame(BroadcastMAC, srcMAC, EtherTypeARP, arp(1, srcMAC, srcIP, nil, targetIP))
}

// ARPReply returns an ARP reply telling dstMAC, dstIP that srcIP is at
// srcMAC. The addresses must be IPv4.
func ARPReply(srcMAC net.HardwareAddr, srcIP netip.Addr, dstMAC net.HardwareAddr, dstIP netip.Addr) []byte {
	return EthernetFrame(dstMAC, srcMAC, EtherTypeARP, arp(2, srcMAC, srcIP, dstMAC, dstIP))
}

func arp(op uint16, srcMAC net.HardwareAddr, srcIP netip.Addr, dstMAC net.HardwareAddr, dstIP netip.Addr) []byte {
	a := make([]byte, arpLen)
	binary.BigEndian.PutUint16(a[0:2], 1) // hardware type Ethernet
	binary.BigEndian.PutUint16(a[2:4], EtherTypeIPv4)
	a[4] = 6 // hardware address length
	a[5] = 4 // protocol address length
	binary.BigEndian.PutUint16(a[6:8], op)
	copy(a[8:14], mac6(srcMAC))
	s4, d4 := srcIP.As4(), dstIP.As4()
	copy(a[14:18], s4[:])
	if dstMAC != nil {
		copy(a[18:24], mac6(dstMAC))
	}
	copy(a[24:28], d4[:])
	return a
}

// ARP is an ARP packet parsed by ParseARP.
type ARP struct {
	Op             uint16 // 1 request, 2 reply
	SrcMAC, DstMAC net.HardwareAddr
	SrcIP, DstIP   netip.Addr
}

// ParseARP parses an Ethernet frame holding an Ethernet/IPv4 ARP packet.
func ParseARP(frame []byte) (ARP, error) {
	if len(frame) < ethHeaderLen+arpLen || binary.BigEndian.Uint16(frame[12:14]) != EtherTypeARP {
		return ARP{}, errors.New("taptest: not an ARP frame")
	}
	a := frame[ethHeaderLen:]
	if binary.BigEndian.Uint16(a[0:2]) != 1 || binary.BigEndian.Uint16(a[2:4]) != EtherTypeIPv4 || a[4] != 6 || a[5] != 4 {
		return ARP{}, errors.New("taptest: not an Ethernet/IPv4 ARP packet")
	}
	return ARP{
		Op:     binary.BigEndian.Uint16(a[6:8]),
		SrcMAC: net.HardwareAddr(a[8:14]),
		SrcIP:  netip.AddrFrom4([4]byte(a[14:18])),
		DstMAC: net.HardwareAddr(a[18:24]),
		DstIP:  netip.AddrFrom4([4]byte(a[24:28])),
	}, nil
}

// UDPv4Frame returns an Ethernet frame holding an IPv4/UDP datagram from src
// to dst with payload, with correct IPv4 and UDP checksums.
func UDPv4Frame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	u := make([]byte, udpHeaderLen+len(payload))
	binary.BigEndian.PutUint16(u[0:2], src.Port())
	binary.BigEndian.PutUint16(u[2:4], dst.Port())
	binary.BigEndian.PutUint16(u[4:6], uint16(len(u)))
	copy(u[udpHeaderLen:], payload)
	sum := ^checksum(u, pseudoHeaderSum(src.Addr(), dst.Addr(), ProtocolUDP, len(u)))
	if sum == 0 {
		sum = 0xffff // RFC 768: a computed zero is sent as all ones
	}
	binary.BigEndian.PutUint16(u[6:8], sum)
	return EthernetFrame(dstMAC, srcMAC, EtherTypeIPv4, ipv4Packet(src.Addr(), dst.Addr(), ProtocolUDP, u))
}

// TCPSegment describes a TCP segment for TCPv4Frame.
type TCPSegment struct {
	Src, Dst netip.AddrPort
	Seq, Ack uint32
	Flags    uint8  // TCPFlag* bits
	Window   uint16 // 0 means 65535
	Payload  []byte
}

// TCPv4Frame returns an Ethernet frame holding an IPv4/TCP segment without
// options, with correct IPv4 and TCP checksums.
func TCPv4Frame(dstMAC, srcMAC net.HardwareAddr, s TCPSegment) []byte {
	t := make([]byte, tcpHeaderLen+len(s.Payload))
	binary.BigEndian.PutUint16(t[0:2], s.Src.Port())
	binary.BigEndian.PutUint16(t[2:4], s.Dst.Port())
	binary.BigEndian.PutUint32(t[4:8], s.Seq)
	binary.BigEndian.PutUint32(t[8:12], s.Ack)
	t[12] = (tcpHeaderLen / 4) << 4
	t[13] = s.Flags
	w := s.Window
	if w == 0 {
		w = 0xffff
	}
	binary.BigEndian.PutUint16(t[14:16], w)
	copy(t[tcpHeaderLen:], s.Payload)
	binary.BigEndian.PutUint16(t[16:18], ^checksum(t, pseudoHeaderSum(s.Src.Addr(), s.Dst.Addr(), ProtocolTCP, len(t))))
	return EthernetFrame(dstMAC, srcMAC, EtherTypeIPv4, ipv4Packet(s.Src.Addr(), s.Dst.Addr(), ProtocolTCP, t))
}

// ipv4Packet returns an IPv4 header (no options, DF set, TTL 64) with a
// correct checksum, followed by payload.
func ipv4Packet(src, dst netip.Addr, proto uint8, payload []byte) []byte {
	p := make([]byte, ipv4HeaderLen+len(payload))
	p[0] = 0x45 // version 4, header length 5 words
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	binary.BigEndian.PutUint16(p[6:8], 0x4000) // don't fragment
	p[8] = 64                                  // TTL
	p[9] = proto
	s4, d4 := src.As4(), dst.As4()
	copy(p[12:16], s4[:])
	copy(p[16:20], d4[:])
	binary.BigEndian.PutUint16(p[10:12], ^checksum(p[:ipv4HeaderLen], 0))
	copy(p[ipv4HeaderLen:], payload)
	return p
}

// pseudoHeaderSum is the unfolded one's-complement sum of the IPv4 pseudo
// header for a transport checksum.
func pseudoHeaderSum(src, dst netip.Addr, proto uint8, length int) uint32 {
	s4, d4 := src.As4(), dst.As4()
	var sum uint32
	sum += uint32(binary.BigEndian.Uint16(s4[0:2])) + uint32(binary.BigEndian.Uint16(s4[2:4]))
	sum += uint32(binary.BigEndian.Uint16(d4[0:2])) + uint32(binary.BigEndian.Uint16(d4[2:4]))
	sum += uint32(proto) + uint32(length)
	return sum
}

// checksum returns the folded one's-complement sum of b plus initial (the
// Internet checksum before the final complement).
func checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// UDPv4 is a UDP datagram parsed from an Ethernet frame by ParseUDPv4.
type UDPv4 struct {
	DstMAC, SrcMAC net.HardwareAddr
	Src, Dst       netip.AddrPort
	Payload        []byte // aliases the frame
}

// ErrNotUDPv4 is returned by ParseUDPv4 for a frame that is not an IPv4/UDP
// datagram.
var ErrNotUDPv4 = errors.New("taptest: not an IPv4/UDP frame")

// ParseUDPv4 parses an Ethernet frame holding an unfragmented IPv4/UDP
// datagram and verifies its IPv4 and UDP checksums.
func ParseUDPv4(frame []byte) (UDPv4, error) {
	if len(frame) < ethHeaderLen+ipv4HeaderLen+udpHeaderLen ||
		binary.BigEndian.Uint16(frame[12:14]) != EtherTypeIPv4 {
		return UDPv4{}, ErrNotUDPv4
	}
	ip := frame[ethHeaderLen:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if ip[0]>>4 != 4 || ihl < ipv4HeaderLen || total < ihl+udpHeaderLen || total > len(ip) || ip[9] != ProtocolUDP {
		return UDPv4{}, ErrNotUDPv4
	}
	if checksum(ip[:ihl], 0) != 0xffff {
		return UDPv4{}, fmt.Errorf("taptest: bad IPv4 header checksum")
	}
	src := netip.AddrFrom4([4]byte(ip[12:16]))
	dst := netip.AddrFrom4([4]byte(ip[16:20]))
	u := ip[ihl:total]
	ulen := int(binary.BigEndian.Uint16(u[4:6]))
	if ulen < udpHeaderLen || ulen > len(u) {
		return UDPv4{}, fmt.Errorf("taptest: bad UDP length %d", ulen)
	}
	u = u[:ulen]
	if binary.BigEndian.Uint16(u[6:8]) != 0 &&
		checksum(u, pseudoHeaderSum(src, dst, ProtocolUDP, ulen)) != 0xffff {
		return UDPv4{}, fmt.Errorf("taptest: bad UDP checksum")
	}
	return UDPv4{
		DstMAC:  net.HardwareAddr(frame[0:6]),
		SrcMAC:  net.HardwareAddr(frame[6:12]),
		Src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(u[0:2])),
		Dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(u[2:4])),
		Payload: u[udpHeaderLen:],
	}, nil
}
