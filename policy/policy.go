package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Policy is an egress allow-list. Everything not allowed is refused. A nil
// *Policy allows everything. A Policy is immutable and safe for concurrent
// use.
type Policy struct {
	rules []rule
}

type rule struct {
	text     string
	any      bool         // "*": every destination
	name     string       // exact hostname, lower case, no trailing dot
	suffix   string       // "*.example.com" → ".example.com"
	prefix   netip.Prefix // CIDR or single address
	lo, hi   uint16       // port range; 0,0 = any
	protocol string       // "tcp", "udp" or "" (both)
}

// Parse builds a Policy from allow entries, each
//
//	DEST[:PORTS][/PROTO]
//
// where DEST is a hostname (api.example.com), a wildcard (*.example.com:
// any name below example.com, not example.com itself), an address or CIDR
// (10.0.0.0/8; a trailing /tcp or /udp is always the protocol, never a mask;
// IPv6 goes in brackets: [2001:db8::/32]:443), or * for everything; PORTS is
// a port or a range (8000-8100), default any; PROTO is tcp or udp, default
// both. Examples: "*.amazonaws.com:443", "10.0.0.0/8:5432/tcp",
// "169.254.169.254:80".
func Parse(entries []string) (*Policy, error) {
	p := &Policy{}
	for _, e := range entries {
		r, err := parseRule(e)
		if err != nil {
			return nil, err
		}
		p.rules = append(p.rules, r)
	}
	return p, nil
}

func parseRule(s string) (rule, error) {
	r := rule{text: s}
	bad := func(why string) (rule, error) {
		return rule{}, fmt.Errorf("policy: allow %q: %s (want DEST[:PORTS][/tcp|/udp])", s, why)
	}
	rest := strings.TrimSpace(s)
	if i := strings.LastIndexByte(rest, '/'); i >= 0 && (rest[i+1:] == "tcp" || rest[i+1:] == "udp") {
		r.protocol = rest[i+1:]
		rest = rest[:i]
	}
	// Split DEST and PORTS.
	dest, ports := rest, ""
	if strings.HasPrefix(rest, "[") {
		j := strings.IndexByte(rest, ']')
		if j < 0 {
			return bad("unclosed [")
		}
		dest = rest[1:j]
		if tail := rest[j+1:]; tail != "" {
			if tail[0] != ':' {
				return bad("junk after ]")
			}
			ports = tail[1:]
		}
	} else if i := strings.LastIndexByte(rest, ':'); i >= 0 {
		dest, ports = rest[:i], rest[i+1:]
	}
	if ports != "" {
		lo, hi, ok := strings.Cut(ports, "-")
		l, err := strconv.ParseUint(lo, 10, 16)
		if err != nil || l == 0 {
			return bad("bad port " + strconv.Quote(lo))
		}
		h := l
		if ok {
			if h, err = strconv.ParseUint(hi, 10, 16); err != nil || h < l {
				return bad("bad port range " + strconv.Quote(ports))
			}
		}
		r.lo, r.hi = uint16(l), uint16(h)
	}
	switch {
	case dest == "":
		return bad("empty destination")
	case dest == "*":
		r.any = true
	case strings.Contains(dest, "/"):
		pfx, err := netip.ParsePrefix(dest)
		if err != nil {
			return bad(err.Error())
		}
		r.prefix = pfx.Masked()
	default:
		if a, err := netip.ParseAddr(dest); err == nil {
			r.prefix = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
			break
		}
		name := strings.TrimSuffix(strings.ToLower(dest), ".")
		if strings.HasPrefix(name, "*.") {
			r.suffix = name[1:]
			name = name[2:]
		} else {
			r.name = name
		}
		if err := checkName(name); err != nil {
			return bad(err.Error())
		}
	}
	return r, nil
}

func checkName(n string) error {
	if n == "" || len(n) > 253 {
		return errors.New("bad hostname")
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("bad hostname")
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("bad character %q in hostname", c)
			}
		}
	}
	return nil
}

func (r *rule) matchName(name string) bool {
	switch {
	case r.any:
		return true
	case r.name != "":
		return name == r.name
	case r.suffix != "":
		return strings.HasSuffix(name, r.suffix) && len(name) > len(r.suffix)
	}
	return false
}

func (r *rule) matchPort(network string, port uint16) bool {
	if r.protocol != "" && r.protocol != network {
		return false
	}
	return r.lo == 0 || port >= r.lo && port <= r.hi
}

func normName(name string) string { return strings.TrimSuffix(strings.ToLower(name), ".") }

// AllowName reports whether DNS may answer for name: some hostname rule (or
// "*") matches it, whatever its ports.
func (p *Policy) AllowName(name string) bool {
	if p == nil {
		return true
	}
	name = normName(name)
	for i := range p.rules {
		if p.rules[i].matchName(name) {
			return true
		}
	}
	return false
}

// NamesHost reports whether a hostname rule other than "*" matches name:
// whether the addresses name resolves to can change what Allow says ("*"
// allows every address on its ports whatever it was resolved from). A
// resolver need remember (Learned) only such names.
func (p *Policy) NamesHost(name string) bool {
	if p == nil {
		return false
	}
	name = normName(name)
	for i := range p.rules {
		if r := &p.rules[i]; !r.any && r.matchName(name) {
			return true
		}
	}
	return false
}

