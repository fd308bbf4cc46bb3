package enclave

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/enclave/keysync"
	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/internal/filelimit"
	"github.com/quenchnet/quench/policy"
	"github.com/quenchnet/quench/proxy"
	"github.com/quenchnet/quench/tap"
)

// NetworkMode selects how an enclave gets its network.
type NetworkMode string

const (
	// NetworkUserspace runs a gVisor TCP/IP stack inside the process. It
	// needs no privileges and no kernel device; only this process gets a
	// network, through [Enclave.Listen], [Enclave.Dial] and
	// [Enclave.HTTPClient].
	NetworkUserspace NetworkMode = "userspace"

	// NetworkTAP creates a kernel TAP device (needs CAP_NET_ADMIN), so every
	// program in the enclave uses ordinary sockets.
	NetworkTAP NetworkMode = "tap"
)

// DefaultHostPort is the VSOCK port quench-host listens on for enclaves.
const DefaultHostPort = 1024

// Defaults of the serving fields of Config.
const (
	// DefaultPublicAddr is where the public HTTPS server listens on the
	// enclave's network.
	DefaultPublicAddr = ":443"
	// DefaultInternalAddr is where the internal server for the app listens
	// (the enclave's loopback), as nitriding's default.
	DefaultInternalAddr = "127.0.0.1:8080"
	// DefaultDrainTimeout bounds the graceful drain in Close.
	DefaultDrainTimeout = 10 * time.Second
	// DefaultACMEDirectory is Let's Encrypt's production directory.
	DefaultACMEDirectory = "https://acme-v02.api.letsencrypt.org/directory"
	// DefaultMaxAttestations is Config.MaxAttestations's default: enough
	// to keep the NSM busy and queue a few milliseconds of requests.
	DefaultMaxAttestations = 16
	// DefaultSelfSignedName is the certificate name of the self-signed
	// certificate when FQDN is empty.
	DefaultSelfSignedName = "quench-enclave"
)

// DefaultMaxConns is Config.MaxConns's default: a quarter of the process's
// open-file limit (the soft RLIMIT_NOFILE, which Go raises to the hard limit
// at start-up; 1024 if unknown), at least 1.
func DefaultMaxConns() int { return max(filelimit.Get()/4, 1) }

