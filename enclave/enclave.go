package enclave

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quenchnet/quench/enclave/keysync"
	"github.com/quenchnet/quench/internal/egressfw"
	"github.com/quenchnet/quench/proxy"
	"github.com/quenchnet/quench/tap"
)

// Enclave is quench's enclave side. Create it with New, bring it up with
// Start, and end it with Close, which must be called once it is no longer
// needed.
type Enclave struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	started bool // guarded by mu
	closed  bool // guarded by mu

	net    network   // set by Start
	pump   *tap.Pump // set by Start
	cancel func()    // stops the tunnel loop
	srv    *servers  // set by Start when serving; nil otherwise
	fwd    *forwards // set by Start when there are Forwards
	wg     sync.WaitGroup
	status tunnelStatus
	guard  internalGuard    // the internal server's port, refused to forwards and the app proxy
	conns  *connCap         // Config.MaxConns: the servers' and the forwards' listeners share it
	egress *egressfw.Filter // TAP mode with Config.Egress: the frames' firewall; set by Start
	dnsp   *dnsProxy        // TAP mode with Config.Egress, unless Config.DNSProxy is "-"; set by Start
	// metricsSrv serves Config.MetricsAddr when not serving (the servers
	// serve it otherwise); set by Start.
	metricsSrv *http.Server
}

// network is what a networking mode provides to the app.
type network interface {
	// device is the link the tunnel pumps frames to and from.
	device() tap.Device
	listen(network, addr string) (net.Listener, error)
	listenPacket(network, addr string) (net.PacketConn, error)
	dial(ctx context.Context, network, addr string) (net.Conn, error)
	resolver() *net.Resolver
	// ownAddr reports whether ip is one of the enclave's own addresses
	// (beyond Config.Address and loopback, which the caller checks).
	ownAddr(ip netip.Addr) bool
	close() error
}

// New validates cfg and returns an Enclave. It does no I/O and starts no
// goroutines. Once Start succeeded, Close must be called.
func New(cfg Config) (*Enclave, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.AppURL != nil {
		// Validate the app URL now; the proxy Start uses is made afresh.
		if _, err := proxy.New(cfg.AppURL, cfg.Proxy); err != nil {
			return nil, fmt.Errorf("enclave: AppURL: %w", err)
		}
	}
	return &Enclave{cfg: cfg, log: cfg.Logger, conns: newConnCap(cfg.MaxConns, cfg.Logger)}, nil
}

// Config returns the configuration in effect, with defaults filled in.
func (e *Enclave) Config() Config { return e.cfg }

