// Package enclave is the library an AWS Nitro Enclave app imports: it gives
// the enclave a network through quench-host on the parent instance, and
// serves the app over HTTPS terminated inside the enclave, with attestation
// documents that bind the TLS certificate to the enclave image.
//
// # Overview
//
// An [Enclave] is configured by a [Config], created with [New] (which
// validates and does no I/O), brought up with [Enclave.Start] and ended with
// [Enclave.Close], which must be called once Start succeeded.
//
// Networking comes in two modes, chosen by [Config.Network]:
//   - [NetworkUserspace] (default): a gVisor TCP/IP stack inside the process.
//     No privileges and no kernel device; only this process has the network,
//     through [Enclave.Listen], [Enclave.ListenPacket], [Enclave.Dial],
//     [Enclave.Resolver] and [Enclave.HTTPClient] (the tsnet model).
//   - [NetworkTAP]: a kernel TAP device (needs CAP_NET_ADMIN); every program
//     in the enclave uses ordinary sockets, and Listen/Dial are the kernel's.
//
// Either way Ethernet frames travel to quench-host over one VSOCK stream in
// gvisor-tap-vsock's format, and the enclave reconnects when the host
// restarts ([Enclave.Status]).
//
// Serving is on when [Config.Handler] (a Go app, in process: no proxy hop)
// or [Config.AppURL] (an app in any language, behind the reverse proxy of
// package proxy) is set. Start then binds:
//   - the public HTTPS server on [Config.PublicAddr] of the enclave's network
//     (":443"; the host publishes a port to it). TLS is terminated here with a
//     self-signed ECDSA P-256 certificate, the files in [Config.TLSCertFile]
//     and [Config.TLSKeyFile], or a certificate obtained by ACME with the
//     TLS-ALPN-01 challenge ([Config.ACME]). It serves nitriding's API:
//     [IndexPath], [AttestationPath] (GET ?nonce=<40 hex digits>: a base64
//     document), [ConfigPath] (attested when a nonce is given; see
//     [ConfigResponse]) and [HealthPath] ([Health]); other paths under
//     [IndexPath]/ get 404 (kept for the enclave's endpoints), every other
//     path goes to the app. Every document binds the SHA-256 of the served certificate
//     and of the registered app key (attestation.UserData).
//   - the internal server for the app on [Config.InternalAddr] of the
//     enclave's loopback (New refuses any other address, and a Forward
//     target or AppURL leading to it): [ReadyPath] (with [Config.WaitForApp] the public
//     server serves only after it), [HashPath] (register an app key hash),
//     [StatePath] (key synchronisation; 403 when it is off), and
//     [KMSRecipientPath] and [KMSDecryptPath] (AWS KMS secrets sealed to
//     the enclave; Go apps use package attestation/kms instead).
//     In-process apps call [Enclave.Ready] and [Enclave.SetAppKeyHash].
//   - Prometheus metrics on [Config.MetricsAddr], when set.
//   - with [Config.FQDNLeader], key synchronisation between identical
//     enclaves (nitriding's horizontal scaling, package keysync): a TLS
//     endpoint for other enclaves on [Config.SyncAddr] (":444"), and
//     [StatePath] on the internal server, where the app PUTs its state on
//     the leader and GETs it on workers ([Enclave.KeySync] in process).
//     Workers receive the leader's TLS certificate too, so every enclave of
//     the deployment serves, and attests, the same one.
//   - optionally, the ingress fast path ([Config.IngressListen]): the same
//     public server on a listener whose connections come one per client
//     from quench-host with a PROXY protocol header ([ListenIngress]).
//
// With or without serving, [Config.Forwards] relay the ingress fast path to
// servers in the enclave that listen on ordinary sockets, in any language
// ([Forward]; quench-enclave -forward).
//
// Documents come from [Config.Attester]: by default the Nitro Secure Module
// (/dev/nsm), which Start also uses to seed the kernel's entropy pool. The
// development attester of package attestation is never chosen implicitly.
// With [Config.Pprof], profiling is served on the internal server and the
// attestation endpoints refuse, since profiling weakens the enclave's
// isolation; key synchronisation, which attests and hands out keys, cannot
// be configured with it.
//
// Close drains: the servers stop accepting, requests in flight get
// [Config.DrainTimeout] to finish, then the tunnel and the network stop;
// Close waits for every goroutine the Enclave started.
//
// # Usage
//
// A Go app in userspace mode, serving HTTPS with attestation:
//
//	e, err := enclave.New(enclave.Config{Handler: mux})
//	if err != nil { ... }
//	if err := e.Start(ctx); err != nil { ... }
//	defer e.Close()
//	resp, err := e.HTTPClient().Get("https://example.com/") // egress through the host
//
// Apps in other languages run behind the quench-enclave command, which
// wraps this package (see cmd/quench-enclave and examples/sidecar).
//
// [Enclave.Listen] returns a net.Listener and [Enclave.Dial] a net.Conn (in
// userspace mode, gVisor gonet conns implementing net.Conn with
// *net.OpError errors); Dial has the signature of net.Dialer.DialContext.
package enclave