// Config configures an Enclave. The zero value is usable: userspace
// networking, the host at VSOCK CID 3 port 1024, gvproxy's addresses, and no
// servers. Setting Handler or AppURL turns on serving: the public HTTPS
// server with the attestation endpoints, the internal server for the app,
// and optionally metrics. Fields must not be changed after New.
type Config struct {
	// Network selects the networking mode. Default: NetworkUserspace.
	Network NetworkMode

	// DialHost opens the stream to quench-host (or a stock gvproxy).
	// Default: VSOCK to the parent instance, CID 3, port 1024.
	DialHost func(ctx context.Context) (net.Conn, error)

	// MTU of the virtual link; must match the host's. Default: 65520.
	MTU int

	// MaxWrite bounds each write to the host stream. Default: 32 KiB, the
	// largest VSOCK write the Nitro hypervisor passes intact.
	MaxWrite int

	// Address is the enclave's address and subnet. Default: 192.168.127.2/24.
	Address netip.Prefix

	// Gateway is the host's address on the virtual network, the default
	// route. Default: 192.168.127.1.
	Gateway netip.Addr

	// DNS lists name servers. Default: Gateway.
	DNS []netip.Addr

	// MAC is the enclave's link address. Default: 5a:94:ef:e4:0c:ee.
	MAC net.HardwareAddr

	// TAPName is the TAP device's name (NetworkTAP). Default: "tap0".
	TAPName string

	// ResolvConf is the resolv.conf that NetworkTAP writes the DNS servers
	// (or DNSProxy) to. Default: /etc/resolv.conf. "-" means do not write
	// one.
	ResolvConf string

	// DNSProxy is, in TAP mode with Egress, the loopback address on whose
	// port 53 (UDP and TCP) the enclave answers its programs' DNS
	// questions, and the name server written to ResolvConf in place of
	// DNS. It passes the questions on to DNS: over UDP through the egress
	// filter, like any program's; over TCP on its own connections, checking
	// each whole question and answer by the policy as the filter checks
	// datagrams (the filter refuses programs' own DNS over TCP, which it
	// cannot inspect), so that answers too large for a datagram resolve
	// too. Default: 127.0.0.1. "-" means none: ResolvConf names DNS, and
	// a name whose answer does not fit in a datagram does not resolve.
	// Not used in userspace mode or without Egress.
	DNSProxy string

	// ReconnectMin and ReconnectMax bound the backoff between attempts to
	// reach the host after the stream drops: the wait doubles from
	// ReconnectMin up to ReconnectMax, across failed dials and across
	// streams that end within ReconnectMax of their start (a host that
	// drops every stream at once gets about one attempt per ReconnectMax).
	// After a stream that stayed up at least ReconnectMax, the first
	// attempt is immediate and the backoff starts again. Defaults: 50ms
	// and 1s.
	ReconnectMin, ReconnectMax time.Duration

	// StallTimeout detects a host that stalls the stream mid-way
	// (tap.Config.StallTimeout): a frame from the host that has started
	// arriving must complete, and each write to the host must go through,
	// within it; otherwise the stream is dropped and the enclave
	// reconnects. An idle stream never times out. Default:
	// tap.DefaultStallTimeout (30 s). Negative means no limit.
	StallTimeout time.Duration

	// Egress, when set, limits where Dial (and HTTPClient) may connect:
	// hostnames with wildcards, CIDRs and ports (see package policy), and
	// where a PacketConn from ListenPacket may send: to an address the
	// policy allows (by address: a datagram carries no name), or to a peer
	// that sent to that socket first (a reply; the last 4096 peers per
	// socket are remembered); and which names Resolver asks about (others
	// are answered "no such host" in the enclave). In userspace mode Dial,
	// ListenPacket and Resolver are the only ways out of the process; in
	// TAP mode the policy is also applied to the TAP device's frames
	// (package internal/egressfw), so that it holds for every program's
	// kernel sockets: a refused TCP connection is reset at once, a refused
	// datagram answered with an ICMP error, a DNS question about a name no
	// rule allows answered NXDOMAIN, and replies on connections into the
	// enclave pass. Either way the policy is part of the attested image
	// and does not depend on the untrusted host. The enclave's own
	// connections (ACME, key sync) are not limited by it.
	// Names are resolved through the host's DNS, so an address it answers
	// for an allowed name that leads back into the enclave (loopback,
	// 0.0.0.0/8, multicast, broadcast, the enclave's own addresses) is
	// refused unless an address or CIDR rule allows it ("*" does not);
	// "localhost" is not asked of DNS. Default: nil, no limit (and no such
	// check).
	Egress *policy.Policy

	// Annotations are shown as they are in /enclave/config ("annotations"),
	// for clients to audit: what the program embedding the enclave does
	// beyond this configuration. quench-enclave lists how it started the
	// app (app_sandbox: seccomp or off; app_user: UID:GID). Default: none.
	Annotations map[string]string

	// HandshakeSettle is how long the enclave waits after sending the
	// /connect request before it sends frames. A stock gvproxy parses the
	// request with net/http and then reads frames from the raw connection,
	// so frames that arrive in the same read as the request are lost and
	// the stream falls out of step; quench-host keeps them. Default: 100ms.
	// Negative means no wait (safe against quench-host only).
	HandshakeSettle time.Duration

	// Logger receives operational logs. Default: discard.
	Logger *slog.Logger

	// --- Serving. Everything below is used only when Handler or AppURL is
	// set; otherwise Start brings up networking alone.

	// Handler serves every public request outside /enclave/ in process
	// (Go apps: no proxy hop). At most one of Handler and AppURL may be set.
	// Default: nil.
	Handler http.Handler

	// AppURL is the app's address for the reverse proxy (package proxy)
	// that serves every public request outside /enclave/: http://host:port
	// or unix:///path for an HTTP/1.1 app, h2c://host:port or
	// h2c+unix:///path for an app that speaks HTTP/2 in cleartext with
	// prior knowledge (gRPC servers; clients still meet the enclave's
	// TLS, over HTTP/2 or HTTP/1.1). The proxy dials with kernel sockets
	// (the app runs in the same enclave). Default: nil.
	AppURL *url.URL

	// Proxy tunes the reverse proxy to AppURL. Its Logger defaults to
	// Logger and its Metrics to the enclave's Prometheus metrics. Default:
	// the proxy package's defaults.
	Proxy proxy.Config

	// PublicAddr is where the public HTTPS server listens, on the enclave's
	// network (the netstack in userspace mode, kernel sockets in TAP mode).
	// The host publishes a port to it. Default: DefaultPublicAddr (":443").
	PublicAddr string

	// IngressListen, when set, is called by Start to open the listener of
	// quench-host's ingress fast path (a VSOCK listener in production; one
	// connection per client connection, no frame tunnel). Each connection
	// starts with a PROXY protocol header, read by ListenIngress (so
	// RemoteAddr is the client's address, as the untrusted host claims it),
	// and is then served by the public HTTPS server like those on
	// PublicAddr. The Enclave closes the listener. Default: nil (none).
	IngressListen func() (net.Listener, error)

	// Forwards are ingress fast-path port forwards to programs in the
	// enclave that listen on ordinary sockets (see Forward); they run with
	// or without serving, in either network mode. Default: none.
	Forwards []Forward

	// InternalAddr is where the internal server for the app listens, always
	// on kernel sockets: the enclave's loopback. It serves /enclave/ready,
	// /enclave/hash, /enclave/kms/recipient and /enclave/kms/decrypt (and
	// /debug/pprof/ when Pprof is set). "-" turns it off (then WaitForApp
	// needs Enclave.Ready). Its host must be a literal
	// loopback address (127.0.0.0/8 or ::1; names, "localhost" included,
	// and empty or unspecified hosts are refused), and no Forward target
	// or AppURL may name its port on a loopback, unspecified or
	// "localhost" address: the untrusted host must not reach it. Default:
	// DefaultInternalAddr ("127.0.0.1:8080").
	InternalAddr string

	// WaitForApp delays the public server until the app signals readiness
	// (GET /enclave/ready on the internal server, or Enclave.Ready). The
	// public listener is bound by Start either way, so bind errors surface
	// there; connections wait in its backlog until then. Default: false.
	WaitForApp bool

	// FQDN is the enclave's public name: the ACME certificate's name, and
	// the self-signed certificate's subject. Required with ACME. Default:
	// empty (self-signed certificate named DefaultSelfSignedName).
	FQDN string

	// TLSCertFile and TLSKeyFile name a PEM certificate chain and key to
	// serve, read by Start. Both or neither. Default: empty.
	TLSCertFile, TLSKeyFile string

	// ACME obtains the certificate for FQDN from an ACME CA with the
	// TLS-ALPN-01 challenge (golang.org/x/crypto/acme/autocert), answered on
	// the public listener: the host must publish port 443 to it. Only an
	// ECDSA P-256 certificate is obtained and served (documents bind one
	// certificate; clients without ECDSA support, none current, fail the
	// handshake). Exclusive with TLSCertFile. Default: false (self-signed
	// ECDSA P-256).
	ACME bool

	// ACMEDirectory is the ACME directory URL. Default:
	// DefaultACMEDirectory (Let's Encrypt production).
	ACMEDirectory string

	// ACMEEmail is the contact address of the ACME account. Default: none.
	ACMEEmail string

	// ACMECacheDir keeps the ACME account key and certificates across
	// restarts. Default: empty (kept in memory only).
	ACMECacheDir string

	// ACMERoots are the roots trusted for the ACME server's HTTPS (for a
	// test CA such as Pebble). Default: nil (the system roots).
	ACMERoots *x509.CertPool

	// Attester produces attestation documents; each binds the SHA-256 of
	// the served TLS certificate and the registered app key hash
	// (attestation.UserData). Default: the Nitro Secure Module
	// (attestation.NewNSMAttester, opened by Start; Linux in an enclave
	// only). The development attester is never chosen implicitly: pass an
	// *attestation.DevAttester explicitly.
	Attester attestation.Attester

	// MaxAttestations bounds the attestation documents the public server
	// produces at once (/enclave/attestation, and /enclave/config with a
	// nonce). A request past it gets 503 with Retry-After: 1 at once:
	// each document is an NSM request, and the NSM serves one at a time,
	// so a flood of requests would otherwise queue without bound (holding
	// a connection and a goroutine each) and delay every other client's
	// document. Negative means no limit. Default: DefaultMaxAttestations
	// (16).
	MaxAttestations int

	// MaxConns bounds the connections the host can open into the enclave
	// that it holds at once, on all its listeners together: the public
	// HTTPS server's (PublicAddr, through the tunnel, and IngressListen,
	// the fast path), every Forward's Listen, and key synchronisation's
	// (SyncAddr), from the moment they are accepted to the moment they
	// end: in their TLS handshake or PROXY header, idle between requests,
	// served on the proxy's event loops, HTTP/2, upgraded, or relayed by
	// a forward (until both sides of the pair are closed). A connection
	// past it is closed as it is accepted, before any handshake or
	// header (a TCP one is reset), counted
	// (quench_enclave_public_connections_refused_total) and logged (a
	// warning at most once a second). The host is untrusted and can open
	// as many connections as it likes; without a cap they would take the
	// process's file descriptors, which an app importing this package
	// shares (its own files, its upstream dials, key synchronisation).
	// It applies with forwards alone too (no Handler or AppURL). Negative
	// means no limit. Default: a quarter of the open-file limit (the soft
	// RLIMIT_NOFILE as Go raised it at start-up, 1024 if unknown), as
	// quench-host's MaxPortConns: each connection holds a descriptor and,
	// proxied to the app or forwarded, may hold a second one (the upstream
	// connection of its request, its upgraded tunnel, or the forward's
	// dial of its Target), so at most half of the descriptors go to the
	// host's connections.
	MaxConns int

	// SeedEntropy is how many bytes of NSM randomness Start adds to the
	// kernel entropy pool when Attester is the default NSM attester (needs
	// CAP_SYS_ADMIN; failure is logged, not fatal). Negative turns it off.
	// Default: 2048.
	SeedEntropy int

	// MetricsAddr, when set, serves Prometheus metrics at /metrics on this
	// address of the enclave's network: the tunnel's, the connections',
	// the egress filter's and the DNS proxy's, and, when serving, the
	// servers' and the proxy's. Default: empty (off).
	MetricsAddr string
	// MetricsCollectors are registered beside the enclave's own on the
	// MetricsAddr registry (quench-enclave adds its log shipper's). A
	// collector whose metrics clash with the enclave's fails Start.
	MetricsCollectors []prometheus.Collector

	// Pprof serves net/http/pprof under /debug/pprof/ on the internal
	// server. Profiles expose process memory, so while it is on the
	// attestation endpoints refuse (503), and key synchronisation, which
	// attests and hands out keys, is refused altogether (New fails with
	// FQDNLeader set). Default: false.
	Pprof bool

	// DrainTimeout bounds the graceful drain in Close: in-flight requests
	// get this long to finish before connections are closed. Default:
	// DefaultDrainTimeout (10 s).
	DrainTimeout time.Duration

	// --- Key synchronisation between identical enclaves (nitriding's
	// horizontal scaling; see package keysync). Needs serving.

	// FQDNLeader turns key synchronisation on: the leader enclave's name
	// (nitriding's -fqdn-leader), host or host:port; without a port, the
	// port of SyncAddr. Every enclave of the deployment names the same
	// leader; the one that reaches itself under that name is the leader.
	// Default: empty (off; GET and PUT /enclave/state answer 403).
	FQDNLeader string

	// SyncAddr is where the external endpoints for other enclaves
	// (/enclave/leader, /enclave/sync, /enclave/heartbeat) listen with TLS,
	// on the enclave's network (nitriding's -ext-priv-port). The host must
	// publish it only inside the VPC. Its TLS certificate is the public
	// one, or with ACME a self-signed one of its own (autocert serves only
	// FQDN; peers authenticate each other by attestation, not by the
	// certificate). Default: DefaultSyncAddr (":444").
	SyncAddr string

	// KeySync tunes key synchronisation. The Enclave fills in Attester
	// (Config.Attester), Leader (from FQDNLeader), Dial (the enclave's
	// network, not limited by Egress), Certificate and InstallCertificate
	// (the public server's certificate; not synced with ACME, where every
	// enclave obtains its own) and Logger. Roots defaults to the development attester's roots
	// when Attester is an *attestation.DevAttester, else the AWS root. The
	// other fields (Advertise, PCRs, intervals, limits) are passed through
	// with keysync's defaults. Default: zero.
	KeySync keysync.Config
}

