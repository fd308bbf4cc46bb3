// Command quench-enclave runs inside a Nitro Enclave: it gives the enclave a
// network through quench-host (or a stock gvproxy) and, for apps in any
// language, terminates TLS, serves attestation and proxies to the app (the
// role of nitriding-daemon). Run it with --help.
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
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/enclave/keysync"
	"github.com/quenchnet/quench/internal/debugserver"
	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/internal/logfmt"
	"github.com/quenchnet/quench/internal/sandbox"
	"github.com/quenchnet/quench/logship"
	"github.com/quenchnet/quench/policy"
	"github.com/quenchnet/quench/proxy"
)

const usage = `quench-enclave: the enclave side of quench.

It connects to quench-host on the parent instance over VSOCK and brings up
the enclave's network. With -app-url it also serves the app: HTTPS
terminated in the enclave (self-signed, -tls-cert/-tls-key, or ACME with
-acme -fqdn), attestation documents binding the TLS certificate at
/enclave/attestation, /enclave/config and /enclave/health, and everything
else proxied to the app. The app talks to quench-enclave on -internal-addr:
GET /enclave/ready (with -wait-for-app, the public server starts only then),
POST /enclave/hash (register an app key hash bound into documents), and
POST /enclave/kms/recipient and /enclave/kms/decrypt (AWS KMS secrets sealed
to the enclave: see docs/nitriding-migration.md).
Without -app-url, -fqdn (or another serving flag: -wait-for-app,
-fqdn-leader, -dev-attester, ...) serves all that but the proxy, for an app
listening on ports of its own, as nitriding-daemon does without -appwebsrv:
other paths get 404.
With -app-cmd (or a command after --) it starts the app in its own process
group, forwards its output and SIGINT/SIGTERM (to the whole group), kills
the group if the app has not exited -drain-timeout+5s after the signal, and
exits with the app's exit code when it exits.

Key synchronisation (nitriding's horizontal scaling), with -fqdn-leader:
identical enclaves elect as leader the one that reaches itself under the
leader's name, on the external private endpoint -ext-priv-addr (:444;
publish it on the host only inside the VPC). The leader hands its TLS
certificate and the app's state to every worker whose attestation document
shows the same image (PCR0-2), encrypted to a key bound in that document;
workers send heartbeats. The app registers its state on the leader with
PUT /enclave/state on -internal-addr and reads it on workers with
GET /enclave/state.

Network modes (-network):
  tap        a kernel TAP device (needs CAP_NET_ADMIN); every program in the
             enclave uses ordinary sockets, with the default route and DNS
             through the host.
  userspace  a gVisor TCP/IP stack inside quench-enclave: no privileges, but
             only quench-enclave's own servers (public, metrics) get a
             network. Other programs, including the app, have only the
             loopback interface: no egress, no DNS.

Egress policy (-allow): an allow-list enforced inside the enclave, so it is
part of the attested image (and shown in /enclave/config), unlike
quench-host's -allow, which the untrusted host controls. In TAP mode it
applies to every program in the enclave (their kernel sockets and DNS
queries): a connection it refuses fails at once ("connection refused"), a
name it does not allow gets NXDOMAIN, and a hostname rule allows the
addresses the DNS answered for that name. Replies on connections into the
enclave (published ports, -forward) always pass; quench-enclave's own
connections (-acme, key sync) are not limited by it. The enclave's DNS
goes through quench-enclave (-dns-proxy, written to -resolv-conf), which
checks every question and answer, over UDP and over TCP (for answers too
large for a datagram); a program's own DNS over TCP to the host's server
is refused unless an address or CIDR rule names the server (* does not),
as it cannot be inspected. The app (-app-cmd or after --) starts under a
seccomp filter (-app-sandbox, on with -allow) that refuses it and what it
starts the other ways out: VSOCK sockets (straight to the host), packet,
XDP and raw sockets, io_uring, pidfd_getfd. Give -app-user too: an app
running as root can reach into quench-enclave itself.

Moving from nitriding-daemon: its flags -appwebsrv, -appcmd, -appurl,
-intport, -ext-pub-port, -ext-priv-port, -host-proxy-port and
-prometheus-port are taken as -app-url, -app-cmd, -source-url,
-internal-addr, -public-addr, -ext-priv-addr, -host and -metrics;
-prometheus-namespace and -host-ip-provider-port are taken and ignored with
a warning; the others it has are refused with what to use instead.

Usage:
  quench-enclave [flags] [-- app command and args]

Examples:
  # In an enclave image: network, TLS and attestation for an app on :8081.
  quench-enclave -host vsock://3:1024 -app-url http://127.0.0.1:8081 -- python3 /app/server.py

  # Networking only (TAP): every program in the enclave gets a network.
  quench-enclave -host vsock://3:1024

  # Plus the ingress fast path to a server in any language on port 3000
  # (on the host: quench-host -publish-vsock 0.0.0.0:80:8080). A target
  # must not be -internal-addr (127.0.0.1:8080 when serving with -app-url).
  quench-enclave -host vsock://3:1024 -forward vsock://:8080=127.0.0.1:3000

  # Development without VSOCK, in a network namespace standing in for the
  # enclave, with the INSECURE development attester (-resolv-conf -: the
  # namespace shares the machine's /etc/resolv.conf, which must stay as is):
  QUENCH_VSOCK_DIR=/run/quench ip netns exec encl quench-enclave -dev-attester \
      -dev-root-out /tmp/dev-root.pem -resolv-conf - \
      -app-url http://127.0.0.1:8081 -app-cmd 'python3 app.py'

Flags:
`

