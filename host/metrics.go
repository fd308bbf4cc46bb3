package host

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector returns a Prometheus collector for the Host's counters. Register
// it on a registry of your own (quench-host serves one with -metrics). It
// reads the counters at scrape time; nothing is counted twice.
func (h *Host) Collector() prometheus.Collector { return collector{h} }

type collector struct{ h *Host }

var (
	descEnclaves      = prometheus.NewDesc("quench_host_enclaves", "Attached enclave streams.", nil, nil)
	descEnclaveFrames = prometheus.NewDesc("quench_host_enclave_frames_total", "Frames per enclave stream and direction (in = from the enclave).", []string{"enclave", "direction"}, nil)
	descEnclaveBytes  = prometheus.NewDesc("quench_host_enclave_bytes_total", "Frame bytes per enclave stream and direction (in = from the enclave).", []string{"enclave", "direction"}, nil)
	descDropped       = prometheus.NewDesc("quench_host_frames_dropped_total", "Frames dropped by the switch (runts, unknown destinations, spoofing).", nil, nil)
	descDials         = prometheus.NewDesc("quench_host_nat_dials_total", "Outbound (NAT) TCP connection attempts by result: ok, failed, refused (policy or blocked address).", []string{"result"}, nil)
	descZeroWindow    = prometheus.NewDesc("quench_host_zero_window_acks_fixed_total", "Pure TCP ACKs from enclaves whose sequence number was fixed so that gVisor reads them (a gVisor bug; docs/bench/userspace.md).", nil, nil)
	descUDPRefused    = prometheus.NewDesc("quench_host_nat_udp_refused_total", "Outbound UDP datagrams dropped by the egress policy or for a blocked address (unspecified, loopback, broadcast, multicast, the virtual network, metadata).", nil, nil)
	descDNS           = prometheus.NewDesc("quench_host_dns_queries_total", "DNS questions for names outside quench.internal, by result: answered (sent upstream) or refused (egress policy).", []string{"result"}, nil)
	descPortConns     = prometheus.NewDesc("quench_host_port_connections_total", "Client connections accepted per published port.", []string{"port", "mode"}, nil)
	descPortActive    = prometheus.NewDesc("quench_host_port_active_connections", "Client connections being relayed per published port.", []string{"port", "mode"}, nil)
	descPortFailed    = prometheus.NewDesc("quench_host_port_failed_connections_total", "Client connections closed because the enclave was unreachable.", []string{"port", "mode"}, nil)
	descPortBytes     = prometheus.NewDesc("quench_host_port_bytes_total", "Bytes relayed per published port and direction (in = client to enclave).", []string{"port", "mode", "direction"}, nil)
	descPortRefused   = prometheus.NewDesc("quench_host_port_refused_total", "Per published port: TCP clients reset at the connection limit, or UDP datagrams from new sources dropped at the flow limit.", []string{"port", "mode"}, nil)

	descProxyConns  = prometheus.NewDesc("quench_host_vsock_proxy_connections_total", "Enclave connections per vsock-proxy port by result: accepted (within the connection limit, those that then failed included), failed (target unreachable), refused (connection limit).", []string{"port", "target", "result"}, nil)
	descProxyActive = prometheus.NewDesc("quench_host_vsock_proxy_active_connections", "Enclave connections being relayed per vsock-proxy port.", []string{"port", "target"}, nil)
	descProxyBytes  = prometheus.NewDesc("quench_host_vsock_proxy_bytes_total", "Bytes relayed per vsock-proxy port and direction (in = enclave to target).", []string{"port", "target", "direction"}, nil)

	descLogStreams = prometheus.NewDesc("quench_host_enclave_log_streams", "Enclave log streams open (-enclave-logs).", nil, nil)
	descLogConns   = prometheus.NewDesc("quench_host_enclave_log_streams_total", "Enclave log streams by result: accepted, refused (too many), failed (malformed or failed; counted in accepted too).", []string{"result"}, nil)
	descLogLines   = prometheus.NewDesc("quench_host_enclave_log_lines_total", "Lines received on enclave log streams.", nil, nil)
	descLogBytes   = prometheus.NewDesc("quench_host_enclave_log_bytes_total", "Bytes of lines received on enclave log streams.", nil, nil)
	descLogDelayed = prometheus.NewDesc("quench_host_enclave_log_lines_delayed_total", "Lines of enclave log streams held back by the per-enclave rate (-enclave-log-rate).", nil, nil)

	// Limits against hostile clients and enclaves (layer 4).
	descLimitActive  = prometheus.NewDesc("quench_host_limit_active", "Connections or flows held against each layer-4 limit: nat_tcp, nat_udp, port_tcp, port_udp, vsock_proxy.", []string{"limit"}, nil)
	descLimitRefused = prometheus.NewDesc("quench_host_limit_refused_total", "Refusals at each layer-4 limit: nat_tcp (SYN reset), nat_udp (new flow dropped), nat_dial_share (SYN dropped, retransmitted), port_tcp (client reset), port_udp (datagram dropped), port_first_byte (client closed by the first-byte timeout), vsock_proxy (enclave connection closed).", []string{"limit"}, nil)
)

