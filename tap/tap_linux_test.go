//go:build linux

package tap_test

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/quenchnet/quench/tap"
	"github.com/quenchnet/quench/tap/taptest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// requireRoot skips the test unless it can create network namespaces and
// TAP devices.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_SYS_ADMIN for a network namespace, CAP_NET_ADMIN for the TAP device); run as root: go test ./tap -run TestCreateTAP")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no /dev/net/tun: %v", err)
	}
}

// inNewNetns runs fn on this goroutine's OS thread switched into a new,
// uniquely named network namespace, and switches back afterwards. The
// namespace is deleted in t.Cleanup, after cleanups fn registers.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	restored := false
	defer func() {
		if restored {
			runtime.UnlockOSThread()
		} // else the thread stays locked and dies with the goroutine
	}()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	name := fmt.Sprintf("quench-taptest-%d-%x", os.Getpid(), rand.Uint32())
	ns, err := netns.NewNamed(name) // switches this thread
	if err != nil {
		if err := netns.Set(orig); err == nil {
			restored = true
		}
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	defer ns.Close()
	defer func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("restore network namespace: %v", err)
			return
		}
		restored = true
	}()
	fn()
}

// TestCreateTAP creates TAP devices in fresh namespaces and checks their
// configuration through netlink.
func TestCreateTAP(t *testing.T) {
	requireRoot(t)
	type linkState struct {
		Name     string
		MTU      int
		MAC      string
		Up       bool
		Addrs    []string
		Gateway  string
		LoopUp   bool
		Resolver string
	}
	tests := []struct {
		name string
		cfg  tap.TAPConfig
		want linkState
	}{
		{
			name: "defaults",
			cfg:  tap.TAPConfig{},
			want: linkState{Name: "tap0", MTU: tap.DefaultMTU, MAC: "5a:94:ef:e4:0c:ee", Up: true,
				Addrs: []string{"192.168.127.2/24"}, Gateway: "192.168.127.1", LoopUp: true,
				Resolver: "# written by quench\nnameserver 192.168.127.1\noptions edns0\n"},
		},
		{
			name: "custom",
			cfg: tap.TAPConfig{Name: "qtap7", MTU: 1500, MAC: net.HardwareAddr{0x02, 1, 2, 3, 4, 5},
				Address: netip.MustParsePrefix("10.77.0.5/16"),
				DNS:     []netip.Addr{netip.MustParseAddr("10.77.0.53"), netip.MustParseAddr("10.77.0.54")}},
			want: linkState{Name: "qtap7", MTU: 1500, MAC: "02:01:02:03:04:05", Up: true,
				Addrs: []string{"10.77.0.5/16"}, Gateway: "10.77.0.1", LoopUp: true,
				Resolver: "# written by quench\nnameserver 10.77.0.53\nnameserver 10.77.0.54\noptions edns0\n"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inNewNetns(t, func() {
				cfg := tt.cfg
				cfg.ResolvConf = filepath.Join(t.TempDir(), "resolv.conf")
				dev, err := tap.CreateTAP(cfg)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { dev.Close() })
				if dev.Name() != tt.want.Name || dev.MTU() != tt.want.MTU || dev.BatchSize() != tap.IdealBatchSize {
					t.Errorf("Name, MTU, BatchSize = %q, %d, %d", dev.Name(), dev.MTU(), dev.BatchSize())
				}

				h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
				if err != nil {
					t.Fatal(err)
				}
				defer h.Close()
				link, err := h.LinkByName(tt.want.Name)
				if err != nil {
					t.Fatal(err)
				}
				var got linkState
				attrs := link.Attrs()
				got.Name, got.MTU, got.MAC = attrs.Name, attrs.MTU, attrs.HardwareAddr.String()
				got.Up = attrs.Flags&net.FlagUp != 0
				addrs, err := h.AddrList(link, netlink.FAMILY_V4)
				if err != nil {
					t.Fatal(err)
				}
				for _, a := range addrs {
					got.Addrs = append(got.Addrs, a.IPNet.String())
				}
				routes, err := h.RouteList(link, netlink.FAMILY_V4)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range routes {
					if r.Gw != nil && (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") {
						got.Gateway = r.Gw.String()
					}
				}
				lo, err := h.LinkByName("lo")
				if err != nil {
					t.Fatal(err)
				}
				got.LoopUp = lo.Attrs().Flags&net.FlagUp != 0
				resolv, err := os.ReadFile(cfg.ResolvConf)
				if err != nil {
					t.Fatal(err)
				}
				got.Resolver = string(resolv)
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("link (-want +got):\n%s", diff)
				}

				// A second device of the same name is refused.
				if dev2, err := tap.CreateTAP(cfg); err == nil {
					dev2.Close()
					t.Error("second CreateTAP with the same name succeeded")
				}
			})
		})
	}
}

