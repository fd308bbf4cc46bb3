// Command quench-host runs on the EC2 parent instance: it gives enclaves a
// network (NAT, DNS, published ports) over VSOCK. Run it with --help.
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
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/debugserver"
	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/internal/logfmt"
)

const usage = `quench-host: the host side of quench, for the EC2 parent instance.

Enclaves connect to it over VSOCK and get a virtual network: NAT to the
host's network, DNS, DHCP, and host ports published into the enclave. It speaks
gvisor-tap-vsock's protocol, so stock gvforwarder and nitriding enclaves work
with it too.

Usage:
  quench-host [flags]
  quench-host ctl [-control PATH] [-drain D] status|ports|add SPEC|add-vsock SPEC|rm ADDR

Examples:
  # Enclaves connect on VSOCK port 1024; host port 443 reaches enclave port 443.
  quench-host -publish 0.0.0.0:443:443

  # Ingress fast path: host port 443 to the enclave's (CID 16) VSOCK port 8443,
  # with the client's address in a PROXY protocol v2 header.
  quench-host -publish-vsock 0.0.0.0:443:8443 -enclave-cid 16

  # AWS vsock-proxy's role: enclave programs that dial vsock://3:8000 reach KMS.
  quench-host -vsock-proxy 8000:kms.us-east-1.amazonaws.com:443

  # Enclaves' logs (quench-enclave -log-to vsock://3:1025) on standard error,
  # one line each with the enclave's CID; journald keeps them under systemd.
  quench-host -enclave-logs vsock://:1025

  # Settings from a file; a control socket for quench-host ctl; metrics.
  quench-host -config /etc/quench/host.yaml -control /run/quench-host/control.sock -metrics 127.0.0.1:9100

  # Development without VSOCK: unix sockets stand in for it.
  QUENCH_VSOCK_DIR=/run/quench quench-host -publish 127.0.0.1:8443:443

Addresses are URLs: vsock://CID:PORT, vsock://:PORT, unix:///path, tcp://host:port.

Flags:
`

// logRateWarning says what is wrong with -enclave-log-rate rate, if
// anything, when -enclave-logs is on.
func logRateWarning(logsOn bool, rate int) string {
	if logsOn && rate > 0 && rate < minSafeLogRate {
		return "-enclave-log-rate is low: an enclave flooding short lines may not get a 32 KiB write through within its 10 s timeout, and then sends some lines twice; keep it at some hundreds"
	}
	return ""
}

// minSafeLogRate is the -enclave-log-rate below which a Shipper's 32 KiB
// write of short lines (3 bytes of framing and a few of text: some 3300
// lines) may not pass within its 10 s WriteTimeout.
const minSafeLogRate = 400

