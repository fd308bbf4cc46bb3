package proxyprom_test

import (
	"log"
	"net/url"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quenchnet/quench/proxy"
	"github.com/quenchnet/quench/proxy/proxyprom"
)

func ExampleNew() {
	m := proxyprom.New(proxyprom.Config{})
	prometheus.MustRegister(m)
	target, _ := url.Parse("http://127.0.0.1:8080")
	p, err := proxy.New(target, proxy.Config{Metrics: m})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	// Serve p; scrape the default registry with promhttp.Handler().
}
