package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/internal/logfmt"
	"github.com/quenchnet/quench/policy"
)

// options are quench-host's settings: the flags, or the keys of the -config
// YAML file (same names with underscores). Flags given on the command line
// override the file; list flags add to the file's lists.
type options struct {
	Listen         []string      `yaml:"listen"`
	Publish        []string      `yaml:"publish"`
	PublishVSock   []string      `yaml:"publish_vsock"`
	EnclaveCID     uint          `yaml:"enclave_cid"`
	VSockProxy     []string      `yaml:"vsock_proxy"`
	EnclaveLogs    string        `yaml:"enclave_logs"`
	DNS            []string      `yaml:"dns"`
	MTU            int           `yaml:"mtu"`
	Subnet         string        `yaml:"subnet"`
	EnclaveIP      string        `yaml:"enclave_ip"`
	MaxDials       int           `yaml:"max_dials"`
	DialTimeout    time.Duration `yaml:"dial_timeout"`
	IdleTimeout    time.Duration `yaml:"idle_timeout"`
	DrainTimeout   time.Duration `yaml:"drain_timeout"`
	RelayGoroutine bool          `yaml:"relay_goroutines"`
	AckDelay       time.Duration `yaml:"ack_delay"`
	Allow          []string      `yaml:"allow"`
	AllowMetadata  bool          `yaml:"allow_metadata"`
	NoHostLoopback bool          `yaml:"no_host_loopback"`
	DHCP           bool          `yaml:"dhcp"`
	VSockDir       string        `yaml:"vsock_dir"`
	Control        string        `yaml:"control"`
	Metrics        string        `yaml:"metrics"`
	Pprof          string        `yaml:"pprof"`
	LogLevel       string        `yaml:"log_level"`
	LogFormat      string        `yaml:"log_format"`

	// Limits against hostile clients and enclaves (layer 4).
	MaxPortConns             int           `yaml:"max_port_conns"`
	MaxPortConnsPerPort      int           `yaml:"max_port_conns_per_port"`
	MaxPortConnsPerClient    int           `yaml:"max_port_conns_per_client"`
	FirstByteTimeout         time.Duration `yaml:"first_byte_timeout"`
	MaxPortUDPFlows          int           `yaml:"max_port_udp_flows"`
	MaxNATConns              int           `yaml:"max_nat_conns"`
	MaxNATConnsPerEnclave    int           `yaml:"max_nat_conns_per_enclave"`
	MaxNATUDPFlows           int           `yaml:"max_nat_udp_flows"`
	MaxNATUDPFlowsPerEnclave int           `yaml:"max_nat_udp_flows_per_enclave"`
	NATIdleTimeout           time.Duration `yaml:"nat_idle_timeout"`
	MaxDialsPerEnclave       int           `yaml:"max_dials_per_enclave"`
	MaxProxyConns            int           `yaml:"max_vsock_proxy_conns"`
	MaxProxyConnsPerEnclave  int           `yaml:"max_vsock_proxy_conns_per_enclave"`
	MaxEnclaveLogStreams     int           `yaml:"max_enclave_log_streams"`
	EnclaveLogRate           int           `yaml:"enclave_log_rate"`

	// Isolation between enclaves (layer 2).
	MaxEnclaveStreams        int           `yaml:"max_enclave_streams"`
	MaxEnclaveStreamsPerPeer int           `yaml:"max_enclave_streams_per_peer"`
	MaxEnclaveHandshakes     int           `yaml:"max_enclave_handshakes"`
	MaxMACsPerEnclave        int           `yaml:"max_macs_per_enclave"`
	MaxAddressesPerEnclave   int           `yaml:"max_addresses_per_enclave"`
	DHCPOfferTimeout         time.Duration `yaml:"dhcp_offer_timeout"`
}

func defaultOptions() options {
	return options{
		EnclaveCID:   16,
		MTU:          65520,
		Subnet:       "192.168.127.0/24",
		MaxDials:     host.DefaultMaxInFlightDials,
		DialTimeout:  host.DefaultDialTimeout,
		IdleTimeout:  host.DefaultIdleTimeout,
		DrainTimeout: host.DefaultDrainTimeout,
		AckDelay:     host.DefaultAckDelay,
		DHCP:         true,
		LogLevel:     "info",
		LogFormat:    "text",

		FirstByteTimeout: host.DefaultFirstByteTimeout,
		MaxPortUDPFlows:  host.DefaultMaxPortUDPFlows,
		NATIdleTimeout:   host.DefaultNATIdleTimeout,
	}
}

