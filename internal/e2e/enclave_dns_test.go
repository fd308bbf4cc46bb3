package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/quenchnet/quench/internal/testutil"
)

// TestEnclaveDNSLargeAnswer: glibc's resolver in the enclave (getent, as
// any C program resolves) gets all of a name whose answer does not fit in
// a datagram. Its UDP answer comes back truncated and it asks again over
// TCP:
//   - under an egress policy, through the enclave's DNS proxy, which
//     resolv.conf names (a program's own DNS over TCP is refused: the
//     filter cannot inspect it), and which checks the answer;
//   - without one, straight to quench-host's DNS, which used to truncate
//     its TCP answer to the query's EDNS size too (glibc's 1200 bytes: 73
//     of the 100 addresses; package dnswire).
func TestEnclaveDNSLargeAnswer(t *testing.T) {
	testutil.RequireCommand(t, "getent")
	withAndWithoutPolicy(t, "big.example", testLargeAnswer)
}

// withAndWithoutPolicy runs test with an egress policy that allows name
// (port 443) and without one.
func withAndWithoutPolicy(t *testing.T, name string, test func(t *testing.T, enclaveArgs ...string)) {
	t.Run("policy", func(t *testing.T) { test(t, "-allow", name+":443") })
	t.Run("no policy", func(t *testing.T) { test(t) })
}

// startGlibcEnclave starts quench-host and a TAP-mode quench-enclave (with
// args) that writes the namespace's resolv.conf, which glibc there reads
// (ip netns exec mounts /etc/netns/NAME/resolv.conf over
// /etc/resolv.conf).
func (env *enclaveEnv) startGlibcEnclave(args ...string) {
	t := env.t
	etc := filepath.Join("/etc/netns", env.ns.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(etc) })
	env.startHost()
	env.startEnclave(append(args, "-resolv-conf", filepath.Join(etc, "resolv.conf"))...)
	testutil.WaitForFile(t, filepath.Join(etc, "resolv.conf"), 10*time.Second)
}

func testLargeAnswer(t *testing.T, enclaveArgs ...string) {
	env := newEnclaveEnv(t)

	// The upstream DNS server, UDP and TCP on one port: big.example has 100
	// addresses (about 1.6 KB, over glibc's 1200-byte EDNS limit).
	const records = 100
	upstream := testutil.ListenDNS(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		if q.Name == "big.example." && q.Qtype == dns.TypeA {
			for i := range records {
				rr, _ := dns.NewRR(fmt.Sprintf("big.example. 60 IN A 198.51.100.%d", i+1))
				m.Answer = append(m.Answer, rr)
			}
		} else if q.Name != "big.example." {
			m.Rcode = dns.RcodeNameError
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			size := 512
			if o := r.IsEdns0(); o != nil {
				size = int(o.UDPSize())
			}
			m.Truncate(size)
		}
		_ = w.WriteMsg(m)
	}))
	env.dnsPort = int(upstream.Port())
	env.startGlibcEnclave(enclaveArgs...)

	var out []byte
	testutil.WaitFor(t, 20*time.Second, "getent ahostsv4 big.example in the enclave", func() error {
		var err error
		out, err = exec.Command("ip", "netns", "exec", env.ns.Name, "getent", "ahostsv4", "big.example").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	seen := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "198.51.100.") {
			seen[f[0]] = true
		}
	}
	if len(seen) != records {
		t.Errorf("getent gave %d of the %d addresses", len(seen), records)
	}
	if len(enclaveArgs) > 0 {
		// A name the policy does not allow: NXDOMAIN (getent exits 2).
		if out, err := exec.Command("ip", "netns", "exec", env.ns.Name, "getent", "ahostsv4", "other.example").CombinedOutput(); err == nil {
			t.Errorf("other.example resolved in the enclave: %s", out)
		}
	}
}

// TestEnclaveDNSBothFamilies: glibc's resolver asks for A and AAAA at once,
// from one socket, when getaddrinfo is called without AI_ADDRCONFIG, as
// Python's socket.getaddrinfo and Node's dns.lookup do by default (getent
// ahosts sets it, and in an enclave without IPv6 asks for A only). Both
// answers must come back at once: a question or answer lost on the way (the
// DNS proxy under a policy, the filter, quench-host's DNS) shows as glibc
// asking again after its 5 s timeout, a stall on every connection the app
// opens. The AAAA answer is empty, as gvproxy's: the enclave's network is
// IPv4 only, and an IPv6 address would send programs where they cannot go.
func TestEnclaveDNSBothFamilies(t *testing.T) {
	testutil.RequireCommand(t, "python3")
	withAndWithoutPolicy(t, "dual.example", testBothFamilies)
}

func testBothFamilies(t *testing.T, enclaveArgs ...string) {
	env := newEnclaveEnv(t)
	var mu sync.Mutex
	asked := map[string]int{}
	upstream := testutil.ListenDNS(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		mu.Lock()
		asked[q.Name+" "+dns.TypeToString[q.Qtype]]++
		mu.Unlock()
		switch {
		case q.Name != "dual.example.":
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			rr, _ := dns.NewRR("dual.example. 0 IN A 198.51.100.7")
			m.Answer = append(m.Answer, rr)
		case q.Qtype == dns.TypeAAAA:
			rr, _ := dns.NewRR("dual.example. 0 IN AAAA 2001:db8::7")
			m.Answer = append(m.Answer, rr)
		}
		_ = w.WriteMsg(m)
	}))
	env.dnsPort = int(upstream.Port())
	env.startGlibcEnclave(enclaveArgs...)

	getaddrinfo := func() (string, error) {
		out, err := exec.Command("ip", "netns", "exec", env.ns.Name, "python3", "-c",
			"import socket; print(socket.getaddrinfo('dual.example', 443, proto=socket.IPPROTO_TCP))").CombinedOutput()
		return string(out), err
	}
	// The first lookup may race the tunnel coming up: retried until it
	// works, then the counts start.
	testutil.WaitFor(t, 20*time.Second, "getaddrinfo dual.example in the enclave", func() error {
		if out, err := getaddrinfo(); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	mu.Lock()
	clear(asked)
	mu.Unlock()
	const lookups = 5
	for i := range lookups {
		out, err := getaddrinfo()
		if err != nil || !strings.Contains(out, "198.51.100.7") || strings.Contains(out, "2001:db8::7") {
			t.Fatalf("lookup %d: %v\n%s", i, err, out)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// quench-host answers the enclave's A question with Go's LookupIPAddr,
	// which asks the upstream for A and AAAA; it answers AAAA questions
	// (empty) without asking.
	want := map[string]int{"dual.example. A": lookups, "dual.example. AAAA": lookups}
	if fmt.Sprint(asked) != fmt.Sprint(want) {
		t.Errorf("questions at the upstream %v, want %v (more: glibc asked again after losing an answer)", asked, want)
	}
}
