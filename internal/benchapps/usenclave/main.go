// Command usenclave is the benchmark enclave in userspace mode: the
// enclave library's gVisor stack inside this process, serving the hello
// app on :8080 and the bulk server on :5201 of the enclave address. With
// -https-ingress it is also a Go enclave app as examples/hello is: the
// same hello handler in process behind the enclave's HTTPS server (TLS,
// attestation with the development attester) on the ingress fast path's
// socket.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/internal/benchapps/bulk"
)

func main() {
	hostSock := flag.String("host", "", "quench-host's unix socket")
	mtu := flag.Int("mtu", 65520, "MTU")
	ingress := flag.String("https-ingress", "", "also serve hello in process over HTTPS on this unix socket (the ingress fast path's VSOCK stand-in)")
	flag.Parse()
	body := []byte("Hello, world!")
	hello := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Type"] = []string{"text/plain; charset=utf-8"}
		_, _ = w.Write(body)
	})
	cfg := enclave.Config{
		Network: enclave.NetworkUserspace,
		MTU:     *mtu,
		DialHost: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", *hostSock)
		},
	}
	if *ingress != "" {
		att, err := attestation.NewDevAttester(attestation.DevConfig{})
		if err != nil {
			log.Fatal(err)
		}
		cfg.Handler, cfg.Attester, cfg.InternalAddr = hello, att, "-"
		cfg.IngressListen = func() (net.Listener, error) { return net.Listen("unix", *ingress) }
	}
	e, err := enclave.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := e.Start(sctx); err != nil {
		log.Fatal(err)
	}
	defer e.Close()
	hl, err := e.Listen("tcp", ":8080")
	if err != nil {
		log.Fatal(err)
	}
	bl, err := e.Listen("tcp", ":5201")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: hello}
	go func() { _ = srv.Serve(hl) }()
	go func() { _ = bulk.Serve(bl) }()
	<-ctx.Done()
	_ = srv.Close()
}
