package netstack_test

import (
	"context"
	"log"
	"net"
	"net/http"

	"github.com/quenchnet/quench/internal/netstack"
	"github.com/quenchnet/quench/tap"
)

// A stack joined to quench-host (or gvproxy) over one stream: the tap.Pump
// moves frames between the stack's Device and the stream.
func ExampleNew() {
	n, err := netstack.New(netstack.Config{}) // 192.168.127.2/24 via .1, MTU 65520
	if err != nil {
		log.Fatal(err)
	}
	defer n.Close()

	stream, err := net.Dial("unix", "/run/quench/vsock-3-1024.sock")
	if err != nil {
		log.Fatal(err)
	}
	c, err := tap.NewConn(stream, tap.Config{MTU: n.Device().MTU()})
	if err != nil {
		log.Fatal(err)
	}
	if err := c.ClientHandshake(); err != nil {
		log.Fatal(err)
	}
	pump := tap.NewPump(n.Device(), nil)
	defer pump.Close()
	go pump.Run(context.Background(), c)

	// Serve HTTP on the stack, and use it as an HTTP client's network.
	ln, err := n.Listen("tcp", ":80")
	if err != nil {
		log.Fatal(err)
	}
	go http.Serve(ln, http.NotFoundHandler())
	client := &http.Client{Transport: &http.Transport{DialContext: n.Dial}}
	resp, err := client.Get("http://host.quench.internal:8000/")
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
}