func main() {
	if len(os.Args) > 1 && os.Args[1] == sandbox.Arg {
		// Run again by superviseApp to start a sandboxed app.
		os.Exit(sandbox.Main(os.Args[2:]))
	}
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

// forwardList is the repeatable -forward flag.
type forwardList []forwardSpec

type forwardSpec struct {
	spec        string
	listen      endpoint.Addr
	target      string
	proxyHeader bool
}

func (l *forwardList) String() string {
	s := make([]string, len(*l))
	for i, f := range *l {
		s[i] = f.spec
	}
	return strings.Join(s, " ")
}

func (l *forwardList) Set(v string) error {
	listen, target, ok := strings.Cut(v, "=")
	if !ok || listen == "" || target == "" {
		return fmt.Errorf("%q: want LISTEN=TARGET[,proxy-header], e.g. vsock://:8080=127.0.0.1:3000", v)
	}
	f := forwardSpec{spec: v}
	if t, opt, ok := strings.Cut(target, ","); ok {
		if opt != "proxy-header" {
			return fmt.Errorf("%q: unknown option %q (the only one is proxy-header)", v, opt)
		}
		target, f.proxyHeader = t, true
	}
	a, err := endpoint.Parse(listen)
	if err != nil {
		return fmt.Errorf("%q: %w", v, err)
	}
	f.listen, f.target = a, target
	*l = append(*l, f)
	return nil
}

// options are the parsed flags.
type options struct {
	cfg        enclave.Config
	appArgs    []string            // the app command, if any
	appSandbox bool                // start the app under internal/sandbox's seccomp filter
	appCred    *syscall.Credential // run the app as this user (-app-user), or nil
	startWait  time.Duration
	hostAddr   string // -host
	devRootOut string
	pprofAddr  string // networking-only pprof (debugserver)
	logger     *slog.Logger

	// -log-to: where the log and the app's output are shipped (logTo.Scheme
	// empty: nowhere); logTee is the logger's output, to which run adds
	// the shipper, logShip.
	logTo   endpoint.Addr
	eopts   endpoint.Options
	logTee  *tee
	logShip *logship.Shipper
	jsonLog bool // -log-format json
}

// parse turns the command line into options; the error is for the user.
func parse(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("quench-enclave", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var dns addrList
	var (
		hostURL     = fs.String("host", "vsock://3:1024", "where quench-host listens: vsock://CID:PORT, unix:///path or tcp://host:port")
		network     = fs.String("network", "tap", "networking mode: tap (kernel TAP device, every program gets a network) or userspace (gVisor stack in this process; only quench-enclave's servers get a network)")
		mtu         = fs.Int("mtu", 65520, "MTU of the virtual link; must match quench-host's -mtu")
		address     = fs.String("ip", "192.168.127.2/24", "enclave address and subnet")
		gateway     = fs.String("gateway", "192.168.127.1", "the host's address on the virtual network (default route, DNS)")
		tapName     = fs.String("tap-name", "tap0", "TAP device name (-network tap)")
		resolvConf  = fs.String("resolv-conf", "/etc/resolv.conf", "resolv.conf to write the DNS servers to (-network tap); - to leave it alone")
		dnsProxy    = fs.String("dns-proxy", "127.0.0.1", "with -allow in TAP mode: the loopback address where quench-enclave answers the enclave's DNS (port 53, UDP and TCP; written to -resolv-conf), checking every question and answer by the policy, over TCP too (programs' own DNS over TCP is refused: it cannot be inspected); - for none")
		startWait   = fs.Duration("start-timeout", 2*time.Minute, "how long to keep trying to reach the host at start-up")
		vsockDir    = fs.String("vsock-dir", "", "VSOCK stand-in: vsock:// addresses are unix sockets in this directory (also $"+endpoint.EnvVSockDir+")")
		logLevel    = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat   = fs.String("log-format", "text", logfmt.Formats+"; -log-to ships the lines as written")
		logTo       = fs.String("log-to", "", "also send quench-enclave's log and the app's standard output and error to quench-host -enclave-logs at `URL` (vsock://3:1025), on a VSOCK stream of their own: they arrive while the enclave's network is down, and a production enclave has no console. Lines wait in a 1 MiB buffer while the host is away, past it they are dropped and counted, never blocking the app. The host reads every line, so never log secrets; the app's output is a way out of the enclave that -allow does not hold. Named in /enclave/config (annotation logs_to_host) with -app-url; off by default")
		appURL      = fs.String("app-url", "", "the app's address, http://HOST:PORT or unix:///path; h2c://HOST:PORT or h2c+unix:///path for an app that speaks HTTP/2 without TLS (gRPC servers; clients get HTTP/2 or HTTP/1.1 over the enclave's TLS); turns serving on (HTTPS, attestation, proxy to the app)")
		appCmd      = fs.String("app-cmd", "", "start the app with this command line (split like a POSIX shell, without expansion); or give it after --")
		appSandbox  = fs.String("app-sandbox", "auto", "start the app under a seccomp filter that refuses it (and what it starts) VSOCK sockets, packet, XDP and raw sockets, io_uring and taking other processes' descriptors (pidfd_getfd): the ways past the egress policy besides the TAP device. auto: with -allow; on; off")
		appUser     = fs.String("app-user", "", "run the app as `USER[:GROUP]` (names or numeric IDs; supplementary groups dropped; the environment, HOME included, is passed on unchanged). An app running as root can reach into quench-enclave itself: give a user for -allow to hold against the app")
		publicAddr  = fs.String("public-addr", enclave.DefaultPublicAddr, "public HTTPS address on the enclave's network (the host publishes a port to it)")
		intAddr     = fs.String("internal-addr", enclave.DefaultInternalAddr, "internal server for the app (/enclave/ready, /enclave/hash, /enclave/state, /enclave/kms/*) on the enclave's loopback: a literal loopback address (127.0.0.1, [::1]; not localhost, not :PORT), and neither -app-url nor a -forward target may name it")
		waitForApp  = fs.Bool("wait-for-app", false, "start the public server only after the app calls GET /enclave/ready on -internal-addr")
		sourceURL   = fs.String("source-url", "", "the app's code repository (e.g. https://github.com/foo/bar), shown on /enclave and in /enclave/config (annotation source_url) for clients verifying the image (nitriding-daemon's -appurl)")
		fqdn        = fs.String("fqdn", "", "the enclave's public name: ACME certificate name, self-signed certificate subject")
		acmeOn      = fs.Bool("acme", false, "obtain the certificate for -fqdn by ACME (TLS-ALPN-01 on the public port; the host must publish port 443)")
		acmeDir     = fs.String("acme-directory", enclave.DefaultACMEDirectory, "ACME directory URL")
		acmeEmail   = fs.String("acme-email", "", "ACME account contact address")
		acmeCache   = fs.String("acme-cache", "", "directory keeping the ACME account key and certificates (default: memory only)")
		acmeRoots   = fs.String("acme-roots", "", "PEM file of roots trusted for the ACME server's HTTPS (test CAs such as Pebble); default: system roots")
		tlsCert     = fs.String("tls-cert", "", "PEM certificate chain to serve (with -tls-key); default: a self-signed ECDSA P-256 certificate")
		tlsKey      = fs.String("tls-key", "", "PEM private key of -tls-cert; never one in the enclave image (the parent holds the image: with the key it can present the attested certificate and relay the documents); write it at run time from a secret only the enclave opens (KMS with attestation)")
		devAtt      = fs.Bool("dev-attester", false, "INSECURE: sign attestation documents with a self-generated development root instead of the Nitro Secure Module; for simulations only")
		devRootOut  = fs.String("dev-root-out", "", "with -dev-attester: write the development root certificate (PEM) to `FILE`, for quench verify --roots")
		metricsAddr = fs.String("metrics", "", "serve Prometheus metrics at /metrics on this address of the enclave's network (e.g. :9090): the tunnel, connections, with -allow the egress filter and the DNS proxy, with -app-url the servers and the proxy, and with -log-to the log shipper (quench_enclave_log_*: lines, dropped, pending bytes, connected); off by default")
		pprofOn     = fs.Bool("pprof", false, "serve net/http/pprof under /debug/pprof/ on -internal-addr; attestation is then refused, and -fqdn-leader (key sync) too, since profiling weakens isolation")
		ingress     = fs.String("ingress", "", "also serve the public HTTPS server on this listener for quench-host's ingress fast path (PROXY protocol header first), e.g. vsock://:8443; off by default")
		maxAttest   = fs.Int("max-attestations", enclave.DefaultMaxAttestations, "attestation documents produced at once (each is an NSM request, served one at a time); past it /enclave/attestation, attested /enclave/config and /enclave/kms/recipient get 503 with Retry-After at once; -1: no limit")
		maxConns    = fs.Int("max-conns", 0, "connections the host opened into the enclave held at once: to the public HTTPS server (over the tunnel and -ingress), to every -forward and to key sync, together (in their handshake, idle, busy or relayed); past it a new connection is closed at once, counted and logged; -1: no limit (default: a quarter of the open-file limit)")
		drain       = fs.Duration("drain-timeout", enclave.DefaultDrainTimeout, "on SIGTERM/SIGINT, how long in-flight requests get to finish")
		maxInFlight = fs.Int("max-in-flight", 0, "requests forwarded to the app at once; past it they wait in -queue or get 503 with Retry-After at once; -1: no limit (default: 64 per CPU)")
		queue       = fs.Int("queue", 0, "requests that may wait for a free -max-in-flight slot (each for up to -queue-timeout) before being refused; 0: refuse at once (default: 8 times -max-in-flight)")
		queueWait   = fs.Duration("queue-timeout", defaultQueueTimeout, "how long a queued request waits for a slot before 503")
		maxStreams  = fs.Int("max-streams", 0, "responses of unknown length (server-sent events, gRPC streams, chunked downloads) that give back their -max-in-flight slot once their head is sent, so that long-lived subscribers do not keep other requests out; past it a stream keeps its slot; -1: every response holds its slot to its end (default: 4096)")
		appTimeout  = fs.Duration("app-timeout", proxy.DefaultUpstreamTimeout, "how long the app may take to start its response once it has the request (then 504), and, with an http:// or unix:// app, to send more of a response it has started (then the response is cut; an event stream must send within it); raise it for slow endpoints such as model inference; 0: no limit")
		fqdnLeader  = fs.String("fqdn-leader", "", "key synchronisation: the leader enclave's name, host or host:port (default port: that of -ext-priv-addr); the same on every enclave of the deployment; off by default")
		extPriv     = fs.String("ext-priv-addr", enclave.DefaultSyncAddr, "with -fqdn-leader: TLS listener for other enclaves (/enclave/leader, /enclave/sync, /enclave/heartbeat) on the enclave's network; publish it only inside the VPC")
		advertise   = fs.String("sync-advertise", "", "with -fqdn-leader: host[:port] where the leader reaches this enclave's -ext-priv-addr (default: the source address of its heartbeats, port of the leader's)")
		syncBeat    = fs.Duration("sync-heartbeat", keysync.DefaultHeartbeatInterval, "with -fqdn-leader: interval of workers' heartbeats; a worker silent for 3 intervals is dropped")
	)
	fs.Var(&dns, "dns", "DNS server (port 53); repeatable (default: the gateway). With -allow in TAP mode the DNS proxy asks it, and resolv.conf names the proxy")
	var fwds forwardList
	fs.Var(&fwds, "forward", "ingress fast path to a program in the enclave: LISTEN=TARGET[,proxy-header], e.g. vsock://:8080=127.0.0.1:3000; quench-host -publish-vsock HOSTPORT:8080 sends each client connection to LISTEN, which is relayed to TARGET (host:port or unix:///path on the enclave's own sockets); ,proxy-header passes the client address on in a PROXY v2 header; repeatable; works without -app-url and in both network modes")
	var allow []string
	fs.Func("allow", "egress policy: allow outbound connections and DNS answers only as `RULE` says: DEST[:PORTS][/tcp|/udp], DEST a hostname, *.wildcard, address, CIDR or *; repeatable (default: allow all). Example: -allow kms.us-east-1.amazonaws.com:443 -allow 10.0.0.0/8:5432 (a wildcard over a zone where anyone can get a name, such as *.amazonaws.com, allows whoever gets one). Enforced inside the enclave (part of the attested image, unlike quench-host's -allow, which the untrusted host controls), for every program in TAP mode (in userspace mode no other program has a network); shown in /enclave/config (egress) with -app-url", func(v string) error {
		allow = append(allow, v)
		return nil
	})
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	args, nitridingWarnings, err := translateNitriding(fs, args)
	if err != nil {
		return nil, err
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, printedError{err} // flag has printed it with the usage
	}
	o := &options{startWait: *startWait, devRootOut: *devRootOut, hostAddr: *hostURL}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	o.logTee = &tee{local: stderr}
	logger, err := logfmt.NewAt(o.logTee, *logFormat, level)
	if err != nil {
		return nil, err
	}
	o.logger = logger
	for _, w := range nitridingWarnings {
		logger.Warn(w)
	}
	o.jsonLog = *logFormat == "json"

	// The app command: -app-cmd or everything after --.
	if fs.NArg() > 0 {
		if *appCmd != "" {
			return nil, errors.New("give the app command either with -app-cmd or after --, not both")
		}
		if i := len(args) - fs.NArg(); i == 0 || args[i-1] != "--" {
			return nil, fmt.Errorf("unexpected argument %q: put the app command after -- (see --help)", fs.Arg(0))
		}
		o.appArgs = fs.Args()
	} else if *appCmd != "" {
		words, err := splitWords(*appCmd)
		if err != nil {
			return nil, fmt.Errorf("-app-cmd: %w", err)
		}
		if len(words) == 0 {
			return nil, errors.New("-app-cmd is empty")
		}
		o.appArgs = words
	}
	switch *appSandbox {
	case "on":
		o.appSandbox = true
	case "auto":
		o.appSandbox = len(allow) > 0
	case "off":
	default:
		return nil, fmt.Errorf("-app-sandbox %q: want auto, on or off", *appSandbox)
	}
	if len(o.appArgs) == 0 {
		for _, name := range []string{"app-sandbox", "app-user"} {
			if set[name] {
				return nil, fmt.Errorf("-%s needs the app command (-app-cmd or after --)", name)
			}
		}
		o.appSandbox = false // no app to hold
	} else {
		if o.appSandbox {
			if _, err := sandbox.Filter(); err != nil {
				return nil, fmt.Errorf("-app-sandbox: %w (-app-sandbox off to start the app without it)", err)
			}
		}
		if *appUser != "" {
			var err error
			if o.appCred, err = lookupAppUser(*appUser); err != nil {
				return nil, fmt.Errorf("-app-user: %w", err)
			}
		}
	}

	var mode enclave.NetworkMode
	switch *network {
	case "tap":
		mode = enclave.NetworkTAP
	case "userspace":
		mode = enclave.NetworkUserspace
	default:
		return nil, fmt.Errorf("-network %q: want tap or userspace", *network)
	}
	ha, err := endpoint.Parse(*hostURL)
	if err != nil {
		return nil, fmt.Errorf("-host: %w", err)
	}
	prefix, err := netip.ParsePrefix(*address)
	if err != nil {
		return nil, fmt.Errorf("-ip: %w", err)
	}
	gw, err := netip.ParseAddr(*gateway)
	if err != nil {
		return nil, fmt.Errorf("-gateway: %w", err)
	}
	eopts := endpoint.Options{VSockDir: endpoint.VSockDirFromEnv(*vsockDir)}
	o.eopts = eopts
	if *logTo != "" {
		if o.logTo, err = endpoint.Parse(*logTo); err != nil {
			return nil, fmt.Errorf("-log-to: %w", err)
		}
		if o.logTo.Scheme == "vsock" && o.logTo.CID == endpoint.AnyCID {
			// Dialled, it fails for ever, in the background: say so now.
			return nil, fmt.Errorf("-log-to %s: no CID to send to (the parent is vsock://3:PORT)", *logTo)
		}
		if o.logTo == ha {
			// The tunnel's listener takes the log stream for a bad
			// handshake: no line would ever arrive, and nothing said why.
			return nil, fmt.Errorf("-log-to %s is -host's address: quench-host -enclave-logs listens on a port of its own (vsock://3:1025)", *logTo)
		}
	}
	o.cfg = enclave.Config{
		Network:    mode,
		MTU:        *mtu,
		Address:    prefix,
		Gateway:    gw,
		DNS:        dns,
		TAPName:    *tapName,
		ResolvConf: *resolvConf,
		DNSProxy:   *dnsProxy,
		Logger:     o.logger,
		DialHost: func(ctx context.Context) (net.Conn, error) {
			return endpoint.Dial(ctx, ha, eopts)
		},
	}

	if len(allow) > 0 {
		if o.cfg.Egress, err = policy.Parse(allow); err != nil {
			return nil, fmt.Errorf("-allow: %w", err)
		}
	}
	if len(o.appArgs) > 0 {
		// How the app is held, for clients auditing /enclave/config.
		sb, uid, gid := "off", os.Geteuid(), os.Getegid()
		if o.appSandbox {
			sb = "seccomp"
		}
		if c := o.appCred; c != nil {
			uid, gid = int(c.Uid), int(c.Gid)
		}
		o.cfg.Annotations = map[string]string{"app_sandbox": sb, "app_user": fmt.Sprintf("%d:%d", uid, gid)}
	}
	if *logTo != "" {
		// Clients auditing /enclave/config see that the enclave's log,
		// and the app's output, leave it for the host.
		if o.cfg.Annotations == nil {
			o.cfg.Annotations = map[string]string{}
		}
		o.cfg.Annotations["logs_to_host"] = o.logTo.String()
		o.cfg.MetricsCollectors = append(o.cfg.MetricsCollectors, shipCollector{o})
	}
	if set["dns-proxy"] && *dnsProxy != "-" && (o.cfg.Egress == nil || mode != enclave.NetworkTAP) {
		// Without a policy (or in userspace mode, where no other program
		// has a network) there is no DNS proxy, and resolv.conf names -dns:
		// a -dns-proxy given anyway would be ignored without a word.
		return nil, errors.New("-dns-proxy needs -allow in TAP mode (the DNS proxy runs only with an egress policy)")
	}

	for _, f := range fwds {
		if err := eopts.CheckListen(f.listen); err != nil {
			return nil, fmt.Errorf("-forward %s: %w", f.spec, err)
		}
		la := f.listen
		o.cfg.Forwards = append(o.cfg.Forwards, enclave.Forward{
			Listen:      func() (net.Listener, error) { return endpoint.Listen(la, eopts) },
			Target:      f.target,
			ProxyHeader: f.proxyHeader,
		})
	}

	// Metrics stand without serving too: the network's collectors.
	o.cfg.MetricsAddr = *metricsAddr

	// -max-conns caps the forwards as well as the public server and key
	// sync: it stands with either -app-url or -forward.
	if *maxConns < -1 {
		return nil, fmt.Errorf("-max-conns %d: want a positive limit, 0 for the default or -1 for none", *maxConns)
	}
	o.cfg.MaxConns = *maxConns

	// Serving is on with -app-url, or without it with a flag that only
	// serving takes (-fqdn, which nitriding-daemon requires, -wait-for-app,
	// -fqdn-leader, ...): then the public server answers the enclave's
	// endpoints and 404 elsewhere, and the internal server serves the app,
	// which listens on ports of its own, as nitriding-daemon does without
	// -appwebsrv.
	serving := *appURL != ""
	noApp := false
	if !serving {
		for _, name := range servingOnlyFlags {
			if set[name] {
				serving, noApp = true, true
				break
			}
		}
		if noApp {
			for _, name := range []string{"max-in-flight", "queue", "queue-timeout", "max-streams", "app-timeout"} {
				if set[name] {
					return nil, fmt.Errorf("-%s needs -app-url (the proxy's; without -app-url there is no app to proxy to)", name)
				}
			}
		}
	}
	if *sourceURL != "" {
		if !serving {
			return nil, errors.New("-source-url (nitriding-daemon's -appurl) needs serving: -app-url, or -fqdn without an app to proxy to")
		}
		if _, err := url.Parse(*sourceURL); err != nil {
			return nil, fmt.Errorf("-source-url (nitriding-daemon's -appurl): %w", err)
		}
		if o.cfg.Annotations == nil {
			o.cfg.Annotations = map[string]string{}
		}
		o.cfg.Annotations[enclave.AnnotationSourceURL] = *sourceURL
	}
	if !serving {
		if set["max-conns"] && len(fwds) == 0 {
			return nil, errors.New("-max-conns needs -app-url or -forward (it caps the connections to the public server, the forwards and key sync)")
		}
		if len(o.appArgs) > 0 && len(fwds) == 0 {
			return nil, errors.New("the app command needs -app-url (where the app listens, for the proxy, e.g. http://127.0.0.1:8081), a -forward to it, or -fqdn (serving the enclave's endpoints without a proxy, as nitriding-daemon without -appwebsrv)")
		}
		if mode == enclave.NetworkUserspace && len(fwds) == 0 {
			return nil, errors.New("-network userspace needs -app-url or -forward: without them, the userspace network reaches no program")
		}
		for _, name := range []string{"max-in-flight", "queue", "queue-timeout", "max-streams", "app-timeout"} {
			if set[name] {
				return nil, fmt.Errorf("-%s needs -app-url (serving is off without it)", name)
			}
		}
		if *pprofOn {
			// Profiles expose process memory: never on the enclave's
			// network, where the host reaches them.
			if err := checkLoopback(*intAddr); err != nil {
				return nil, fmt.Errorf("-internal-addr %q (where -pprof listens): %w", *intAddr, err)
			}
			o.pprofAddr = *intAddr
		} else if set["internal-addr"] {
			// Without -app-url there is no internal server: only -pprof
			// would listen there.
			return nil, errors.New("-internal-addr needs -app-url (the internal server) or -pprof")
		}
		return o, nil
	}

	if noApp {
		o.cfg.Handler = enclave.NoApp
	} else {
		u, err := url.Parse(*appURL)
		if err != nil {
			return nil, fmt.Errorf("-app-url: %w", err)
		}
		switch u.Scheme {
		case "http", "https", "unix", "h2c", "h2c+unix":
		default:
			return nil, fmt.Errorf("-app-url %q: want http://HOST:PORT, unix:///path, h2c://HOST:PORT or h2c+unix:///path (where the app listens; Amnesic Systems' nitriding takes -app-url for the code repository, which is -source-url here)", *appURL)
		}
		if h := u.Hostname(); u.Host != "" && h != "localhost" && net.ParseIP(h) == nil {
			o.logger.Warn("-app-url names a host, not an address in the enclave: the proxy sends every request there; -app-url is where the app listens (e.g. http://127.0.0.1:8081), and a code repository is -source-url (Amnesic Systems' nitriding spells it -app-url)", "app_url", *appURL)
		}
		o.cfg.AppURL = u
	}
	o.cfg.PublicAddr = *publicAddr
	o.cfg.InternalAddr = *intAddr
	o.cfg.WaitForApp = *waitForApp
	o.cfg.FQDN = *fqdn
	o.cfg.ACME = *acmeOn
	if set["acme-directory"] || *acmeOn {
		o.cfg.ACMEDirectory = *acmeDir
	}
	o.cfg.ACMEEmail = *acmeEmail
	o.cfg.ACMECacheDir = *acmeCache
	if *acmeRoots != "" {
		pool, err := loadCertPool(*acmeRoots)
		if err != nil {
			return nil, fmt.Errorf("-acme-roots: %w", err)
		}
		o.cfg.ACMERoots = pool
	}
	if !*acmeOn {
		for _, name := range []string{"acme-directory", "acme-email", "acme-cache", "acme-roots"} {
			if set[name] {
				return nil, fmt.Errorf("-%s needs -acme", name)
			}
		}
	}
	if *ingress != "" {
		ia, err := endpoint.Parse(*ingress)
		if err != nil {
			return nil, fmt.Errorf("-ingress: %w", err)
		}
		if err := eopts.CheckListen(ia); err != nil {
			return nil, fmt.Errorf("-ingress %s: %w", *ingress, err)
		}
		o.cfg.IngressListen = func() (net.Listener, error) { return endpoint.Listen(ia, eopts) }
	}
	o.cfg.TLSCertFile, o.cfg.TLSKeyFile = *tlsCert, *tlsKey
	o.cfg.Pprof = *pprofOn
	o.cfg.DrainTimeout = *drain
	if *maxAttest == 0 || *maxAttest < -1 {
		return nil, fmt.Errorf("-max-attestations %d: want a positive limit or -1 for none", *maxAttest)
	}
	o.cfg.MaxAttestations = *maxAttest
	if *maxInFlight < -1 {
		return nil, fmt.Errorf("-max-in-flight %d: want a positive limit, 0 for the default or -1 for none", *maxInFlight)
	}
	if (set["queue"] && *queue < 0) || *queueWait <= 0 {
		return nil, errors.New("-queue must not be negative and -queue-timeout must be positive")
	}
	o.cfg.Proxy.MaxInFlight = *maxInFlight
	o.cfg.Proxy.QueueSize = *queue
	if !set["queue"] {
		o.cfg.Proxy.QueueSize = defaultQueue(*maxInFlight)
	}
	o.cfg.Proxy.QueueTimeout = *queueWait
	if *maxStreams < -1 {
		return nil, fmt.Errorf("-max-streams %d: want a positive limit, 0 for the default or -1 to keep streams in -max-in-flight", *maxStreams)
	}
	o.cfg.Proxy.MaxStreams = *maxStreams
	switch {
	case *appTimeout < 0:
		return nil, fmt.Errorf("-app-timeout %s: must not be negative (0: no limit)", *appTimeout)
	case *appTimeout == 0:
		o.cfg.Proxy.UpstreamTimeout = -1 // the proxy's "none"
	default:
		o.cfg.Proxy.UpstreamTimeout = *appTimeout
	}
	if *drain <= 0 {
		return nil, fmt.Errorf("-drain-timeout %s: must be positive", *drain)
	}
	if *fqdnLeader == "" {
		for _, name := range []string{"ext-priv-addr", "sync-advertise", "sync-heartbeat"} {
			if set[name] {
				return nil, fmt.Errorf("-%s needs -fqdn-leader (key synchronisation is off without it)", name)
			}
		}
	} else {
		if *syncBeat <= 0 {
			return nil, fmt.Errorf("-sync-heartbeat %s: must be positive", *syncBeat)
		}
		o.cfg.FQDNLeader = *fqdnLeader
		o.cfg.SyncAddr = *extPriv
		o.cfg.KeySync.Advertise = *advertise
		o.cfg.KeySync.HeartbeatInterval = *syncBeat
	}
	if *devRootOut != "" && !*devAtt {
		return nil, errors.New("-dev-root-out needs -dev-attester")
	}
	if *devAtt {
		dev, err := attestation.NewDevAttester(attestation.DevConfig{Logger: o.logger})
		if err != nil {
			return nil, err
		}
		o.cfg.Attester = dev
		fmt.Fprintln(stderr, "quench-enclave: WARNING: -dev-attester: attestation documents are signed by a self-generated root, NOT by AWS Nitro. They prove nothing. Never use this in production.")
	}
	return o, nil
}

// servingOnlyFlags are the flags that only serving takes: given without
// -app-url, they turn serving on without an app.
var servingOnlyFlags = []string{"public-addr", "wait-for-app", "fqdn", "acme", "acme-directory", "acme-email", "acme-cache", "acme-roots", "tls-cert", "tls-key", "dev-attester", "dev-root-out", "max-attestations", "drain-timeout", "ingress", "fqdn-leader", "ext-priv-addr", "sync-advertise", "sync-heartbeat"}

// testRefuseStart, set by the package's tests, makes run return
// exitWouldStart once the flags and the configuration are accepted,
// before anything is started: a bad-flag case that passes by mistake must
// not configure the machine running the tests (TAP mode as root takes the
// default route and /etc/resolv.conf).
var testRefuseStart bool

const exitWouldStart = 99

// printedError is a flag error the flag package has already reported.
type printedError struct{ error }

func isFlagErr(err error) bool {
	var p printedError
	return errors.As(err, &p)
}

func run(args []string, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		if !isFlagErr(err) {
			fmt.Fprintf(stderr, "quench-enclave: %v\n", err)
		}
		return 2
	}
	fail := func(err error) int {
		o.fatal(stderr, "", err)
		return 1
	}
	if o.pprofAddr != "" {
		stopPprof, err := debugserver.Start(o.pprofAddr, o.logger)
		if err != nil {
			return fail(err)
		}
		defer stopPprof()
	}
	e, err := enclave.New(o.cfg)
	if err != nil {
		fmt.Fprintf(stderr, "quench-enclave: %v\n", err)
		return 2
	}
	if testRefuseStart {
		// In the package's tests: flags that pass must not bring up a
		// TAP device, routes and resolv.conf on the test machine.
		fmt.Fprintln(stderr, "quench-enclave: test: flags accepted; not starting")
		return exitWouldStart
	}
	if o.logTo.Scheme != "" {
		stop, err := startLogShip(o, stderr)
		if err != nil {
			return fail(err)
		}
		defer stop()
		// The app's output is copied to ours now: a write to a broken
		// standard output must fail (the tee ignores it) rather than
		// kill quench-enclave, as Go does on fd 1 and 2 unless SIGPIPE
		// is notified. A notified signal is reset for the app at exec.
		signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
		if o.cfg.Egress != nil && len(o.appArgs) > 0 {
			o.logger.Warn("-log-to sends the app's output to the host: a way out of the enclave that -allow does not hold")
		}
	}
	if dev, ok := o.cfg.Attester.(*attestation.DevAttester); ok && o.devRootOut != "" {
		if err := dev.WriteRootPEM(o.devRootOut); err != nil {
			return fail(err)
		}
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	startCtx, cancel := context.WithTimeout(context.Background(), o.startWait)
	startErr := make(chan error, 1)
	go func() { startErr <- e.Start(startCtx) }()
	select {
	case err = <-startErr:
	case s := <-sigs:
		o.logger.Info("signal during start-up; giving up", "signal", s.String())
		cancel()
		err = <-startErr
	}
	cancel()
	if nsm := (*enclave.NoNSMError)(nil); errors.As(err, &nsm) {
		// The library's hint names Config.Attester; name the flag.
		return fail(fmt.Errorf("no Nitro Secure Module for attestation documents: %w; outside a Nitro Enclave, -dev-attester serves development documents (insecure: clients must not trust them)", nsm.Err))
	}
	if err != nil {
		return fail(err)
	}
	o.logger.Info("enclave up", "network", string(o.cfg.Network), "serving", o.cfg.AppURL != nil || o.cfg.Handler != nil)

	if len(o.appArgs) == 0 {
		s := <-sigs
		o.logger.Info("shutting down", "signal", s.String())
		if err := e.Close(); err != nil {
			return fail(err)
		}
		return 0
	}
	return superviseApp(e, o, sigs, stderr)
}

// fatal writes the error quench-enclave exits with: with -log-to to the
// host too (stream quench), since a production enclave has no console and
// an enclave whose network never came up has nothing else to say; with
// -log-format json as a JSON record, like the rest of its log.
func (o *options) fatal(stderr io.Writer, prefix string, err error) {
	if o.jsonLog && o.logger != nil {
		o.logger.Error("exiting", "err", prefix+err.Error())
		return
	}
	w := stderr
	if o.logTee != nil {
		w = o.logTee
	}
	fmt.Fprintf(w, "quench-enclave: %s%v\n", prefix, err)
}

// superviseApp starts the app, forwards SIGINT/SIGTERM to its process group
// (on Linux; to its process elsewhere) after draining the enclave's servers,
// kills the group if the app has not exited DrainTimeout+5s after the first
// signal (further signals are passed on but do not cancel that deadline),
// and returns the app's exit code once it exits.
func superviseApp(e *enclave.Enclave, o *options, sigs <-chan os.Signal, stderr io.Writer) int {
	cmd, err := appCommand(o)
	if err != nil {
		_ = e.Close()
		o.fatal(stderr, "start app: ", err)
		return 1
	}
	cmd.Stdin = nil
	cmd.Stdout = appOutput(o, os.Stdout, "stdout")
	cmd.Stderr = appOutput(o, stderr, "stderr")
	if o.logShip != nil {
		// The output goes through pipes now: do not wait for ever on
		// one that a process the app left behind holds open.
		cmd.WaitDelay = 2 * time.Second
	}
	if err := cmd.Start(); err != nil {
		_ = e.Close()
		o.fatal(stderr, "start app: ", err)
		return 1
	}
	attrs := []any{"pid", cmd.Process.Pid, "cmd", strings.Join(o.appArgs, " "), "sandbox", o.appSandbox}
	if o.appCred != nil {
		attrs = append(attrs, "uid", o.appCred.Uid, "gid", o.appCred.Gid)
	}
	o.logger.Info("app started", attrs...)
	if o.appSandbox && (o.appCred == nil && os.Geteuid() == 0 || o.appCred != nil && o.appCred.Uid == 0) {
		o.logger.Warn("the app runs as root: the sandbox does not hold it (it can reach into quench-enclave, or reconfigure the network with CAP_NET_ADMIN); give it a user of its own with -app-user")
	}
	if !o.appSandbox && o.cfg.Egress != nil {
		o.logger.Warn("the app runs without the sandbox (-app-sandbox off): it and what it starts can open VSOCK sockets to the host, past the egress policy (-allow)")
	}
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		if errors.Is(err, exec.ErrWaitDelay) {
			// The app exited 0, but a process it left behind held its
			// output (pipes with -log-to) past WaitDelay: the app's
			// code is still 0, as without -log-to.
			o.logger.Warn("app exited; a process it started still held its output, which is no longer read", "wait_delay", cmd.WaitDelay)
			err = nil
		}
		exited <- err
	}()

	var waitErr error
	select {
	case waitErr = <-exited:
		o.logger.Warn("app exited; shutting down", "err", waitErr)
		if err := e.Close(); err != nil {
			o.logger.Error("close", "err", err)
		}
	case s := <-sigs:
		// Drain first, while the app still answers; then pass the signal on.
		o.logger.Info("shutting down: draining, then signalling the app", "signal", s.String())
		if err := e.Close(); err != nil {
			o.logger.Error("close", "err", err)
		}
		signalApp(cmd.Process, s)
		// The kill deadline holds whatever further signals arrive: a
		// repeated SIGTERM is passed on, but never waits without limit
		// for an app that ignores it.
		kill := time.NewTimer(o.cfg.DrainTimeout + 5*time.Second)
		defer kill.Stop()
	wait:
		for {
			select {
			case waitErr = <-exited:
				break wait
			case <-kill.C:
				o.logger.Error("app did not exit after the signal; killing it")
				signalApp(cmd.Process, syscall.SIGKILL)
				waitErr = <-exited
				break wait
			case s2 := <-sigs:
				signalApp(cmd.Process, s2)
			}
		}
	}
	return exitCode(waitErr)
}

// exitCode maps the app's exit to ours: its code, or 128+signal.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 1
}

// checkLoopback refuses an address whose host is not a literal loopback
// address (enclave.Config validates InternalAddr alike when serving).
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip, err := netip.ParseAddr(host); err != nil || !ip.Unmap().IsLoopback() || ip.Zone() != "" {
		return fmt.Errorf("host %q is not a loopback address (want 127.0.0.1 or [::1])", host)
	}
	return nil
}
