package enclave

import "time"

// ConnCounts returns a function reporting the connections e holds on the
// listeners Config.MaxConns bounds (public server, forwards, key sync) and
// those it refused; it keeps reporting after Close.
func ConnCounts(e *Enclave) func() (held int64, refused uint64) {
	c := e.conns
	return func() (int64, uint64) { return c.held.Load(), c.refused.Load() }
}

// MetricValue returns the value of e's Prometheus metric name (a gauge or
// counter without labels), or -1 if it is not registered.
func MetricValue(e *Enclave, name string) float64 {
	s, err := e.servers()
	if err != nil {
		panic(err)
	}
	mfs, err := s.metrics.reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) != 1 {
			continue
		}
		m := mf.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		return m.GetCounter().GetValue()
	}
	return -1
}

// SetFrontDoorHandshakeTimeout sets the TLS handshake deadline of the
// front doors of enclaves started from now on, and returns a function that
// restores it. Not for parallel tests.
func SetFrontDoorHandshakeTimeout(d time.Duration) (restore func()) {
	old := frontDoorHandshakeTimeout
	frontDoorHandshakeTimeout = d
	return func() { frontDoorHandshakeTimeout = old }
}
