// Command quench-enclave runs inside a Nitro Enclave and gives it a network
// through quench-host (or a stock gvproxy). Run it with --help.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/internal/debugserver"
	"github.com/quenchnet/quench/internal/endpoint"
)

const usage = `quench-enclave: the enclave side of quench.

It connects to quench-host on the parent instance over VSOCK and brings up
the enclave's network: a TAP device (every program in the enclave uses
ordinary sockets; needs CAP_NET_ADMIN) with the default route and DNS through
the host. When the host restarts, it reconnects.

Usage:
  quench-enclave [flags]

Examples:
  # In an enclave image: network through the parent instance (CID 3).
  quench-enclave -host vsock://3:1024

  # Development without VSOCK, in a network namespace standing in for the enclave:
  QUENCH_VSOCK_DIR=/run/quench ip netns exec encl quench-enclave

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

type addrList []netip.Addr

func (l *addrList) String() string {
	s := make([]string, len(*l))
	for i, a := range *l {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

func (l *addrList) Set(v string) error {
	a, err := netip.ParseAddr(v)
	if err != nil {
		return err
	}
	*l = append(*l, a)
	return nil
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("quench-enclave", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var dns addrList
	var (
		hostURL    = fs.String("host", "vsock://3:1024", "where quench-host listens: vsock://CID:PORT, unix:///path or tcp://host:port")
		network    = fs.String("network", "tap", "networking mode: tap (kernel TAP device for every program)")
		mtu        = fs.Int("mtu", 65520, "MTU of the virtual link; must match quench-host's -mtu")
		address    = fs.String("ip", "192.168.127.2/24", "enclave address and subnet")
		gateway    = fs.String("gateway", "192.168.127.1", "the host's address on the virtual network (default route, DNS)")
		tapName    = fs.String("tap-name", "tap0", "TAP device name")
		resolvConf = fs.String("resolv-conf", "/etc/resolv.conf", "resolv.conf to write the DNS servers to; - to leave it alone")
		startWait  = fs.Duration("start-timeout", 2*time.Minute, "how long to keep trying to reach the host at start-up")
		vsockDir   = fs.String("vsock-dir", "", "VSOCK stand-in: vsock:// addresses are unix sockets in this directory (also $"+endpoint.EnvVSockDir+")")
		pprofAddr  = fs.String("pprof", "", "serve net/http/pprof on this address (e.g. 127.0.0.1:6060); off by default")
		logLevel   = fs.String("log-level", "info", "debug, info, warn or error")
	)
	fs.Var(&dns, "dns", "DNS server; repeatable (default: the gateway)")
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
	fail := func(err error) int {
		fmt.Fprintf(stderr, "quench-enclave: %v\n", err)
		return 2
	}
	if fs.NArg() > 0 {
		return fail(fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0)))
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

	if *network != string(enclave.NetworkTAP) {
		return fail(fmt.Errorf("-network %q: quench-enclave supports tap; userspace networking is for Go apps that import the enclave package", *network))
	}
	ha, err := endpoint.Parse(*hostURL)
	if err != nil {
		return fail(fmt.Errorf("-host: %w", err))
	}
	prefix, err := netip.ParsePrefix(*address)
	if err != nil {
		return fail(fmt.Errorf("-ip: %w", err))
	}
	gw, err := netip.ParseAddr(*gateway)
	if err != nil {
		return fail(fmt.Errorf("-gateway: %w", err))
	}
	eopts := endpoint.Options{VSockDir: endpoint.VSockDirFromEnv(*vsockDir)}
	cfg := enclave.Config{
		Network:    enclave.NetworkTAP,
		MTU:        *mtu,
		Address:    prefix,
		Gateway:    gw,
		DNS:        dns,
		TAPName:    *tapName,
		ResolvConf: *resolvConf,
		Logger:     logger,
		DialHost: func(ctx context.Context) (net.Conn, error) {
			return endpoint.Dial(ctx, ha, eopts)
		},
	}
	e, err := enclave.New(cfg)
	if err != nil {
		return fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, *startWait)
	err = e.Start(startCtx)
	cancel()
	if err != nil {
		return fail(err)
	}
	logger.Info("network up", "host", ha.String(), "tap", *tapName, "ip", prefix.String())
	<-ctx.Done()
	logger.Info("shutting down")
	if err := e.Close(); err != nil {
		logger.Error("close", "err", err)
		return 1
	}
	return 0
}
