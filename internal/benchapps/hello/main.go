// Command hello is the upstream app of the proxy benchmarks: it answers
// every request with a fixed body.
package main

import (
	"bytes"
	"flag"
	"log"
	"net"
	"net/http"
	"strings"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18080", "address to listen on: host:port, or a path for a unix socket")
	size := flag.Int("size", 13, "response body size in bytes")
	flag.Parse()

	body := []byte("Hello, world!")
	if *size != len(body) {
		body = bytes.Repeat([]byte("x"), *size)
	}
	ctype := []string{"text/plain; charset=utf-8"}
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Type"] = ctype
		_, _ = w.Write(body)
	})
	network := "tcp"
	if strings.HasPrefix(*listen, "/") {
		network = "unix"
	}
	ln, err := net.Listen(network, *listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	log.Fatal(srv.Serve(ln))
}
