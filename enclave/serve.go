package enclave

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/enclave/keysync"
	"github.com/quenchnet/quench/proxy"
)

// Paths of the enclave's HTTP API. The public ones are nitriding's, plus
// HealthPath; the internal ones are served on Config.InternalAddr.
const (
	IndexPath       = "/enclave"
	AttestationPath = attestation.Path // "/enclave/attestation"
	ConfigPath      = "/enclave/config"
	HealthPath      = "/enclave/health"
	ReadyPath       = "/enclave/ready"
	HashPath        = "/enclave/hash"
	// StatePath (internal) is key synchronisation's app state: PUT on the
	// leader, GET on workers (package keysync). 403 when it is off.
	StatePath = keysync.StatePath
)

// NoApp, as Config.Handler, serves without an app: the enclave's endpoints
// only, other paths 404, as nitriding-daemon without -appwebsrv (for an app
// listening on ports of its own). /enclave/config shows "app": "none".
var NoApp http.Handler = noApp{}

type noApp struct{}

func (noApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	http.Error(w, "404 page not found (no app: this enclave serves only its own endpoints, under "+IndexPath+")", http.StatusNotFound)
}

// AnnotationSourceURL is the Config.Annotations key naming the app's code
// repository (quench-enclave -source-url, nitriding-daemon's -appurl): the
// index page shows it as nitriding's does.
const AnnotationSourceURL = "source_url"

// maxHashBody bounds the body of POST /enclave/hash.
const maxHashBody = 1 << 10

// servers is the serving half of an Enclave: public HTTPS, internal and
// metrics servers, the certificate and the attester.
type servers struct {
	cfg     Config
	log     *slog.Logger
	e       *Enclave
	certs   *certSource
	att     attestation.Attester
	ownAtt  io.Closer // the NSM attester Start opened; nil otherwise
	proxy   *proxy.Proxy
	front   *frontDoor // HTTP/1.1 to the proxy's front end; nil without a proxied app
	metrics *metrics
	conns   *connCap // the Enclave's (Config.MaxConns), on publicLn, ingressLn and syncLn

	publicLn   net.Listener
	ingressLn  *IngressListener // nil unless Config.IngressListen
	public     *http.Server
	internal   *http.Server // nil when InternalAddr is "-"
	internalLn net.Listener
	metricsSrv *http.Server // nil unless MetricsAddr
	metricsLn  net.Listener
	syncer     *keysync.Syncer // nil unless FQDNLeader
	syncSrv    *http.Server    // nil unless FQDNLeader
	syncLn     net.Listener

	inFlight  atomic.Int64  // public requests being handled
	attSlots  chan struct{} // one token per attestation document being made; nil: no limit
	ready     chan struct{} // closed once the app is ready
	readyOnce sync.Once
	closing   chan struct{} // closed by close
	appKey    atomic.Pointer[[sha256.Size]byte]
	kms       kmsRecipients // the internal server's KMS endpoints
	configDoc []byte        // JSON served at ConfigPath
	wg        sync.WaitGroup
}