// Isolation between enclaves (layer 2).
var (
	descDroppedReason  = prometheus.NewDesc("quench_host_frames_dropped_by_reason_total", "Frames dropped by the switch for isolating enclaves, by reason: queue_full (an enclave not reading its stream), spoofed (another enclave's or the host's MAC or IP address), over_limit (per-enclave MAC and address limits), not_ipv4 (neither IPv4 nor ARP: the virtual network is IPv4 only). Included in quench_host_frames_dropped_total.", []string{"reason"}, nil)
	descEchoRefused    = prometheus.NewDesc("quench_host_icmp_echo_refused_total", "ICMP echo requests (ping) from enclaves to addresses other than the gateway and the host loopback address, answered communication administratively prohibited: ICMP is not forwarded.", nil, nil)
	descStreamsRefused = prometheus.NewDesc("quench_host_enclave_streams_refused_total", "Enclave connections closed at once because too many streams were attached or in their handshake.", nil, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descDroppedReason
	ch <- descStreamsRefused
	ch <- descEchoRefused
	for _, d := range []*prometheus.Desc{descEnclaves, descEnclaveFrames, descEnclaveBytes, descDropped, descZeroWindow, descDials, descUDPRefused, descDNS, descPortConns, descPortActive, descPortFailed, descPortBytes, descPortRefused, descProxyConns, descProxyActive, descProxyBytes, descLimitActive, descLimitRefused, descLogStreams, descLogConns, descLogLines, descLogBytes, descLogDelayed} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	st := c.h.Stats()
	ch <- prometheus.MustNewConstMetric(descEnclaves, prometheus.GaugeValue, float64(st.Enclaves))
	counter(descDropped, float64(st.FramesDropped))
	counter(descDroppedReason, float64(st.FramesDroppedQueueFull), "queue_full")
	counter(descDroppedReason, float64(st.FramesDroppedSpoofed), "spoofed")
	counter(descDroppedReason, float64(st.FramesDroppedOverLimit), "over_limit")
	counter(descDroppedReason, float64(st.FramesDroppedNotIPv4), "not_ipv4")
	counter(descStreamsRefused, float64(st.EnclaveStreamsRefused))
	counter(descEchoRefused, float64(st.ICMPEchoRefused))
	counter(descZeroWindow, float64(st.ZeroWindowACKsFixed))
	counter(descDials, float64(st.Dials-min(st.Dials, st.DialsFailed)), "ok")
	counter(descDials, float64(st.DialsFailed), "failed")
	counter(descDials, float64(st.DialsRefused), "refused")
	counter(descUDPRefused, float64(st.UDPRefused))
	counter(descDNS, float64(st.DNSQueries-min(st.DNSQueries, st.DNSRefused)), "answered")
	counter(descDNS, float64(st.DNSRefused), "refused")
	ls := c.h.LimitStats()
	gauge := func(v uint64, limit string) {
		ch <- prometheus.MustNewConstMetric(descLimitActive, prometheus.GaugeValue, float64(v), limit)
	}
	gauge(ls.NATConns, "nat_tcp")
	gauge(ls.NATUDPFlows, "nat_udp")
	gauge(ls.PortConns, "port_tcp")
	gauge(ls.PortUDPFlows, "port_udp")
	gauge(ls.ProxyConns, "vsock_proxy")
	counter(descLimitRefused, float64(ls.NATConnsRefused), "nat_tcp")
	counter(descLimitRefused, float64(ls.NATUDPFlowsRefused), "nat_udp")
	counter(descLimitRefused, float64(ls.DialsDeferred), "nat_dial_share")
	counter(descLimitRefused, float64(ls.PortConnsRefused), "port_tcp")
	counter(descLimitRefused, float64(ls.PortUDPRefused), "port_udp")
	counter(descLimitRefused, float64(ls.PortFirstByteTimeouts), "port_first_byte")
	counter(descLimitRefused, float64(ls.ProxyConnsRefused), "vsock_proxy")
	el := c.h.EnclaveLogStats()
	ch <- prometheus.MustNewConstMetric(descLogStreams, prometheus.GaugeValue, float64(el.Streams))
	counter(descLogConns, float64(el.Accepted), "accepted")
	counter(descLogConns, float64(el.Refused), "refused")
	counter(descLogConns, float64(el.Errors), "failed")
	counter(descLogLines, float64(el.Lines))
	counter(descLogBytes, float64(el.Bytes))
	counter(descLogDelayed, float64(el.Delayed))
	seen := map[string]int{}
	for _, e := range c.h.Enclaves() {
		name := e.Remote // unix-socket streams share one address: number them
		if n := seen[e.Remote]; n > 0 {
			name = fmt.Sprintf("%s#%d", e.Remote, n)
		}
		seen[e.Remote]++
		counter(descEnclaveFrames, float64(e.FramesIn), name, "in")
		counter(descEnclaveFrames, float64(e.FramesOut), name, "out")
		counter(descEnclaveBytes, float64(e.BytesIn), name, "in")
		counter(descEnclaveBytes, float64(e.BytesOut), name, "out")
	}
	for _, p := range c.h.Ports() {
		port := p.Spec.Network + "/" + p.Addr
		mode := "netstack"
		if p.Spec.VSockPort != 0 {
			mode = "vsock"
		}
		counter(descPortConns, float64(p.Accepted), port, mode)
		ch <- prometheus.MustNewConstMetric(descPortActive, prometheus.GaugeValue, float64(p.Active), port, mode)
		counter(descPortFailed, float64(p.Failed), port, mode)
		counter(descPortRefused, float64(p.Refused), port, mode)
		counter(descPortBytes, float64(p.BytesIn), port, mode, "in")
		counter(descPortBytes, float64(p.BytesOut), port, mode, "out")
	}
	for _, p := range c.h.VSockProxies() {
		port := fmt.Sprint(p.Proxy.Port)
		counter(descProxyConns, float64(p.Accepted), port, p.Proxy.Target, "accepted")
		counter(descProxyConns, float64(p.Failed), port, p.Proxy.Target, "failed")
		counter(descProxyConns, float64(p.Refused), port, p.Proxy.Target, "refused")
		ch <- prometheus.MustNewConstMetric(descProxyActive, prometheus.GaugeValue, float64(p.Active), port, p.Proxy.Target)
		counter(descProxyBytes, float64(p.BytesIn), port, p.Proxy.Target, "in")
		counter(descProxyBytes, float64(p.BytesOut), port, p.Proxy.Target, "out")
	}
}