// Start brings up networking: it creates the TAP device or the userspace
// stack, connects to the host, and starts the tunnel, which reconnects with
// backoff whenever the stream drops. When serving is configured (Handler or
// AppURL), it then opens the attester, obtains or loads the certificate,
// and binds the public, internal and metrics listeners. It returns once
// everything is bound and serving (the public server waits for the app if
// WaitForApp), or with the error, releasing what it started. ctx bounds
// start-up only; while ctx allows, Start keeps retrying to reach the host.
func (e *Enclave) Start(ctx context.Context) (err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return fmt.Errorf("enclave: %w", net.ErrClosed)
	}
	if e.started {
		return errors.New("enclave: already started")
	}
	var nw network
	switch e.cfg.Network {
	case NetworkTAP:
		nw, err = newTAPNetwork(e.cfg)
	case NetworkUserspace:
		nw, err = newUserspaceNetwork(e.cfg)
	}
	if err != nil {
		return fmt.Errorf("enclave: %s network: %w", e.cfg.Network, err)
	}
	dev := nw.device()
	if e.cfg.Egress != nil && e.cfg.Network == NetworkTAP {
		// Every program's kernel sockets go out through the TAP device:
		// the policy is applied to its frames.
		e.egress = egressfw.New(egressfw.Config{
			Policy:  e.cfg.Egress,
			Subnet:  e.cfg.Address,
			Gateway: e.cfg.Gateway,
			MAC:     e.cfg.MAC,
			DNS:     e.cfg.DNS,
			Inside:  func(ip netip.Addr) bool { return e.insideEnclave(nw, ip) },
			Logger:  e.log,
		})
		dev = egressfw.Wrap(dev, e.egress)
	}
	pump := tap.NewPump(dev, e.log)
	if a, ok := e.cfg.dnsProxyAddr(); ok && e.egress != nil {
		servers := make([]netip.AddrPort, len(e.cfg.DNS))
		for i, s := range e.cfg.DNS {
			servers[i] = netip.AddrPortFrom(s, 53)
		}
		dp, err := startDNSProxy(netip.AddrPortFrom(a, 53), servers, e.egress, e.log)
		if err != nil {
			_ = pump.Close()
			_ = nw.close()
			return fmt.Errorf("enclave: %w (another DNS server in the enclave? DNSProxy \"-\", quench-enclave -dns-proxy -, runs none)", err)
		}
		e.dnsp = dp
	}
	b := &backoff{min: e.cfg.ReconnectMin, max: e.cfg.ReconnectMax}
	first, err := e.connect(ctx, b)
	if err != nil {
		e.stopDNSProxy()
		_ = pump.Close()
		_ = nw.close()
		return fmt.Errorf("enclave: connect to host: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	e.net, e.pump, e.cancel = nw, pump, cancel
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.tunnel(runCtx, first, b)
	}()
	e.log.Info("enclave network up", "mode", string(e.cfg.Network), "address", e.cfg.Address.String(), "mtu", e.cfg.MTU)
	if e.cfg.serving() {
		srv, err := e.startServers(ctx, nw)
		if err != nil {
			e.stopNetwork()
			return err
		}
		e.srv = srv
	}
	if e.cfg.MetricsAddr != "" && !e.cfg.serving() {
		if err := e.startMetrics(nw); err != nil {
			e.stopNetwork()
			return err
		}
	}
	if len(e.cfg.Forwards) > 0 {
		fwd, err := startForwards(e.cfg.Forwards, e.cfg.MaxWrite, &e.guard, e.conns, e.log)
		if err != nil {
			if e.srv != nil {
				_ = e.srv.close()
				e.srv = nil
			}
			e.stopNetwork()
			return err
		}
		e.fwd = fwd
	}
	e.started = true
	return nil
}

// stopNetwork stops the tunnel and the networking mode.
func (e *Enclave) stopNetwork() error {
	if e.metricsSrv != nil {
		_ = e.metricsSrv.Close()
		e.metricsSrv = nil
	}
	e.cancel()
	e.stopDNSProxy()
	var errs []error
	if err := e.pump.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		errs = append(errs, err)
	}
	e.wg.Wait()
	if err := e.net.close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (e *Enclave) stopDNSProxy() {
	if e.dnsp != nil {
		e.dnsp.close()
		e.dnsp = nil
	}
}

// backoff paces attempts to reach the host: the first attempt is
// immediate, then each waits twice as long as the one before, from
// ReconnectMin up to ReconnectMax. It is carried across streams, so that a
// host that accepts and drops every stream at once is not hammered; only a
// stream that stayed up (see tunnel) resets it.
type backoff struct {
	min, max, next time.Duration
}

// wait returns how long to wait before the next attempt, and advances.
func (b *backoff) wait() time.Duration {
	d := b.next
	b.next = min(max(2*d, b.min), b.max)
	return d
}

// reset makes the next attempt immediate again.
func (b *backoff) reset() { b.next = 0 }

// connect dials the host and performs the handshake, retrying with b until
// ctx is done.
func (e *Enclave) connect(ctx context.Context, b *backoff) (*tap.Conn, error) {
	var lastErr error
	for {
		if d := b.wait(); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, errors.Join(ctx.Err(), lastErr)
			case <-t.C:
			}
		}
		c, err := e.dialOnce(ctx)
		if err == nil {
			return c, nil
		}
		first := lastErr == nil
		lastErr = err
		e.status.setErr(err)
		if first {
			// Once a warning, so that a host that never answers (a
			// start-up that waits minutes) shows; then debug.
			e.log.Warn("host not reachable; retrying", "err", err)
		} else {
			e.log.Debug("host not reachable; retrying", "err", err, "delay", b.next)
		}
		if ctx.Err() != nil {
			return nil, errors.Join(ctx.Err(), err)
		}
	}
}