// startServers sets up and binds every server; nw is the enclave's network.
// On error it releases what it took.
func (e *Enclave) startServers(ctx context.Context, nw network) (_ *servers, err error) {
	cfg := e.cfg
	s := &servers{
		cfg:     cfg,
		log:     e.log,
		e:       e,
		ready:   make(chan struct{}),
		closing: make(chan struct{}),
	}
	if cfg.MaxAttestations > 0 {
		s.attSlots = make(chan struct{}, cfg.MaxAttestations)
	}
	var closers []func()
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()

	s.att = cfg.Attester
	if s.att == nil {
		nsm, err := attestation.NewNSMAttester(attestation.NSMConfig{})
		if err != nil {
			return nil, &NoNSMError{Err: err}
		}
		s.att, s.ownAtt = nsm, nsm
		closers = append(closers, func() { _ = nsm.Close() })
		if cfg.SeedEntropy > 0 {
			if err := attestation.SeedEntropy(nsm, cfg.SeedEntropy); err != nil {
				e.log.Warn("could not seed the kernel entropy pool from the NSM", "err", err)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("enclave: start servers: %w", err)
	}

	s.certs, err = newCertSource(cfg, s.acmeClient(nw))
	if err != nil {
		return nil, err
	}
	s.conns = e.conns
	if s.metrics, err = newMetrics(e, s.conns, true); err != nil {
		return nil, err
	}

	var app http.Handler = cfg.Handler
	if cfg.AppURL != nil {
		pc := cfg.Proxy
		if pc.Metrics == nil {
			pc.Metrics = proxyMetrics{s.metrics}
		}
		// The proxy's front end serves the enclave's own endpoints too
		// (frontDoor), so HTTP/1.1 clients never go through net/http's
		// server.
		encl := s.enclaveHandler()
		appIntercept := pc.Intercept
		pc.Intercept = func(r *http.Request) http.Handler {
			if enclavePaths(r) {
				return encl
			}
			if appIntercept != nil {
				return appIntercept(r)
			}
			return nil
		}
		// Only /enclave and below (and the app's own paths) are asked
		// about, so the proxy's event loops forward the rest without
		// building an http.Request.
		switch {
		case appIntercept == nil:
			pc.InterceptPaths = []string{IndexPath}
		case len(pc.InterceptPaths) > 0:
			pc.InterceptPaths = append(slices.Clip(pc.InterceptPaths), IndexPath)
		}
		if pc.DialContext == nil && !appURLUnix(cfg.AppURL) {
			// New refused an AppURL naming the internal server's port
			// on loopback; a host name that resolves there (through the
			// host's DNS, say) is refused when dialled.
			d := &net.Dialer{KeepAlive: 30 * time.Second, Control: e.guard.control}
			pc.DialContext = d.DialContext
		}
		p, err := proxy.New(cfg.AppURL, pc)
		if err != nil {
			return nil, fmt.Errorf("enclave: app proxy: %w", err)
		}
		s.proxy = p
		s.metrics.watchProxy(p)
		closers = append(closers, func() { _ = p.Close() })
		app = p
	}
	s.configDoc, err = json.Marshal(publicConfig(cfg, s.certs.kind))
	if err != nil {
		return nil, fmt.Errorf("enclave: config document: %w", err)
	}

	// Bind everything before serving anything.
	// The public listeners and key sync's count against Config.MaxConns
	// (with the forwards) from the moment a connection is accepted (the
	// ingress fast path's before its PROXY header is read).
	publicLn, err := nw.listen("tcp", cfg.PublicAddr)
	if err != nil {
		return nil, fmt.Errorf("enclave: public listener %s: %w", cfg.PublicAddr, err)
	}
	s.publicLn = s.conns.listen(publicLn)
	closers = append(closers, func() { _ = s.publicLn.Close() })
	if cfg.IngressListen != nil {
		ln, err := cfg.IngressListen()
		if err != nil {
			return nil, fmt.Errorf("enclave: ingress listener: %w", err)
		}
		s.ingressLn = ListenIngress(s.conns.listen(ln), IngressConfig{Logger: e.log})
		closers = append(closers, func() { _ = s.ingressLn.Close() })
	}
	if cfg.InternalAddr != "-" {
		s.internalLn, err = net.Listen("tcp", cfg.InternalAddr)
		if err != nil {
			return nil, fmt.Errorf("enclave: internal listener %s: %w", cfg.InternalAddr, err)
		}
		closers = append(closers, func() { _ = s.internalLn.Close() })
		if ap, err := netip.ParseAddrPort(s.internalLn.Addr().String()); err == nil {
			e.guard.port.Store(uint32(ap.Port()))
		}
	}
	var syncTLS *tls.Config
	if cfg.syncOn() {
		kc := cfg.KeySync
		kc.Attester = s.att
		if kc.Dial == nil {
			kc.Dial = e.ownDial(nw)
		}
		kc.Certificate = s.certs.current
		kc.InstallCertificate = s.certs.install
		s.syncer, err = keysync.New(kc)
		if err != nil {
			return nil, fmt.Errorf("enclave: key synchronisation: %w", err)
		}
		closers = append(closers, func() { _ = s.syncer.Close() })
		var syncLn net.Listener
		syncLn, err = nw.listen("tcp", cfg.SyncAddr)
		if err != nil {
			return nil, fmt.Errorf("enclave: key sync listener %s: %w", cfg.SyncAddr, err)
		}
		// Served by net/http alone (no event loop takes its sockets):
		// a connection's slot is released by its Close.
		s.syncLn = s.conns.listen(syncLn)
		closers = append(closers, func() { _ = s.syncLn.Close() })
		if syncTLS, err = s.certs.syncTLSConfig(); err != nil {
			return nil, err
		}
	}
	if cfg.MetricsAddr != "" {
		s.metricsLn, err = nw.listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return nil, fmt.Errorf("enclave: metrics listener %s: %w", cfg.MetricsAddr, err)
		}
		closers = append(closers, func() { _ = s.metricsLn.Close() })
	}

	// Public server: net/http's, for HTTP/2 and for in-process handlers;
	// in front of a proxied app, HTTP/1.1 goes to the proxy's own front
	// end through the front door.
	s.public = proxy.NewServer(s.publicHandler(app), proxy.ServerConfig{
		TLSConfig: s.certs.tlsConfig(),
		Logger:    e.log,
	})
	if s.proxy != nil {
		s.front = newFrontDoor(s.public.TLSConfig, s.publicLn.Addr(), frontDoorHandshakeTimeout)
	}
	if !cfg.WaitForApp {
		s.markReady()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-s.ready:
		case <-s.closing:
			return
		}
		e.log.Info("public HTTPS server serving", "addr", s.publicLn.Addr().String(), "cert", s.certs.kind, "max_conns", cfg.MaxConns)
		if s.front == nil {
			s.serve("public", s.public, tls.NewListener(s.publicLn, s.public.TLSConfig))
			return
		}
		s.front.accept(s.publicLn)
		if s.ingressLn != nil {
			e.log.Info("ingress fast path serving", "addr", s.ingressLn.Addr().String())
			s.front.accept(s.ingressLn)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.proxy.Serve(s.front.h1); err != nil && !errors.Is(err, net.ErrClosed) {
				s.log.Error("server stopped", "server", "public (HTTP/1.1)", "err", err)
			}
		}()
		s.serve("public", s.public, s.front.h2)
	}()
	if s.ingressLn != nil && s.front == nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			select {
			case <-s.ready:
			case <-s.closing:
				return
			}
			e.log.Info("ingress fast path serving", "addr", s.ingressLn.Addr().String())
			s.serve("ingress", s.public, tls.NewListener(s.ingressLn, s.public.TLSConfig))
		}()
	}

	if s.internalLn != nil {
		s.internal = proxy.NewServer(s.internalHandler(), proxy.ServerConfig{Logger: e.log})
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve("internal", s.internal, s.internalLn)
		}()
	}
	if s.metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", s.metrics.handler())
		s.metricsSrv = proxy.NewServer(mux, proxy.ServerConfig{Logger: e.log})
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve("metrics", s.metricsSrv, s.metricsLn)
		}()
	}
	if s.syncer != nil {
		s.syncSrv = proxy.NewServer(s.syncer.ExternalHandler(), proxy.ServerConfig{
			TLSConfig: syncTLS,
			Logger:    e.log,
		})
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			e.log.Info("key sync endpoint serving", "addr", s.syncLn.Addr().String(), "leader", cfg.KeySync.Leader)
			s.serve("keysync", s.syncSrv, tls.NewListener(s.syncLn, s.syncSrv.TLSConfig))
		}()
		if err := s.syncer.Start(ctx); err != nil {
			// Stop what was started: the goroutines above end with
			// their listeners.
			_ = s.close()
			return nil, fmt.Errorf("enclave: %w", err)
		}
	}
	if cfg.Pprof {
		e.log.Warn("pprof enabled on the internal server: profiles expose process memory, so attestation is refused", "addr", cfg.InternalAddr)
	}
	if cfg.WaitForApp {
		if cfg.InternalAddr == "-" {
			e.log.Info("waiting for the app to call Enclave.Ready before serving")
		} else {
			e.log.Info("waiting for the app to signal readiness before serving", "url", "http://"+cfg.InternalAddr+ReadyPath)
		}
	}
	return s, nil
}