// DefaultSyncAddr is nitriding's external private port.
const DefaultSyncAddr = ":444"

// syncOn reports whether key synchronisation is configured.
func (c Config) syncOn() bool { return c.FQDNLeader != "" }

// syncDefaults validates the key synchronisation fields.
func (c Config) syncDefaults() (Config, error) {
	if !c.syncOn() {
		if c.SyncAddr != "" || c.KeySync.Leader != "" || c.KeySync.Advertise != "" {
			return c, errors.New("enclave: SyncAddr or KeySync set without FQDNLeader (key synchronisation is off)")
		}
		return c, nil
	}
	if !c.serving() {
		return c, errors.New("enclave: FQDNLeader needs serving (Handler or AppURL): key synchronisation shares the public server's certificate")
	}
	if c.Pprof {
		return c, errors.New("enclave: Pprof (-pprof) and FQDNLeader (-fqdn-leader) are exclusive: key synchronisation attests this enclave and hands out (or receives) its TLS key and the app's state, which profiles of process memory would expose; attestation is refused while profiling")
	}
	if c.SyncAddr == "" {
		c.SyncAddr = DefaultSyncAddr
	}
	_, port, err := net.SplitHostPort(c.SyncAddr)
	if err != nil {
		return c, fmt.Errorf("enclave: SyncAddr %q: %w", c.SyncAddr, err)
	}
	if c.SyncAddr == c.PublicAddr || c.SyncAddr == c.MetricsAddr {
		return c, fmt.Errorf("enclave: SyncAddr %q is also the public or metrics address", c.SyncAddr)
	}
	if c.KeySync.Leader == "" {
		c.KeySync.Leader = c.FQDNLeader
		if _, _, err := net.SplitHostPort(c.FQDNLeader); err != nil {
			if port == "0" {
				return c, fmt.Errorf("enclave: FQDNLeader %q names no port and SyncAddr's port is 0", c.FQDNLeader)
			}
			c.KeySync.Leader = net.JoinHostPort(c.FQDNLeader, port)
		}
	}
	if c.KeySync.Roots == nil {
		if dev, ok := c.Attester.(*attestation.DevAttester); ok {
			c.KeySync.Roots = dev.Roots()
		}
	}
	if c.KeySync.Logger == nil {
		c.KeySync.Logger = c.Logger
	}
	// Validate the rest as keysync.New will at Start.
	v := c.KeySync
	v.Attester = nopAttester{}
	if _, err := keysync.New(v); err != nil {
		return c, fmt.Errorf("enclave: key synchronisation: %w", err)
	}
	return c, nil
}

