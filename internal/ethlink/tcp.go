package ethlink

import (
	"fmt"

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

// TuneTCP sets what both ends of the tunnel want from gVisor's TCP: SACK,
// receive-buffer moderation and the buffer ranges above. The host's stack
// and the enclave's userspace stack use the same settings.
func TuneTCP(s *stack.Stack) error {
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	opts := []tcpip.SettableTransportProtocolOption{
		&sack,
		&moderate,
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
