package host_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quenchnet/quench/host"
)

// TestCollector checks that the collector registers (its descriptions are
// consistent) and that what it collects includes every counter the
// operations guide lists, among them the workaround's.
func TestCollector(t *testing.T) {
	h, _ := startHost(t, host.Config{})
	got := map[string]bool{}
	for name := range gatherCollector(t, h) {
		got[name] = true
	}
	for _, name := range []string{
		"quench_host_enclaves", "quench_host_frames_dropped_total", "quench_host_zero_window_acks_fixed_total",
		"quench_host_nat_dials_total", "quench_host_nat_udp_refused_total", "quench_host_dns_queries_total",
	} {
		if !got[name] {
			t.Errorf("%s not collected", name)
		}
	}
}

// gatherCollector registers h's collector on a pedantic registry, gathers
// it and returns how many series each metric name has.
func gatherCollector(t *testing.T, h *host.Host) map[string]int {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(h.Collector()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, mf := range mfs {
		got[mf.GetName()] = len(mf.GetMetric())
	}
	return got
}
