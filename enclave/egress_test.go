package enclave_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/policy"
)

// TestUserspaceEgressPolicy checks Config.Egress in userspace mode: allowed
// names and CIDRs connect, everything else is refused before any packet
// leaves, with ErrEgressRefused.
func TestUserspaceEgressPolicy(t *testing.T) {
	sock := usSocket(t)
	usHost(t, sock)
	port := usHostHTTP(t, "from the host")
	tests := []struct {
		name    string
		rules   []string
		addr    string
		allowed bool
	}{
		{"name allowed", []string{fmt.Sprintf("host.quench.internal:%d", port)}, fmt.Sprintf("host.quench.internal:%d", port), true},
		{"address of an allowed name, dialled directly", []string{fmt.Sprintf("host.quench.internal:%d", port)}, fmt.Sprintf("192.168.127.254:%d", port), false},
		{"other port", []string{fmt.Sprintf("host.quench.internal:%d", port)}, fmt.Sprintf("host.quench.internal:%d", port+1), false},
		{"other name", []string{fmt.Sprintf("host.quench.internal:%d", port)}, "gateway.quench.internal:53", false},
		{"CIDR allowed", []string{fmt.Sprintf("192.168.127.0/24:%d", port)}, fmt.Sprintf("192.168.127.254:%d", port), true},
		{"CIDR elsewhere", []string{fmt.Sprintf("10.0.0.0/8:%d", port)}, fmt.Sprintf("192.168.127.254:%d", port), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := policy.Parse(tt.rules)
			if err != nil {
				t.Fatal(err)
			}
			e := usStartEnclave(t, sock, func(c *enclave.Config) { c.Egress = p })
			usReady(t, e)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := e.Dial(ctx, "tcp", tt.addr)
			if tt.allowed {
				if err != nil {
					t.Fatalf("Dial(%s) = %v, want allowed", tt.addr, err)
				}
				c.Close()
				return
			}
			if err == nil {
				c.Close()
				t.Fatalf("Dial(%s) succeeded, want refused", tt.addr)
			}
			if !errors.Is(err, enclave.ErrEgressRefused) {
				t.Fatalf("Dial(%s) = %v, want ErrEgressRefused", tt.addr, err)
			}
		})
	}
}
