package enclave

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/quenchnet/quench/internal/dnswire"
	"github.com/quenchnet/quench/internal/egressfw"
	"github.com/quenchnet/quench/internal/testutil"
	"github.com/quenchnet/quench/policy"
	"github.com/quenchnet/quench/tap/taptest"
)

// fakeHostDNS is the host's DNS server for the proxy's tests, on UDP and
// TCP of one loopback port: allowed.example has one address, big.example
// 120 (an answer of about 2 KB: truncated over UDP), leak.example the
// enclave's loopback. It records the questions that reach it and the
// remote addresses of its TCP clients.
type fakeHostDNS struct {
	addr netip.AddrPort

	mu      sync.Mutex
	asked   []string // "udp name" / "tcp name"
	tcpFrom []netip.AddrPort
}

func startFakeHostDNS(t *testing.T) *fakeHostDNS {
	t.Helper()
	f := &fakeHostDNS{}
	f.addr = testutil.ListenDNS(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		netw := "udp"
		if a, ok := w.RemoteAddr().(*net.TCPAddr); ok {
			netw = "tcp"
			f.mu.Lock()
			f.tcpFrom = append(f.tcpFrom, a.AddrPort())
			f.mu.Unlock()
		}
		f.mu.Lock()
		f.asked = append(f.asked, netw+" "+q.Name)
		f.mu.Unlock()
		add := func(ip string) {
			rr, _ := dns.NewRR(fmt.Sprintf("%s 60 IN A %s", q.Name, ip))
			m.Answer = append(m.Answer, rr)
		}
		switch q.Name {
		case "allowed.example.":
			add("203.0.113.7")
		case "big.example.":
			for i := range 120 {
				add(fmt.Sprintf("198.51.100.%d", i+1))
			}
		case "leak.example.":
			add("127.0.0.1")
		default:
			m.Rcode = dns.RcodeNameError
		}
		// As gvisor-tap-vsock's DNS server (quench-host's, gvproxy's):
		// truncated to the query's EDNS size, over TCP too.
		switch o := r.IsEdns0(); {
		case o != nil:
			m.Truncate(int(o.UDPSize()))
		case netw == "udp":
			m.Truncate(512)
		}
		_ = w.WriteMsg(m)
	}))
	return f
}

func (f *fakeHostDNS) questions() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.asked...)
}

func (f *fakeHostDNS) tcpClients() []netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]netip.AddrPort(nil), f.tcpFrom...)
}

// startTestDNSProxy starts a proxy on a free loopback port in front of
// servers, with a filter for rules (the proxy's datagrams do not pass
// through it here: there is no TAP device; its TCP checks and permits do).
func startTestDNSProxy(t *testing.T, servers []netip.AddrPort, rules ...string) (*dnsProxy, *egressfw.Filter) {
	t.Helper()
	return startTestDNSProxyWith(t, nil, servers, rules...)
}

// startTestDNSProxyWith is startTestDNSProxy with set, if not nil, called
// on the proxy before it serves (to set its timeout or logger).
func startTestDNSProxyWith(t *testing.T, set func(*dnsProxy), servers []netip.AddrPort, rules ...string) (*dnsProxy, *egressfw.Filter) {
	t.Helper()
	p, err := policy.Parse(rules)
	if err != nil {
		t.Fatal(err)
	}
	f := egressfw.New(egressfw.Config{
		Policy: p,
		Subnet: netip.MustParsePrefix("192.168.127.2/24"),
		DNS:    []netip.Addr{servers[0].Addr()},
	})
	// A free port for both UDP and TCP.
	var dp *dnsProxy
	for range 20 {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		_ = pc.Close()
		if dp, err = listenDNSProxy(addr, servers, f, slog.New(slog.DiscardHandler)); err == nil {
			break
		}
	}
	if dp == nil {
		t.Fatal("no free port for the DNS proxy")
	}
	dp.timeout = 2 * time.Second
	if set != nil {
		set(dp) // before start: the goroutines read the fields
	}
	dp.start()
	t.Cleanup(dp.close)
	return dp, f
}

func (p *dnsProxy) addr() string { return p.udp.LocalAddr().String() }

func exchange(t *testing.T, netw, server, name string) *dns.Msg {
	t.Helper()
	return exchangeEDNS(t, netw, server, name, 0)
}

// exchangeEDNS is exchange with an EDNS record giving size (0: none).
func exchangeEDNS(t *testing.T, netw, server, name string, size uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: netw, Timeout: 3 * time.Second, UDPSize: 512}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	if size > 0 {
		m.SetEdns0(size, false)
		c.UDPSize = size
	}
	r, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("%s %s: %v", netw, name, err)
	}
	return r
}

