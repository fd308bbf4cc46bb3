package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"time"
)

// Defaults for the zero fields of [Config]. The measurements behind them are
// in docs/bench/proxy.md (section "Defaults").
const (
	// DefaultMaxInFlightPerCPU, times GOMAXPROCS, bounds concurrently
	// forwarded requests by default. On the 2-core benchmark machine the
	// quench proxy's request rate peaked at 64 to 256 requests in flight
	// (three sweeps in docs/bench/proxy.md) and latency grows in proportion
	// beyond the peak, so 64 per core admits the lower knee and refuses the
	// rest at once.
	DefaultMaxInFlightPerCPU = 64

	// DefaultMaxIdleConns is the idle upstream connection pool size. It must
	// be at least the peak number of requests in flight, or connections
	// churn: with Go's stock 2 idle connections per host, httputil's proxy
	// spends 1.9-2.8× the CPU per request of the same proxy with 1000
	// (docs/bench/proxy.md). The default is at least MaxInFlight.
	DefaultMaxIdleConns = 1024

	// DefaultBufferSize is the size of the pooled copy buffers. Relaying
	// 1 MiB bodies at c=10, 32 KiB moved 360 MB/s, 8 KiB 177 MB/s and
	// 128 KiB 338 MB/s (docs/bench/proxy.md).
	DefaultBufferSize = 32 << 10

	// DefaultDialTimeout bounds dialing the upstream, and waiting for a
	// connection when MaxConns are all busy.
	DefaultDialTimeout = 5 * time.Second

	// DefaultIdleConnTimeout is how long an idle upstream connection stays
	// in the pool; the same as http.DefaultTransport's.
	DefaultIdleConnTimeout = 90 * time.Second

	// DefaultUpstreamTimeout bounds each wait for the upstream: for the
	// response header after the request is sent, and between reads of the
	// response body. 60 s is nginx's proxy_read_timeout.
	DefaultUpstreamTimeout = 60 * time.Second

	// DefaultTransferTimeout bounds each read of a request body from the
	// client and each write of a response to it. 60 s is nginx's
	// client_body_timeout and send_timeout.
	DefaultTransferTimeout = 60 * time.Second

	// DefaultRetryAfter is the Retry-After sent with 503 refusals.
	DefaultRetryAfter = 1 * time.Second

	// DefaultQueueTimeout is how long a request may wait in the queue when
	// QueueSize > 0.
	DefaultQueueTimeout = 50 * time.Millisecond
)

