package main

import "github.com/prometheus/client_golang/prometheus"

// shipCollector exports the -log-to shipper's counters on -metrics.
type shipCollector struct{ o *options }

var (
	descShipLines     = prometheus.NewDesc("quench_enclave_log_lines_total", "Log lines (-log-to) accepted for sending to the host: quench-enclave's and the app's.", nil, nil)
	descShipDropped   = prometheus.NewDesc("quench_enclave_log_dropped_total", "Log lines (-log-to) dropped because the 1 MiB buffer was full: the host was away or slow.", nil, nil)
	descShipSent      = prometheus.NewDesc("quench_enclave_log_sent_bytes_total", "Bytes written on the log stream to the host, lines sent again after a reconnect included.", nil, nil)
	descShipPending   = prometheus.NewDesc("quench_enclave_log_pending_bytes", "Bytes of log lines the host has not acknowledged yet.", nil, nil)
	descShipConnected = prometheus.NewDesc("quench_enclave_log_connected", "1 while the log stream to the host is open.", nil, nil)
)

func (c shipCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descShipLines, descShipDropped, descShipSent, descShipPending, descShipConnected} {
		ch <- d
	}
}

func (c shipCollector) Collect(ch chan<- prometheus.Metric) {
	sh := c.o.logShip
	if sh == nil {
		return // not started yet
	}
	st := sh.Stats()
	connected := 0.0
	if st.Connected {
		connected = 1
	}
	ch <- prometheus.MustNewConstMetric(descShipLines, prometheus.CounterValue, float64(st.Lines))
	ch <- prometheus.MustNewConstMetric(descShipDropped, prometheus.CounterValue, float64(st.Dropped))
	ch <- prometheus.MustNewConstMetric(descShipSent, prometheus.CounterValue, float64(st.Sent))
	ch <- prometheus.MustNewConstMetric(descShipPending, prometheus.GaugeValue, float64(st.Pending))
	ch <- prometheus.MustNewConstMetric(descShipConnected, prometheus.GaugeValue, connected)
}