// Allow reports whether a connection (network "tcp" or "udp") to ip:port is
// allowed. names are the hostnames ip was resolved from (see Learned), for
// hostname rules.
func (p *Policy) Allow(network string, ip netip.Addr, port uint16, names []string) bool {
	if p == nil {
		return true
	}
	ip = ip.Unmap()
	for i := range p.rules {
		r := &p.rules[i]
		if !r.matchPort(network, port) {
			continue
		}
		if r.any || r.prefix.IsValid() && r.prefix.Contains(ip) {
			return true
		}
		for _, n := range names {
			if r.matchName(normName(n)) {
				return true
			}
		}
	}
	return false
}

// AllowAddress reports whether an address or CIDR rule allows a connection
// (network "tcp" or "udp") to ip:port. Unlike Allow with no names, "*"
// does not count: it allows any destination, without naming this one, so
// that a caller can tell an address the policy names from one it merely
// does not exclude (such as the enclave's own loopback, which an untrusted
// DNS answer may lead to).
func (p *Policy) AllowAddress(network string, ip netip.Addr, port uint16) bool {
	if p == nil {
		return true
	}
	ip = ip.Unmap()
	for i := range p.rules {
		r := &p.rules[i]
		if r.prefix.IsValid() && r.prefix.Contains(ip) && r.matchPort(network, port) {
			return true
		}
	}
	return false
}

// Rules returns the rules as given, in order: nil for a nil Policy (allow
// all), an empty, non-nil slice for a Policy without rules (refuse all).
func (p *Policy) Rules() []string {
	if p == nil {
		return nil
	}
	s := make([]string, 0, len(p.rules))
	for _, r := range p.rules {
		s = append(s, r.text)
	}
	return s
}

// String lists the rules as given.
func (p *Policy) String() string {
	if p == nil {
		return "allow all"
	}
	var s []string
	for _, r := range p.rules {
		s = append(s, r.text)
	}
	return strings.Join(s, ", ")
}

// Learned remembers which hostnames addresses were resolved from, for
// hostname rules. Entries (an address and a name) expire TTL after their
// last resolution. The zero value is not usable; use NewLearned. Safe for
// concurrent use.
type Learned struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu sync.Mutex
	m  map[netip.Addr]map[string]time.Time // guarded by mu; address → name → expiry
	n  int                                 // guarded by mu; entries in m (address–name pairs)
	// next is the earliest expiry left by the last expireLocked: until it
	// has passed, a full table is not scanned again on every Record.
	// Guarded by mu.
	next time.Time
}

// NewLearned returns a Learned keeping entries for ttl (default 10 minutes
// when 0) and at most max entries (default 65536 when 0). An entry is an
// address and a name: one address may have been resolved from any number
// of names (every name under a wildcard rule can resolve to the same
// addresses), so max bounds the names, not only the addresses.
func NewLearned(ttl time.Duration, max int) *Learned {
	if ttl <= 0 {
		ttl = 10 * time.Minute
	}
	if max <= 0 {
		max = 1 << 16
	}
	return &Learned{ttl: ttl, max: max, now: time.Now, m: map[netip.Addr]map[string]time.Time{}}
}

// Record notes that name resolved to ips.
func (l *Learned) Record(name string, ips ...netip.Addr) {
	name = normName(name)
	now := l.now()
	exp := now.Add(l.ttl)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n >= l.max && now.After(l.next) {
		l.expireLocked()
	}
	for _, ip := range ips {
		ip = ip.Unmap()
		names := l.m[ip]
		if _, ok := names[name]; !ok {
			if l.n >= l.max {
				continue // full of live entries: this one is not learned
			}
			if names == nil {
				names = map[string]time.Time{}
				l.m[ip] = names
			}
			l.n++
		}
		names[name] = exp
	}
}

func (l *Learned) expireLocked() {
	now := l.now()
	l.next = time.Time{}
	for ip, names := range l.m {
		for n, exp := range names {
			switch {
			case now.After(exp):
				delete(names, n)
				l.n--
			case l.next.IsZero() || exp.Before(l.next):
				l.next = exp
			}
		}
		if len(names) == 0 {
			delete(l.m, ip)
		}
	}
}

// Names returns the unexpired names ip was resolved from.
func (l *Learned) Names(ip netip.Addr) []string {
	if l == nil {
		return nil
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for n, exp := range l.m[ip.Unmap()] {
		if !now.After(exp) {
			out = append(out, n)
		}
	}
	return out
}

// NamesAddress reports whether some address or CIDR rule covers ip, on
// any of its ports ("*" does not count; see AllowAddress).
func (p *Policy) NamesAddress(ip netip.Addr) bool {
	if p == nil {
		return true
	}
	ip = ip.Unmap()
	for i := range p.rules {
		if r := &p.rules[i]; r.prefix.IsValid() && r.prefix.Contains(ip) {
			return true
		}
	}
	return false
}