// Config configures a [Proxy]. The zero value works: every zero field takes
// the default documented on it. Fields are read once by [New]; changing a
// Config afterwards has no effect on the Proxy.
type Config struct {
	// DialContext dials the upstream. network and addr come from the target
	// URL: "tcp" and host:port for http and https targets, "unix" and the
	// path for unix targets. Set it to reach the upstream over anything that
	// is a net.Conn: a unix socket, a gVisor gonet connection, VSOCK.
	// Default: a net.Dialer with DialTimeout and 30 s TCP keep-alive.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	// DialTimeout bounds one dial of the upstream, including the TLS
	// handshake for https targets, and the wait for a connection when
	// MaxConns connections are busy. Default: DefaultDialTimeout (5 s).
	DialTimeout time.Duration

	// MaxIdleConns is how many idle upstream connections are kept for
	// reuse. Keep it at or above the peak number of concurrent requests
	// (MaxInFlight), or connections are closed and dialed again under load.
	// Negative disables keep-alive to the upstream. Default: the larger of
	// DefaultMaxIdleConns (1024) and MaxInFlight.
	MaxIdleConns int

	// MaxConns caps the number of upstream connections, busy and idle, for
	// forwarded requests; requests past the cap wait up to DialTimeout for
	// one to come free, then get 504. Connections that were upgraded (for
	// example to WebSocket) leave the pool and are not counted. Default 0:
	// no cap beyond MaxInFlight and MaxStreams, which bound busy
	// connections anyway.
	MaxConns int

	// IdleConnTimeout is how long an unused upstream connection is kept.
	// Default: DefaultIdleConnTimeout (90 s).
	IdleConnTimeout time.Duration

	// UpstreamTimeout bounds each wait for the upstream: for the response
	// header once the request has been sent (then 504), and for each further
	// read of the response body or write of the request body (then the
	// exchange is aborted). Upstreams that hold responses open without
	// sending, such as idle server-sent event streams, must send something
	// more often than this. Deadlines on upstream connections are moved
	// lazily (within an eighth of this); reads that hit a deadline kept from
	// an earlier request read again, so the timeout is never shorter than
	// set. With an h2c target it bounds the wait for the response header,
	// and after that much silence on an upstream connection a PING checks
	// it; a stream may stay silent (see the package documentation).
	// Negative disables it. Default: DefaultUpstreamTimeout (60 s).
	UpstreamTimeout time.Duration

	// TransferTimeout bounds each read of the request body from the client
	// and each write of the response to the client: before each one the
	// proxy moves the client connection's deadline to now + TransferTimeout.
	// The server's ReadTimeout and WriteTimeout thus limit how long a client
	// may stall, not how long a large or streamed body may take. Under
	// [Proxy.Serve] a write deadline already set is kept while it is less
	// than an eighth of TransferTimeout earlier than now + TransferTimeout,
	// to save moving it on every request. On Serve's event loops, a client
	// that stops reading a response is closed when this passes without it
	// taking a byte (IdleTimeout, if this is negative, once the whole
	// response is queued). Negative leaves the deadlines to
	// the server. Default: DefaultTransferTimeout (60 s).
	TransferTimeout time.Duration

	// MaxInFlight bounds the requests being forwarded at once. Past it a
	// request waits in the queue (QueueSize) or is refused at once with 503
	// and Retry-After. An upgraded connection stops counting once the
	// upstream has switched protocols, and a streamed response once its
	// head is sent (MaxStreams). Negative means no limit. Default:
	// DefaultMaxInFlightPerCPU × runtime.GOMAXPROCS(0) (128 on 2 cores).
	MaxInFlight int

	// QueueSize is how many requests may wait for a free in-flight slot,
	// each for at most QueueTimeout, before being refused. Default 0: refuse
	// at once, which keeps the latency of admitted requests flat past
	// saturation.
	QueueSize int

	// QueueTimeout is how long a queued request waits for a slot before it
	// is refused. Default: DefaultQueueTimeout (50 ms).
	QueueTimeout time.Duration

	// RetryAfter is sent, in whole seconds rounded up, in the Retry-After
	// header of 503 refusals. Default: DefaultRetryAfter (1 s).
	RetryAfter time.Duration

	// BufferSize is the size of the pooled buffers that copy bodies.
	// Default: DefaultBufferSize (32 KiB).
	BufferSize int

	// Host is the Host header sent upstream. Default "": the client's Host,
	// so that the upstream sees the name the client asked for (the same
	// name also goes in X-Forwarded-Host).
	Host string

	// TrustForwarded keeps the X-Forwarded-For, X-Forwarded-Host,
	// X-Forwarded-Proto and Forwarded headers that arrive from the client
	// and appends this hop to them. Default false: they are dropped and set
	// afresh from the connection, since any client can forge them.
	TrustForwarded bool

	// AllowUnderscoreHeaders forwards request header fields whose names
	// contain an underscore ("X_Api_Key"). Default false: they are dropped,
	// as nginx drops them by default (underscores_in_headers off), because
	// CGI, WSGI, PHP and the like map '-' and '_' alike to '_', so that
	// X_Forwarded_For reaches the application as HTTP_X_FORWARDED_FOR, as
	// the proxy's own X-Forwarded-For does. Even when set, the underscore
	// spellings of the fields the proxy sets or drops (X-Forwarded-For,
	// X-Forwarded-Host, X-Forwarded-Proto, Content-Length,
	// Transfer-Encoding and the hop-by-hop ones) are dropped.
	AllowUnderscoreHeaders bool

	// TLSClientConfig configures TLS to https targets. Its ServerName
	// defaults to the target's host name and its NextProtos are set to
	// http/1.1. Default nil: the system roots and the target's host name.
	TLSClientConfig *tls.Config

	// ReadHeaderTimeout bounds reading a request header on connections
	// served by [Proxy.Serve], from its first byte, and the wait for the
	// first request on a new connection. An http.Server serving the Proxy as
	// a Handler uses its own settings instead (see [NewServer]). Default:
	// DefaultReadHeaderTimeout (10 s).
	ReadHeaderTimeout time.Duration

	// IdleTimeout bounds the wait for the next request on a keep-alive
	// connection served by [Proxy.Serve]. Default: DefaultIdleTimeout
	// (120 s).
	IdleTimeout time.Duration

	// TunnelIdleTimeout closes an upgraded connection (WebSocket and other
	// protocols switched with 101) on which no byte went either way for
	// this long. Applications that keep such connections open without
	// traffic should send pings more often (WebSocket clients and servers
	// usually ping every 30-60 s). Default: DefaultTunnelIdleTimeout (10
	// min); negative: no limit.
	TunnelIdleTimeout time.Duration

	// MaxTunnels bounds the upgraded connections open at once, with the
	// upgrade requests being forwarded (each holds a client and an
	// upstream connection, and once upgraded no longer counts against
	// MaxInFlight or MaxConns); an upgrade request beyond it is refused
	// with 503 before it is forwarded. Default: DefaultMaxTunnels (4096);
	// negative: no limit.
	MaxTunnels int

	// MaxStreams bounds the responses that stream without holding an
	// in-flight slot. A response of unknown length (chunked, or ended by
	// the upstream closing; with an h2c target, any without a
	// content-length: server-sent events, gRPC, long downloads an app
	// writes as it goes) gives back its in-flight slot once its head has
	// been sent to the client, and counts among the streams until it ends:
	// the app has answered, and a subscriber that stays for hours must not
	// keep other requests out. Past MaxStreams a stream keeps its slot, as
	// does every response with a Content-Length. Each stream holds a client
	// and an upstream connection (MaxConns still caps the latter). Default:
	// DefaultMaxStreams (4096); negative: every response holds its slot to
	// its end.
	MaxStreams int

	// MaxHeaderBytes bounds the size of a request header read by
	// [Proxy.Serve]; larger ones get 431. Default: DefaultMaxHeaderBytes
	// (64 KiB).
	MaxHeaderBytes int

	// EventLoops is how many event loops [Proxy.Serve] forwards plain TCP
	// and unix-socket connections on (Linux), instead of a goroutine per
	// connection: 0 means runtime.GOMAXPROCS(0), negative means none (every
	// connection gets a goroutine, as TLS connections and other platforms
	// always do). The loops forward HTTP/1.1 requests without a body or with
	// a Content-Length one themselves and hand anything else (HTTP/1.0,
	// chunked request bodies, Expect, upgrades, CONNECT, intercepted or
	// queued requests) to the goroutine front end with the connection.
	// docs/bench/proxy.md compares the two. Default 0.
	EventLoops int

	// Logger receives one line per upstream failure (level Warn) and per
	// aborted exchange (level Debug). Default nil: logs are discarded.
	Logger *slog.Logger

	// Intercept, when set, is called for every request before it is
	// forwarded; when it returns a handler, that handler serves the request
	// instead, and the request is not forwarded, takes no in-flight slot
	// (MaxInFlight) and is not counted in Metrics. It lets one listener
	// carry both the proxied app and the embedding program's own endpoints
	// (attestation, health) on the fast front end, [Proxy.Serve].
	//
	// Intercept must be cheap and safe for concurrent use: it runs on every
	// request. It should decide from r's method, URL, Host and header only:
	// under Serve, r's context is not yet the one the handler gets, and r's
	// body must be left to the handler.
	//
	// Under Serve, the handler gets an [http.ResponseWriter] that writes
	// HTTP/1.1 straight to the connection. It implements [http.Flusher] and
	// [http.Hijacker] and works with [http.ResponseController]. A body that
	// ends within 4 KiB is sent with Content-Length, a longer or flushed one
	// chunked (to HTTP/1.0 clients: until the connection closes); HEAD,
	// 1xx responses, trailers and keep-alive work as with net/http, as do
	// Date and Content-Type sniffing. The request's context carries
	// [http.LocalAddrContextKey]; it is cancelled when the handler returns,
	// when a write to the client fails and when the Proxy closes, but, unlike
	// net/http's, not as soon as the client disconnects (Serve reads nothing
	// from the connection while a handler runs). Each read of the request
	// body and each write that reaches the connection moves its deadline to
	// now + TransferTimeout, unless the handler sets deadlines itself
	// through http.ResponseController. [Proxy.Close] waits for handlers to
	// return, so long-running ones must watch r.Context(); [Proxy.Shutdown]
	// waits for them like for forwarded requests. A panic in the handler is logged
	// (level Error) and closes the connection; http.ErrAbortHandler closes
	// it without a log line. Under ServeHTTP, the handler gets the server's
	// ResponseWriter. Default nil: every request is forwarded.
	Intercept func(r *http.Request) http.Handler

	// InterceptPaths, when set, limits Intercept to requests whose URL
	// path (decoded, as r.URL.Path) is one of these or lies below one:
	// "/enclave" matches "/enclave" and "/enclave/attestation", not
	// "/enclaves". Every other request is forwarded without a call, so
	// Serve's event loops forward it with their allocation-free parser
	// instead of building an http.Request for Intercept (17 allocations per
	// request on the enclave's HTTPS path; docs/bench/enclave.md). Each
	// path must start with "/"; a trailing "/" is ignored, so "/" matches
	// every path. Default nil (or empty): Intercept sees every request.
	InterceptPaths []string

	// Metrics receives request counts, in-flight changes, refusals,
	// upstream errors and latencies. Default nil: none are recorded (and the
	// clock is not read for them).
	Metrics Metrics
}