// TestTAPPump runs a real TAP device in a fresh namespace behind a Pump
// and a unix socket, plays the gateway on the host end, and sends UDP both
// ways between a socket in the namespace and the host end.
func TestTAPPump(t *testing.T) {
	requireRoot(t)
	inNewNetns(t, func() {
		dev, err := tap.CreateTAP(tap.TAPConfig{})
		if err != nil {
			t.Fatal(err)
		}
		p := tap.NewPump(dev, nil)
		t.Cleanup(func() {
			if err := p.Close(); err != nil {
				t.Error(err)
			}
			checkNoPumpGoroutines(t)
		})
		// This socket lives in the new namespace.
		sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: enclaveIP.AsSlice()})
		if err != nil {
			t.Fatal(err)
		}
		defer sock.Close()
		local := sock.LocalAddr().(*net.UDPAddr).AddrPort()

		host, done := attach(t, t.Context(), p)
		deadline := time.Now().Add(10 * time.Second)
		host.NetConn().SetReadDeadline(deadline)
		sock.SetDeadline(deadline)

		// Enclave to host: the kernel resolves the gateway first.
		gw := netip.AddrPortFrom(gatewayIP, 9)
		if _, err := sock.WriteToUDPAddrPort([]byte("ping"), gw); err != nil {
			t.Fatal(err)
		}
		for {
			f, err := host.Next()
			if err != nil {
				t.Fatalf("waiting for ARP: %v", err)
			}
			if a, err := taptest.ParseARP(f); err == nil && a.Op == 1 && a.DstIP == gatewayIP {
				if a.SrcIP != enclaveIP || a.SrcMAC.String() != tap.DefaultMAC.String() {
					t.Errorf("ARP request from %v at %v", a.SrcIP, a.SrcMAC)
				}
				break
			}
		}
		reply := taptest.ARPReply(gatewayMAC, gatewayIP, tap.DefaultMAC, enclaveIP)
		if _, err := host.WriteFrames([][]byte{reply}, 0); err != nil {
			t.Fatal(err)
		}
		for {
			f, err := host.Next()
			if err != nil {
				t.Fatalf("waiting for UDP: %v", err)
			}
			u, err := taptest.ParseUDPv4(f)
			if err != nil || u.Dst != gw {
				continue
			}
			if string(u.Payload) != "ping" || u.Src != local || u.DstMAC.String() != gatewayMAC.String() {
				t.Errorf("got UDP %v -> %v (%v) %q", u.Src, u.Dst, u.DstMAC, u.Payload)
			}
			break
		}

		// Host to enclave.
		pong := taptest.UDPv4Frame(tap.DefaultMAC, gatewayMAC, gw, local, []byte("pong"))
		if _, err := host.WriteFrames([][]byte{pong}, 0); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		n, from, err := sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("socket in namespace: %v", err)
		}
		if string(buf[:n]) != "pong" || from != gw {
			t.Errorf("socket got %q from %v, want \"pong\" from %v", buf[:n], from, gw)
		}

		host.Close()
		if err := waitRun(t, done); err == nil {
			t.Error("Run = nil after host closed")
		}
		if st := p.Stats(); st.ToConn < 2 || st.ToDevice != 2 {
			t.Errorf("Stats = %+v, want ToConn >= 2, ToDevice = 2", st)
		}
	})
}

// TestCreateTAPBadConfig checks that invalid configurations are refused
// before anything is created (no root needed).
func TestCreateTAPBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  tap.TAPConfig
	}{
		{"long name", tap.TAPConfig{Name: "a-very-long-name0"}},
		{"MTU too large", tap.TAPConfig{MTU: 65522}},
		{"short MAC", tap.TAPConfig{MAC: net.HardwareAddr{1, 2, 3}}},
		{"gateway outside subnet", tap.TAPConfig{Gateway: netip.MustParseAddr("10.0.0.1")}},
		{"gateway is own address", tap.TAPConfig{Gateway: netip.MustParseAddr("192.168.127.2")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if dev, err := tap.CreateTAP(tt.cfg); err == nil {
				dev.Close()
				t.Fatalf("CreateTAP(%+v) = nil error", tt.cfg)
			}
		})
	}
}