type listFlag struct{ l *[]string }

func (f listFlag) String() string {
	if f.l == nil {
		return ""
	}
	return strings.Join(*f.l, ",")
}
func (f listFlag) Set(s string) error { *f.l = append(*f.l, s); return nil }

// bind defines the flags on fs, writing into o and defaulting to o's
// current values.
func (o *options) bind(fs *flag.FlagSet, configPath *string) {
	fs.StringVar(configPath, "config", *configPath, "read settings from this YAML file (keys as the flags, with underscores: publish_vsock, enclave_cid, ...); flags given too override it, and repeatable ones (-publish, -vsock-proxy, -allow, ...) add to its lists")
	fs.Var(listFlag{&o.Listen}, "listen", "where enclaves connect; repeatable (default vsock://:1024)")
	fs.Var(listFlag{&o.Publish}, "publish", "forward a host port into the enclave over the virtual network: [HOSTIP:]HOSTPORT:ENCLAVEPORT[/udp]; repeatable (HOSTIP defaults to 0.0.0.0, IPv4 only; [::] takes IPv4 and IPv6)")
	fs.Var(listFlag{&o.PublishVSock}, "publish-vsock", "ingress fast path: forward a host TCP port to the enclave's VSOCK port, one VSOCK connection per client with a PROXY protocol v2 header: [HOSTIP:]HOSTPORT:VSOCKPORT; repeatable")
	fs.UintVar(&o.EnclaveCID, "enclave-cid", o.EnclaveCID, "CID of the enclave that -publish-vsock ports dial")
	fs.Var(listFlag{&o.VSockProxy}, "vsock-proxy", "AWS vsock-proxy's role, as `VSOCKPORT:HOST:PORT`: programs in enclaves connect to the parent's VSOCK port (vsock://3:VSOCKPORT) and each connection is relayed over TCP to HOST:PORT (a name is resolved for each connection); repeatable. \"vsock-proxy 8000 kms.us-east-1.amazonaws.com 443\" is -vsock-proxy 8000:kms.us-east-1.amazonaws.com:443 (-allow does not apply: the target is named here)")
	fs.StringVar(&o.EnclaveLogs, "enclave-logs", o.EnclaveLogs, "receive enclaves' logs on this `URL` (vsock://:1025; quench-enclave -log-to vsock://3:1025 sends its log and the app's output there) and write each line to standard error, at every -log-level: msg=enclave enclave=vsock:CID stream=stdout|stderr|quench|logship line=\"...\" (control characters quoted; stream logship: lines the enclave dropped; with -log-format json, one JSON object per line); off by default")
	fs.Var(listFlag{&o.DNS}, "dns", "upstream DNS server host:port for names outside quench.internal; repeatable (default: the host's resolver)")
	fs.IntVar(&o.MTU, "mtu", o.MTU, "MTU of the virtual link; it never reaches the internet (the host terminates TCP), so large is fast. Enclaves must use the same value.")
	fs.StringVar(&o.Subnet, "subnet", o.Subnet, "virtual network; the gateway is its first address, the enclave its second, the host loopback its last usable one")
	fs.StringVar(&o.EnclaveIP, "enclave-ip", o.EnclaveIP, "enclave address that published ports forward to (default: second address of -subnet)")
	fs.IntVar(&o.MaxDials, "max-dials", o.MaxDials, "outbound connection attempts in progress at once (gvproxy: 10)")
	fs.DurationVar(&o.DialTimeout, "dial-timeout", o.DialTimeout, "timeout of one outbound or enclave connection attempt")
	fs.DurationVar(&o.IdleTimeout, "idle-timeout", o.IdleTimeout, "close published-port connections idle this long in both directions (negative: never)")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", o.DrainTimeout, "on SIGTERM or port removal, wait this long for connections to end before closing them")
	fs.Var(listFlag{&o.Allow}, "allow", "egress policy: allow outbound connections and DNS answers only as `RULE` says: DEST[:PORTS][/tcp|/udp], DEST a hostname, *.wildcard, address, CIDR or *; repeatable (default: allow all). Example: -allow kms.us-east-1.amazonaws.com:443 -allow 10.0.0.0/8:5432 (a wildcard over a zone where anyone can get a name, such as *.amazonaws.com, allows whoever gets one)")
	fs.BoolVar(&o.RelayGoroutine, "relay-goroutines", o.RelayGoroutine, "relay published-port connections with two goroutines each instead of the epoll event loops (for comparison and debugging)")
	fs.DurationVar(&o.AckDelay, "ack-delay", o.AckDelay, "hold a pure TCP ACK to the enclave this long, so that the connection's next segment carries it instead (fewer frames per request); 0 turns it off")
	fs.BoolVar(&o.AllowMetadata, "allow-metadata", o.AllowMetadata, "let enclaves reach 169.254.0.0/16, including the EC2 instance metadata service and its credentials")
	fs.BoolVar(&o.NoHostLoopback, "no-host-loopback", o.NoHostLoopback, "do not map the subnet's last address (192.168.127.254) to the host's 127.0.0.1")
	fs.BoolVar(&o.DHCP, "dhcp", o.DHCP, "answer DHCP on the virtual network like gvproxy (enclave MAC 5a:94:ef:e4:0c:ee gets the enclave address), so a stock gvforwarder configures itself without -preexisting; -dhcp=false turns it off")
	fs.StringVar(&o.VSockDir, "vsock-dir", o.VSockDir, "VSOCK stand-in: serve and dial vsock:// addresses as unix sockets in this directory (also $"+endpoint.EnvVSockDir+")")
	fs.StringVar(&o.Control, "control", o.Control, "serve the control API (quench-host ctl) on this unix socket path, mode 0700 (owner only); off by default")
	fs.StringVar(&o.Metrics, "metrics", o.Metrics, "serve Prometheus metrics at /metrics on this address (e.g. 127.0.0.1:9100); off by default")
	fs.StringVar(&o.Pprof, "pprof", o.Pprof, "serve net/http/pprof on this address (e.g. 127.0.0.1:6060); off by default")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "debug, info, warn or error")
	fs.StringVar(&o.LogFormat, "log-format", o.LogFormat, logfmt.Formats+"; -enclave-logs lines too")

	// Limits against hostile clients and enclaves (layer 4); docs/host-ops.md.
	fs.IntVar(&o.MaxPortConns, "max-port-conns", o.MaxPortConns, "client connections of all published TCP ports together; more are reset at once (0: a quarter of the open-file limit; negative: no limit)")
	fs.IntVar(&o.MaxPortConnsPerPort, "max-port-conns-per-port", o.MaxPortConnsPerPort, "client connections of one published TCP port (0: -max-port-conns; negative: no limit)")
	fs.IntVar(&o.MaxPortConnsPerClient, "max-port-conns-per-client", o.MaxPortConnsPerClient, "client connections of one client IP address on all published TCP ports together (0 or negative: no limit; set it when clients connect directly or through an NLB that keeps their addresses, not behind an ALB)")
	fs.DurationVar(&o.FirstByteTimeout, "first-byte-timeout", o.FirstByteTimeout, "close published-port connections whose client sent nothing for this long (0: never)")
	fs.IntVar(&o.MaxPortUDPFlows, "max-port-udp-flows", o.MaxPortUDPFlows, "client sources tracked by all published UDP ports together; past it a new source replaces the least recently active one-request source, or is dropped (negative: no limit)")
	fs.IntVar(&o.MaxNATConns, "max-nat-conns", o.MaxNATConns, "enclave TCP connections through the NAT; more are reset (0: a quarter of the open-file limit; negative: no limit)")
	fs.IntVar(&o.MaxNATConnsPerEnclave, "max-nat-conns-per-enclave", o.MaxNATConnsPerEnclave, "enclave TCP connections through the NAT from one enclave address (0: half of -max-nat-conns; negative: no limit)")
	fs.IntVar(&o.MaxNATUDPFlows, "max-nat-udp-flows", o.MaxNATUDPFlows, "enclave UDP flows through the NAT; past it a new flow replaces the least recently active one-request flow, or is dropped (0: 1024, or an eighth of the open-file limit if less; negative: no limit)")
	fs.IntVar(&o.MaxNATUDPFlowsPerEnclave, "max-nat-udp-flows-per-enclave", o.MaxNATUDPFlowsPerEnclave, "enclave UDP flows through the NAT from one enclave address (0: half of -max-nat-udp-flows; negative: no limit)")
	fs.DurationVar(&o.NATIdleTimeout, "nat-idle-timeout", o.NATIdleTimeout, "close enclave TCP connections through the NAT, and -vsock-proxy connections, idle this long in both directions (0: never)")
	fs.IntVar(&o.MaxDialsPerEnclave, "max-dials-per-enclave", o.MaxDialsPerEnclave, "outbound connection attempts in progress from one enclave address (0: half of -max-dials)")
	fs.IntVar(&o.MaxProxyConns, "max-vsock-proxy-conns", o.MaxProxyConns, "connections of all -vsock-proxy ports together; more are closed at once (0: a thirty-second of the open-file limit; negative: no limit)")
	fs.IntVar(&o.MaxEnclaveLogStreams, "max-enclave-log-streams", o.MaxEnclaveLogStreams, "-enclave-logs streams open at once, 4 per enclave at most; more are closed at once (0: 64; negative: no limit besides 4 per enclave)")
	fs.IntVar(&o.EnclaveLogRate, "enclave-log-rate", o.EnclaveLogRate, "-enclave-logs lines a second from one enclave, all its streams together (burst as many; a line counts 1, and 1 more per KiB); past it its streams are read no faster, and its quench-enclave buffers, then drops and counts lines; keep it at some hundreds at least, or a flood of short lines makes quench-enclave time out its writes and send some lines twice (0: 1000; negative: no limit)")
	fs.IntVar(&o.MaxProxyConnsPerEnclave, "max-vsock-proxy-conns-per-enclave", o.MaxProxyConnsPerEnclave, "connections of all -vsock-proxy ports from one enclave (VSOCK CID; unix sockets: user id) (0: half of -max-vsock-proxy-conns; negative: no limit)")

	// Isolation between enclaves (layer 2); docs/host-ops.md.
	fs.IntVar(&o.MaxEnclaveStreams, "max-enclave-streams", o.MaxEnclaveStreams, "enclave streams attached or in their handshake; more are closed at once (0: 64; negative: no limit)")
	fs.IntVar(&o.MaxEnclaveStreamsPerPeer, "max-enclave-streams-per-peer", o.MaxEnclaveStreamsPerPeer, "enclave streams from one peer (VSOCK CID; unix sockets: user id) (0: 16; negative: no limit)")
	fs.IntVar(&o.MaxEnclaveHandshakes, "max-enclave-handshakes", o.MaxEnclaveHandshakes, "enclave streams in their handshake at once (0: 32; negative: no limit)")
	fs.IntVar(&o.MaxMACsPerEnclave, "max-macs-per-enclave", o.MaxMACsPerEnclave, "source MACs one enclave stream may use (and DHCP leases it may hold) (0: 16; negative: no limit)")
	fs.IntVar(&o.MaxAddressesPerEnclave, "max-addresses-per-enclave", o.MaxAddressesPerEnclave, "IPv4 addresses one enclave stream may send from (0: 8; negative: no limit)")
	fs.DurationVar(&o.DHCPOfferTimeout, "dhcp-offer-timeout", o.DHCPOfferTimeout, "how long an address offered to a DHCP DISCOVER is held without a REQUEST (0: 60s)")
}

