package host

import (
	"net/netip"
	"testing"
)

func TestSubnetBroadcast(t *testing.T) {
	for p, want := range map[string]string{
		"192.168.127.0/24": "192.168.127.255",
		"10.1.0.0/16":      "10.1.255.255",
		"10.1.2.3/30":      "10.1.2.3",
		"10.1.2.3/32":      "10.1.2.3",
	} {
		if got := subnetBroadcast(netip.MustParsePrefix(p)); got.String() != want {
			t.Errorf("subnetBroadcast(%s) = %v, want %s", p, got, want)
		}
	}
}
