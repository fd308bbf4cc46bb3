package main

import (
	"flag"
	"io"
	"testing"
	"time"
)

// TestLimitsConfig: the layer-4 limits and the isolation limits have YAML keys and flags (which
// override the file), reach host.Config, and a zero timeout means off.
func TestLimitsConfig(t *testing.T) {
	p := writeFile(t, `
max_port_conns: 100
max_port_conns_per_port: 50
max_port_conns_per_client: 6
first_byte_timeout: 0s
max_port_udp_flows: 10
max_nat_conns: 200
max_nat_conns_per_enclave: 20
max_nat_udp_flows: 30
max_nat_udp_flows_per_enclave: 3
nat_idle_timeout: 1h
max_dials_per_enclave: 7
max_vsock_proxy_conns: 40
max_vsock_proxy_conns_per_enclave: 4
max_enclave_streams: 9
max_enclave_streams_per_peer: 3
max_enclave_handshakes: 4
max_macs_per_enclave: 5
max_addresses_per_enclave: 2
dhcp_offer_timeout: 10s
`)
	o := defaultOptions()
	if err := loadConfigFile(p, &o); err != nil {
		t.Fatal(err)
	}
	configPath := p
	fs := flag.NewFlagSet("quench-host", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.bind(fs, &configPath)
	if err := fs.Parse([]string{"-max-nat-conns-per-enclave", "-1", "-nat-idle-timeout", "0"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.hostConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxPortConns != 100 || cfg.MaxPortConnsPerPort != 50 || cfg.MaxPortConnsPerClient != 6 || cfg.FirstByteTimeout >= 0 || cfg.MaxPortUDPFlows != 10 ||
		cfg.MaxNATConns != 200 || cfg.MaxNATConnsPerEnclave != -1 || cfg.MaxNATUDPFlows != 30 || cfg.MaxNATUDPFlowsPerEnclave != 3 ||
		cfg.NATIdleTimeout >= 0 || cfg.MaxDialsPerEnclave != 7 || cfg.MaxVSockProxyConns != 40 || cfg.MaxVSockProxyConnsPerPeer != 4 ||
		cfg.MaxEnclaveStreams != 9 || cfg.MaxEnclaveStreamsPerPeer != 3 || cfg.MaxEnclaveHandshakes != 4 ||
		cfg.MaxMACsPerEnclave != 5 || cfg.MaxAddressesPerEnclave != 2 || cfg.DHCPOfferTimeout != 10*time.Second {
		t.Errorf("host config limits: %+v", cfg)
	}
	d := defaultOptions()
	if cfg, _ := d.hostConfig(); cfg.FirstByteTimeout != 30*time.Second || cfg.NATIdleTimeout != 2*time.Hour || cfg.MaxPortConns != 0 {
		t.Errorf("defaults: first byte %v, NAT idle %v, max port conns %d", cfg.FirstByteTimeout, cfg.NATIdleTimeout, cfg.MaxPortConns)
	}
}
