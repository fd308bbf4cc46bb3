package tap

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestTAPConfigDefaults(t *testing.T) {
	pfx, addr := netip.MustParsePrefix, netip.MustParseAddr
	tests := []struct {
		name    string
		cfg     TAPConfig
		want    TAPConfig
		wantErr bool
	}{
		{name: "zero", want: TAPConfig{Name: "tap0", MTU: 65520, MAC: DefaultMAC,
			Address: pfx("192.168.127.2/24"), Gateway: addr("192.168.127.1"), DNS: []netip.Addr{addr("192.168.127.1")}}},
		{name: "own subnet", cfg: TAPConfig{Address: pfx("10.1.2.3/24")}, want: TAPConfig{Name: "tap0", MTU: 65520, MAC: DefaultMAC,
			Address: pfx("10.1.2.3/24"), Gateway: addr("10.1.2.1"), DNS: []netip.Addr{addr("10.1.2.1")}}},
		{name: "explicit", cfg: TAPConfig{Name: "x", MTU: 1500, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1},
			Address: pfx("10.0.0.9/8"), Gateway: addr("10.0.0.254"), DNS: []netip.Addr{addr("10.0.0.53")}, ResolvConf: "/r"},
			want: TAPConfig{Name: "x", MTU: 1500, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1},
				Address: pfx("10.0.0.9/8"), Gateway: addr("10.0.0.254"), DNS: []netip.Addr{addr("10.0.0.53")}, ResolvConf: "/r"}},
		{name: "IPv6 gateway for IPv4 address", cfg: TAPConfig{Gateway: addr("fe80::1")}, wantErr: true},
		{name: "MTU too small", cfg: TAPConfig{MTU: 10}, wantErr: true},
		{name: "15-byte name is fine", cfg: TAPConfig{Name: "abcdefghijklmno"}, want: TAPConfig{Name: "abcdefghijklmno", MTU: 65520, MAC: DefaultMAC,
			Address: pfx("192.168.127.2/24"), Gateway: addr("192.168.127.1"), DNS: []netip.Addr{addr("192.168.127.1")}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.withDefaults()
			if tt.wantErr {
				if err == nil {
					t.Fatalf("withDefaults(%+v) = nil error", tt.cfg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
				cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("withDefaults (-want +got):\n%s", diff)
			}
		})
	}
	// The default MAC is copied, not shared.
	got, _ := TAPConfig{}.withDefaults()
	got.MAC[0] = 0
	if DefaultMAC[0] != 0x5a {
		t.Error("withDefaults shares DefaultMAC")
	}
}

func TestHeaderEnd(t *testing.T) {
	tests := []struct {
		in   string
		from int
		want int
	}{
		{"", 0, -1},
		{"\r\n\r\n", 0, 4},
		{"\n\n", 0, 2},
		{"POST / HTTP/1.1\r\n\r\nframes", 0, 19},
		{"POST / HTTP/1.1\r\nA: b\r\n\r\n", 0, 25},
		{"POST / HTTP/1.1\r\nA: b\r\n\r", 0, -1},
		{"POST / HTTP/1.1\r\nA: b\r\n\r\n", 20, 25},
		{"A\r\n\n", 0, 4},
	}
	for _, tt := range tests {
		if got := headerEnd([]byte(tt.in), tt.from); got != tt.want {
			t.Errorf("headerEnd(%q, %d) = %d, want %d", tt.in, tt.from, got, tt.want)
		}
	}
}