func TestDNSProxy(t *testing.T) {
	host := startFakeHostDNS(t)
	p, f := startTestDNSProxy(t, []netip.AddrPort{host.addr}, "allowed.example:443", "big.example:443", "leak.example:443")

	t.Run("UDP allowed name", func(t *testing.T) {
		r := exchange(t, "udp", p.addr(), "allowed.example.")
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("answer %v", r)
		}
	})
	t.Run("UDP refused name", func(t *testing.T) {
		r := exchange(t, "udp", p.addr(), "secret.attacker.example.")
		if r.Rcode != dns.RcodeNameError {
			t.Fatalf("rcode %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
		}
	})
	t.Run("UDP truncated", func(t *testing.T) {
		r := exchange(t, "udp", p.addr(), "big.example.")
		if !r.Truncated {
			t.Fatalf("answer of %d records over UDP not truncated", len(r.Answer))
		}
	})
	t.Run("TCP large answer", func(t *testing.T) {
		// With glibc's EDNS size (options edns0): the proxy raises it
		// for the host's server, which would truncate to it over TCP.
		r := exchangeEDNS(t, "tcp", p.addr(), "big.example.", 1200)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 120 || r.Truncated {
			t.Fatalf("rcode %s, %d records, truncated %v; want all 120", dns.RcodeToString[r.Rcode], len(r.Answer), r.Truncated)
		}
		// The filter learned the addresses from the answer, as it does
		// from datagrams: a connection to one is allowed.
		syn := taptest.TCPv4Frame(nil, nil, taptest.TCPSegment{
			Src: netip.MustParseAddrPort("192.168.127.2:40000"), Dst: netip.MustParseAddrPort("198.51.100.99:443"), Flags: taptest.TCPFlagSYN,
		})
		if pass, _ := f.Outbound(syn); !pass {
			t.Error("SYN to an address of big.example refused: the TCP answer taught the filter nothing")
		}
	})
	t.Run("TCP refused name", func(t *testing.T) {
		r := exchange(t, "tcp", p.addr(), "secret.attacker.example.")
		if r.Rcode != dns.RcodeNameError {
			t.Fatalf("rcode %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
		}
	})
	t.Run("TCP answer into the enclave", func(t *testing.T) {
		r := exchange(t, "tcp", p.addr(), "leak.example.")
		if r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
			t.Fatalf("rcode %s, %d records; want SERVFAIL without the answer", dns.RcodeToString[r.Rcode], len(r.Answer))
		}
	})
	for _, q := range host.questions() {
		if strings.Contains(q, "attacker") {
			t.Errorf("the host's DNS was asked %q: a refused name left the enclave", q)
		}
	}
	if s := f.Stats(); s.DNS != 2 || s.Answers != 1 {
		t.Errorf("filter stats %+v, want 2 questions refused (UDP and TCP) and 1 answer", s)
	}

	// The proxy's connections to the host's DNS each passed by a
	// permission for exactly their socket: another socket to the same
	// server is refused (no rule allows DNS over TCP), the proxy's own
	// socket's SYN would pass.
	clients := host.tcpClients()
	if len(clients) == 0 {
		t.Fatal("the host's DNS saw no TCP client")
	}
	synFrom := func(port uint16) []byte {
		return taptest.TCPv4Frame(nil, nil, taptest.TCPSegment{
			Src: netip.AddrPortFrom(netip.MustParseAddr("192.168.127.2"), port), Dst: host.addr, Flags: taptest.TCPFlagSYN,
		})
	}
	if pass, _ := f.Outbound(synFrom(clients[0].Port() + 1)); pass {
		t.Error("another socket's SYN to the host's DNS passed")
	}
	last := clients[len(clients)-1]
	if pass, _ := f.Outbound(synFrom(last.Port())); !pass {
		t.Errorf("the proxy's own socket (port %d) has no permission", last.Port())
	}
}

