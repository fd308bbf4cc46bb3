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
	descUDPRefused    = prometheus.NewDesc("quench_host_nat_udp_refused_total", "Outbound UDP packets dropped by the egress policy.", nil, nil)
	descDNS           = prometheus.NewDesc("quench_host_dns_queries_total", "DNS questions for names outside quench.internal, by result: answered (sent upstream) or refused (egress policy).", []string{"result"}, nil)
	descPortConns     = prometheus.NewDesc("quench_host_port_connections_total", "Client connections accepted per published port.", []string{"port", "mode"}, nil)
	descPortActive    = prometheus.NewDesc("quench_host_port_active_connections", "Client connections being relayed per published port.", []string{"port", "mode"}, nil)
	descPortFailed    = prometheus.NewDesc("quench_host_port_failed_connections_total", "Client connections closed because the enclave was unreachable.", []string{"port", "mode"}, nil)
	descPortBytes     = prometheus.NewDesc("quench_host_port_bytes_total", "Bytes relayed per published port and direction (in = client to enclave).", []string{"port", "mode", "direction"}, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descEnclaves, descEnclaveFrames, descEnclaveBytes, descDropped, descZeroWindow, descDials, descUDPRefused, descDNS, descPortConns, descPortActive, descPortFailed, descPortBytes} {
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
	counter(descZeroWindow, float64(st.ZeroWindowACKsFixed))
	counter(descDials, float64(st.Dials-min(st.Dials, st.DialsFailed)), "ok")
	counter(descDials, float64(st.DialsFailed), "failed")
	counter(descDials, float64(st.DialsRefused), "refused")
	counter(descUDPRefused, float64(st.UDPRefused))
	counter(descDNS, float64(st.DNSQueries-min(st.DNSQueries, st.DNSRefused)), "answered")
	counter(descDNS, float64(st.DNSRefused), "refused")
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
		counter(descPortBytes, float64(p.BytesIn), port, mode, "in")
		counter(descPortBytes, float64(p.BytesOut), port, mode, "out")
	}
}
