package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
)

// TestTAPEndToEnd runs quench-host and quench-enclave (TAP mode) with a
// namespace as the enclave and checks every data path of issue 2.
func TestTAPEndToEnd(t *testing.T) {
	env := newEnclaveEnv(t)
	env.startHost()
	env.startEnclave()
	ctx := context.Background()

	testutil.WaitFor(t, 20*time.Second, "inbound HTTP through the published port", func() error { return env.checkInbound(ctx) })

	t.Run("resolv.conf", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(env.dir, "resolv.conf"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "nameserver 192.168.127.1") {
			t.Errorf("resolv.conf = %q, want the gateway as nameserver", b)
		}
	})
	t.Run("egress HTTP to host loopback", func(t *testing.T) {
		if err := env.checkEgressHTTP(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("egress from a port whose last connection the server closed", func(t *testing.T) {
		// The server closes first, so quench-host's end of the NAT
		// connection (gVisor's) is the one left in TIME_WAIT, and Linux in
		// the enclave, which closed second, may pick the same port again at
		// once. gVisor passes a new SYN for a tuple in TIME_WAIT only to a
		// listening endpoint, and NAT has none: with gVisor's 60 s
		// TIME_WAIT the SYN was dropped for a minute. A fixed port here
		// stands for an ephemeral one that comes round again.
		port := 20000 + rand.IntN(10000) // below the ephemeral range
		d := &net.Dialer{
			LocalAddr: &net.TCPAddr{Port: port},
			Timeout:   5 * time.Second, // SYNs at 0, 1 and 3 s
			Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				err := rc.Control(func(fd uintptr) {
					// The last connection's socket may still wait for the
					// ACK of its FIN (LAST_ACK) for a moment.
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
				})
				return errors.Join(err, serr)
			},
		}
		addr := net.JoinHostPort(hostLoopback, strconv.Itoa(env.hostHTTP))
		for i := range 3 {
			start := time.Now()
			var err error
			for try := 0; try < 50; try++ {
				if err = env.getHostHTTPWith(d, addr); !errors.Is(err, syscall.EADDRNOTAVAIL) && !errors.Is(err, syscall.EADDRINUSE) {
					break
				}
				time.Sleep(20 * time.Millisecond) // the old socket's final ACK
			}
			if err != nil {
				t.Fatalf("connection %d from port %d: %v", i+1, port, err)
			}
			t.Logf("connection %d from port %d: %v", i+1, port, time.Since(start).Round(time.Millisecond))
		}
	})
	t.Run("DNS", func(t *testing.T) {
		for name, want := range map[string]string{
			"host.quench.internal":    hostLoopback,
			"gateway.quench.internal": "192.168.127.1",
			"upstream.example":        "203.0.113.7", // via the host's -dns upstream
		} {
			err := env.ns.Do(func() error {
				got, err := testutil.QueryA("192.168.127.1:53", name)
				if err != nil {
					return err
				}
				if got[0].String() != want {
					return fmt.Errorf("%s resolved to %v, want %s", name, got, want)
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("UDP inbound", func(t *testing.T) {
		c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", env.udpPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The first datagram may race the enclave's ARP; retry a few times.
		testutil.WaitFor(t, 5*time.Second, "UDP echo from the enclave", func() error { return udpRoundTrip(c, "ping in") })
	})
	t.Run("UDP outbound", func(t *testing.T) {
		err := env.ns.Do(func() error {
			c, err := net.Dial("udp", net.JoinHostPort(hostLoopback, strconv.Itoa(env.hostUDP)))
			if err != nil {
				return err
			}
			defer c.Close()
			return udpRoundTrips(c, "ping out")
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("metadata blocked", func(t *testing.T) {
		err := env.ns.Do(func() error {
			c, err := net.DialTimeout("tcp", "169.254.169.254:80", 2*time.Second)
			if err == nil {
				c.Close()
				return fmt.Errorf("connected to the EC2 metadata address")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("host restart", func(t *testing.T) {
		env.restartHost()
		start := time.Now()
		testutil.WaitFor(t, 10*time.Second, "inbound HTTP after host restart", func() error { return env.checkInbound(ctx) })
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("new connections worked again %v after the host came back, want within 2s", d)
		}
		if err := env.checkEgressHTTP(); err != nil {
			t.Errorf("egress after restart: %v", err)
		}
	})
	t.Run("enclave stops cleanly", func(t *testing.T) {
		if err := env.enclave.Stop(10 * time.Second); err != nil {
			t.Fatalf("quench-enclave on SIGINT: %v", err)
		}
	})
}