func (e *Enclave) dialOnce(ctx context.Context) (*tap.Conn, error) {
	nc, err := e.cfg.DialHost(ctx)
	if err != nil {
		return nil, err
	}
	c, err := tap.NewConn(nc, tap.Config{MTU: e.cfg.MTU, MaxWrite: e.cfg.MaxWrite, StallTimeout: e.cfg.StallTimeout})
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	if err := c.ClientHandshake(); err != nil {
		_ = c.Close()
		return nil, err
	}
	if d := e.cfg.HandshakeSettle; d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			_ = c.Close()
			return nil, ctx.Err()
		}
	}
	return c, nil
}

// tunnel pumps frames over c, and over a new connection each time the
// stream drops, until ctx is cancelled. A stream that stayed up at least
// ReconnectMax resets the backoff: the first attempt after it is immediate
// (a restarted host is reached again at once). A stream that ended sooner
// does not: the next attempt waits as the backoff says, so a host that drops
// every stream right after the handshake gets at most one attempt per
// ReconnectMax. If the device has failed, the Pump cannot run again and the
// tunnel stops.
func (e *Enclave) tunnel(ctx context.Context, c *tap.Conn, b *backoff) {
	for {
		e.status.setUp(true)
		began := time.Now()
		err := e.pump.Run(ctx, c)
		e.status.setUp(false)
		if ctx.Err() != nil {
			return
		}
		e.status.setErr(err)
		if derr := e.pump.DeviceErr(); derr != nil {
			e.log.Error("enclave network device failed; the tunnel to the host is down for good", "err", derr)
			return
		}
		if time.Since(began) >= e.cfg.ReconnectMax {
			b.reset()
		}
		if errors.Is(err, tap.ErrFrameTooLarge) {
			// The host's MTU is larger than ours: TCP still works (each
			// side's MSS), but a large UDP datagram ends the stream.
			e.log.Error("the host sent a frame larger than this enclave's MTU allows; quench-host's -mtu must equal the enclave's (quench-enclave -mtu, Config.MTU)",
				"enclave_mtu", e.cfg.MTU, "err", err)
		}
		e.log.Warn("host stream ended; reconnecting", "err", err, "after", b.next)
		c, err = e.connect(ctx, b)
		if err != nil {
			return // ctx cancelled
		}
		e.status.reconnects.Add(1)
		e.log.Info("reconnected to host")
	}
}

// Listen listens on the enclave's network: kernel sockets in TAP mode, the
// userspace stack otherwise. network is "tcp" or "tcp4".
func (e *Enclave) Listen(network, addr string) (net.Listener, error) {
	nw, err := e.network()
	if err != nil {
		return nil, err
	}
	return nw.listen(network, addr)
}

// ListenPacket listens for UDP on the enclave's network. With
// Config.Egress set, WriteTo sends only to addresses the policy allows and
// to peers that sent to the socket first; anything else fails with
// ErrEgressRefused.
func (e *Enclave) ListenPacket(network, addr string) (net.PacketConn, error) {
	nw, err := e.network()
	if err != nil {
		return nil, err
	}
	pc, err := nw.listenPacket(network, addr)
	if err != nil || e.cfg.Egress == nil {
		return pc, err
	}
	return newPolicedPacketConn(pc, e.cfg.Egress), nil
}

// Dial connects through the enclave's network. It has the signature of
// net.Dialer.DialContext, so it drops into http.Transport. Names resolve
// through the host's DNS.
func (e *Enclave) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	nw, err := e.network()
	if err != nil {
		return nil, err
	}
	if e.cfg.Egress != nil {
		return e.dialPolicy(ctx, nw, network, addr)
	}
	return nw.dial(ctx, network, addr)
}

// ErrEgressRefused is returned (inside a *net.OpError) by Dial when
// Config.Egress does not allow the destination. It is final: retrying the
// same address fails the same way.
var ErrEgressRefused = errors.New("enclave: refused by egress policy")

// NoNSMError is returned (wrapped) by Start when serving needs attestation
// documents, Config.Attester is nil and the Nitro Secure Module cannot be
// opened: the program is not running in a Nitro Enclave. Err is why.
type NoNSMError struct{ Err error }

