package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/quenchnet/quench/internal/testutil"
)

// TestInteropEnclaveWithStockGvproxy runs quench-enclave (TAP mode) against
// a stock gvproxy: the same wire format, so inbound and egress work.
func TestInteropEnclaveWithStockGvproxy(t *testing.T) {
	env := newEnclaveEnv(t)
	peers := testutil.Peers(t)
	gvSock := filepath.Join(env.dir, "gvproxy.sock")
	testutil.Start(t, "gvproxy", exec.Command(filepath.Join(peers, "gvproxy"),
		"-listen", "unix://"+gvSock, "-mtu", "1500", "-ssh-port", "-1"))
	testutil.WaitForFile(t, gvSock, 20*time.Second)

	// Publish host port → enclave :8080 through gvproxy's API.
	api := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", gvSock)
		},
	}}
	body, _ := json.Marshal(map[string]string{
		"local":    fmt.Sprintf("127.0.0.1:%d", env.httpPort),
		"remote":   "192.168.127.2:8080",
		"protocol": "tcp",
	})
	testutil.WaitFor(t, 10*time.Second, "gvproxy expose API", func() error {
		resp, err := api.Post("http://gvproxy/services/forwarder/expose", "application/json", bytes.NewReader(body))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("expose: %s", resp.Status)
		}
		return nil
	})

	env.hostSock = gvSock
	env.startEnclave("-mtu", "1500")
	ctx := context.Background()
	testutil.WaitFor(t, 20*time.Second, "inbound HTTP through gvproxy", func() error { return env.checkInbound(ctx) })
	if err := env.checkEgressHTTP(); err != nil {
		t.Fatalf("egress through gvproxy: %v", err)
	}
}

// TestInteropStockGvforwarderWithHost runs a stock gvforwarder (the
// in-VM side nitriding and podman use) against quench-host.
func TestInteropStockGvforwarderWithHost(t *testing.T) {
	// As shipped: gvforwarder creates tap0 and runs udhcpc on it, which
	// quench-host's DHCP service answers.
	t.Run("DHCP", func(t *testing.T) {
		testutil.RequireCommand(t, "udhcpc")
		if _, err := os.Stat("/sbin/resolvconf"); err == nil {
			t.Skip("udhcpc's script would call /sbin/resolvconf, which edits the host's resolver configuration")
		}
		env := newEnclaveEnv(t)
		peers := testutil.Peers(t)
		resolvConf := isolateResolvConf(t, env.ns)
		env.startHost("-mtu", "1500")
		startGvforwarder(t, env, filepath.Join(peers, "gvforwarder"),
			"-url", "unix://"+env.hostSock, "-iface", "tap0", "-mtu", "1500", "-stop-if-exist", "")
		ctx := context.Background()
		testutil.WaitFor(t, 30*time.Second, "inbound HTTP through gvforwarder", func() error { return env.checkInbound(ctx) })
		if err := env.checkEgressHTTP(); err != nil {
			t.Fatalf("egress through gvforwarder: %v", err)
		}

		// What udhcpc configured from the DHCP reply.
		err := env.ns.Do(func() error {
			link, err := netlink.LinkByName("tap0")
			if err != nil {
				return err
			}
			if hw := link.Attrs().HardwareAddr.String(); hw != "5a:94:ef:e4:0c:ee" {
				return fmt.Errorf("tap0 MAC %s, want gvforwarder's default 5a:94:ef:e4:0c:ee", hw)
			}
			if mtu := link.Attrs().MTU; mtu != 1500 {
				return fmt.Errorf("tap0 MTU %d, want 1500 (DHCP option 26)", mtu)
			}
			addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			if len(addrs) != 1 || addrs[0].IPNet.String() != "192.168.127.2/24" {
				return fmt.Errorf("tap0 addresses %v, want 192.168.127.2/24", addrs)
			}
			routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			for _, r := range routes {
				if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.Equal(net.IPv4(192, 168, 127, 1)) {
					return nil
				}
			}
			return fmt.Errorf("no default route via 192.168.127.1 in %v", routes)
		})
		if err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, 5*time.Second, "udhcpc writing the namespace's resolv.conf", func() error {
			b, err := os.ReadFile(resolvConf)
			if err != nil {
				return err
			}
			if !strings.Contains(string(b), "nameserver 192.168.127.1") {
				return fmt.Errorf("resolv.conf = %q, want the gateway as nameserver", b)
			}
			return nil
		})
		err = env.ns.Do(func() error {
			got, err := testutil.QueryA("192.168.127.1:53", "upstream.example")
			if err != nil {
				return err
			}
			if got[0].String() != "203.0.113.7" {
				return fmt.Errorf("upstream.example resolved to %v, want 203.0.113.7", got)
			}
			return nil
		})
		if err != nil {
			t.Errorf("DNS through the leased nameserver: %v", err)
		}
	})

	// With a TAP configured beforehand (-preexisting) and quench-host's
	// DHCP off.
	t.Run("preexisting", func(t *testing.T) {
		env := newEnclaveEnv(t)
		peers := testutil.Peers(t)
		env.startHost("-mtu", "1500", "-dhcp=false")
		err := env.ns.Do(func() error {
			la := netlink.NewLinkAttrs()
			la.Name = "tap0"
			la.MTU = 1500
			la.HardwareAddr = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee}
			tap := &netlink.Tuntap{LinkAttrs: la, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI}
			if err := netlink.LinkAdd(tap); err != nil {
				return fmt.Errorf("add tap: %w", err)
			}
			link, err := netlink.LinkByName("tap0")
			if err != nil {
				return err
			}
			addr := &netlink.Addr{IPNet: netipToIPNet(netip.MustParsePrefix("192.168.127.2/24"))}
			if err := netlink.AddrAdd(link, addr); err != nil {
				return fmt.Errorf("add address: %w", err)
			}
			if err := netlink.LinkSetUp(link); err != nil {
				return err
			}
			return netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IPv4(192, 168, 127, 1)})
		})
		if err != nil {
			t.Fatal(err)
		}
		startGvforwarder(t, env, filepath.Join(peers, "gvforwarder"),
			"-url", "unix://"+env.hostSock, "-iface", "tap0", "-preexisting", "-mtu", "1500", "-stop-if-exist", "")
		ctx := context.Background()
		testutil.WaitFor(t, 20*time.Second, "inbound HTTP through gvforwarder", func() error { return env.checkInbound(ctx) })
		if err := env.checkEgressHTTP(); err != nil {
			t.Fatalf("egress through gvforwarder: %v", err)
		}
	})
}

