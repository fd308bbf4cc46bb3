package egressfw

import (
	"encoding/binary"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
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
// panic, the flow table stays within MaxFlows, and every reply is a
// well-formed IPv4 frame back to the sender.
//
// The input is a sequence of records: a direction byte (odd: from the
// host), a 2-byte length, the frame.
func FuzzFilter(f *testing.F) {
	f.Add(append(record(false, out("192.168.127.2:40000", "10.1.2.3:443", 7, syn)),
		record(true, in("10.1.2.3:443", "192.168.127.2:40000", synack))...))
	f.Add(record(false, out("192.168.127.2:40001", "11.1.2.3:80", 7, syn, 'x')))
	f.Add(append(record(true, in("203.0.113.9:5555", "192.168.127.2:8080", syn)),
		record(false, out("192.168.127.2:8080", "203.0.113.9:5555", 1, synack))...))
	f.Add(append(record(false, query(f, 1, "api.example.com.", "x.attacker.example.")),
		record(true, answer(f, "api.example.com.", "203.0.113.10", "127.0.0.1"))...))
	f.Add(record(false, icmpFrame(8, 1)))
	f.Fuzz(func(t *testing.T, data []byte) {
		fl, c := newFilter(t, 8, "10.0.0.0/8:443", "api.example.com:443", "192.168.127.254:9000/udp")
		for len(data) >= 3 {
			fromHost := data[0]&1 == 1
			n := int(binary.BigEndian.Uint16(data[1:]))
			data = data[3:]
			n = min(n, len(data))
			frame := data[:n]
			data = data[n:]
			if fromHost {
				fl.Inbound(frame)
			} else if _, reply := fl.Outbound(frame); reply != nil {
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
