// Package proxy is a tuned HTTP reverse proxy for one upstream, built to be
// the cheapest hop on the path between a client and an enclave app.
//
// # Overview
//
// [New] returns a [*Proxy] for a target URL (http, https or unix; h2c or
// h2c+unix for HTTP/2 upstreams, below). It meets
// clients in one of two ways:
//
//   - [Proxy.Serve] accepts connections from a [net.Listener] and speaks
//     HTTP/1.1 on them itself, without net/http's server. It is the fast
//     front end, for plain HTTP/1.1 and TLS listeners that offer only
//     http/1.1. On Linux, plain TCP and unix-socket connections, and TLS
//     connections made with [TLSServer] whose handshake is done, are served
//     on a few epoll event loops ([Config.EventLoops], one per CPU by
//     default), as nginx serves them: no goroutine per connection, no
//     allocation per request, the common request parsed without net/http
//     by a parser held to net/http's by differential fuzz tests; crypto/tls
//     seals and opens the records on the loop. Requests off the common path
//     (HTTP/1.0, chunked request bodies, Expect, upgrades, CONNECT,
//     intercepted requests, requests waiting in the admission queue) and
//     other TLS connections are served by a goroutine per connection that
//     parses with net/http ([http.ReadRequest]); a connection moves there,
//     with the bytes read so far, at its first such request.
//   - *Proxy implements [http.Handler], for HTTP/2 clients (serve it with
//     [NewServer] and a TLS config) or to mount it in an existing server.
//     Responses go out as Serve sends them: net/http sniffs no
//     Content-Type for one the app sent without, a 204 loses a
//     Content-Length (which HTTP/2 clients would reset the stream for),
//     and under NewServer "OPTIONS *" reaches the app. Over HTTP/2 a
//     response may pause, or a stream stay silent, and an upload wait on
//     an app that reads slowly, as over HTTP/1.1: net/http's HTTP/2 server
//     runs a stream's deadlines as timers that reset it when they fire,
//     so the Proxy stops the deadline of each write and read once it
//     returns. An HTTP/2 request body without content-length goes to an
//     HTTP/1.1 app with a Content-Length when it ends within one buffer
//     and 50 ms, for apps that read only that (Python's http.server took
//     it, chunked, for an empty body); longer or slower ones go chunked,
//     so full-duplex streams still work.
//
// On both, [Config.Intercept] may take any request off the forwarding
// path and hand it to a local [http.Handler] instead (an embedding
// program's own endpoints, such as attestation or health checks), so that
// one listener and the fast front end carry everything;
// [Config.InterceptPaths] names the paths it may claim, so that the event
// loops forward the others without building an [http.Request]. Under Serve the
// handler writes through the Proxy's own HTTP/1.1 response writer
// (Content-Length for bodies that end within 4 KiB, chunked otherwise,
// [http.Flusher], [http.Hijacker], [http.ResponseController]).
//
// [Proxy.Shutdown] stops Serve gracefully: listeners close, idle
// connections close, requests in flight finish with "Connection: close".
//
// Forwarded requests go upstream over HTTP/1.1 on the Proxy's own
// forwarding path, without [net/http/httputil.ReverseProxy] and
// [net/http.Transport]: the goroutine (or event loop) serving the client
// writes the request and reads the response itself, on a pooled keep-alive
// connection, instead of handing it to a transport's reader and writer
// goroutines. The event loops pass chunked response bodies through as they
// are, finding their end with a scanner instead of decoding them. docs/bench/proxy.md has the
// measurements behind that choice and behind the defaults in [Config].
//
// What the proxy does with each request:
//   - under Serve, refuses it with 400, as net/http's server does, if a
//     field name or value is invalid (whitespace before the colon, which
//     other parsers take for the end of the header section, or control
//     characters), and closes the connection after the response if its
//     framing was ambiguous (Transfer-Encoding with Content-Length, or
//     Transfer-Encoding in HTTP/1.0; RFC 9112 section 6.1);
//   - admits it if fewer than [Config.MaxInFlight] requests are in flight,
//     otherwise answers 503 with Retry-After at once (or after a short wait
//     in an optional queue, [Config.QueueSize]); Serve writes a prebuilt
//     refusal in one write and logs nothing per refusal. A response of
//     unknown length (server-sent events, gRPC, a chunked stream) gives
//     its slot back once its head is sent and counts among the streams
//     instead, up to [Config.MaxStreams]: the app has answered, and
//     subscribers that stay for hours must not keep other requests out;
//   - takes an idle upstream connection (or dials one, up to
//     [Config.MaxConns]; a connection on which the upstream sent more than
//     its last response, such as a body for HEAD, that answered HEAD
//     without a length (it may still be busy producing the body it does not
//     send), or that carried a chunked request body or a body on a GET,
//     HEAD, DELETE, OPTIONS or TRACE, which apps may leave unread, is
//     closed instead of reused) and writes the request line and headers
//     without copying the header map, dropping hop-by-hop headers and
//     fields whose names contain an underscore
//     ([Config.AllowUnderscoreHeaders]), and setting
//     X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto and Forwarded
//     from the connection ([http.Request.RemoteAddr], which a PROXY protocol
//     listener such as github.com/pires/go-proxyproto sets to the original
//     client);
//   - streams the request body up while the response streams back, with
//     pooled 32 KiB buffers, flushing responses of unknown length (such as
//     server-sent events) whenever the upstream has nothing more buffered;
//   - relays upgraded connections (WebSocket and others) both ways;
//   - answers 502 (504 on a timeout) and logs once when the upstream fails
//     before the response starts, and aborts the response when it fails
//     later; a client that goes away cancels the upstream exchange.
//
// # HTTP/2 upstreams (h2c)
//
// A target h2c://host:port (path prefix allowed, port 80 by default) or
// h2c+unix:///path/to/socket names an upstream that speaks HTTP/2 in
// cleartext with prior knowledge, as gRPC servers do; gRPC needs HTTP/2
// end to end (trailers, te: trailers, full-duplex streams), which the
// HTTP/1.1 path cannot give. The unix form is a scheme of its own, like
// unix, so that one URL (quench-enclave's -app-url) says both where the
// app is and which protocol it speaks. Such requests go upstream through
// net/http's [http.Transport] with [http.Protocols] set to unencrypted
// HTTP/2 only: each request is a stream, multiplexed on a connection (or a
// few) that [Config.DialContext] dials, so unix sockets and gVisor
// connections work as for the other targets. h2c is only ever spoken
// upstream: clients never get it (an "Upgrade: h2c" request goes upstream
// as a plain request, without its Upgrade and HTTP2-Settings fields).
//
// With an h2c target:
//   - the request head is the one the HTTP/1.1 path writes (hop-by-hop
//     fields and the ones Connection names dropped, "TE: trailers" kept, as
//     RFC 9110 section 10.1.4 lets it through and gRPC servers require it;
//     forwarding fields, Host, underscore rule and path prefix alike),
//     parsed into the Transport's request; no User-Agent or
//     Accept-Encoding of the Transport's own is added;
//   - the request body streams up while the response streams back, every
//     part of the response flushed as it arrives, and its header flushed
//     before the body; the trailers follow (announced with Trailer or not).
//     An empty response is not flushed, so that HTTP/2 clients get one
//     HEADERS frame ending the stream, which is how gRPC ends a
//     trailers-only response; HTTP/1.1 clients get Content-Length: 0;
//   - each request holds one in-flight slot ([Config.MaxInFlight]) until
//     its response header has come and been sent, then counts among the
//     streams ([Config.MaxStreams]) unless the response declared a
//     content-length; metrics, Intercept, 502 and 504 with a log line, and
//     cancellation when the client goes away (the upstream stream is reset)
//     are as on the HTTP/1.1 path. UpstreamTimeout bounds the wait for the
//     response header once the request body has ended (a stream whose body
//     is open may wait as long as it sends), the silence on an upstream
//     connection after which a PING asks whether it is still there (it is
//     closed if the PING goes unanswered within the same time, at most
//     15 s) and, as the Transport's HTTP/2 WriteByteTimeout, a connection
//     that takes no byte of a request. A stream itself may stay silent as
//     long as it lives: gRPC server and watch streams wait for events, and
//     the client ends them;
//   - Serve's event loops, which speak HTTP/1.1 upstream, are not used:
//     HTTP/1.1 clients are served on a goroutine per connection (or by
//     net/http's server under ServeHTTP) and forwarded over h2c;
//   - upgrades (WebSocket) are not relayed: HTTP/2 has no Upgrade, and the
//     request goes upstream as a plain one. MaxIdleConns < 0 turns off
//     connection reuse, MaxConns caps the connections (each carries many
//     streams), TLSClientConfig is not used.
//
// The h2c path is net/http's HTTP/2 Transport, not the hand-written
// HTTP/1.1 path: BenchmarkH2CUpstream (an HTTP/2 client over TLS, a small
// POST, the same handler behind h2c and behind HTTP/1.1, everything in
// one process) measured 166-174 µs and 234 allocations a request through
// h2c against 132 µs and 152 through HTTP/1.1 (1.3×), the upstream
// server's own HTTP/2 included. Apps that can speak HTTP/1.1 are the
// cheaper choice; gRPC servers cannot.
//
// # Metrics
//
// [Config.Metrics] takes any [Metrics] implementation; the package itself
// does not depend on Prometheus. Package proxyprom adapts it to
// prometheus/client_golang.
//
// # Limits
//
// Upstreams are spoken to in HTTP/1.1, or in HTTP/2 without TLS (h2c
// targets) only. HTTP/2 clients cannot upgrade
// (no extended CONNECT); WebSocket clients must use HTTP/1.1, which browsers
// do by default. CONNECT requests are refused with 405.
package proxy
