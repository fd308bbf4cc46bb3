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
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/debugserver"
	"github.com/quenchnet/quench/internal/endpoint"
)

const usage = `quench-host: the host side of quench, for the EC2 parent instance.

Enclaves connect to it over VSOCK and get a virtual network: NAT to the
host's network, DNS, and host ports published into the enclave. It speaks
gvisor-tap-vsock's protocol, so stock gvforwarder and nitriding enclaves work
with it too.

Usage:
  quench-host [flags]

Examples:
  # Enclaves connect on VSOCK port 1024; host port 443 reaches enclave port 443.
  quench-host -publish 0.0.0.0:443:443

  # Development without VSOCK: unix sockets stand in for it.
  QUENCH_VSOCK_DIR=/run/quench quench-host -publish 127.0.0.1:8443:443

Addresses are URLs: vsock://CID:PORT, vsock://:PORT, unix:///path, tcp://host:port.

Flags:
`

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("quench-host", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		listen, publish, dnsUp listFlag
		mtu                    = fs.Int("mtu", 65520, "MTU of the virtual link; it never reaches the internet (the host terminates TCP), so large is fast. Enclaves must use the same value.")
		subnet                 = fs.String("subnet", "192.168.127.0/24", "virtual network; the gateway is its first address, the enclave its second, the host loopback its last usable one")
		enclaveIP              = fs.String("enclave-ip", "", "enclave address that published ports forward to (default: second address of -subnet)")
		maxDials               = fs.Int("max-dials", host.DefaultMaxInFlightDials, "outbound connection attempts in progress at once (gvproxy: 10)")
		dialTimeout            = fs.Duration("dial-timeout", host.DefaultDialTimeout, "timeout of one outbound connection attempt")
		allowMetadata          = fs.Bool("allow-metadata", false, "let enclaves reach 169.254.0.0/16, including the EC2 instance metadata service and its credentials")
		noLoopback             = fs.Bool("no-host-loopback", false, "do not map the subnet's last address (192.168.127.254) to the host's 127.0.0.1")
		vsockDir               = fs.String("vsock-dir", "", "VSOCK stand-in: serve vsock:// addresses as unix sockets in this directory (also $"+endpoint.EnvVSockDir+")")
		pprofAddr              = fs.String("pprof", "", "serve net/http/pprof on this address (e.g. 127.0.0.1:6060); off by default")
		logLevel               = fs.String("log-level", "info", "debug, info, warn or error")
	)
	fs.Var(&listen, "listen", "where enclaves connect; repeatable (default vsock://:1024)")
	fs.Var(&publish, "publish", "forward a host port into the enclave: [HOSTIP:]HOSTPORT:ENCLAVEPORT[/udp]; repeatable (HOSTIP defaults to 0.0.0.0)")
	fs.Var(&dnsUp, "dns", "upstream DNS server host:port for names outside quench.internal; repeatable (default: the host's resolver)")
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
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fail(fmt.Errorf("-log-level: %w", err))
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if *pprofAddr != "" {
		stopPprof, err := debugserver.Start(*pprofAddr, logger)
		if err != nil {
			return fail(err)
		}
		defer stopPprof()
	}

	cfg := host.Config{
		MTU:                 *mtu,
		MaxInFlightDials:    *maxDials,
		DialTimeout:         *dialTimeout,
		AllowMetadata:       *allowMetadata,
		DisableHostLoopback: *noLoopback,
		DNSUpstream:         dnsUp,
		Logger:              logger,
	}
	var err error
	if cfg.Subnet, err = netip.ParsePrefix(*subnet); err != nil {
		return fail(fmt.Errorf("-subnet: %w", err))
	}
	if *enclaveIP != "" {
		if cfg.EnclaveIP, err = netip.ParseAddr(*enclaveIP); err != nil {
			return fail(fmt.Errorf("-enclave-ip: %w", err))
		}
	}
	for _, p := range publish {
		pp, err := host.ParsePublish(p)
		if err != nil {
			return fail(err)
		}
		cfg.Publish = append(cfg.Publish, pp)
	}
	if len(listen) == 0 {
		listen = listFlag{"vsock://:1024"}
	}
	var addrs []endpoint.Addr
	for _, l := range listen {
		a, err := endpoint.Parse(l)
		if err != nil {
			return fail(fmt.Errorf("-listen: %w", err))
		}
		addrs = append(addrs, a)
	}
	h, err := host.New(cfg)
	if err != nil {
		return fail(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = h.Start(startCtx)
	cancel()
	if err != nil {
		return fail(err)
	}
	opts := endpoint.Options{VSockDir: endpoint.VSockDirFromEnv(*vsockDir), LocalCID: endpoint.ParentCID}
	g, gctx := errgroup.WithContext(ctx)
	for _, a := range addrs {
		ln, err := endpoint.Listen(a, opts)
		if err != nil {
			_ = h.Close()
			return fail(fmt.Errorf("listen %s: %w", a, err))
		}
		logger.Info("listening for enclaves", "url", a.String(), "addr", ln.Addr().String())
		g.Go(func() error { return h.Serve(ln) })
	}
	for i, p := range h.Published() {
		logger.Info("published", "host", p.String(), "spec", cfg.Publish[i].String())
	}
	<-gctx.Done()
	logger.Info("shutting down")
	_ = h.Close()
	if err := g.Wait(); err != nil {
		logger.Error("stopped", "err", err)
		return 1
	}
	return 0
}
