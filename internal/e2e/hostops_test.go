package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
)

// TestHostOpsControl drives quench-host ctl against the daemon: add a fast
// path port and a tunnel port under load on another port, list, remove;
// then metrics; then SIGTERM drains an in-flight request.
func TestHostOpsControl(t *testing.T) {
	env := newFastPathEnv(t, 8443, 9443)
	steady := testutil.FreePort(t)
	metrics := testutil.FreePort(t)
	env.startHost("-publish-vsock", fmt.Sprintf("127.0.0.1:%d:8443", steady), "-metrics", fmt.Sprintf("127.0.0.1:%d", metrics), "-drain-timeout", "5s")
	steadyURL := fmt.Sprintf("http://127.0.0.1:%d/", steady)
	testutil.WaitFor(t, 10*time.Second, "fast path up", func() error { _, _, err := get(context.Background(), steadyURL); return err })

	stopLoad := testutil.Load(4, func() error { _, _, err := get(context.Background(), steadyURL); return err })
	for range 3 {
		added := testutil.FreePort(t)
		if out, err := env.ctl("add-vsock", fmt.Sprintf("127.0.0.1:%d:9443", added)); err != nil {
			t.Fatalf("ctl add-vsock: %v: %s", err, out)
		}
		body, _, err := get(context.Background(), fmt.Sprintf("http://127.0.0.1:%d/", added))
		if err != nil || !strings.HasPrefix(body, "port 9443;") {
			t.Fatalf("added port: %q, %v", body, err)
		}
		out, err := env.ctl("ports")
		if err != nil || !strings.Contains(out, fmt.Sprintf(`"addr": "127.0.0.1:%d"`, added)) {
			t.Fatalf("ctl ports: %v: %s", err, out)
		}
		if out, err := env.ctl("-drain", "2s", "rm", fmt.Sprintf("tcp/127.0.0.1:%d", added)); err != nil {
			t.Fatalf("ctl rm: %v: %s", err, out)
		}
		if _, _, err := get(context.Background(), fmt.Sprintf("http://127.0.0.1:%d/", added)); err == nil {
			t.Fatal("removed port still answers")
		}
	}
	if load := stopLoad(); load.Failed != 0 || load.OK == 0 {
		t.Fatalf("steady port: %d ok, %d failed; first: %v", load.OK, load.Failed, load.First)
	}
	if out, err := env.ctl("rm", "tcp/127.0.0.1:1"); err == nil || !strings.Contains(out, "no such published port") {
		t.Errorf("ctl rm of an unknown port: %v: %s", err, out)
	}
	if out, err := env.ctl("status"); err != nil || !strings.Contains(out, `"enclaves"`) {
		t.Errorf("ctl status: %v: %s", err, out)
	}

	body, _, err := get(context.Background(), fmt.Sprintf("http://127.0.0.1:%d/metrics", metrics))
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`quench_host_port_connections_total{mode="vsock",port="tcp/127.0.0.1:%d"}`, steady)
	if !strings.Contains(body, want) {
		t.Errorf("metrics lack %s:\n%s", want, body)
	}

	// SIGTERM while a request is in flight: it completes, then the daemon exits.
	res := make(chan error, 1)
	go func() {
		body, _, err := get(context.Background(), steadyURL+"slow")
		if err == nil && !strings.HasPrefix(body, "port 8443") {
			err = fmt.Errorf("body %q", body)
		}
		res <- err
	}()
	time.Sleep(150 * time.Millisecond)
	if err := env.host.Stop(10 * time.Second); err != nil {
		t.Errorf("quench-host exit: %v", err)
	}
	if err := <-res; err != nil {
		t.Errorf("in-flight request during SIGTERM drain: %v", err)
	}
}

