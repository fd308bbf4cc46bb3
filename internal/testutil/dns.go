package testutil

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

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