// nopAttester stands in for the attester when New validates KeySync.
type nopAttester struct{}

func (nopAttester) Attest(context.Context, attestation.Request) ([]byte, error) {
	return nil, errors.New("enclave: no attester")
}

// appURLUnix reports whether u names a unix socket (unix, h2c+unix).
func appURLUnix(u *url.URL) bool { return u.Scheme == "unix" || u.Scheme == "h2c+unix" }

// serving reports whether the servers are configured.
func (c Config) serving() bool { return c.Handler != nil || c.AppURL != nil }

func (c Config) servingDefaults() (Config, error) {
	if !c.serving() {
		if c.syncOn() {
			return c, errors.New("enclave: FQDNLeader needs serving (Handler or AppURL): key synchronisation shares the public server's certificate")
		}
		if c.ACME || c.TLSCertFile != "" || c.TLSKeyFile != "" || c.WaitForApp || c.Pprof {
			return c, errors.New("enclave: serving options are set but neither Handler nor AppURL is")
		}
		return c, nil
	}
	if c.Handler != nil && c.AppURL != nil {
		return c, errors.New("enclave: Handler and AppURL are both set; choose one")
	}
	if c.AppURL != nil {
		switch c.AppURL.Scheme {
		case "http", "https", "unix", "h2c", "h2c+unix":
		default:
			return c, fmt.Errorf("enclave: AppURL %q: scheme must be http, https, unix, h2c or h2c+unix", c.AppURL.Redacted())
		}
	}
	if c.PublicAddr == "" {
		c.PublicAddr = DefaultPublicAddr
	}
	if _, _, err := net.SplitHostPort(c.PublicAddr); err != nil {
		return c, fmt.Errorf("enclave: PublicAddr %q: %w", c.PublicAddr, err)
	}
	if c.InternalAddr == "" {
		c.InternalAddr = DefaultInternalAddr
	}
	if c.InternalAddr != "-" {
		port, err := loopbackPort(c.InternalAddr)
		if err != nil {
			return c, fmt.Errorf("enclave: InternalAddr %q (-internal-addr): %w", c.InternalAddr, err)
		}
		// Forwards and the app proxy are reached by the untrusted host:
		// neither may lead to the internal server.
		for _, f := range c.Forwards {
			if _, addr, _ := parseTarget(f.Target); reachesLocalPort(addr, port) {
				return c, fmt.Errorf("enclave: Forward target %q (-forward) is the internal server's address InternalAddr %q (-internal-addr): the host would reach /enclave/hash; use another port for one of them", f.Target, c.InternalAddr)
			}
		}
		if u := c.AppURL; u != nil && !appURLUnix(u) {
			hp := u.Host
			if u.Port() == "" {
				hp = net.JoinHostPort(u.Hostname(), map[string]string{"http": "80", "https": "443", "h2c": "80"}[u.Scheme])
			}
			if reachesLocalPort(hp, port) {
				return c, fmt.Errorf("enclave: AppURL %q (-app-url) is the internal server's address InternalAddr %q (-internal-addr): clients would reach /enclave/hash; use another port for one of them", u.Redacted(), c.InternalAddr)
			}
		}
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return c, fmt.Errorf("enclave: MetricsAddr %q: %w", c.MetricsAddr, err)
		}
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return c, errors.New("enclave: TLSCertFile and TLSKeyFile must be given together")
	}
	if c.FQDN != "" {
		if strings.ContainsAny(c.FQDN, "/: ") || strings.HasPrefix(c.FQDN, ".") || strings.HasSuffix(c.FQDN, ".") {
			return c, fmt.Errorf("enclave: FQDN %q is not a host name", c.FQDN)
		}
	}
	if c.ACME {
		if c.TLSCertFile != "" {
			return c, errors.New("enclave: ACME and TLSCertFile are exclusive")
		}
		if c.FQDN == "" {
			return c, errors.New("enclave: ACME needs FQDN, the name to obtain a certificate for")
		}
		if c.ACMEDirectory == "" {
			c.ACMEDirectory = DefaultACMEDirectory
		}
		u, err := url.Parse(c.ACMEDirectory)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return c, fmt.Errorf("enclave: ACMEDirectory %q: want an https URL", c.ACMEDirectory)
		}
	}
	if c.SeedEntropy == 0 {
		c.SeedEntropy = 2048
	}
	if c.SeedEntropy > attestation.MaxEntropySeed {
		return c, fmt.Errorf("enclave: SeedEntropy %d above %d", c.SeedEntropy, attestation.MaxEntropySeed)
	}
	if c.MaxAttestations == 0 {
		c.MaxAttestations = DefaultMaxAttestations
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns()
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.DrainTimeout < 0 {
		return c, fmt.Errorf("enclave: negative DrainTimeout %s", c.DrainTimeout)
	}
	if c.Proxy.Logger == nil {
		c.Proxy.Logger = c.Logger
	}
	return c.syncDefaults()
}

