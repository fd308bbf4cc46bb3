package egressfw

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/quenchnet/quench/policy"
	"github.com/quenchnet/quench/tap/taptest"
)

// TestPermitFrom: the permission names the local port, so a program racing
// to the same destination (here, DNS over TCP, which no rule allows) in
// that moment is refused, and the enclave's own socket passes, once.
func TestPermitFrom(t *testing.T) {
	f, c := newFilter(t, 0, "*")
	f.PermitFrom("tcp", 40000, ap("192.168.127.1:53"))
	mustDrop(t, f, out("192.168.127.2:40001", "192.168.127.1:53", 1, syn), "another socket's SYN to the permitted destination")
	mustPass(t, f, out("192.168.127.2:40000", "192.168.127.1:53", 1, syn), "the permitted socket's SYN")
	if !f.Inbound(in("192.168.127.1:53", "192.168.127.2:40000", synack)) {
		t.Fatal("its SYN-ACK dropped")
	}
	mustPass(t, f, out("192.168.127.2:40000", "192.168.127.1:53", 2, ack, 0, 2, 'h', 'i'), "its data")
	mustDrop(t, f, out("192.168.127.2:40002", "192.168.127.1:53", 1, syn), "a second connection: the permission is used up")

	f.PermitFrom("udp", 40003, ap("192.168.127.1:53"))
	mustDrop(t, f, out("192.168.127.2:40003", "192.168.127.1:53", 1, syn), "TCP with a UDP permission")
	f.PermitFrom("tcp", 40004, ap("192.168.127.1:53"))
	c.advance(PermitTimeout + time.Second)
	mustDrop(t, f, out("192.168.127.2:40004", "192.168.127.1:53", 1, syn), "SYN after the permission expired")
	f.PermitFrom("tcp", 0, ap("192.168.127.1:53")) // port 0 names no socket: no permission at all
	mustDrop(t, f, out("192.168.127.2:40005", "192.168.127.1:53", 1, syn), "SYN after PermitFrom with port 0")
}

// dnsMsg is the DNS message in a frame built by query or answer.
func dnsMsg(t *testing.T, frame []byte) []byte {
	t.Helper()
	pk, ok := parseIPv4(frame)
	if !ok {
		t.Fatal("not an IPv4 frame")
	}
	return udpPayload(pk.l4)
}

func TestQuery(t *testing.T) {
	f, _ := newFilter(t, 0, "api.example.com:443")
	if a, err := f.Query(dnsMsg(t, query(t, 7, "api.example.com."))); a != nil || err != nil {
		t.Errorf("allowed name: answer %x, %v; want neither", a, err)
	}
	a, err := f.Query(dnsMsg(t, query(t, 8, "api.example.com.", "secret.attacker.example.")))
	if err != nil || a == nil {
		t.Fatalf("refused name: answer %x, %v; want NXDOMAIN", a, err)
	}
	var p dnsmessage.Parser
	if h, err := p.Start(a); err != nil || !h.Response || h.ID != 8 || h.RCode != dnsmessage.RCodeNameError {
		t.Errorf("answer %+v (%v), want an NXDOMAIN response with ID 8", h, err)
	}
	f.PermitName("leader.example.")
	if a, err := f.Query(dnsMsg(t, query(t, 9, "leader.example."))); a != nil || err != nil {
		t.Errorf("permitted name: answer %x, %v; want neither", a, err)
	}
	for _, junk := range [][]byte{nil, []byte("exfiltrated bytes"), dnsMsg(t, answer(t, "api.example.com.", "203.0.113.10"))} {
		if _, err := f.Query(junk); !errors.Is(err, policy.ErrNotQuery) {
			t.Errorf("Query(%x): %v, want ErrNotQuery", junk, err)
		}
	}
	// As for datagrams to the DNS port that are not queries: the
	// program's messages the filter stopped count as dropped.
	if s := f.Stats(); s.DNS != 1 || s.Dropped != 3 {
		t.Errorf("stats %+v, want 1 DNS refusal and 3 messages dropped (not queries)", s)
	}
}

func TestAnswer(t *testing.T) {
	f, _ := newFilter(t, 0, "api.example.com:443")
	if !f.Answer(dnsMsg(t, answer(t, "api.example.com.", "203.0.113.10"))) {
		t.Fatal("answer for an allowed name refused")
	}
	mustPass(t, f, out("192.168.127.2:40000", "203.0.113.10:443", 1, syn), "SYN to the address Answer learned")
	if f.Answer(dnsMsg(t, answer(t, "api.example.com.", "127.0.0.1"))) {
		t.Error("answer leading an allowed name to loopback delivered")
	}
	for _, junk := range [][]byte{nil, []byte("0123456789abcdef"), dnsMsg(t, query(t, 1, "api.example.com."))} {
		if f.Answer(junk) {
			t.Errorf("Answer(%x) = true, want false: not a DNS answer", junk)
		}
	}
	if s := f.Stats(); s.Answers != 4 {
		t.Errorf("stats %+v, want 4 answers dropped", s)
	}
}

