// Package netstack is a TCP/IP stack in the process (gVisor's netstack)
// whose link is a [tap.Device] carrying Ethernet frames, for enclaves that
// have no network device and no privileges to make one.
//
// [New] builds the stack with the enclave's address, a default route via
// the gateway, ARP on the link and a loopback interface (127.0.0.0/8).
// [Net.Device] is the link: frames the stack sends come out of its Read,
// in batches, and frames written to it go into the stack. The enclave's
// tap.Pump moves them over the frame tunnel to the host.
//
// The application uses the stack through [Net.Listen], [Net.ListenPacket],
// [Net.Dial] and [Net.Resolver], which return standard library types:
//   - Listen returns a net.Listener whose Accept yields net.Conns;
//   - Dial returns a net.Conn (TCP), or a net.Conn that is also a
//     net.PacketConn (UDP); its signature is net.Dialer.DialContext's, so
//     it drops into http.Transport;
//   - ListenPacket returns a net.PacketConn;
//   - Resolver returns a *net.Resolver that asks the configured DNS servers
//     over the stack.
//
// The conns behave like the standard library's: errors are *net.OpError;
// Read returns io.EOF when the peer closes; any call after Close fails
// with an error wrapping net.ErrClosed; deadlines fail with an error
// wrapping os.ErrDeadlineExceeded; stack errors become the matching
// syscall.Errno (ECONNRESET, ECONNREFUSED, ...) in an *os.SyscallError.
//
// Nothing in the package starts goroutines of its own; gVisor's protocol
// workers are stopped and waited for by [Net.Close].
package netstack
