// Command userspace is an enclave app that gets its network from quench's
// userspace mode: a TCP/IP stack inside the process, no TAP device, no
// privileges. It serves HTTP on its enclave address, fetches a URL through
// the host's network, and runs until SIGINT or SIGTERM.
//
// See README.md in this directory for running it against quench-host.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/internal/endpoint"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "userspace:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		hostURL  = flag.String("host", "vsock://3:1024", "quench-host (or gvproxy) to connect to: vsock://CID:PORT, unix:///path or tcp://host:port")
		vsockDir = flag.String("vsock-dir", "", "VSOCK stand-in: dial vsock:// addresses as unix sockets in this directory (also $"+endpoint.EnvVSockDir+")")
		listen   = flag.String("listen", ":80", "address to serve HTTP on, on the enclave's network")
		fetch    = flag.String("fetch", "", "URL to fetch through the host's network at start, e.g. http://host.quench.internal:8000/")
		mtu      = flag.Int("mtu", 0, "MTU of the virtual link; must match the host's (0: 65520)")
	)
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	addr, err := endpoint.Parse(*hostURL)
	if err != nil {
		return err
	}
	opts := endpoint.Options{VSockDir: endpoint.VSockDirFromEnv(*vsockDir)}
	e, err := enclave.New(enclave.Config{
		Network: enclave.NetworkUserspace,
		DialHost: func(ctx context.Context) (net.Conn, error) {
			return endpoint.Dial(ctx, addr, opts)
		},
		MTU:    *mtu,
		Logger: log,
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = e.Start(startCtx)
	cancel()
	if err != nil {
		return err
	}
	defer e.Close()

	ln, err := e.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the enclave (userspace networking); you are %s\n", r.RemoteAddr)
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("serving HTTP", "addr", ln.Addr().String())

	if *fetch != "" {
		fetchOnce(ctx, log, e.HTTPClient(), *fetch)
	}

	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-served:
		return fmt.Errorf("HTTP server: %w", err)
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Warn("HTTP shutdown", "err", err)
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("HTTP server", "err", err)
	}
	return e.Close()
}

// fetchOnce GETs url through the enclave's network and logs the outcome.
func fetchOnce(ctx context.Context, log *slog.Logger, c *http.Client, url string) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		log.Error("fetch", "url", url, "err", err)
		return
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		log.Error("fetch", "url", url, "err", err)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		log.Error("fetch: reading body", "url", url, "err", err)
		return
	}
	preview := string(body)
	if len(preview) > 200 {
		preview = preview[:200] + "..."
	}
	log.Info("fetched", "url", url, "status", resp.Status, "bytes", len(body), "took", time.Since(start).Round(time.Millisecond), "body", preview)
}
