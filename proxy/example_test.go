package proxy_test

import (
	"context"
	"crypto/tls"
	"log"
	"net"
	"net/url"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/quenchnet/quench/proxy"
)

// A proxy in front of an app on localhost, serving HTTP/1.1 clients with
// its own front end.
func ExampleProxy_Serve() {
	target, _ := url.Parse("http://127.0.0.1:8080")
	p, err := proxy.New(target, proxy.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	ln, err := net.Listen("tcp", ":80")
	if err != nil {
		log.Fatal(err)
	}
	log.Print(p.Serve(ln)) // returns after p.Close
}

// Behind quench-host's ingress fast path, connections start with a PROXY
// protocol header: wrap the listener, and the client's address reaches
// X-Forwarded-For and Forwarded.
func ExampleProxy_Serve_proxyProtocol() {
	target, _ := url.Parse("http://127.0.0.1:8080")
	p, err := proxy.New(target, proxy.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	ln, err := net.Listen("tcp", ":8443")
	if err != nil {
		log.Fatal(err)
	}
	log.Print(p.Serve(&proxyproto.Listener{Listener: ln, ReadHeaderTimeout: 10 * time.Second}))
}

// Serving HTTP/2 and HTTP/1.1 over TLS through net/http's server.
func ExampleNewServer() {
	target, _ := url.Parse("http://127.0.0.1:8080")
	p, err := proxy.New(target, proxy.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	cert, err := tls.LoadX509KeyPair("cert.pem", "key.pem")
	if err != nil {
		log.Fatal(err)
	}
	srv := proxy.NewServer(p, proxy.ServerConfig{TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}})
	ln, err := net.Listen("tcp", ":443")
	if err != nil {
		log.Fatal(err)
	}
	log.Print(srv.ServeTLS(ln, "", ""))
}

// An upstream on a unix socket, or anything else that gives a net.Conn
// (a gVisor netstack connection, VSOCK).
func ExampleNew_dialContext() {
	target, _ := url.Parse("http://app") // the Host header for requests without one
	p, err := proxy.New(target, proxy.Config{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", "/run/app.sock")
		},
		MaxInFlight: 512,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	_ = p // serve it with p.Serve or proxy.NewServer
}
