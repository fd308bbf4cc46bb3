package proxy_test

import (
	"context"
	"crypto/tls"
	"log"
	"net"
	"net/http"
	"net/url"
	"os/signal"
	"strings"
	"syscall"
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

// HTTPS clients speaking HTTP/1.1, served on the event loops: Serve
// completes each handshake, then crypto/tls seals and opens records on the
// loop that serves the connection.
func ExampleNewTLSListener() {
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
	ln, err := net.Listen("tcp", ":443")
	if err != nil {
		log.Fatal(err)
	}
	log.Print(p.Serve(proxy.NewTLSListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})))
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

// The embedding program's own endpoints share the listener with the app:
// requests under /.well-known/attestation/ are served locally, on the fast
// front end, and everything else is forwarded.
func ExampleConfig_intercept() {
	local := http.NewServeMux()
	local.HandleFunc("/.well-known/attestation/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"document":"..."}`))
	})
	target, _ := url.Parse("http://127.0.0.1:8080")
	p, err := proxy.New(target, proxy.Config{
		Intercept: func(r *http.Request) http.Handler {
			if strings.HasPrefix(r.URL.Path, "/.well-known/attestation/") {
				return local
			}
			return nil // forward
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	ln, err := net.Listen("tcp", ":80")
	if err != nil {
		log.Fatal(err)
	}
	log.Print(p.Serve(ln))
}

// Stopping gracefully on SIGTERM: requests in flight get up to 10 s.
func ExampleProxy_Shutdown() {
	target, _ := url.Parse("http://127.0.0.1:8080")
	p, err := proxy.New(target, proxy.Config{})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", ":80")
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(sctx); err != nil {
		log.Print(err) // the deadline passed: Shutdown closed what was left
	}
	<-served
	_ = p.Close() // releases the upstream connections
}
