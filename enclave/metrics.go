package enclave

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/quenchnet/quench/internal/egressfw"
	"github.com/quenchnet/quench/proxy"
)

// metrics are the enclave's Prometheus collectors, in a registry of its own
// (no package globals).
type metrics struct {
	reg          *prometheus.Registry
	requests     *prometheus.CounterVec // by handler and code
	attestations *prometheus.CounterVec // by result
	appReady     prometheus.Gauge

	proxyInFlight prometheus.Gauge
	proxyRequests *prometheus.CounterVec
	proxyLatency  prometheus.Histogram
	proxyRefused  prometheus.Counter
	proxyUpErrors prometheus.Counter
}

// newMetrics makes the collectors: the network's always, the servers'
// (HTTP requests, attestations, the proxy) when serving.
func newMetrics(e *Enclave, conns *connCap, serving bool) (*metrics, error) {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quench_enclave_http_requests_total",
			Help: "Public HTTPS requests by handler (enclave endpoints or app) and status code.",
		}, []string{"handler", "code"}),
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quench_enclave_attestations_total",
			Help: "Attestation documents requested, by result (ok, error, refused: pprof on, busy: MaxAttestations reached).",
		}, []string{"result"}),
		appReady: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "quench_enclave_app_ready",
			Help: "1 once the app signalled readiness (or readiness is not awaited).",
		}),
		proxyInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "quench_enclave_proxy_in_flight",
			Help: "Requests being forwarded to the app that hold an in-flight slot (at most Proxy.MaxInFlight; streams: quench_enclave_proxy_streams).",
		}),
		proxyRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quench_enclave_proxy_requests_total",
			Help: "Requests forwarded to the app, by status code sent to the client.",
		}, []string{"code"}),
		proxyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "quench_enclave_proxy_request_duration_seconds",
			Help:    "Time from admission to the end of the response, for requests forwarded to the app.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		proxyRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quench_enclave_proxy_refused_total",
			Help: "Requests refused with 503 because too many were in flight.",
		}),
		proxyUpErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quench_enclave_proxy_upstream_errors_total",
			Help: "Requests whose exchange with the app failed.",
		}),
	}
	if serving {
		m.reg.MustRegister(m.requests, m.attestations, m.appReady,
			m.proxyInFlight, m.proxyRequests, m.proxyLatency, m.proxyRefused, m.proxyUpErrors)
	}
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "quench_enclave_public_connections",
			Help: "Connections the host opened into the enclave that are held now, on all listeners together: the public HTTPS server's, the forwards' and key sync's (at most MaxConns).",
		}, func() float64 { return float64(conns.held.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "quench_enclave_public_connections_refused_total",
			Help: "Connections to the public HTTPS server, a forward or key sync closed as they were accepted because MaxConns were held.",
		}, func() float64 { return float64(conns.refused.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "quench_enclave_tunnel_connected",
			Help: "1 while the frame tunnel to the host is up.",
		}, func() float64 {
			if e.status.up.Load() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "quench_enclave_tunnel_reconnects_total",
			Help: "Streams to the host re-established after a drop.",
		}, func() float64 { return float64(e.status.reconnects.Load()) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if e.egress != nil {
		m.reg.MustRegister(egressCollector{e.egress})
	}
	for _, c := range e.cfg.MetricsCollectors {
		if err := m.reg.Register(c); err != nil {
			return nil, fmt.Errorf("enclave: MetricsCollectors: %w", err)
		}
	}
	if p := e.dnsp; p != nil {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "quench_enclave_dns_proxy_dropped_total",
			Help: "DNS questions (UDP) and connections (TCP) the enclave's DNS proxy dropped because it had too many in hand (TAP mode with an egress policy).",
		}, func() float64 { return float64(p.dropped.Load()) }))
	}
	return m, nil
}

// watchProxy exports the app proxy's gauges read from it.
func (m *metrics) watchProxy(p *proxy.Proxy) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "quench_enclave_proxy_streams",
		Help: "Responses from the app being streamed that gave back their in-flight slot once their head was sent (server-sent events, gRPC and other responses of unknown length; at most Proxy.MaxStreams).",
	}, func() float64 { return float64(p.Streams()) }))
}

// egressCollector exports the TAP-mode egress filter's counters.
type egressCollector struct{ f *egressfw.Filter }

var (
	egressRefusedDesc = prometheus.NewDesc("quench_enclave_egress_refused_total",
		"Frames from the enclave's programs the egress policy stopped (TAP mode), by kind: tcp (connections reset), udp (datagrams), dns (questions answered NXDOMAIN), table_full (flows not opened: MaxFlows), other (ICMP, IPv6, segments of no flow, ...); dns_answer counts the host's DNS answers dropped because they led into the enclave.",
		[]string{"kind"}, nil)
	egressFlowsDesc = prometheus.NewDesc("quench_enclave_egress_flows",
		"Flows the egress filter tracks now (TAP mode).", nil, nil)
)

func (c egressCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- egressRefusedDesc
	ch <- egressFlowsDesc
}

func (c egressCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.f.Stats()
	for _, k := range []struct {
		kind string
		n    uint64
	}{{"tcp", s.TCP}, {"udp", s.UDP}, {"dns", s.DNS}, {"table_full", s.Full}, {"other", s.Dropped}, {"dns_answer", s.Answers}} {
		ch <- prometheus.MustNewConstMetric(egressRefusedDesc, prometheus.CounterValue, float64(k.n), k.kind)
	}
	ch <- prometheus.MustNewConstMetric(egressFlowsDesc, prometheus.GaugeValue, float64(s.Flows))
}

// instrument counts h's responses under the handler label name.
func (m *metrics) instrument(name string, h http.Handler) http.Handler {
	return promhttp.InstrumentHandlerCounter(m.requests.MustCurryWith(prometheus.Labels{"handler": name}), h)
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// proxyMetrics implements proxy.Metrics.
type proxyMetrics struct{ m *metrics }

var _ proxy.Metrics = proxyMetrics{}

func (p proxyMetrics) InFlight(delta int) { p.m.proxyInFlight.Add(float64(delta)) }
func (p proxyMetrics) Request(code int, d time.Duration) {
	p.m.proxyRequests.WithLabelValues(strconv.Itoa(code)).Inc()
	p.m.proxyLatency.Observe(d.Seconds())
}
func (p proxyMetrics) Refused()       { p.m.proxyRefused.Inc() }
func (p proxyMetrics) UpstreamError() { p.m.proxyUpErrors.Inc() }