// TestPermitFromReusedPort: once the enclave's own connection that
// PermitFrom let through has ended, a program that binds the same local
// port (free again at once when the host closed first, or reused from
// TIME_WAIT with SO_REUSEADDR) and connects to the same DNS server must not
// ride on the old flow, which lives on for TCPOpenTimeout after both FINs:
// its SYN starts a new connection and needs a permission of its own.
func TestPermitFromReusedPort(t *testing.T) {
	f, _ := newFilter(t, 0, "*")
	local, srv := "192.168.127.2:40000", "192.168.127.1:53"
	f.PermitFrom("tcp", 40000, ap(srv))
	mustPass(t, f, out(local, srv, 1, syn), "the permitted socket's SYN")
	if !f.Inbound(in(srv, local, synack)) {
		t.Fatal("its SYN-ACK dropped")
	}
	mustPass(t, f, out(local, srv, 2, ack), "its ACK")
	f.Inbound(in(srv, local, fin))
	mustPass(t, f, out(local, srv, 2, fin), "its FIN")
	mustDrop(t, f, out(local, srv, 1000, syn), "a program's SYN from the same port after the connection ended")
	mustDrop(t, f, out(local, srv, 1001, ack, 0, 2, 'h', 'i'), "its data")
}

// TestPermitFromUnansweredSYN: the enclave's own connection gave up before
// the host answered its SYN (the tunnel was down for the dial's 5 s, say),
// and its flow lives on for TCPOpenTimeout. Its retransmitted SYNs (the
// same sequence number) pass; a SYN from the same port with another
// sequence number is a new socket's, which needs a permission of its own.
func TestPermitFromUnansweredSYN(t *testing.T) {
	f, _ := newFilter(t, 0, "*")
	local, srv := "192.168.127.2:40000", "192.168.127.1:53"
	f.PermitFrom("tcp", 40000, ap(srv))
	mustPass(t, f, out(local, srv, 1, syn), "the permitted socket's SYN")
	mustPass(t, f, out(local, srv, 1, syn), "its retransmitted SYN")
	mustDrop(t, f, out(local, srv, 900000, syn), "another socket's SYN from the same port")
}

// svcbAnswer is the DNS server's answer frame for name with one HTTPS
// record whose address hints are hints.
func svcbAnswer(t *testing.T, name string, hints ...string) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 1, Response: true})
	_ = b.StartQuestions()
	n := dnsmessage.MustNewName(name)
	_ = b.Question(dnsmessage.Question{Name: n, Type: dnsmessage.TypeHTTPS, Class: dnsmessage.ClassINET})
	_ = b.StartAnswers()
	var v4, v6 []byte
	for _, h := range hints {
		a := netip.MustParseAddr(h)
		if a.Is4() {
			v4 = append(v4, a.AsSlice()...)
		} else {
			v6 = append(v6, a.AsSlice()...)
		}
	}
	var r dnsmessage.SVCBResource
	r.Priority, r.Target = 1, dnsmessage.MustNewName(".")
	if v4 != nil {
		r.SetParam(dnsmessage.SVCParamIPv4Hint, v4)
	}
	if v6 != nil {
		r.SetParam(dnsmessage.SVCParamIPv6Hint, v6)
	}
	if err := b.HTTPSResource(dnsmessage.ResourceHeader{Name: n, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.HTTPSResource{SVCBResource: r}); err != nil {
		t.Fatal(err)
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return taptest.UDPv4Frame(encMAC, gwMAC, ap("192.168.127.1:53"), ap("192.168.127.2:33333"), msg)
}

// TestDNSAnswerAddressHints: the address hints of HTTPS and SVCB records,
// which some clients connect to before asking for A records, are checked
// and learned like A records.
func TestDNSAnswerAddressHints(t *testing.T) {
	f, _ := newFilter(t, 0, "api.example.com:443")
	if !f.Inbound(svcbAnswer(t, "api.example.com.", "203.0.113.30", "2001:db8::1")) {
		t.Fatal("HTTPS record with outside hints dropped")
	}
	mustPass(t, f, out("192.168.127.2:40000", "203.0.113.30:443", 1, syn), "SYN to an address hint")
	for _, hint := range []string{"127.0.0.1", "192.168.127.2", "::1"} {
		if f.Inbound(svcbAnswer(t, "api.example.com.", "203.0.113.31", hint)) {
			t.Errorf("HTTPS record with hint %s into the enclave delivered", hint)
		}
	}
	if !f.Answer(dnsMsg(t, svcbAnswer(t, "api.example.com.", "203.0.113.32"))) {
		t.Error("Answer refused an HTTPS record with an outside hint")
	}
	if f.Answer(dnsMsg(t, svcbAnswer(t, "api.example.com.", "127.0.0.2"))) {
		t.Error("Answer (the DNS proxy's check) delivered a hint into the enclave")
	}
}