func (e *NoNSMError) Error() string {
	return "enclave: attester: " + e.Err.Error() + " (outside a Nitro Enclave, set Config.Attester explicitly, e.g. to a development attester)"
}

func (e *NoNSMError) Unwrap() error { return e.Err }

// dialPolicy dials addr after checking it against Config.Egress. A hostname
// must be allowed by name and is resolved here, so the policy sees the
// name and every address it resolved to. The answer comes from the host's
// DNS, which is untrusted: a resolved address inside the enclave (see
// insideEnclave) is refused unless an address or CIDR rule allows it ("*"
// does not: it allows any destination, not these), so that the host
// cannot turn an allowed name into a connection to the enclave's own
// services. "localhost" and names under it (RFC 6761) are
// not asked of DNS: they are 127.0.0.1, allowed by a name rule.
func (e *Enclave) dialPolicy(ctx context.Context, nw network, network, addr string) (net.Conn, error) {
	refuse := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Err: err}
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, refuse(err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, refuse(fmt.Errorf("bad port %q", portStr))
	}
	proto := "tcp"
	if strings.HasPrefix(network, "udp") {
		proto = "udp"
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if !e.cfg.Egress.Allow(proto, ip, uint16(port), nil) {
			return nil, refuse(ErrEgressRefused)
		}
		return nw.dial(ctx, network, addr)
	}
	if !e.cfg.Egress.AllowName(host) {
		return nil, refuse(ErrEgressRefused)
	}
	var ips []netip.Addr
	if isLocalhost(host) {
		ips = []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1})}
	} else if ips, err = nw.resolver().LookupNetIP(ctx, "ip4", host); err != nil {
		return nil, refuse(err)
	}
	var lastErr error
	for _, ip := range ips {
		ip = ip.Unmap()
		if !e.cfg.Egress.Allow(proto, ip, uint16(port), []string{host}) {
			continue
		}
		if !isLocalhost(host) && e.insideEnclave(nw, ip) && !e.cfg.Egress.AllowAddress(proto, ip, uint16(port)) {
			e.log.Warn("egress: the host's DNS answered an address inside the enclave; refused", "name", host, "address", ip.String())
			continue
		}
		c, err := nw.dial(ctx, network, net.JoinHostPort(ip.String(), portStr))
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	if lastErr == nil {
		return nil, refuse(ErrEgressRefused)
	}
	return nil, lastErr
}

// insideEnclave reports whether ip, an address the host's DNS answered,
// leads into the enclave rather than out through the host: loopback, the
// unspecified address and the rest of 0.0.0.0/8 (the local system),
// multicast, broadcast (limited, or the enclave subnet's), or one of the
// enclave's own addresses.
func (e *Enclave) insideEnclave(nw network, ip netip.Addr) bool {
	ip = ip.Unmap()
	switch {
	case ip.IsLoopback(), ip.IsUnspecified(), ip.IsMulticast():
		return true
	case ip.Is4() && ip.As4()[0] == 0:
		return true
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return true
	case ip == e.cfg.Address.Addr():
		return true
	}
	if pfx := e.cfg.Address.Masked(); pfx.Addr().Is4() && pfx.Bits() < 31 {
		b := pfx.Addr().As4()
		v := binary.BigEndian.Uint32(b[:]) | (1<<(32-pfx.Bits()) - 1)
		binary.BigEndian.PutUint32(b[:], v)
		if ip == netip.AddrFrom4(b) {
			return true
		}
	}
	return nw.ownAddr(ip)
}

// isLocalhost reports whether host is "localhost" or a name under it
// (RFC 6761 section 6.3), which is never asked of a name server.
func isLocalhost(host string) bool {
	host = strings.TrimSuffix(host, ".")
	return strings.EqualFold(host, "localhost") || len(host) > len(".localhost") &&
		strings.EqualFold(host[len(host)-len(".localhost"):], ".localhost")
}

