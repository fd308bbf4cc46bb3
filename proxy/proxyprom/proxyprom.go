package proxyprom

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quenchnet/quench/proxy"
)

// DefaultBuckets are the latency histogram buckets, in seconds: from
// 100 µs (a proxied request on loopback takes about that) to 10 s.
var DefaultBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Config configures [New]. The zero value works.
type Config struct {
	// Namespace and Subsystem prefix the metric names, as in
	// prometheus.Opts. Default: "quench" and "proxy", giving for example
	// quench_proxy_requests_total.
	Namespace, Subsystem string

	// ConstLabels are added to every metric, for example to tell several
	// proxies apart. Default: none.
	ConstLabels prometheus.Labels

	// Buckets are the latency histogram's upper bounds in seconds.
	// Default: DefaultBuckets.
	Buckets []float64
}

// Metrics implements proxy.Metrics with Prometheus collectors:
//
//   - <ns>_<sub>_requests_total{code}: requests done, by status code class
//     ("2xx", ...; "499" for clients that went away);
//   - <ns>_<sub>_in_flight: requests being forwarded;
//   - <ns>_<sub>_refused_total: requests refused with 503 at the in-flight limit;
//   - <ns>_<sub>_upstream_errors_total: exchanges with the upstream that failed;
//   - <ns>_<sub>_request_duration_seconds: latency histogram.
//
// Its methods allocate nothing: the per-class counters are resolved once.
type Metrics struct {
	requests       *prometheus.CounterVec
	byClass        [6]prometheus.Counter // 1xx..5xx at [1..5]; [0] other
	clientGone     prometheus.Counter
	inFlight       prometheus.Gauge
	refused        prometheus.Counter
	upstreamErrors prometheus.Counter
	latency        prometheus.Histogram
}

var (
	_ proxy.Metrics        = (*Metrics)(nil)
	_ prometheus.Collector = (*Metrics)(nil)
)

// New returns Metrics with the collectors made but not registered.
func New(cfg Config) *Metrics {
	if cfg.Namespace == "" {
		cfg.Namespace = "quench"
	}
	if cfg.Subsystem == "" {
		cfg.Subsystem = "proxy"
	}
	if cfg.Buckets == nil {
		cfg.Buckets = DefaultBuckets
	}
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: cfg.Namespace, Subsystem: cfg.Subsystem, Name: name, Help: help, ConstLabels: cfg.ConstLabels}
	}
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts(opts("requests_total",
			"Requests forwarded, by status class of the response (499: the client went away).")), []string{"code"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts(opts("in_flight",
			"Requests being forwarded."))),
		refused: prometheus.NewCounter(prometheus.CounterOpts(opts("refused_total",
			"Requests refused with 503 because the in-flight limit was reached."))),
		upstreamErrors: prometheus.NewCounter(prometheus.CounterOpts(opts("upstream_errors_total",
			"Exchanges with the upstream that failed (502, 504 or an aborted response)."))),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: cfg.Namespace, Subsystem: cfg.Subsystem, Name: "request_duration_seconds",
			Help:        "Time from admission to the end of the response.",
			ConstLabels: cfg.ConstLabels, Buckets: cfg.Buckets,
		}),
	}
	m.byClass[0] = m.requests.WithLabelValues("other")
	for c := 1; c <= 5; c++ {
		m.byClass[c] = m.requests.WithLabelValues(strconv.Itoa(c) + "xx")
	}
	m.clientGone = m.requests.WithLabelValues("499")
	return m
}

// InFlight implements proxy.Metrics.
func (m *Metrics) InFlight(delta int) { m.inFlight.Add(float64(delta)) }

// Request implements proxy.Metrics.
func (m *Metrics) Request(code int, d time.Duration) {
	switch {
	case code == 499:
		m.clientGone.Inc()
	case code >= 100 && code < 600:
		m.byClass[code/100].Inc()
	default:
		m.byClass[0].Inc()
	}
	m.latency.Observe(d.Seconds())
}

// Refused implements proxy.Metrics.
func (m *Metrics) Refused() { m.refused.Inc() }

// UpstreamError implements proxy.Metrics.
func (m *Metrics) UpstreamError() { m.upstreamErrors.Inc() }

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.inFlight.Describe(ch)
	m.refused.Describe(ch)
	m.upstreamErrors.Describe(ch)
	m.latency.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.inFlight.Collect(ch)
	m.refused.Collect(ch)
	m.upstreamErrors.Collect(ch)
	m.latency.Collect(ch)
}