// loadConfigFile decodes a YAML config file over o. Unknown keys are
// errors; yaml.v3 reports them with line numbers.
func loadConfigFile(path string, o *options) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(o); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty file
		}
		return fmt.Errorf("config %s: %s", path, strings.NewReplacer(" in type main.options", "", "yaml: unmarshal errors:\n  ", "", "\n  ", "; ").Replace(err.Error()))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return fmt.Errorf("config %s: line %d: more than one YAML document", path, extra.Line)
	}
	return nil
}

// hostConfig turns options into a host.Config. dialEnclave is used for
// -publish-vsock ports.
func (o options) hostConfig() (host.Config, error) {
	cfg := host.Config{
		MTU:                 o.MTU,
		MaxInFlightDials:    o.MaxDials,
		DialTimeout:         o.DialTimeout,
		IdleTimeout:         o.IdleTimeout,
		DrainTimeout:        o.DrainTimeout,
		GoroutineRelay:      o.RelayGoroutine,
		AckDelay:            o.AckDelay,
		AllowMetadata:       o.AllowMetadata,
		DisableHostLoopback: o.NoHostLoopback,
		DisableDHCP:         !o.DHCP,
		DNSUpstream:         o.DNS,

		MaxPortConns:              o.MaxPortConns,
		MaxPortConnsPerPort:       o.MaxPortConnsPerPort,
		MaxPortConnsPerClient:     o.MaxPortConnsPerClient,
		FirstByteTimeout:          o.FirstByteTimeout,
		MaxPortUDPFlows:           o.MaxPortUDPFlows,
		MaxNATConns:               o.MaxNATConns,
		MaxNATConnsPerEnclave:     o.MaxNATConnsPerEnclave,
		MaxNATUDPFlows:            o.MaxNATUDPFlows,
		MaxNATUDPFlowsPerEnclave:  o.MaxNATUDPFlowsPerEnclave,
		NATIdleTimeout:            o.NATIdleTimeout,
		MaxDialsPerEnclave:        o.MaxDialsPerEnclave,
		MaxVSockProxyConns:        o.MaxProxyConns,
		MaxVSockProxyConnsPerPeer: o.MaxProxyConnsPerEnclave,
		MaxEnclaveLogStreams:      o.MaxEnclaveLogStreams,
		EnclaveLogRate:            o.EnclaveLogRate,

		MaxEnclaveStreams:        o.MaxEnclaveStreams,
		MaxEnclaveStreamsPerPeer: o.MaxEnclaveStreamsPerPeer,
		MaxEnclaveHandshakes:     o.MaxEnclaveHandshakes,
		MaxMACsPerEnclave:        o.MaxMACsPerEnclave,
		MaxAddressesPerEnclave:   o.MaxAddressesPerEnclave,
		DHCPOfferTimeout:         o.DHCPOfferTimeout,
	}
	// Zero durations mean "off" here; in host.Config they mean the default.
	if cfg.FirstByteTimeout == 0 {
		cfg.FirstByteTimeout = -1
	}
	if cfg.NATIdleTimeout == 0 {
		cfg.NATIdleTimeout = -1
	}
	if cfg.AckDelay == 0 {
		cfg.AckDelay = -1 // off; zero means the default in host.Config
	}
	var err error
	if cfg.Subnet, err = netip.ParsePrefix(o.Subnet); err != nil {
		return cfg, fmt.Errorf("subnet: %w", err)
	}
	if o.EnclaveIP != "" {
		if cfg.EnclaveIP, err = netip.ParseAddr(o.EnclaveIP); err != nil {
			return cfg, fmt.Errorf("enclave-ip: %w", err)
		}
	}
	if len(o.Allow) > 0 {
		if cfg.Egress, err = policy.Parse(o.Allow); err != nil {
			return cfg, err
		}
	}
	for _, p := range o.Publish {
		pp, err := host.ParsePublish(p)
		if err != nil {
			return cfg, err
		}
		cfg.Publish = append(cfg.Publish, pp)
	}
	for _, p := range o.PublishVSock {
		pp, err := host.ParsePublishVSock(p)
		if err != nil {
			return cfg, err
		}
		cfg.Publish = append(cfg.Publish, pp)
	}
	if o.EnclaveCID > 1<<32-1 {
		return cfg, fmt.Errorf("enclave-cid %d out of range", o.EnclaveCID)
	}
	return cfg, nil
}

