package enclave_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"

	"github.com/quenchnet/quench/enclave"
)

// A Go app serving HTTPS with attestation in userspace mode. Inside a Nitro
// Enclave the zero Config reaches quench-host at VSOCK CID 3, port 1024, and
// attests with the Nitro Secure Module.
func ExampleNew() {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from the enclave")
	})
	e, err := enclave.New(enclave.Config{Handler: mux, WaitForApp: true})
	if err != nil {
		log.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		log.Fatal(err)
	}
	defer e.Close()
	// ... initialise the app, then open the public server:
	if err := e.Ready(); err != nil {
		log.Fatal(err)
	}
	select {}
}

// Listening on the enclave's network (the netstack in userspace mode).
func ExampleEnclave_Listen() {
	e, err := enclave.New(enclave.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		log.Fatal(err)
	}
	defer e.Close()
	ln, err := e.Listen("tcp", ":8080") // quench-host -publish 8080:8080 reaches it
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.Serve(ln, http.NotFoundHandler()))
}

// Connecting out through the host's NAT.
func ExampleEnclave_Dial() {
	e, err := enclave.New(enclave.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		log.Fatal(err)
	}
	defer e.Close()
	c, err := e.Dial(context.Background(), "tcp", "example.com:80")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "HEAD / HTTP/1.0\r\nHost: example.com\r\n\r\n")
	// Or, for HTTP: e.HTTPClient().Get("https://example.com/")
}
