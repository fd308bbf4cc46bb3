package ethlink

import (
	"fmt"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// Buffer ranges (min, default, max) of TCP endpoints on quench's stacks. The
// stack grows the receive buffer with the application's reads (moderate
// receive buffer, like Linux's tcp_moderate_rcvbuf) up to the maximum, which
// keeps 64 KiB segments in flight on the fast, lossless virtual link.
const (
	TCPBufMin     = 4 << 10
	TCPBufDefault = 1 << 20
	TCPBufMax     = 8 << 20
)

// How long the stacks keep connections they closed, against gVisor's
// defaults of 60 s for both (Linux's 2 MSL and tcp_fin_timeout).
//
// TimeWait: a connection the stack closed first stays in TIME-WAIT this
// long. Each is a whole gVisor endpoint, about 10 KB, and nothing caps
// their number (Linux keeps a small struct, at most tcp_max_tw_buckets): in
// the enclave, a host opening connections the app closes first could make
// it hold gigabytes of them. On the host, a NAT connection whose server
// closed first ends in TIME-WAIT while the enclave's kernel, which closed
// second, keeps nothing and may reuse the port at once; gVisor hands a SYN
// for a tuple in TIME-WAIT only to a listening endpoint, and NAT has none
// (it is the stack's forwarder), so the enclave's connect got no answer for
// the whole TIME-WAIT. TIME-WAIT guards against a lost final ACK and
// delayed duplicates, neither of which lasts longer than a moment on the
// ordered, local link between the two stacks: if the final ACK was lost,
// the peer's next FIN is answered with a reset, which ends its closed
// socket all the same. A SYN that meets the second that remains is
// retransmitted after it (Linux: 1 s).
//
// FinWait2: a connection closed here waits this long for the peer's FIN
// once its own is acknowledged. These are whole endpoints too, uncapped;
// a few seconds let an honest peer's FIN, relayed from a client far away,
// arrive.
const (
	TimeWait = time.Second
	FinWait2 = 5 * time.Second
)

// DefaultOrphanTimeout bounds how long a connection the application (or
// the host's relay) has closed may wait for the peer to take its unsent
// data; see BoundOrphan.
const DefaultOrphanTimeout = 60 * time.Second

// orphanTimeout is OrphanTimeout's value in nanoseconds, 0 for the
// default: tests change it while relays of other tests' hosts may still be
// closing connections.
var orphanTimeout atomic.Int64

// OrphanTimeout returns the current orphan timeout.
func OrphanTimeout() time.Duration {
	if d := orphanTimeout.Load(); d > 0 {
		return time.Duration(d)
	}
	return DefaultOrphanTimeout
}

// SetOrphanTimeout sets the orphan timeout (for tests; 0 restores the
// default) and returns the previous one.
func SetOrphanTimeout(d time.Duration) (old time.Duration) {
	old = OrphanTimeout()
	orphanTimeout.Store(int64(d))
	return old
}

// BoundOrphan is for a TCP endpoint about to be closed. Unsent data stays
// with the stack after Close, as with the kernel, and gVisor waits for good
// while the peer keeps its window at zero and answers the window probes: a
// peer could pile up closed connections and their send buffers without
// limit, outside every connection limit. BoundOrphan gives the endpoint a
// user timeout (TCP_USER_TIMEOUT, which gVisor applies to window probes
// too), so that it is reset after OrphanTimeout without progress, as Linux
// gives up on orphans. Live connections keep no user timeout: an
// application may stop reading for as long as it likes.
func BoundOrphan(ep tcpip.Endpoint) {
	uto := tcpip.TCPUserTimeoutOption(OrphanTimeout())
	_ = ep.SetSockOpt(&uto)
}

// TuneTCP sets what both ends of the tunnel want from gVisor's TCP: SACK,
// receive-buffer moderation, the buffer ranges, TimeWait and FinWait2
// above. The host's stack and the enclave's userspace stack use the same
// settings.
func TuneTCP(s *stack.Stack) error {
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	tw := tcpip.TCPTimeWaitTimeoutOption(TimeWait)
	fw2 := tcpip.TCPLingerTimeoutOption(FinWait2)
	opts := []tcpip.SettableTransportProtocolOption{
		&sack,
		&moderate,
		&tw,
		&fw2,
		&tcpip.TCPSendBufferSizeRangeOption{Min: TCPBufMin, Default: TCPBufDefault, Max: TCPBufMax},
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: TCPBufMin, Default: TCPBufDefault, Max: TCPBufMax},
	}
	for _, o := range opts {
		if terr := s.SetTransportProtocolOption(tcp.ProtocolNumber, o); terr != nil {
			return fmt.Errorf("TCP option %T: %v", o, terr)
		}
	}
	return nil
}