// withDefaults returns cfg with its zero fields set to their defaults, or an
// error if a field is invalid.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.MaxConns < 0 {
		return cfg, fmt.Errorf("proxy: MaxConns %d < 0", cfg.MaxConns)
	}
	if cfg.IdleConnTimeout == 0 {
		cfg.IdleConnTimeout = DefaultIdleConnTimeout
	}
	if cfg.UpstreamTimeout == 0 {
		cfg.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if cfg.TransferTimeout == 0 {
		cfg.TransferTimeout = DefaultTransferTimeout
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlightPerCPU * runtime.GOMAXPROCS(0)
	}
	if cfg.MaxIdleConns == 0 {
		cfg.MaxIdleConns = max(DefaultMaxIdleConns, cfg.MaxInFlight)
	}
	if cfg.QueueSize < 0 {
		return cfg, fmt.Errorf("proxy: QueueSize %d < 0", cfg.QueueSize)
	}
	if cfg.QueueTimeout == 0 {
		cfg.QueueTimeout = DefaultQueueTimeout
	}
	if cfg.QueueTimeout < 0 {
		return cfg, fmt.Errorf("proxy: QueueTimeout %v < 0", cfg.QueueTimeout)
	}
	if cfg.RetryAfter == 0 {
		cfg.RetryAfter = DefaultRetryAfter
	}
	if cfg.RetryAfter < 0 {
		return cfg, fmt.Errorf("proxy: RetryAfter %v < 0", cfg.RetryAfter)
	}
	if cfg.BufferSize == 0 {
		cfg.BufferSize = DefaultBufferSize
	}
	if cfg.BufferSize < 512 {
		return cfg, fmt.Errorf("proxy: BufferSize %d < 512", cfg.BufferSize)
	}
	if cfg.ReadHeaderTimeout == 0 {
		cfg.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if cfg.TunnelIdleTimeout == 0 {
		cfg.TunnelIdleTimeout = DefaultTunnelIdleTimeout
	}
	if cfg.MaxTunnels == 0 {
		cfg.MaxTunnels = DefaultMaxTunnels
	}
	if cfg.MaxStreams == 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	if cfg.ReadHeaderTimeout < 0 || cfg.IdleTimeout < 0 || cfg.MaxHeaderBytes < 0 {
		return cfg, fmt.Errorf("proxy: ReadHeaderTimeout, IdleTimeout and MaxHeaderBytes must not be negative")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	var paths []string // nil when empty: Intercept sees every request
	for _, ip := range cfg.InterceptPaths {
		if !strings.HasPrefix(ip, "/") {
			return cfg, fmt.Errorf("proxy: InterceptPaths: %q does not start with /", ip)
		}
		paths = append(paths, strings.TrimRight(ip, "/"))
	}
	cfg.InterceptPaths = paths
	return cfg, nil
}