// TestEgressPolicy runs an enclave (namespace + quench-enclave) behind
// quench-host -allow rules: TCP, UDP and DNS are allowed and refused as
// configured, including a hostname rule matched through DNS.
func TestEgressPolicy(t *testing.T) {
	env := newEnclaveEnv(t)
	// A second HTTP server and UDP echo on the host that the policy refuses.
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedHTTP := hl.Addr().(*net.TCPAddr).Port
	serveHTTP(t, hl, "hello from the host")
	hpc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedUDP := hpc.LocalAddr().(*net.UDPAddr).Port
	serveUDPEcho(t, hpc)
	// Our own upstream DNS: allowed.example and denied.example both resolve
	// to the host loopback address.
	dpc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dpc.Close() })
	go testutil.ServeDNS(dpc, map[string]netip.Addr{
		"allowed.example.": netip.MustParseAddr(hostLoopback),
		"denied.example.":  netip.MustParseAddr(hostLoopback),
	})
	metrics := testutil.FreePort(t)
	args := []string{
		"-listen", "unix://" + env.hostSock,
		"-publish", fmt.Sprintf("127.0.0.1:%d:8080", env.httpPort),
		"-dns", dpc.LocalAddr().String(),
		"-allow", fmt.Sprintf("allowed.example:%d/tcp", env.hostHTTP),
		"-allow", fmt.Sprintf("%s:%d/udp", hostLoopback, env.hostUDP),
		"-metrics", fmt.Sprintf("127.0.0.1:%d", metrics),
		"-log-level", "debug",
	}
	env.host = testutil.Start(t, "quench-host", exec.Command(filepath.Join(env.bin, "quench-host"), args...))
	testutil.WaitForFile(t, env.hostSock, 10*time.Second)
	env.startEnclave()
	testutil.WaitFor(t, 20*time.Second, "inbound HTTP through the published port", func() error { return env.checkInbound(context.Background()) })

	dialHTTP := env.getHostHTTP
	t.Run("DNS", func(t *testing.T) {
		err := env.ns.Do(func() error {
			got, err := testutil.QueryA("192.168.127.1:53", "allowed.example")
			if err != nil || got[0].String() != hostLoopback {
				return fmt.Errorf("allowed.example: %v, %v", got, err)
			}
			if got, err := testutil.QueryA("192.168.127.1:53", "denied.example"); err == nil {
				return fmt.Errorf("denied.example resolved to %v", got)
			}
			// The local zone is not subject to the policy.
			if _, err := testutil.QueryA("192.168.127.1:53", "host.quench.internal"); err != nil {
				return fmt.Errorf("host.quench.internal: %v", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("TCP", func(t *testing.T) {
		// Allowed by the hostname rule, learned from the DNS answer above.
		if err := dialHTTP(net.JoinHostPort(hostLoopback, strconv.Itoa(env.hostHTTP))); err != nil {
			t.Fatalf("allowed: %v", err)
		}
		if err := dialHTTP(net.JoinHostPort(hostLoopback, strconv.Itoa(refusedHTTP))); err == nil {
			t.Fatal("refused port answered")
		}
	})
	t.Run("UDP", func(t *testing.T) {
		err := env.ns.Do(func() error {
			ok, err := net.Dial("udp", net.JoinHostPort(hostLoopback, strconv.Itoa(env.hostUDP)))
			if err != nil {
				return err
			}
			defer ok.Close()
			if err := udpRoundTrips(ok, "allowed"); err != nil {
				return fmt.Errorf("allowed: %v", err)
			}
			no, err := net.Dial("udp", net.JoinHostPort(hostLoopback, strconv.Itoa(refusedUDP)))
			if err != nil {
				return err
			}
			defer no.Close()
			if err := udpRoundTrip(no, "refused"); err == nil {
				return fmt.Errorf("refused UDP port echoed")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("counted", func(t *testing.T) {
		body, _, err := get(context.Background(), fmt.Sprintf("http://127.0.0.1:%d/metrics", metrics))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`quench_host_dns_queries_total{result="refused"} 1`, `quench_host_nat_dials_total{result="refused"} 1`, `quench_host_nat_udp_refused_total 1`} {
			if !strings.Contains(body, want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	})
}
