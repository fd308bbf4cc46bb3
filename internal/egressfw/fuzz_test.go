package egressfw

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"

	"github.com/quenchnet/quench/policy"
	"github.com/quenchnet/quench/tap/taptest"
)

// record encodes a frame for FuzzFilter's input.
func record(fromHost bool, frame []byte) []byte {
	b := []byte{0}
	if fromHost {
		b[0] = 1
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(frame)))
	return append(b, frame...)
}

// FuzzFilter feeds frames both ways (frames from the host are bytes from
// outside the enclave; the enclave's programs may send any bytes too): no
// panic, the flow table stays within MaxFlows, every reply is a
// well-formed IPv4 frame back to the sender, and every frame passed out is
// one the policy or the filter's state allowed (allowedBefore).
//
// The input is a sequence of records: a direction byte (odd: from the
// host), a 2-byte length, the frame. Bit 1 of the first direction byte
// sets Config.Gateway.
func FuzzFilter(f *testing.F) {
	f.Add(append(record(false, out("192.168.127.2:40000", "10.1.2.3:443", 7, syn)),
		record(true, in("10.1.2.3:443", "192.168.127.2:40000", synack))...))
	f.Add(record(false, out("192.168.127.2:40001", "11.1.2.3:80", 7, syn, 'x')))
	f.Add(append(record(true, in("203.0.113.9:5555", "192.168.127.2:8080", syn)),
		record(false, out("192.168.127.2:8080", "203.0.113.9:5555", 1, synack))...))
	f.Add(append(record(false, query(f, 1, "api.example.com.", "x.attacker.example.")),
		record(true, answer(f, "api.example.com.", "203.0.113.10", "127.0.0.1"))...))
	f.Add(record(false, icmpFrame(8, 1)))
	gwARP := record(true, taptest.ARPReply(gwMAC, gwIP, encMAC, encIP))
	gwARP[0] |= 2 // with Config.Gateway
	f.Add(append(append(gwARP,
		record(false, out("192.168.127.2:40000", "10.1.2.3:443", 7, syn))...),
		record(true, in("10.1.2.3:443", "192.168.127.2:40000", synack))...))
	f.Fuzz(func(t *testing.T, data []byte) {
		fl, c := newFilter(t, 8, "10.0.0.0/8:443", "api.example.com:443", "192.168.127.254:9000/udp")
		if len(data) > 0 && data[0]&2 != 0 {
			// The first record's direction byte also chooses a filter
			// with Config.Gateway and Config.MAC (its Ethernet checks).
			fl = New(Config{Policy: fl.p, Subnet: subnet, Gateway: gwIP, MAC: encMAC, DNS: []netip.Addr{gwIP}, MaxFlows: 8, Now: c.now})
		}
		for len(data) >= 3 {
			fromHost := data[0]&1 == 1
			n := int(binary.BigEndian.Uint16(data[1:]))
			data = data[3:]
			n = min(n, len(data))
			frame := data[:n]
			data = data[n:]
			var reply []byte
			if fromHost {
				fl.Inbound(frame)
			} else {
				before := allowedBefore(fl, frame)
				var pass bool
				pass, reply = fl.Outbound(frame)
				if pass && !before {
					t.Fatalf("passed out %x, which neither the policy nor a flow allows", frame)
				}
			}
			if reply != nil {
				pk, ok := parseIPv4(reply)
				if !ok || pk.l4 == nil || len(pk.ip) != len(reply)-ethLen {
					t.Fatalf("malformed reply %x to %x", reply, frame)
				}
				if checksum.Checksum(pk.ip[:20], 0) != 0xffff {
					t.Fatalf("reply with a bad IPv4 checksum: %x", reply)
				}
				if string(pk.src[:]) != string(frame[ethLen+16:ethLen+20]) || string(pk.dst[:]) != string(frame[ethLen+12:ethLen+16]) {
					t.Fatalf("reply %x is not addressed back to the sender of %x", reply, frame)
				}
			}
			if s := fl.Stats(); s.Flows > 8 {
				t.Fatalf("%d flows, MaxFlows 8", s.Flows)
			}
			c.advance(1e9)
		}
	})
}

// allowedBefore reports, before f sees the enclave's frame, whether f may
// pass it: ARP about the subnet; IPv4 from the enclave's address without
// options, and then a later fragment of a datagram whose first fragment
// passed, a DNS query about allowed names only, an echo reply to a ping,
// TCP or UDP on a live flow or to a destination the policy allows, or TCP
// of no flow that the host spoke on first.
func allowedBefore(f *Filter, frame []byte) bool {
	if len(frame) < ethLen {
		return false
	}
	if binary.BigEndian.Uint16(frame[12:]) == typeARP {
		return len(frame) >= ethLen+28 && f.subnet.Contains(netip.AddrFrom4([4]byte(frame[ethLen+24:ethLen+28])))
	}
	pk, ok := parseIPv4(frame)
	if !ok || pk.ip[0]&0x0f != 5 || pk.src != f.own {
		return false
	}
	now := f.now().UnixNano()
	f.mu.Lock()
	defer f.mu.Unlock()
	if pk.offset != 0 {
		exp, ok := f.frags[fragKey{pk.proto, pk.id, pk.dst}]
		return ok && exp > now
	}
	live := func(k flowKey) bool {
		fl, ok := f.flows[k]
		return ok && fl.expires > now
	}
	dst := netip.AddrFrom4(pk.dst)
	switch pk.proto {
	case protoTCP, protoUDP:
		if len(pk.l4) < 4 {
			return false
		}
		k := flowKey{proto: pk.proto, lport: binary.BigEndian.Uint16(pk.l4[0:]), rport: binary.BigEndian.Uint16(pk.l4[2:]), lip: pk.src, rip: pk.dst}
		if pk.proto == protoUDP && f.isDNS(pk.dst, k.rport) {
			if pk.more || len(pk.l4) < 8 {
				return false
			}
			answer, _, err := policy.RefuseQuery(udpPayload(pk.l4), f.p.AllowName)
			return err == nil && answer == nil
		}
		network := "tcp"
		if pk.proto == protoUDP {
			network = "udp"
		}
		if pk.proto == protoTCP {
			// A segment of no flow the host spoke on first (a reset or
			// data on a connection older than the filter: pickUp).
			if l, ok := f.resets[k]; ok && l.expires > now {
				return true
			}
		}
		return live(k) || f.p.Allow(network, dst, k.rport, f.learned.Names(dst))
	case protoICMP:
		return len(pk.l4) >= 8 && pk.l4[0] == icmpEchoRepl && live(flowKey{proto: protoICMP, lport: binary.BigEndian.Uint16(pk.l4[4:]), lip: pk.src, rip: pk.dst})
	}
	return false
}
