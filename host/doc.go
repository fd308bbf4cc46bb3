// Package host is the host side of quench, the gvproxy-style forwarder that
// runs on the EC2 parent instance.
//
// A [Host] runs a virtual Ethernet network on a gVisor TCP/IP stack. Enclaves
// join it over stream connections (VSOCK in production; unix sockets or TCP
// for development) speaking gvisor-tap-vsock's /connect protocol, so a stock
// gvforwarder works against a Host, and a quench enclave works against a stock
// gvproxy. The Host is the enclaves' gateway (192.168.127.1 by default):
//
//   - NAT egress: enclave TCP connections and UDP flows to any address are
//     terminated in the stack and re-originated from the host. The fixed
//     address HostLoopbackIP (192.168.127.254) reaches the host's 127.0.0.1.
//     The EC2 metadata range 169.254.0.0/16 is refused unless allowed.
//   - DNS on the gateway, port 53, answering the zone quench.internal itself
//     and forwarding the rest to the host's resolver.
//   - DHCP on the gateway, port 67 (gvisor-tap-vsock's service, as in
//     gvproxy): the enclave's default MAC gets EnclaveIP, with the gateway as
//     router and DNS server and the link's MTU, so a stock gvforwarder
//     configures its TAP device itself, without -preexisting.
//     Config.DisableDHCP turns it off.
//   - Published ports: host TCP/UDP ports forwarded to the enclave's address,
//     like docker -p.
//   - The ingress fast path (Publish.VSockPort): a host TCP port whose every
//     client connection becomes one enclave stream (Config.DialEnclave, VSOCK
//     in production) that starts with a PROXY protocol v2 header carrying
//     the client's address; the enclave reads it with enclave.ListenIngress.
//     Its connections are relayed on epoll event loops (internal/relay.Loop:
//     one scratch buffer per loop, no goroutine and no buffer per idle
//     connection, no EAGAIN read per message); half-closes are propagated,
//     idle connections time out. Config.GoroutineRelay switches back to two
//     goroutines per connection.
//   - Hot reconfiguration: [Host.AddPort] and [Host.RemovePort] (which drains),
//     served as a JSON control API by [Host.ControlHandler]; counters in
//     [Host.Ports], [Host.Enclaves], [Host.Stats] and, for Prometheus,
//     [Host.Collector].
//   - An egress policy (Config.Egress, package policy) for NAT TCP, UDP and
//     DNS answers.
//   - AWS vsock-proxy's role ([Host.ServeVSockProxy]): enclave programs that
//     dial a VSOCK port of the parent are relayed over TCP to one target.
//   - Enclaves' log streams ([Host.ServeEnclaveLogs], package logship), each
//     line handed to Config.EnclaveLog.
//
// The link between the stack and the enclave streams is quench's own
// batched switch: frames for an enclave are coalesced into stream writes of
// at most 32 KiB (the Nitro VSOCK limit), frames from it are decoded in
// batches, and reconnecting enclaves replace their old stream.
//
// Host implements no net interface itself; [Host.Serve] takes any
// [net.Listener].
package host
