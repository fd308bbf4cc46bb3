package policy_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/quenchnet/quench/policy"
)

func TestAllow(t *testing.T) {
	p, err := policy.Parse([]string{
		"api.example.com:443",
		"*.amazonaws.com:443/tcp",
		"10.0.0.0/8:5432",
		"203.0.113.53:53/udp",
		"[2001:db8::/32]:8000-8100",
		"192.0.2.1",
	})
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr
	tests := []struct {
		name    string
		network string
		ip      netip.Addr
		port    uint16
		names   []string
		want    bool
	}{
		{"cidr port", "tcp", ip("10.1.2.3"), 5432, nil, true},
		{"cidr wrong port", "tcp", ip("10.1.2.3"), 5433, nil, false},
		{"cidr udp too", "udp", ip("10.1.2.3"), 5432, nil, true},
		{"outside cidr", "tcp", ip("11.1.2.3"), 5432, nil, false},
		{"udp only rule, tcp", "tcp", ip("203.0.113.53"), 53, nil, false},
		{"udp only rule, udp", "udp", ip("203.0.113.53"), 53, nil, true},
		{"ipv6 range", "tcp", ip("2001:db8::5"), 8050, nil, true},
		{"ipv6 out of range", "tcp", ip("2001:db8::5"), 8101, nil, false},
		{"address any port", "udp", ip("192.0.2.1"), 9, nil, true},
		{"mapped v4", "tcp", ip("::ffff:10.0.0.1"), 5432, nil, true},
		{"learned name", "tcp", ip("198.51.100.7"), 443, []string{"api.example.com."}, true},
		{"learned name, port", "tcp", ip("198.51.100.7"), 80, []string{"api.example.com"}, false},
		{"wildcard", "tcp", ip("198.51.100.8"), 443, []string{"s3.eu-west-1.AmazonAWS.com"}, true},
		{"wildcard not apex", "tcp", ip("198.51.100.8"), 443, []string{"amazonaws.com"}, false},
		{"wildcard tcp only", "udp", ip("198.51.100.8"), 443, []string{"s3.amazonaws.com"}, false},
		{"unknown name", "tcp", ip("198.51.100.9"), 443, []string{"evil.example.com"}, false},
		{"metadata not special here", "tcp", ip("169.254.169.254"), 80, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Allow(tt.network, tt.ip, tt.port, tt.names); got != tt.want {
				t.Errorf("Allow(%s %s:%d %v) = %v, want %v", tt.network, tt.ip, tt.port, tt.names, got, tt.want)
			}
		})
	}
	for name, want := range map[string]bool{
		"api.example.com": true, "API.example.com.": true, "example.com": false, "x.api.example.com": false,
		"a.amazonaws.com": true, "a.b.amazonaws.com": true, "amazonaws.com": false, "10.0.0.1": false,
	} {
		if got := p.AllowName(name); got != want {
			t.Errorf("AllowName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestNilAndStar(t *testing.T) {
	var nilP *policy.Policy
	if !nilP.Allow("tcp", netip.MustParseAddr("1.2.3.4"), 1, nil) || !nilP.AllowName("x") {
		t.Error("nil policy refuses")
	}
	empty, _ := policy.Parse(nil)
	if empty.Allow("tcp", netip.MustParseAddr("1.2.3.4"), 1, nil) || empty.AllowName("x") {
		t.Error("empty policy allows")
	}
	star, _ := policy.Parse([]string{"*:443"})
	if !star.Allow("tcp", netip.MustParseAddr("1.2.3.4"), 443, nil) || star.Allow("tcp", netip.MustParseAddr("1.2.3.4"), 80, nil) || !star.AllowName("anything.example") {
		t.Error("* rule")
	}
}

// TestRules: the rules as given, in order; nil for no policy, empty (not
// nil) for a policy that refuses everything.
func TestRules(t *testing.T) {
	var nilP *policy.Policy
	if r := nilP.Rules(); r != nil {
		t.Errorf("nil policy: %q, want nil", r)
	}
	empty, _ := policy.Parse(nil)
	if r := empty.Rules(); r == nil || len(r) != 0 {
		t.Errorf("empty policy: %#v, want an empty, non-nil slice", r)
	}
	in := []string{"*.amazonaws.com:443", "10.0.0.0/8:5432/tcp", "[2001:db8::/32]:8000-8100", "API.example.com."}
	p, err := policy.Parse(in)
	if err != nil {
		t.Fatal(err)
	}
	got := p.Rules()
	if fmt.Sprint(got) != fmt.Sprint(in) {
		t.Errorf("Rules() = %q, want %q", got, in)
	}
	got[0] = "*" // a copy: the policy stays immutable
	if p.Rules()[0] != in[0] {
		t.Error("Rules() shares the policy's memory")
	}
}

// TestAllowAddress: address and CIDR rules count, "*" and hostname rules
// do not.
func TestAllowAddress(t *testing.T) {
	p, err := policy.Parse([]string{"*:443", "api.example.com", "10.0.0.0/8:5432", "127.0.0.1:9000/tcp"})
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr
	tests := []struct {
		network string
		ip      netip.Addr
		port    uint16
		want    bool
	}{
		{"tcp", ip("10.1.2.3"), 5432, true},
		{"udp", ip("10.1.2.3"), 5432, true},
		{"tcp", ip("10.1.2.3"), 443, false}, // only "*"
		{"tcp", ip("127.0.0.1"), 9000, true},
		{"tcp", ip("::ffff:127.0.0.1"), 9000, true},
		{"udp", ip("127.0.0.1"), 9000, false},
		{"tcp", ip("127.0.0.1"), 443, false},
		{"tcp", ip("198.51.100.7"), 80, false}, // a hostname rule's port: no address
	}
	for _, tt := range tests {
		if got := p.AllowAddress(tt.network, tt.ip, tt.port); got != tt.want {
			t.Errorf("AllowAddress(%s %s:%d) = %v, want %v", tt.network, tt.ip, tt.port, got, tt.want)
		}
		if tt.port == 443 && !p.Allow(tt.network, tt.ip, tt.port, nil) {
			t.Errorf("Allow(%s %s:%d) refused, want allowed by *", tt.network, tt.ip, tt.port)
		}
	}
	var nilP *policy.Policy
	if !nilP.AllowAddress("tcp", ip("127.0.0.1"), 1) {
		t.Error("nil policy refuses")
	}
}

func TestParseErrors(t *testing.T) {
	for _, s := range []string{"", ":443", "example.com:0", "example.com:99999", "example.com:10-5", "10.0.0.0/33", "[2001:db8::/32", "[::1]x", "bad_name!.com", "a..b", "*.", "example.com:x"} {
		if _, err := policy.Parse([]string{s}); err == nil {
			t.Errorf("Parse(%q) succeeded", s)
		}
	}
}

func TestLearned(t *testing.T) {
	l := policy.NewLearned(50*time.Millisecond, 2)
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	l.Record("A.example.", a, b)
	l.Record("c.example", c) // full: not learned
	if got := l.Names(a); len(got) != 1 || got[0] != "a.example" {
		t.Errorf("Names(a) = %v", got)
	}
	if got := l.Names(c); len(got) != 0 {
		t.Errorf("Names(c) = %v with a full table", got)
	}
	time.Sleep(80 * time.Millisecond)
	if got := l.Names(a); len(got) != 0 {
		t.Errorf("expired Names(a) = %v", got)
	}
	l.Record("c.example", c) // expiry made room
	if got := l.Names(c); len(got) != 1 {
		t.Errorf("Names(c) = %v", got)
	}
}

// TestLearnedNamesBounded: max bounds the names learned, not only the
// addresses. Every name under a wildcard rule such as *.s3.amazonaws.com
// resolves, to the same few addresses: an enclave asking the host's DNS
// for ever new names used to grow one address's names without limit, and
// none expired while the addresses were fewer than max.
func TestLearnedNamesBounded(t *testing.T) {
	l := policy.NewLearned(time.Hour, 100)
	a := netip.MustParseAddr("192.0.2.1")
	for i := range 10000 {
		l.Record(fmt.Sprintf("b%d.s3.amazonaws.com", i), a)
	}
	names := l.Names(a)
	if len(names) > 100 {
		t.Fatalf("%d names kept for one address, with max 100", len(names))
	}
	l.Record("b0.s3.amazonaws.com", a) // known: refreshed, still there
	found := false
	for _, n := range l.Names(a) {
		found = found || n == "b0.s3.amazonaws.com"
	}
	if !found {
		t.Errorf("Names = %v, want the first name learned kept", l.Names(a))
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"*.example.com:443/tcp", "[2001:db8::/32]:1-2", "10.0.0.0/8", "*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := policy.Parse([]string{s})
		if err != nil {
			return
		}
		_ = p.AllowName(s)
		_ = p.Allow("tcp", netip.MustParseAddr("10.0.0.1"), 443, []string{s})
	})
}

func TestNamesHost(t *testing.T) {
	p, err := policy.Parse([]string{"*:443", "db.example.com:5432", "*.svc.example.com:80", "10.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{
		"db.example.com":    true,
		"DB.Example.com.":   true,
		"a.svc.example.com": true,
		"svc.example.com":   false, // the wildcard is below the apex only
		"attacker.example":  false, // only "*" matches: its addresses do not matter
		"other.example.com": false,
	} {
		if got := p.NamesHost(name); got != want {
			t.Errorf("NamesHost(%q) = %v, want %v", name, got, want)
		}
	}
	if (*policy.Policy)(nil).NamesHost("db.example.com") {
		t.Error("a nil policy (allow all) needs no names")
	}
}