func (c Config) withDefaults() (Config, error) {
	switch c.Network {
	case "":
		c.Network = NetworkUserspace
	case NetworkUserspace, NetworkTAP:
	default:
		return c, fmt.Errorf("enclave: unknown network mode %q (want %q or %q)", c.Network, NetworkTAP, NetworkUserspace)
	}
	if c.DialHost == nil {
		a := endpoint.Addr{Scheme: "vsock", CID: endpoint.ParentCID, Port: DefaultHostPort}
		c.DialHost = func(ctx context.Context) (net.Conn, error) {
			return endpoint.Dial(ctx, a, endpoint.Options{})
		}
	}
	if c.MTU == 0 {
		c.MTU = tap.DefaultMTU
	}
	if c.MTU < 576 || c.MTU > tap.MaxFrameSize-tap.EthernetHeaderSize {
		return c, fmt.Errorf("enclave: MTU %d out of range [576, %d]", c.MTU, tap.MaxFrameSize-tap.EthernetHeaderSize)
	}
	if c.MaxWrite == 0 {
		c.MaxWrite = tap.DefaultMaxWrite
	}
	if !c.Address.IsValid() {
		c.Address = tap.DefaultAddress
	}
	if !c.Address.Addr().Is4() {
		return c, fmt.Errorf("enclave: address %s: only IPv4 is supported", c.Address)
	}
	if !c.Gateway.IsValid() {
		c.Gateway = tap.DefaultGateway
	}
	if !c.Address.Masked().Contains(c.Gateway) {
		return c, fmt.Errorf("enclave: gateway %s is outside %s", c.Gateway, c.Address.Masked())
	}
	if c.Gateway == c.Address.Addr() {
		return c, fmt.Errorf("enclave: gateway and enclave address are both %s", c.Gateway)
	}
	if len(c.DNS) == 0 {
		c.DNS = []netip.Addr{c.Gateway}
	}
	if c.MAC == nil {
		c.MAC = tap.DefaultMAC
	}
	if len(c.MAC) != 6 {
		return c, fmt.Errorf("enclave: MAC %s is not a 6-byte Ethernet address", c.MAC)
	}
	if c.TAPName == "" {
		c.TAPName = "tap0"
	}
	if c.ResolvConf == "" {
		c.ResolvConf = "/etc/resolv.conf"
	}
	if c.DNSProxy == "" {
		c.DNSProxy = "127.0.0.1"
	}
	if c.DNSProxy != "-" {
		if a, err := netip.ParseAddr(c.DNSProxy); err != nil || !a.Is4() || !a.IsLoopback() {
			return c, fmt.Errorf("enclave: DNS proxy %q: want an IPv4 loopback address (127.0.0.1) or - for none", c.DNSProxy)
		}
	}
	if a, ok := c.dnsProxyAddr(); ok {
		for _, s := range c.DNS {
			// 0.0.0.0 is 127.0.0.1 to the kernel's routing.
			if s.Unmap() == a || s.Unmap().IsUnspecified() && a == netip.AddrFrom4([4]byte{127, 0, 0, 1}) {
				// The proxy would pass each question on to itself.
				return c, fmt.Errorf("enclave: DNS server %s is the DNS proxy's address (DNSProxy, quench-enclave -dns-proxy): it would ask itself; name the host's DNS (the default) or another server", s)
			}
		}
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = tap.DefaultStallTimeout
	}
	if c.HandshakeSettle == 0 {
		c.HandshakeSettle = 100 * time.Millisecond
	}
	if c.ReconnectMin <= 0 {
		c.ReconnectMin = 50 * time.Millisecond
	}
	if c.ReconnectMax <= 0 {
		c.ReconnectMax = time.Second
	}
	if c.ReconnectMax < c.ReconnectMin {
		c.ReconnectMax = c.ReconnectMin
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Forwards = slices.Clone(c.Forwards)
	c.Annotations = maps.Clone(c.Annotations)
	for i, f := range c.Forwards {
		f, err := f.validate()
		if err != nil {
			return c, err
		}
		c.Forwards[i] = f
	}
	return c.servingDefaults()
}

// loopbackPort checks that addr, the internal server's address, is a
// literal loopback address (127.0.0.0/8 or ::1) and returns its port.
// Whoever reaches the internal server can replace the attested app key hash
// (POST /enclave/hash), have KMS answers sealed to the enclave opened
// (/enclave/kms/*), read a worker's synced state and, with Pprof, the
// process memory: an empty or unspecified host would put it on the
// enclave's network, where the host reaches it. Host names, "localhost"
// included, are refused rather than resolved (the listener would use
// whatever the resolver answers).
func loopbackPort(addr string) (uint16, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Unmap().IsLoopback() || ip.Zone() != "" {
		return 0, fmt.Errorf("host %q is not a loopback address: the internal server must listen on 127.0.0.1 or [::1] (not a name, an empty or unspecified address), since whoever reaches it can register the attested app key hash", host)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("bad port %q", port)
	}
	return uint16(n), nil
}

// internalGuard refuses connections to the internal server made from a
// host name: New refuses a Forward target or AppURL that names the internal
// server's port on a loopback address (reachesLocalPort), but other names
// are resolved only when dialled, through resolvers the host may answer
// (its DNS server in TAP mode). control, a net.Dialer Control function,
// sees the address a name resolved to and refuses the internal server's
// port on a loopback or unspecified address.
type internalGuard struct {
	port atomic.Uint32 // the internal server's bound port; 0: none
}

func (g *internalGuard) control(_, address string, _ syscall.RawConn) error {
	p := g.port.Load()
	if p == 0 {
		return nil
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil || uint32(ap.Port()) != p {
		return nil
	}
	if ip := ap.Addr().Unmap(); ip.IsLoopback() || ip.IsUnspecified() {
		return fmt.Errorf("enclave: refusing to connect to %s, the internal server's port on loopback (a target's host name resolved to it): whoever reaches the internal server can register the attested app key hash", address)
	}
	return nil
}

// reachesLocalPort reports whether dialling hostport may connect to a
// listener on a loopback address and port: the same port on a loopback
// address, the unspecified address (which Linux connects to loopback), an
// empty host, or "localhost". Other names are not resolved.
func reachesLocalPort(hostport string, port uint16) bool {
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if n, err := strconv.ParseUint(p, 10, 16); err != nil || uint16(n) != port || port == 0 {
		return false
	}
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "" || h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	return ip.IsLoopback() || ip.IsUnspecified()
}

// dnsProxyAddr is DNSProxy's address when the DNS proxy runs: in TAP mode
// with Egress, unless DNSProxy is "-".
func (c Config) dnsProxyAddr() (netip.Addr, bool) {
	if c.Network != NetworkTAP || c.Egress == nil || c.DNSProxy == "-" {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(c.DNSProxy)
	return a, err == nil
}
