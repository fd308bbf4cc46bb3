package proxyprom_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/quenchnet/quench/proxy"
	"github.com/quenchnet/quench/proxy/proxyprom"
)

func TestMetrics(t *testing.T) {
	m := proxyprom.New(proxyprom.Config{ConstLabels: prometheus.Labels{"proxy": "test"}})
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(m); err != nil {
		t.Fatal(err)
	}
	m.InFlight(1)
	m.InFlight(1)
	m.InFlight(-1)
	m.Request(200, 2*time.Millisecond)
	m.Request(204, time.Millisecond)
	m.Request(502, time.Second)
	m.Request(499, time.Second)
	m.Request(42, time.Second)
	m.Refused()
	m.UpstreamError()

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			name := mf.GetName()
			for _, lp := range mt.GetLabel() {
				if lp.GetName() == "code" {
					name += "{" + lp.GetValue() + "}"
				}
			}
			got[name] = value(mt)
		}
	}
	want := map[string]float64{
		"quench_proxy_in_flight":                1,
		"quench_proxy_refused_total":            1,
		"quench_proxy_upstream_errors_total":    1,
		"quench_proxy_requests_total{1xx}":      0,
		"quench_proxy_requests_total{2xx}":      2,
		"quench_proxy_requests_total{3xx}":      0,
		"quench_proxy_requests_total{4xx}":      0,
		"quench_proxy_requests_total{5xx}":      1,
		"quench_proxy_requests_total{499}":      1,
		"quench_proxy_requests_total{other}":    1,
		"quench_proxy_request_duration_seconds": 5, // sample count
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return -1
}

func TestWithProxy(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	defer up.Close()
	target, _ := url.Parse(up.URL)
	m := proxyprom.New(proxyprom.Config{})
	p, err := proxy.New(target, proxy.Config{Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	front := httptest.NewServer(p)
	defer front.Close()
	resp, err := http.Get(front.URL)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
		if strings.HasSuffix(mf.GetName(), "request_duration_seconds") && mf.GetMetric()[0].GetHistogram().GetSampleCount() != 1 {
			t.Errorf("latency samples %d, want 1", mf.GetMetric()[0].GetHistogram().GetSampleCount())
		}
	}
	if len(names) != 5 {
		t.Errorf("metric families %v, want 5", names)
	}
}

func BenchmarkRequest(b *testing.B) {
	m := proxyprom.New(proxyprom.Config{})
	b.ReportAllocs()
	for b.Loop() {
		m.InFlight(1)
		m.Request(200, time.Millisecond)
		m.InFlight(-1)
	}
}
