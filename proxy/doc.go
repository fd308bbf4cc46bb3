// Package proxy is a tuned HTTP reverse proxy for one upstream, built to be
// the cheapest hop on the path between a client and an enclave app.
//
// # Overview
//
// [New] returns a [*Proxy] for a target URL (http, https or unix). It meets
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
//     refusal in one write and logs nothing per refusal;
//   - takes an idle upstream connection (or dials one, up to
//     [Config.MaxConns]; a connection on which the upstream sent more than
//     its last response, such as a body for HEAD, is closed instead of
//     reused) and writes the request line and headers without copying the
//     header map, dropping hop-by-hop headers and fields whose names
//     contain an underscore ([Config.AllowUnderscoreHeaders]), and setting
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
// # Metrics
//
// [Config.Metrics] takes any [Metrics] implementation; the package itself
// does not depend on Prometheus. Package proxyprom adapts it to
// prometheus/client_golang.
//
// # Limits
//
// Upstreams are spoken to in HTTP/1.1 only. HTTP/2 clients cannot upgrade
// (no extended CONNECT); WebSocket clients must use HTTP/1.1, which browsers
// do by default. CONNECT requests are refused with 405.
package proxy