// startGvforwarder runs gvforwarder in env's namespace, in a process group
// of its own that is killed in t.Cleanup, so that a DHCP client it started
// goes with it.
func startGvforwarder(t *testing.T, env *enclaveEnv, bin string, args ...string) {
	t.Helper()
	cmd := env.ns.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := testutil.Start(t, "gvforwarder", cmd)
	pgid := p.Cmd.Process.Pid
	// Runs before testutil.Start's own cleanup, which then reaps the leader.
	t.Cleanup(func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })
}

// isolateResolvConf gives ns a resolv.conf of its own: `ip netns exec`
// bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf for the
// programs it runs, so a DHCP client's script writes there. It returns that
// file's path. In t.Cleanup it removes it and checks that the machine's
// /etc/resolv.conf is byte for byte what it was. The test is skipped when
// there is no /etc/resolv.conf to shadow (the script would create one).
func isolateResolvConf(t *testing.T, ns *testutil.NS) string {
	t.Helper()
	const hostResolv = "/etc/resolv.conf"
	before, err := os.ReadFile(hostResolv)
	if errors.Is(err, fs.ErrNotExist) {
		t.Skipf("no %s for `ip netns exec` to shadow; a DHCP client's script would create it", hostResolv)
	}
	if err != nil {
		t.Fatal(err)
	}
	_, statErr := os.Stat("/etc/netns")
	dir := filepath.Join("/etc/netns", ns.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
		if errors.Is(statErr, fs.ErrNotExist) {
			_ = os.Remove("/etc/netns") // only if empty: other tests may use it
		}
		after, err := os.ReadFile(hostResolv)
		if err != nil {
			t.Errorf("%s after the test: %v", hostResolv, err)
		} else if !bytes.Equal(before, after) {
			t.Errorf("%s changed during the test:\nbefore: %q\nafter:  %q", hostResolv, before, after)
		}
	})
	path := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(path, []byte("# quench test namespace "+ns.Name+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func netipToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