func main() {
	if len(os.Args) > 1 && os.Args[1] == "ctl" {
		os.Exit(runCtl(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	o := defaultOptions()
	var configPath string
	fs := flag.NewFlagSet("quench-host", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.bind(fs, &configPath)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "quench-host: unexpected argument %q (see --help)\n", fs.Arg(0))
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "quench-host: %v\n", err)
		return 2
	}
	if configPath != "" {
		// The file first, then the command line again on top of it.
		o = defaultOptions()
		if err := loadConfigFile(configPath, &o); err != nil {
			return fail(err)
		}
		fs2 := flag.NewFlagSet("quench-host", flag.ContinueOnError)
		fs2.SetOutput(io.Discard)
		o.bind(fs2, &configPath)
		if err := fs2.Parse(args); err != nil {
			return fail(err)
		}
	}
	logger, err := logfmt.New(stderr, o.LogFormat, o.LogLevel)
	if err != nil {
		return fail(err)
	}
	if o.Pprof != "" {
		stopPprof, err := debugserver.Start(o.Pprof, logger)
		if err != nil {
			return fail(err)
		}
		defer stopPprof()
	}

	cfg, err := o.hostConfig()
	if err != nil {
		return fail(err)
	}
	cfg.Logger = logger
	epOpts := endpoint.Options{VSockDir: endpoint.VSockDirFromEnv(o.VSockDir), LocalCID: endpoint.ParentCID}
	cid := uint32(o.EnclaveCID)
	cfg.DialEnclave = func(ctx context.Context, port uint32) (net.Conn, error) {
		return endpoint.Dial(ctx, endpoint.Addr{Scheme: "vsock", CID: cid, Port: port}, epOpts)
	}
	listen := o.Listen
	if len(listen) == 0 {
		listen = []string{"vsock://:1024"}
	}
	var addrs []endpoint.Addr
	for _, l := range listen {
		a, err := endpoint.Parse(l)
		if err != nil {
			return fail(fmt.Errorf("-listen: %w", err))
		}
		addrs = append(addrs, a)
	}
	proxies, err := o.vsockProxies(addrs)
	if err != nil {
		return fail(err)
	}
	logsAddr, logsOn, err := o.enclaveLogs(addrs, proxies)
	if err != nil {
		return fail(err)
	}
	if logsOn {
		// Enclaves' lines pass whatever -log-level says: the operator
		// asked for them.
		enclaveLog, _ := logfmt.NewAt(stderr, o.LogFormat, slog.LevelInfo) // the format was checked above
		cfg.EnclaveLog = func(enclave, stream string, line []byte) {
			enclaveLog.Info("enclave", "enclave", enclave, "stream", stream, "line", string(line))
		}
	}
	h, err := host.New(cfg)
	if err != nil {
		return fail(err)
	}
	lc := h.Config() // limits against hostile clients and enclaves (layer 4), defaults filled in
	logger.Info("limits", "open_files", host.FileLimit(), "max_port_conns", lc.MaxPortConns, "max_port_conns_per_port", lc.MaxPortConnsPerPort, "max_port_conns_per_client", lc.MaxPortConnsPerClient,
		"first_byte_timeout", lc.FirstByteTimeout, "max_port_udp_flows", lc.MaxPortUDPFlows,
		"max_nat_conns", lc.MaxNATConns, "max_nat_conns_per_enclave", lc.MaxNATConnsPerEnclave,
		"max_nat_udp_flows", lc.MaxNATUDPFlows, "max_nat_udp_flows_per_enclave", lc.MaxNATUDPFlowsPerEnclave,
		"nat_idle_timeout", lc.NATIdleTimeout, "max_dials_per_enclave", lc.MaxDialsPerEnclave,
		"max_vsock_proxy_conns", lc.MaxVSockProxyConns, "max_vsock_proxy_conns_per_enclave", lc.MaxVSockProxyConnsPerPeer,
		"max_enclave_log_streams", lc.MaxEnclaveLogStreams, "enclave_log_rate", lc.EnclaveLogRate)
	if msg := logRateWarning(logsOn, lc.EnclaveLogRate); msg != "" {
		logger.Warn(msg, "enclave_log_rate", lc.EnclaveLogRate, "at_least", minSafeLogRate)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = h.Start(startCtx)
	cancel()
	if err != nil {
		return fail(err)
	}
	g, gctx := errgroup.WithContext(ctx)
	var servers []*http.Server
	defer func() {
		for _, s := range servers {
			_ = s.Close()
		}
	}()
	serve := func(name string, ln net.Listener, handler http.Handler) {
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
		servers = append(servers, srv)
		g.Go(func() error {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("%s server: %w", name, err)
			}
			return nil
		})
	}
	if o.Control != "" {
		ln, err := listenControl(o.Control)
		if err != nil {
			_ = h.Close()
			return fail(err)
		}
		logger.Info("control API", "socket", o.Control)
		serve("control", ln, h.ControlHandler())
	}
	if o.Metrics != "" {
		ln, err := net.Listen("tcp", o.Metrics)
		if err != nil {
			_ = h.Close()
			return fail(fmt.Errorf("-metrics: %w", err))
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(h.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		logger.Info("metrics", "addr", ln.Addr().String())
		serve("metrics", ln, mux)
	}
	for _, a := range addrs {
		ln, err := endpoint.Listen(a, epOpts)
		if err != nil {
			_ = h.Close()
			return fail(fmt.Errorf("listen %s: %w", a, err))
		}
		logger.Info("listening for enclaves", "url", a.String(), "addr", ln.Addr().String())
		g.Go(func() error { return h.Serve(ln) })
	}
	for _, p := range proxies {
		a := endpoint.Addr{Scheme: "vsock", CID: endpoint.AnyCID, Port: p.Port}
		ln, err := endpoint.Listen(a, epOpts)
		if err != nil {
			_ = h.Close()
			return fail(fmt.Errorf("vsock-proxy %s: listen %s: %w", p, a, err))
		}
		logger.Info("vsock-proxy", "url", a.String(), "addr", ln.Addr().String(), "target", p.Target)
		g.Go(func() error { return h.ServeVSockProxy(ln, p) })
	}
	if logsOn {
		ln, err := endpoint.Listen(logsAddr, epOpts)
		if err != nil {
			_ = h.Close()
			return fail(fmt.Errorf("-enclave-logs: listen %s: %w", logsAddr, err))
		}
		logger.Info("enclave logs", "url", logsAddr.String(), "addr", ln.Addr().String())
		g.Go(func() error { return h.ServeEnclaveLogs(ln) })
	}
	for _, p := range h.Ports() {
		logger.Info("published", "addr", p.Addr, "spec", p.Spec.String())
	}
	stopNotify := func() {}
	if os.Getenv("NOTIFY_SOCKET") != "" {
		// Until the drain ends: a drain as long as WatchdogSec must not
		// look like a hang.
		nctx, ncancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { notifyReady(nctx, logger, h); close(done) }()
		stopNotify = func() { ncancel(); <-done }
	}
	<-gctx.Done()
	notify(logger, "STOPPING=1")
	logger.Info("shutting down: draining published ports", "timeout", cfg.DrainTimeout)
	drain(h, cfg.DrainTimeout)
	stopNotify()
	for _, s := range servers {
		_ = s.Close()
	}
	_ = h.Close()
	if err := g.Wait(); err != nil {
		logger.Error("stopped", "err", err)
		return 1
	}
	return 0
}

// drain stops accepting on every published port and waits up to timeout
// for their connections to end (then closes them).
func drain(h *host.Host, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, p := range h.Ports() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = h.RemovePort(ctx, p.Spec.Network, p.Addr)
		}()
	}
	wg.Wait()
}

// listenControl listens on a unix socket only its owner may use. A socket
// left at path by a quench-host that crashed is replaced; one that a running
// quench-host still serves is not (endpoint.RemoveStaleSocket).
func listenControl(path string) (net.Listener, error) {
	if err := endpoint.RemoveStaleSocket(path); err != nil {
		return nil, fmt.Errorf("-control: %w", err)
	}
	old := syscall.Umask(0o077)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("-control: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	return ln, nil
}
