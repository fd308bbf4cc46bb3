// Command bulkcmd is the client and server of package bulk:
//
//	bulkcmd -listen :5301              # server
//	bulkcmd -connect 127.0.0.1:5301 -t 5s [-R]
//
// The client prints an iperf3-like JSON object with the received rate.
package main

import (
	"encoding/json"
	"flag"
	"log"
	"net"
	"os"
	"time"

	"github.com/quenchnet/quench/internal/benchapps/bulk"
)

func main() {
	listen := flag.String("listen", "", "serve on this address")
	connect := flag.String("connect", "", "measure against this server")
	d := flag.Duration("t", 5*time.Second, "duration")
	rev := flag.Bool("R", false, "reverse: the server sends")
	flag.Parse()
	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			log.Fatal(err)
		}
		log.Fatal(bulk.Serve(ln))
	}
	c, err := net.DialTimeout("tcp", *connect, 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	bps, err := bulk.Run(c, *rev, *d)
	if err != nil {
		log.Fatal(err)
	}
	// The shape of iperf3 -J that scripts/bench/report reads.
	_ = json.NewEncoder(os.Stdout).Encode(map[string]any{"end": map[string]any{"sum_received": map[string]any{"bits_per_second": bps}}})
}