// serve runs srv on ln until it is shut down. Once close has begun,
// net.ErrClosed is a shutdown too: the front door's listener is closed
// before the public server's Shutdown, so that no new connection reaches
// it. Before, a closed listener is an error worth its line.
func (s *servers) serve(name string, srv *http.Server, ln net.Listener) {
	err := srv.Serve(ln)
	if err == nil || errors.Is(err, http.ErrServerClosed) {
		return
	}
	select {
	case <-s.closing:
		if errors.Is(err, net.ErrClosed) {
			return
		}
	default:
	}
	s.log.Error("server stopped", "server", name, "err", err)
}

// acmeClient is the HTTP client the ACME client uses: through the enclave's
// network, trusting Config.ACMERoots.
func (s *servers) acmeClient(nw network) *http.Client {
	return &http.Client{
		Timeout: time.Minute,
		Transport: &http.Transport{
			DialContext:         s.e.ownDial(nw),
			TLSClientConfig:     &tls.Config{RootCAs: s.cfg.ACMERoots, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout: 10 * time.Second,
			ForceAttemptHTTP2:   true,
			MaxIdleConns:        4,
			IdleConnTimeout:     30 * time.Second,
		},
	}
}

func (s *servers) markReady() {
	s.readyOnce.Do(func() {
		close(s.ready)
		s.metrics.appReady.Set(1)
	})
}

func (s *servers) isReady() bool {
	select {
	case <-s.ready:
		return true
	default:
		return false
	}
}

// close drains the servers within DrainTimeout, then closes what is left,
// and waits for the server goroutines.
func (s *servers) close() error {
	close(s.closing)
	if s.syncer != nil {
		_ = s.syncer.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancel()
	var errs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	shutdown := func(name string, srv *http.Server, ln net.Listener) {
		defer wg.Done()
		if srv == nil {
			return
		}
		var err error
		if name == "public" {
			if s.front != nil {
				// The listeners first, so no new connection
				// reaches either server.
				_ = ln.Close()
				if s.ingressLn != nil {
					_ = s.ingressLn.Close()
				}
				s.front.close()
			}
			err = s.shutdownPublic(ctx)
			if s.front != nil {
				err = errors.Join(err, s.proxy.Shutdown(ctx))
			}
		} else {
			err = srv.Shutdown(ctx)
		}
		if err != nil {
			_ = srv.Close()
			mu.Lock()
			errs = append(errs, fmt.Errorf("enclave: drain %s server: %w", name, err))
			mu.Unlock()
		}
		// Serve may never have run (the public server waiting for the
		// app); Shutdown closes only listeners Serve saw.
		if ln != nil {
			_ = ln.Close()
		}
	}
	wg.Add(4)
	if s.ingressLn != nil {
		// Shutdown closes it if Serve ran; otherwise close it here.
		defer func() { _ = s.ingressLn.Close() }()
	}
	go shutdown("public", s.public, s.publicLn)
	go shutdown("internal", s.internal, s.internalLn)
	go shutdown("metrics", s.metricsSrv, s.metricsLn)
	go shutdown("keysync", s.syncSrv, s.syncLn)
	wg.Wait()
	s.wg.Wait()
	if s.proxy != nil {
		if err := s.proxy.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.ownAtt != nil {
		if err := s.ownAtt.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// drainGrace is how long the public server stays up after its last
// in-flight request finished, for responses still being flushed.
const drainGrace = 250 * time.Millisecond

// shutdownPublic is http.Server.Shutdown for the public server, which also
// speaks HTTP/2: Shutdown sends GOAWAY, but (Go 1.26) returns only when
// clients close their idle HTTP/2 connections or ctx ends. So once no request
// has been in flight for drainGrace, the remaining connections (idle by
// then) are closed. An HTTP/2 response is in flight until its last data is
// sent (publicHandler).
func (s *servers) shutdownPublic(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.public.Shutdown(ctx) }()
	tick := time.NewTicker(drainGrace / 5)
	defer tick.Stop()
	var idleSince time.Time
	for {
		select {
		case err := <-done:
			return err
		case now := <-tick.C:
			if s.inFlight.Load() != 0 {
				idleSince = time.Time{}
				continue
			}
			if idleSince.IsZero() {
				idleSince = now
				continue
			}
			if now.Sub(idleSince) >= drainGrace {
				_ = s.public.Close()
				<-done // returns once Close dropped the connections
				return nil
			}
		}
	}
}

// publicHandler routes /enclave/... to the enclave's endpoints and the rest
// to the app.
// enclaveHandler serves the enclave's own public endpoints (/enclave and
// below).
func (s *servers) enclaveHandler() http.Handler {
	mux := http.NewServeMux()
	m := s.metrics
	mux.Handle(IndexPath, m.instrument("index", http.HandlerFunc(s.handleIndex)))
	mux.Handle(IndexPath+"/", m.instrument("index", http.HandlerFunc(s.handleIndex)))
	mux.Handle(AttestationPath, m.instrument("attestation", http.HandlerFunc(s.handleAttestation)))
	mux.Handle(ConfigPath, m.instrument("config", http.HandlerFunc(s.handleConfig)))
	mux.Handle(HealthPath, m.instrument("health", http.HandlerFunc(s.handleHealth)))
	return mux
}

// publicHandler is net/http's public handler: the enclave's endpoints and
// the app.
func (s *servers) publicHandler(app http.Handler) http.Handler {
	encl := s.enclaveHandler()
	if s.cfg.MetricsAddr != "" && s.proxy == nil {
		// Counting app requests costs a wrapper per request; only when
		// someone collects the count (the proxy counts its own).
		app = s.metrics.instrument("app", app)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.inFlight.Add(1)
		defer s.inFlight.Add(-1)
		var h2 *h2Writer
		if r.ProtoMajor == 2 {
			h2 = &h2Writer{ResponseWriter: w}
			w = h2
		}
		if enclavePaths(r) {
			encl.ServeHTTP(w, r)
		} else {
			app.ServeHTTP(w, r)
		}
		if h2 != nil && h2.wrote {
			// What the handler left buffered goes out after it
			// returns, and may wait for the client's flow-control
			// window (a slow reader): send it while the request
			// still counts as in flight, so that shutdownPublic does
			// not close the connection under it. (HTTP/2 then
			// declares no Content-Length for a body the handler
			// left unsized; the body's framing does not need it.)
			// A response without a body is not flushed: nothing of
			// it waits for a window, and the handler's return sends
			// it as one HEADERS frame ending the stream, which is how
			// a gRPC trailers-only response (an error status) must
			// end; a flush split it into HEADERS and an empty DATA
			// frame, and gRPC clients failed the call with Internal.
			_ = http.NewResponseController(h2.ResponseWriter).Flush()
		}
	})
}

// h2Writer notes whether an HTTP/2 handler wrote any body bytes. It
// unwraps for http.ResponseController and passes Flush and Push on.
type h2Writer struct {
	http.ResponseWriter
	wrote bool
}

func (w *h2Writer) Write(p []byte) (int, error) {
	if len(p) > 0 {
		w.wrote = true
	}
	return w.ResponseWriter.Write(p)
}

func (w *h2Writer) WriteString(s string) (int, error) {
	if len(s) > 0 {
		w.wrote = true
	}
	return io.WriteString(w.ResponseWriter, s)
}

func (w *h2Writer) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

func (w *h2Writer) Push(target string, opts *http.PushOptions) error {
	if p, ok := w.ResponseWriter.(http.Pusher); ok {
		return p.Push(target, opts)
	}
	return http.ErrNotSupported
}

func (w *h2Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *servers) handleIndex(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != IndexPath && r.URL.Path != IndexPath+"/" {
		// nitriding-daemon passes the /enclave/ paths it does not serve
		// to the app; quench keeps them for its own endpoints (a later
		// one must not shadow, nor be shadowed by, an app's path).
		http.Error(w, "404: "+r.URL.Path+" is not an endpoint of the enclave, and paths under "+IndexPath+"/ are not passed to the app (nitriding-daemon passes them on; quench-enclave keeps them for its own): serve the app's routes elsewhere", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, `This host runs inside an AWS Nitro Enclave, served by quench.

Endpoints:
  GET %s?nonce=<40 hex digits>  attestation document (base64), binding this TLS certificate
  GET %s[?nonce=<40 hex digits>]     the enclave's configuration (attested with a nonce)
  GET %s                         health
Verify with: quench verify https://%s
`, AttestationPath, ConfigPath, HealthPath, r.Host)
	if src := s.cfg.Annotations[AnnotationSourceURL]; src != "" {
		fmt.Fprintf(w, "\nIt runs the following code: %s\n", src)
	}
}

// refuseIfProfiling answers 503 when pprof is on.
func (s *servers) refuseIfProfiling(w http.ResponseWriter) bool {
	if !s.cfg.Pprof {
		return false
	}
	s.metrics.attestations.WithLabelValues("refused").Inc()
	http.Error(w, "attestation refused: profiling (pprof) is enabled in this enclave, which weakens its isolation", http.StatusServiceUnavailable)
	return true
}

// takeAttestSlot takes one of the Config.MaxAttestations slots for a request
// that asks for a document. When none is free it answers 503 with
// Retry-After at once (a document costs an NSM request, which the NSM serves
// one at a time: a queue would only grow) and reports false. After true, the
// caller calls releaseAttestSlot.
func (s *servers) takeAttestSlot(w http.ResponseWriter) bool {
	if s.attSlots == nil {
		return true
	}
	select {
	case s.attSlots <- struct{}{}:
		return true
	default:
		s.metrics.attestations.WithLabelValues("busy").Inc()
		w.Header().Set("Retry-After", "1")
		http.Error(w, "attestation busy: too many documents being produced, retry later", http.StatusServiceUnavailable)
		return false
	}
}

func (s *servers) releaseAttestSlot() {
	if s.attSlots != nil {
		<-s.attSlots
	}
}

// userData returns the attestation user data for a request on r's TLS
// connection: the hash of the certificate served for its SNI and the
// registered app key hash.
func (s *servers) userData(r *http.Request) ([]byte, error) {
	name := ""
	if r.TLS != nil {
		name = r.TLS.ServerName
	}
	h, err := s.certs.hash(name)
	if err != nil {
		return nil, err
	}
	u := attestation.UserData{TLSCertHash: h}
	if k := s.appKey.Load(); k != nil {
		u.AppKeyHash = *k
	}
	return u.Marshal(), nil
}

func (s *servers) handleAttestation(w http.ResponseWriter, r *http.Request) {
	if s.refuseIfProfiling(w) || !s.takeAttestSlot(w) {
		return
	}
	defer s.releaseAttestSlot()
	h, err := attestation.NewHandler(attestation.HandlerConfig{
		Attester: s.att,
		UserData: func() ([]byte, error) { return s.userData(r) },
		Logger:   s.log,
	})
	if err != nil {
		http.Error(w, "attestation unavailable", http.StatusInternalServerError)
		return
	}
	rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
	h(rec, r)
	if rec.code == http.StatusOK {
		s.metrics.attestations.WithLabelValues("ok").Inc()
	} else {
		s.metrics.attestations.WithLabelValues("error").Inc()
	}
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

// ConfigResponse is the body of GET /enclave/config?nonce=...: the
// configuration (the same compact JSON served without a nonce) and an
// attestation document whose nonce is the request's, whose user data is the
// usual attestation.UserData, and whose public_key field is the SHA-256 of
// the Config bytes exactly as they appear here.
type ConfigResponse struct {
	Config      json.RawMessage `json:"config"`
	Attestation string          `json:"attestation"` // base64 COSE_Sign1
}

func (s *servers) handleConfig(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "only GET is allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	q := r.URL.Query().Get("nonce")
	if q == "" {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(append(append([]byte(nil), s.configDoc...), '\n'))
		return
	}
	if s.refuseIfProfiling(w) {
		return
	}
	nonce, err := attestation.ParseNonce(q)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ud, err := s.userData(r)
	if err != nil {
		s.log.Error("attestation: user data unavailable", "err", err)
		http.Error(w, "failed to obtain attestation document", http.StatusInternalServerError)
		return
	}
	if !s.takeAttestSlot(w) {
		return
	}
	defer s.releaseAttestSlot()
	sum := sha256.Sum256(s.configDoc)
	doc, err := s.att.Attest(r.Context(), attestation.Request{Nonce: nonce, UserData: ud, PublicKey: sum[:]})
	if err != nil {
		s.metrics.attestations.WithLabelValues("error").Inc()
		s.log.Error("attestation: attester failed", "err", err)
		http.Error(w, "failed to obtain attestation document", http.StatusInternalServerError)
		return
	}
	s.metrics.attestations.WithLabelValues("ok").Inc()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(ConfigResponse{Config: s.configDoc, Attestation: base64.StdEncoding.EncodeToString(doc)})
}

// Health is the body of GET /enclave/health.
type Health struct {
	Status   string `json:"status"` // "ok", or "degraded" (503)
	AppReady bool   `json:"app_ready"`
	Network  Status `json:"network"`
	// KeySync is the key synchronisation role ("undecided", "leader" or
	// "worker"; a worker not yet synced is "worker (not synced)"), empty
	// when it is off. It does not make the status degraded.
	KeySync string `json:"key_sync,omitempty"`
}

func (s *servers) handleHealth(w http.ResponseWriter, r *http.Request) {
	h := Health{Status: "ok", AppReady: s.isReady(), Network: s.e.Status()}
	if s.syncer != nil {
		h.KeySync = s.syncer.Role().String()
		if s.syncer.Role() == keysync.RoleWorker {
			select {
			case <-s.syncer.Synced():
			default:
				h.KeySync += " (not synced)"
			}
		}
	}
	code := http.StatusOK
	if !h.AppReady || !h.Network.Connected {
		h.Status, code = "degraded", http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(h)
}

// internalHandler serves the app on the enclave's loopback.
func (s *servers) internalHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(ReadyPath, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodPost {
			w.Header().Set("Allow", "GET, POST")
			http.Error(w, "use GET or POST", http.StatusMethodNotAllowed)
			return
		}
		if !s.isReady() {
			s.log.Info("app signalled readiness")
		}
		s.markReady()
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc(HashPath, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			http.Error(w, "use POST with the base64 (or hex) SHA-256 of the app key as body", http.StatusMethodNotAllowed)
			return
		}
		b, err := io.ReadAll(io.LimitReader(r.Body, maxHashBody+1))
		if err != nil {
			http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if len(b) > maxHashBody {
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		h, err := ParseKeyHash(string(b))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.appKey.Store(&h)
		s.log.Info("app key hash registered", "sha256", hex.EncodeToString(h[:]))
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc(KMSRecipientPath, s.handleKMSRecipient)
	mux.HandleFunc(KMSDecryptPath, s.handleKMSDecrypt)
	if s.syncer != nil {
		mux.Handle(StatePath, s.syncer.StateHandler())
	} else {
		mux.HandleFunc(StatePath, func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "key synchronisation is off (set -fqdn-leader / Config.FQDNLeader)", http.StatusForbidden)
		})
	}
	if s.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// ParseKeyHash decodes an app key hash as POST /enclave/hash takes it: a
// SHA-256 digest in standard base64 (as nitriding takes it) or in hex,
// surrounding white space ignored.
func ParseKeyHash(s string) ([sha256.Size]byte, error) {
	var h [sha256.Size]byte
	s = strings.TrimSpace(s)
	var b []byte
	var err error
	if len(s) == 2*sha256.Size {
		b, err = hex.DecodeString(s)
	} else {
		b, err = base64.StdEncoding.DecodeString(s)
	}
	if err != nil {
		return h, fmt.Errorf("enclave: key hash: want the SHA-256 in base64 or hex: %v", err)
	}
	if len(b) != sha256.Size {
		return h, fmt.Errorf("enclave: key hash: %d bytes, want %d (SHA-256)", len(b), sha256.Size)
	}
	copy(h[:], b)
	return h, nil
}

// publicConfig is what /enclave/config shows: the settings a client may
// want to audit, nothing secret.
type publicConfigView struct {
	Network      string   `json:"network"`
	MTU          int      `json:"mtu"`
	Address      string   `json:"address"`
	Gateway      string   `json:"gateway"`
	DNS          []string `json:"dns"`
	PublicAddr   string   `json:"public_addr"`
	FQDN         string   `json:"fqdn,omitempty"`
	Certificate  string   `json:"certificate"` // self-signed, file or acme
	ACME         string   `json:"acme_directory,omitempty"`
	App          string   `json:"app"` // "in-process" or the app URL
	WaitForApp   bool     `json:"wait_for_app"`
	Metrics      bool     `json:"metrics"`
	Pprof        bool     `json:"pprof"`
	DevAttester  bool     `json:"dev_attester"`
	DrainTimeout string   `json:"drain_timeout"`
	FQDNLeader   string   `json:"fqdn_leader,omitempty"`
	// Egress lists the rules of Config.Egress as given; null when there
	// is no policy (everything allowed), [] when it refuses everything.
	Egress []string `json:"egress"`
	// DNSProxy is the DNS proxy's address when it runs (TAP mode with
	// Egress), where resolv.conf sends the enclave's programs.
	DNSProxy    string            `json:"dns_proxy,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

func publicConfig(c Config, certKind string) publicConfigView {
	v := publicConfigView{
		Network:      string(c.Network),
		MTU:          c.MTU,
		Address:      c.Address.String(),
		Gateway:      c.Gateway.String(),
		PublicAddr:   c.PublicAddr,
		FQDN:         c.FQDN,
		Certificate:  certKind,
		App:          "in-process",
		WaitForApp:   c.WaitForApp,
		Metrics:      c.MetricsAddr != "",
		Pprof:        c.Pprof,
		DrainTimeout: c.DrainTimeout.String(),
		FQDNLeader:   c.FQDNLeader,
		Egress:       c.Egress.Rules(),
		Annotations:  c.Annotations,
	}
	if a, ok := c.dnsProxyAddr(); ok {
		v.DNSProxy = a.String()
	}
	for _, d := range c.DNS {
		v.DNS = append(v.DNS, d.String())
	}
	if c.ACME {
		v.ACME = c.ACMEDirectory
	}
	if c.AppURL != nil {
		v.App = c.AppURL.Redacted()
	}
	if _, ok := c.Handler.(noApp); ok {
		v.App = "none"
	}
	_, v.DevAttester = c.Attester.(*attestation.DevAttester)
	return v
}
