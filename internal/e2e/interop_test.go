package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
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
	env := newEnclaveEnv(t)
	peers := testutil.Peers(t)
	env.startHost("-mtu", "1500")

	// gvforwarder configures its TAP with DHCP, which this namespace does
	// not run; give it a persistent, configured TAP and -preexisting.
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
	testutil.Start(t, "gvforwarder", env.ns.Command(filepath.Join(peers, "gvforwarder"),
		"-url", "unix://"+env.hostSock, "-iface", "tap0", "-preexisting", "-mtu", "1500", "-stop-if-exist", ""))
	ctx := context.Background()
	testutil.WaitFor(t, 20*time.Second, "inbound HTTP through gvforwarder", func() error { return env.checkInbound(ctx) })
	if err := env.checkEgressHTTP(); err != nil {
		t.Fatalf("egress through gvforwarder: %v", err)
	}
}

func netipToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