// Resolver returns a resolver that asks the enclave's DNS servers over the
// enclave's network. With Config.Egress, it asks only about names the
// policy allows (policy.AllowName); a question about any other name is
// answered "no such host" without leaving the enclave, since the name
// itself would reach the DNS servers the host forwards to.
func (e *Enclave) Resolver() (*net.Resolver, error) {
	nw, err := e.network()
	if err != nil {
		return nil, err
	}
	if e.cfg.Egress != nil {
		return policedResolver(nw.resolver(), e.cfg.Egress, e.log), nil
	}
	return nw.resolver(), nil
}

// HTTPClient returns an HTTP client whose connections go through the
// enclave's network.
func (e *Enclave) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:           e.Dial,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}}
}

func (e *Enclave) network() (network, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, fmt.Errorf("enclave: %w", net.ErrClosed)
	}
	if !e.started {
		return nil, errors.New("enclave: not started")
	}
	return e.net, nil
}

// Close drains the servers (in-flight requests get Config.DrainTimeout to
// finish; new connections are refused), stops the tunnel, removes the TAP
// device or stops the userspace stack, and waits for every goroutine it
// started. Connections already handed out by Listen or Dial are closed in
// userspace mode (their stack is gone) and left alone in TAP mode. A second
// call returns an error wrapping net.ErrClosed.
func (e *Enclave) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return fmt.Errorf("enclave: %w", net.ErrClosed)
	}
	e.closed = true
	started := e.started
	e.mu.Unlock()
	if !started {
		return nil
	}
	var errs []error
	var (
		wg     sync.WaitGroup
		fwdErr error
	)
	if e.fwd != nil {
		// Forwarded connections drain beside the servers' requests.
		wg.Go(func() {
			drain := e.cfg.DrainTimeout
			if drain <= 0 {
				drain = DefaultDrainTimeout
			}
			fwdErr = e.fwd.close(drain)
		})
	}
	if e.srv != nil {
		if err := e.srv.close(); err != nil {
			errs = append(errs, err)
		}
	}
	wg.Wait()
	if fwdErr != nil {
		errs = append(errs, fwdErr)
	}
	if err := e.stopNetwork(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// servers returns the serving half, or an error when it is not running.
func (e *Enclave) servers() (*servers, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.closed:
		return nil, fmt.Errorf("enclave: %w", net.ErrClosed)
	case !e.started:
		return nil, errors.New("enclave: not started")
	case e.srv == nil:
		return nil, errors.New("enclave: not serving (set Config.Handler or Config.AppURL)")
	}
	return e.srv, nil
}

// Ready signals that the app is ready: with Config.WaitForApp, the public
// server starts serving now. It is what GET /enclave/ready on the internal
// server does, for in-process apps. Calling it again does nothing.
func (e *Enclave) Ready() error {
	s, err := e.servers()
	if err != nil {
		return err
	}
	s.markReady()
	return nil
}

// SetAppKeyHash registers the SHA-256 of an application key; every later
// attestation document binds it (attestation.UserData.AppKeyHash). It is
// what POST /enclave/hash on the internal server does.
func (e *Enclave) SetAppKeyHash(h [sha256.Size]byte) error {
	s, err := e.servers()
	if err != nil {
		return err
	}
	s.appKey.Store(&h)
	return nil
}

// KeySync returns the key synchronisation of a serving enclave with
// Config.FQDNLeader: its role, the leader's workers, and the app state
// (Syncer.SetState on the leader, Syncer.State on workers: what PUT and GET
// /enclave/state on the internal server do).
func (e *Enclave) KeySync() (*keysync.Syncer, error) {
	s, err := e.servers()
	if err != nil {
		return nil, err
	}
	if s.syncer == nil {
		return nil, errors.New("enclave: key synchronisation is off (set Config.FQDNLeader)")
	}
	return s.syncer, nil
}

// Addrs reports the bound addresses of the servers; fields are nil for
// servers that are off. Useful when Config asked for port 0.
type Addrs struct {
	Public, Internal, Metrics net.Addr
	Sync                      net.Addr // key synchronisation (FQDNLeader)
}

// Addrs returns the servers' addresses.
func (e *Enclave) Addrs() (Addrs, error) {
	s, err := e.servers()
	if err != nil {
		return Addrs{}, err
	}
	a := Addrs{Public: s.publicLn.Addr()}
	if s.internalLn != nil {
		a.Internal = s.internalLn.Addr()
	}
	if s.metricsLn != nil {
		a.Metrics = s.metricsLn.Addr()
	}
	if s.syncLn != nil {
		a.Sync = s.syncLn.Addr()
	}
	return a, nil
}

