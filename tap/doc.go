// Package tap carries Ethernet frames between an enclave and its host over
// one stream connection, and connects that stream to a network device.
//
// # Wire format
//
// The format is gvisor-tap-vsock's "/connect" protocol (its HyperKit-style
// stream protocol), so quench interoperates both ways with stock gvproxy and
// gvforwarder: the enclave side sends the HTTP request
//
//	POST /connect HTTP/1.1
//	Host:
//	User-Agent: Go-http-client/1.1
//	Content-Length: 0
//
// exactly as gvforwarder's net/http client writes it; the host sends no
// reply; then both directions carry Ethernet frames, each preceded by its
// length as 2 bytes little endian.
//
// # Conn
//
// [Conn] implements the format over any [net.Conn] (VSOCK, unix socket,
// TCP, [net.Pipe]). It is fast by how it moves the bytes:
//   - writes coalesce many frames, each write at most [Config.MaxWrite]
//     (32 KiB by default: larger guest VSOCK writes are corrupted on Nitro);
//     a frame larger than that is split across writes;
//   - each read syscall fills as much of a 256 KiB buffer as the stream
//     holds, and [Conn.Next] decodes every complete frame in it before the
//     next syscall;
//   - buffers are allocated once, so the steady state allocates nothing.
//
// Every length from the stream is checked before use (zero, over the MTU),
// and a decode error is sticky: the stream cannot be resynchronised, so the
// caller closes it. A peer that stalls the stream mid-way (part of a frame
// sent, then nothing; or nothing read while there is something to write)
// is detected after [Config.StallTimeout] (30 s by default) and reported
// as [ErrStalled], also sticky; an idle stream never times out.
//
// # Devices and the pump
//
// [Device] is a batched frame device in the manner of wireguard-go's
// tun.Device. [CreateTAP] makes a Linux TAP device, configured through
// netlink. Package [github.com/quenchnet/quench/tap/taptest] has a
// channel-backed Device and packet builders for tests.
//
// [Pump] moves frames between a Device and successive Conns, so the device
// survives reconnects of the stream.
//
// None of the types here implement net.Conn; Conn wraps one.
package tap
