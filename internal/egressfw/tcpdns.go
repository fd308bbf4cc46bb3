package egressfw

import (
	"net/netip"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/quenchnet/quench/policy"
)

// DNS over TCP. The filter checks DNS messages only in UDP datagrams: a TCP
// stream may split a message anywhere, and pieces checked one by one can be
// read whole differently. So a program's TCP connection to a DNS server is
// refused unless an address rule names the server, and the enclave's own
// DNS proxy (package enclave, TAP mode), which reads whole messages from its
// TCP connections to the host's DNS, has them checked here instead, by the
// same rules as datagrams: Query before a query leaves, Answer before an
// answer is delivered. Its connections pass by PermitFrom.

// PermitFrom lets the enclave's own next connection from local port port
// to dst (network "tcp" or "udp") through, whatever the policy, if it
// starts within PermitTimeout: for destinations that the enclave's attested
// configuration names and that package enclave dials for itself (the ACME
// directory, key-sync peers), which Config.Egress does not limit, and for
// connections whose content it checks itself (DNS over TCP from its DNS
// proxy, to a server no rule allows by address). It names the connection's
// socket (bound to port before it connects), so a program connecting to
// the same destination in that moment is not let through with it. The flow it opens is that
// connection's only: a later SYN from the same port (another socket's, once
// the port is free again) needs a permission of its own.
func (f *Filter) PermitFrom(network string, port uint16, dst netip.AddrPort) {
	if port != 0 {
		f.permit(network, port, dst)
	}
}

// Query checks a DNS query about to be sent to a DNS server other than in
// a UDP datagram the filter sees, as it checks those: nil when the policy
// (or PermitName) allows every name it asks about; otherwise an NXDOMAIN
// answer to give in its place, the refusal counted and logged. A message
// that is not a DNS query with questions is an error (policy.ErrNotQuery),
// counted as dropped, as such a datagram to a DNS server is.
func (f *Filter) Query(msg []byte) (answer []byte, err error) {
	answer, err = f.query(msg, f.now().UnixNano())
	if err != nil {
		f.dropped.Add(1)
	}
	return answer, err
}

func (f *Filter) query(msg []byte, now int64) ([]byte, error) {
	answer, name, err := policy.RefuseQuery(msg, func(name string) bool {
		return f.p.AllowName(name) || f.namePermitted(name, now)
	})
	if err != nil {
		return nil, err
	}
	if answer != nil {
		f.dnsRefused.Add(1)
		f.warn("egress: DNS question for a name the egress policy does not allow; answered NXDOMAIN here", "name", name)
	}
	return answer, nil
}

// Answer checks a DNS answer that reached the enclave other than in a UDP
// datagram the filter saw, as it checks those: it learns the addresses it
// gives for names hostname rules allow, and reports whether it may be
// delivered; not when it leads an allowed name into the enclave, when its
// answer records cannot all be read, or when it is not a DNS response at all.
func (f *Filter) Answer(msg []byte) bool {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || !h.Response {
		return f.unreadable()
	}
	return f.learn(msg)
}