// Status reports the state of the tunnel to the host.
type Status struct {
	Connected  bool   // a stream to the host is up
	Reconnects uint64 // streams re-established after a drop
	LastError  string // why the last stream ended or the last dial failed
}

// ForwardStats returns the counters of Config.Forwards, in their order;
// nil before Start or without forwards.
func (e *Enclave) ForwardStats() []ForwardStats {
	e.mu.Lock()
	fwd := e.fwd
	e.mu.Unlock()
	if fwd == nil {
		return nil
	}
	return fwd.stats()
}

// Status returns the tunnel's state.
func (e *Enclave) Status() Status { return e.status.get() }

// ownDial is the dialer of the enclave's own connections (the ACME client,
// key sync), which Config.Egress does not limit: their destinations are in
// the attested configuration (or, for key sync, attested peers). In TAP mode
// with a policy, the frame filter would refuse them like any program's, so
// ownDial resolves the name with the filter's leave (PermitName) and lets
// the socket it connects to each address through (PermitFrom: bound to its
// port first).
func (e *Enclave) ownDial(nw network) func(ctx context.Context, network, addr string) (net.Conn, error) {
	f := e.egress
	if f == nil {
		return nw.dial
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, portStr, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		port, err := nw.resolver().LookupPort(ctx, network, portStr)
		if err != nil {
			return nil, err
		}
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{ip}
		} else {
			f.PermitName(host)
			if ips, err = nw.resolver().LookupNetIP(ctx, "ip4", host); err != nil {
				return nil, err
			}
		}
		var firstErr error
		for _, ip := range ips {
			dst := netip.AddrPortFrom(ip.Unmap(), uint16(port))
			// Exactly this socket passes the filter (not any program's
			// to dst in the same moment).
			d := net.Dialer{Control: permitOwn(f, network, dst)}
			c, err := d.DialContext(ctx, strings.TrimSuffix(network, "4")+"4", dst.String())
			if err == nil {
				return c, nil
			}
			if firstErr == nil {
				firstErr = err
			}
		}
		if firstErr == nil {
			firstErr = &net.DNSError{Err: "no IPv4 address", Name: host, IsNotFound: true}
		}
		return nil, firstErr
	}
}

// startMetrics serves Config.MetricsAddr without the servers (no Handler
// or AppURL): the network's collectors only.
func (e *Enclave) startMetrics(nw network) error {
	ln, err := nw.listen("tcp", e.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("enclave: metrics listener %s: %w", e.cfg.MetricsAddr, err)
	}
	m, err := newMetrics(e, e.conns, false)
	if err != nil {
		_ = ln.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.handler())
	srv := proxy.NewServer(mux, proxy.ServerConfig{Logger: e.log})
	e.metricsSrv = srv
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			e.log.Error("server stopped", "server", "metrics", "err", err)
		}
	}()
	e.log.Info("metrics serving", "addr", ln.Addr().String())
	return nil
}

// permitOwn is a net.Dialer Control function for the enclave's own
// connection to dst (network "tcp" or "udp") through the egress filter f:
// it binds the socket to a port before it connects and lets exactly that
// socket through (Filter.PermitFrom), so that a program connecting to the
// same destination in the same moment is still refused.
func permitOwn(f *egressfw.Filter, network string, dst netip.AddrPort) func(string, string, syscall.RawConn) error {
	return func(_, _ string, rc syscall.RawConn) error {
		var err error
		if cerr := rc.Control(func(fd uintptr) {
			if err = unix.Bind(int(fd), &unix.SockaddrInet4{}); err != nil {
				return
			}
			var sa unix.Sockaddr
			if sa, err = unix.Getsockname(int(fd)); err != nil {
				return
			}
			if sa4, ok := sa.(*unix.SockaddrInet4); ok {
				f.PermitFrom(network, uint16(sa4.Port), dst)
			}
		}); cerr != nil {
			return cerr
		}
		return err
	}
}
