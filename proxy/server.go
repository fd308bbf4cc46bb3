package proxy

import (
	"crypto/tls"
	"log/slog"
	"net/http"
	"time"
)

// Defaults for the zero fields of [ServerConfig].
const (
	// DefaultReadHeaderTimeout bounds reading a request's header, so that
	// slow-header clients (slowloris) cannot hold connections.
	DefaultReadHeaderTimeout = 10 * time.Second

	// DefaultServerReadTimeout bounds reading a whole request. The Proxy
	// moves the deadline forward while it streams a request body
	// (Config.TransferTimeout), so this limits stalls, not upload length.
	DefaultServerReadTimeout = 60 * time.Second

	// DefaultServerWriteTimeout bounds writing a response, counted from the
	// end of the request header. It exceeds DefaultUpstreamTimeout plus
	// DefaultDialTimeout, so that a response that takes the upstream as long
	// as allowed still has time to be written; the Proxy moves the deadline
	// forward while it streams long responses.
	DefaultServerWriteTimeout = 90 * time.Second

	// DefaultIdleTimeout bounds how long a keep-alive connection waits for
	// its next request.
	DefaultIdleTimeout = 120 * time.Second

	// DefaultTunnelIdleTimeout is Config.TunnelIdleTimeout's default: longer
	// than the ping interval of WebSocket libraries and than the idle
	// timeouts of the load balancers in front (AWS ALB: 60 s).
	DefaultTunnelIdleTimeout = 10 * time.Minute

	// DefaultMaxTunnels is Config.MaxTunnels's default.
	DefaultMaxTunnels = 4096

	// DefaultMaxStreams is Config.MaxStreams's default.
	DefaultMaxStreams = 4096

	// DefaultMaxHeaderBytes bounds a request header. net/http's default is
	// 1 MiB; 64 KiB is 8× nginx's default large_client_header_buffers.
	DefaultMaxHeaderBytes = 64 << 10
)

// ServerConfig configures [NewServer]. The zero value works; every zero
// field takes the default documented on it.
type ServerConfig struct {
	// ReadHeaderTimeout is http.Server.ReadHeaderTimeout. Default:
	// DefaultReadHeaderTimeout (10 s).
	ReadHeaderTimeout time.Duration

	// ReadTimeout is http.Server.ReadTimeout. Default:
	// DefaultServerReadTimeout (60 s).
	ReadTimeout time.Duration

	// WriteTimeout is http.Server.WriteTimeout, and with TLSConfig also
	// HTTP/2's WriteByteTimeout (a connection that takes no byte for that
	// long while bytes wait is closed). Default: DefaultServerWriteTimeout
	// (90 s).
	WriteTimeout time.Duration

	// IdleTimeout is http.Server.IdleTimeout. Default: DefaultIdleTimeout
	// (120 s).
	IdleTimeout time.Duration

	// MaxHeaderBytes is http.Server.MaxHeaderBytes. Default:
	// DefaultMaxHeaderBytes (64 KiB).
	MaxHeaderBytes int

	// TLSConfig, when set, is the server's TLS configuration, with HTTP/2
	// and HTTP/1.1 offered by ALPN (NextProtos, if empty, is set to h2 and
	// http/1.1): serve it with srv.ServeTLS(ln, "", "") (certificates in
	// the config) or srv.Serve(tls.NewListener(ln, srv.TLSConfig)).
	// Default nil: plain HTTP/1.1.
	TLSConfig *tls.Config

	// Logger receives the server's own errors (TLS handshake failures,
	// panics in handlers) at level Warn. Default nil: they are discarded.
	Logger *slog.Logger
}

// NewServer returns an http.Server that serves h with the timeouts of cfg
// set. It does not listen; call Serve, ServeTLS or ListenAndServe.
// "OPTIONS *" requests go to h (DisableGeneralOptionsHandler), as Serve
// forwards them; an http.ServeMux answers them 400.
func NewServer(h http.Handler, cfg ServerConfig) *http.Server {
	if cfg.ReadHeaderTimeout == 0 {
		cfg.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = DefaultServerReadTimeout
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = DefaultServerWriteTimeout
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		// "OPTIONS *" goes to h (the app, through a Proxy), as Serve
		// forwards it, instead of net/http's own 200 without Allow.
		DisableGeneralOptionsHandler: true,
	}
	if cfg.TLSConfig != nil {
		tc := cfg.TLSConfig.Clone()
		if len(tc.NextProtos) == 0 {
			// Also right for tls.NewListener(ln, srv.TLSConfig).
			tc.NextProtos = []string{"h2", "http/1.1"}
		}
		srv.TLSConfig = tc
		var protos http.Protocols
		protos.SetHTTP1(true)
		protos.SetHTTP2(true)
		srv.Protocols = &protos
		// net/http's HTTP/2 server applies WriteTimeout per stream: it
		// resets the stream, but the connection's writer stays blocked
		// in a write to a client that stopped reading, holding the
		// connection for good. WriteByteTimeout closes a connection that
		// takes none of the bytes waiting for it for that long (it runs
		// only while bytes wait, and restarts with each byte written).
		srv.HTTP2 = &http.HTTP2Config{WriteByteTimeout: cfg.WriteTimeout}
	}
	return srv
}
