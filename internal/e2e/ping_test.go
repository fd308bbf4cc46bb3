package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
)

// TestEnclavePing: ping from a TAP-mode enclave gets answers from the
// gateway and the host loopback address, and "Packet filtered" from every
// other address, at once: ICMP is not forwarded, and quench-host's stack
// used to answer ping for any address itself (so 203.0.113.7, which
// nothing reaches, answered).
func TestEnclavePing(t *testing.T) {
	testutil.RequireCommand(t, "ping")
	env := newEnclaveEnv(t)
	env.startHost()
	env.startEnclave()
	testutil.WaitFor(t, 20*time.Second, "egress from the enclave", env.checkEgressHTTP)
	ping := func(addr string) (string, error) {
		out, err := exec.Command("ip", "netns", "exec", env.ns.Name, "ping", "-n", "-c", "1", "-W", "2", addr).CombinedOutput()
		return string(out), err
	}
	for _, a := range []string{"192.168.127.1", hostLoopback} {
		if out, err := ping(a); err != nil {
			t.Errorf("ping %s: %v\n%s", a, err, out)
		}
	}
	out, err := ping("203.0.113.7")
	if err == nil || !strings.Contains(out, "Packet filtered") {
		t.Errorf("ping 203.0.113.7: %v; want no reply, and Packet filtered\n%s", err, out)
	}
}