// TestDNSProxyTCPStream: several questions on one connection, sent at
// once, are answered in order; something that is not a DNS query ends the
// connection; so does a length shorter than a DNS header.
func TestDNSProxyTCPStream(t *testing.T) {
	host := startFakeHostDNS(t)
	p, _ := startTestDNSProxy(t, []netip.AddrPort{host.addr}, "allowed.example:443")
	c, err := net.Dial("tcp", p.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out bytes.Buffer
	names := []string{"allowed.example.", "denied.example.", "allowed.example."}
	for i, n := range names {
		m := new(dns.Msg)
		m.SetQuestion(n, dns.TypeA)
		m.Id = uint16(100 + i)
		b, _ := m.Pack()
		if err := dnswire.WriteMessage(&out, b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	for i, want := range []int{dns.RcodeSuccess, dns.RcodeNameError, dns.RcodeSuccess} {
		b, err := dnswire.ReadMessage(c)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		var r dns.Msg
		if err := r.Unpack(b); err != nil || r.Id != uint16(100+i) || r.Rcode != want {
			t.Errorf("answer %d: id %d rcode %s (%v); want id %d %s", i, r.Id, dns.RcodeToString[r.Rcode], err, 100+i, dns.RcodeToString[want])
		}
	}
	for _, junk := range [][]byte{
		{0, 17, 'e', 'x', 'f', 'i', 'l', 't', 'r', 'a', 't', 'e', 'd', ' ', 'b', 'y', 't', 'e', 's'},
		{0, 3, 1, 2, 3},
	} {
		c, err := net.Dial("tcp", p.addr())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write(junk)
		if n, err := c.Read(make([]byte, 64)); err == nil {
			t.Errorf("%x: %d bytes answered, want the connection closed", junk, n)
		}
		c.Close()
	}
}

// TestDNSProxyServerDown: without an answer, a TCP client gets SERVFAIL
// within the proxy's timeout (not a hang), and close returns promptly
// with a client connected.
func TestDNSProxyServerDown(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // accepts and never answers
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	silent := ln.Addr().(*net.TCPAddr).AddrPort()
	p, _ := startTestDNSProxyWith(t, func(p *dnsProxy) { p.timeout = 300 * time.Millisecond }, []netip.AddrPort{silent}, "*.example:443")
	r := exchange(t, "tcp", p.addr(), "allowed.example.")
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	c, err := net.Dial("tcp", p.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	p.close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("close took %v with a client connected", d)
	}
}

// FuzzDNSProxyAnswer: whatever the host sends back on the proxy's TCP
// connection, the proxy hands its client only a whole DNS answer to the
// question asked that the egress filter accepted, or an error (the client
// then gets SERVFAIL).
func FuzzDNSProxyAnswer(f *testing.F) {
	q := new(dns.Msg)
	q.SetQuestion("api.example.com.", dns.TypeA)
	q.Id = 0x4242
	query, _ := q.Pack()
	a := new(dns.Msg)
	a.SetReply(q)
	rr, _ := dns.NewRR("api.example.com. 60 IN A 203.0.113.7")
	a.Answer = append(a.Answer, rr)
	good, _ := a.Pack()
	var seed bytes.Buffer
	_ = dnswire.WriteMessage(&seed, good)
	f.Add(seed.Bytes())
	f.Add(append([]byte{0, 12}, good[:12]...))
	f.Add([]byte{0xff, 0xff, 1, 2})
	rr, _ = dns.NewRR("api.example.com. 60 IN A 127.0.0.1")
	a.Answer = []dns.RR{rr}
	leak, _ := a.Pack()
	seed.Reset()
	_ = dnswire.WriteMessage(&seed, leak)
	f.Add(seed.Bytes())
	pol, err := policy.Parse([]string{"api.example.com:443"})
	if err != nil {
		f.Fatal(err)
	}
	filter := egressfw.New(egressfw.Config{Policy: pol, Subnet: netip.MustParsePrefix("192.168.127.2/24")})
	f.Fuzz(func(t *testing.T, stream []byte) {
		p := &dnsProxy{f: filter, timeout: time.Second, open: map[net.Conn]struct{}{}}
		p.ctx, p.cancel = context.WithCancel(context.Background())
		defer p.cancel()
		enclaveEnd, hostEnd := net.Pipe()
		go func() {
			defer hostEnd.Close()
			if _, err := dnswire.ReadMessage(hostEnd); err != nil {
				return
			}
			_, _ = hostEnd.Write(stream)
		}()
		var up net.Conn = enclaveEnd
		answer, err := p.exchangeTCP(&up, query)
		if up != nil {
			_ = up.Close()
		}
		if err != nil {
			return
		}
		var m dns.Msg
		if err := m.Unpack(answer); err != nil {
			// The filter reads only what it needs; the client's parser
			// may be stricter. It must still be an answer to the question.
			if len(answer) < dnswire.MinMessage || answer[0] != 0x42 || answer[1] != 0x42 || answer[2]&0x80 == 0 {
				t.Fatalf("answer %x is not a response to the question", answer)
			}
			return
		}
		if m.Id != 0x4242 || !m.Response {
			t.Fatalf("answer id %d response %v, want a response to 0x4242", m.Id, m.Response)
		}
		for _, rr := range m.Answer {
			if a, ok := rr.(*dns.A); ok && a.A.IsLoopback() {
				t.Fatalf("answer %v leads into the enclave, yet delivered", m.Answer)
			}
		}
	})
}

// countHandler counts the records logged at Warn or above.
type countHandler struct {
	slog.Handler
	n *atomic.Int64
}

func (h countHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h countHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		h.n.Add(1)
	}
	return nil
}

// TestDNSProxyWarnRate: a program that asks over TCP, again and again, for
// an allowed name whose answer the filter refuses (a name of its own that
// resolves to 127.0.0.1, under a rule such as *) must not make the proxy
// log a warning each time: the log (the enclave's console, slow) is shared
// with the frame filter, which bounds its own to one a second.
func TestDNSProxyWarnRate(t *testing.T) {
	host := startFakeHostDNS(t)
	var warns atomic.Int64
	p, _ := startTestDNSProxyWith(t, func(p *dnsProxy) { p.log = slog.New(countHandler{slog.DiscardHandler, &warns}) },
		[]netip.AddrPort{host.addr}, "leak.example:443")
	c, err := net.Dial("tcp", p.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	m := new(dns.Msg)
	m.SetQuestion("leak.example.", dns.TypeA)
	q, _ := m.Pack()
	const asks = 50
	for i := range asks {
		if err := dnswire.WriteMessage(c, q); err != nil {
			t.Fatal(err)
		}
		if _, err := dnswire.ReadMessage(c); err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
	}
	if n := warns.Load(); n > 2 {
		t.Errorf("%d warnings for %d refused answers, want at most one a second", n, asks)
	}
}

// TestDNSProxyBusy: past dnsProxyConns TCP connections, a new one is closed
// at once and counted (quench_enclave_dns_proxy_dropped_total).
func TestDNSProxyBusy(t *testing.T) {
	host := startFakeHostDNS(t)
	p, _ := startTestDNSProxy(t, []netip.AddrPort{host.addr}, "allowed.example:443")
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range dnsProxyConns {
		c, err := net.Dial("tcp", p.addr())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	// Each held connection is being served once one question is answered.
	for i, c := range held {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		m := new(dns.Msg)
		m.SetQuestion("denied.example.", dns.TypeA)
		b, _ := m.Pack()
		if err := dnswire.WriteMessage(c, b); err != nil {
			t.Fatal(err)
		}
		if _, err := dnswire.ReadMessage(c); err != nil {
			t.Fatalf("held connection %d: %v", i, err)
		}
	}
	c, err := net.Dial("tcp", p.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("connection past the limit: read %d bytes, want it closed", n)
	}
	if n := p.dropped.Load(); n != 1 {
		t.Errorf("dropped %d, want 1", n)
	}
}

// TestDNSProxyNotItsOwnServer: a DNS server at the DNS proxy's own address
// (quench-enclave -dns 127.0.0.1 with -allow) is refused: the proxy would
// pass every question on to itself, round and round, until its 256 slots
// were full, and no program's DNS would be answered.
func TestDNSProxyNotItsOwnServer(t *testing.T) {
	pol, err := policy.Parse([]string{"ok.example:443"})
	if err != nil {
		t.Fatal(err)
	}
	base := Config{Network: NetworkTAP, Egress: pol, DNS: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	if _, err := base.withDefaults(); err == nil || !strings.Contains(err.Error(), "DNS server 127.0.0.1 is the DNS proxy's address") {
		t.Errorf("DNS 127.0.0.1, DNS proxy 127.0.0.1: %v, want an error", err)
	}
	base.DNS = []netip.Addr{netip.MustParseAddr("192.168.127.1"), netip.MustParseAddr("0.0.0.0")} // the kernel's 127.0.0.1
	if _, err := base.withDefaults(); err == nil || !strings.Contains(err.Error(), "DNS server 0.0.0.0 is the DNS proxy's address") {
		t.Errorf("DNS 0.0.0.0, DNS proxy 127.0.0.1: %v, want an error", err)
	}
	for _, c := range []Config{
		{Network: NetworkTAP, Egress: pol, DNS: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, DNSProxy: "127.0.0.2"},
		{Network: NetworkTAP, Egress: pol, DNS: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, DNSProxy: "-"},
		{Network: NetworkTAP, DNS: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}, // no policy: no proxy
	} {
		if _, err := c.withDefaults(); err != nil {
			t.Errorf("DNS %v, DNS proxy %q, policy %v: %v", c.DNS, c.DNSProxy, c.Egress != nil, err)
		}
	}
}
