package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	t.Run("policy", func(t *testing.T) {
		testLargeAnswer(t, "-allow", "big.example:443")
	})
	t.Run("no policy", func(t *testing.T) {
		testLargeAnswer(t)
	})
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

	// glibc in the namespace reads /etc/netns/NAME/resolv.conf (ip netns
	// exec mounts it over /etc/resolv.conf): quench-enclave writes it there.
	etc := filepath.Join("/etc/netns", env.ns.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(etc) })

	env.startHost()
	env.startEnclave(append(enclaveArgs, "-resolv-conf", filepath.Join(etc, "resolv.conf"))...)
	testutil.WaitForFile(t, filepath.Join(etc, "resolv.conf"), 10*time.Second)

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
