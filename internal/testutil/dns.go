package testutil

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/dns/dnsmessage"
)

// QueryA sends one DNS A query for name to server over UDP and returns the
// addresses in the answer. The socket is created in the calling thread, so
// it works inside NS.Do.
func QueryA(server, name string) ([]netip.Addr, error) {
	c, err := net.Dial("udp", server)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	q, err := dnsmessage.NewName(name)
	if err != nil {
		return nil, err
	}
	msg := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: 0x5151, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: q, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
	}
	b, err := msg.Pack()
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(b); err != nil {
		return nil, err
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return nil, err
	}
	var resp dnsmessage.Message
	if err := resp.Unpack(buf[:n]); err != nil {
		return nil, err
	}
	if resp.RCode != dnsmessage.RCodeSuccess {
		return nil, fmt.Errorf("DNS %s: %v", name, resp.RCode)
	}
	var out []netip.Addr
	for _, a := range resp.Answers {
		if r, ok := a.Body.(*dnsmessage.AResource); ok {
			out = append(out, netip.AddrFrom4(r.A))
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no A records")
	}
	return out, nil
}

// ServeDNS runs a tiny authoritative DNS server on pc that answers A
// queries from records (name with trailing dot, any case → address) and
// NXDOMAIN otherwise, until pc is closed.
func ServeDNS(pc net.PacketConn, records map[string]netip.Addr) {
	ServeDNSUnknown(pc, records, dnsmessage.RCodeNameError)
}

// ServeDNSUnknown is ServeDNS answering names outside records with rcode
// (RCodeSuccess: an empty answer, as a recursive resolver gives for a
// name without that record type).
func ServeDNSUnknown(pc net.PacketConn, records map[string]netip.Addr, rcode dnsmessage.RCode) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		var req dnsmessage.Message
		if err := req.Unpack(buf[:n]); err != nil || len(req.Questions) != 1 {
			continue
		}
		q := req.Questions[0]
		resp := dnsmessage.Message{
			Header:    dnsmessage.Header{ID: req.ID, Response: true, Authoritative: true, RecursionDesired: req.RecursionDesired, RCode: rcode},
			Questions: req.Questions,
		}
		if a, ok := records[strings.ToLower(q.Name.String())]; ok {
			resp.RCode = dnsmessage.RCodeSuccess
			if q.Type == dnsmessage.TypeA {
				resp.Answers = []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
					Body:   &dnsmessage.AResource{A: a.As4()},
				}}
			}
		}
		out, err := resp.Pack()
		if err != nil {
			continue
		}
		_, _ = pc.WriteTo(out, from)
	}
}

// ListenDNS serves handler over UDP and TCP on one port of 127.0.0.1 until
// the test ends, and returns the address; it skips the test if the TCP
// port of the UDP one is taken.
func ListenDNS(tb testing.TB, handler dns.Handler) netip.AddrPort {
	tb.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	ln, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		_ = pc.Close()
		tb.Skipf("TCP port %d of the UDP one is taken: %v", port, err)
	}
	us, ts := &dns.Server{PacketConn: pc, Handler: handler}, &dns.Server{Listener: ln, Handler: handler}
	go func() { _ = us.ActivateAndServe() }()
	go func() { _ = ts.ActivateAndServe() }()
	tb.Cleanup(func() { _ = us.Shutdown(); _ = ts.Shutdown() })
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
}

// CostlyDNSQuery is a query of about 64 KB with an EDNS record and n records
// in section sec (0: questions, 3: additionals) besides, each a 2-byte
// pointer to a name of 253 bytes: unpacked whole, every one is a name of
// 256 bytes and more.
func CostlyDNSQuery(sec int) []byte {
	msg := make([]byte, 12, 65535)
	msg = append(msg, 1, 'x') // the long name, at offset 12
	for range 126 {
		msg = append(msg, 1, 'a')
	}
	msg = append(msg, 0, 0, 1, 0, 1)
	n := 1
	rec := []byte{0xC0, 12, 0, 1, 0, 1} // a question for the long name
	if sec == 3 {
		rec = []byte{0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1} // an A record
	}
	for len(msg)+len(rec)+11 <= 65535 {
		msg = append(msg, rec...)
		n++
	}
	qd, ar := 1, 1
	if sec == 3 {
		ar += n - 1
	} else {
		qd = n
	}
	binary.BigEndian.PutUint16(msg[4:], uint16(qd))
	binary.BigEndian.PutUint16(msg[10:], uint16(ar))
	return append(msg, 0, 0, 41, 4, 176, 0, 0, 0, 0, 0, 0) // OPT, 1200 bytes
}
