// Package proxyprom reports the metrics of a quench reverse proxy
// (package proxy) to Prometheus. [New] returns a [*Metrics], which
// implements [proxy.Metrics] and [prometheus.Collector]: set it as
// proxy.Config.Metrics and register it with a prometheus.Registerer.
package proxyprom