// enclaveLogs parses -enclave-logs (ok false: not given). Its VSOCK port
// may not be one of -listen's or -vsock-proxy's.
func (o options) enclaveLogs(listen []endpoint.Addr, proxies []host.VSockProxy) (a endpoint.Addr, ok bool, err error) {
	if o.EnclaveLogs == "" {
		return a, false, nil
	}
	if a, err = endpoint.Parse(o.EnclaveLogs); err != nil {
		return a, false, fmt.Errorf("-enclave-logs: %w", err)
	}
	if a.Scheme == "vsock" {
		for _, l := range listen {
			if l.Scheme == "vsock" && l.Port == a.Port {
				return a, false, fmt.Errorf("-enclave-logs %s: VSOCK port %d is taken by -listen %s", o.EnclaveLogs, a.Port, l)
			}
		}
		for _, p := range proxies {
			if p.Port == a.Port {
				return a, false, fmt.Errorf("-enclave-logs %s: VSOCK port %d is taken by -vsock-proxy %s", o.EnclaveLogs, a.Port, p)
			}
		}
	}
	return a, true, nil
}

// vsockProxies parses -vsock-proxy. Two proxies on one VSOCK port, or a
// proxy on the port of a vsock:// -listen, are errors: the second listener
// would fail with an address in use.
func (o options) vsockProxies(listen []endpoint.Addr) ([]host.VSockProxy, error) {
	var out []host.VSockProxy
	seen := map[uint32]string{}
	for _, a := range listen {
		if a.Scheme == "vsock" {
			seen[a.Port] = "-listen " + a.String()
		}
	}
	for _, s := range o.VSockProxy {
		p, err := host.ParseVSockProxy(s)
		if err != nil {
			return nil, err
		}
		if other, ok := seen[p.Port]; ok {
			return nil, fmt.Errorf("vsock-proxy %s: VSOCK port %d is taken by %s", p, p.Port, other)
		}
		seen[p.Port] = "-vsock-proxy " + p.String()
		out = append(out, p)
	}
	return out, nil
}
