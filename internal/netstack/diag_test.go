package netstack

import (
	"sync"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// probeState is what traceTCP keeps of a connection: its state after the
// last segment it handled.
type probeState struct {
	snd                    stack.TCPSenderState
	rcv                    stack.TCPReceiverState
	rcvBuf                 stack.TCPRcvBufState
	sndBufSize, sndBufUsed int
}

// traceTCP records, for each stack of p, the state of every TCP endpoint
// after the last segment it received, and logs it with the link and TCP
// counters if the test fails: what a stalled transfer needs to be
// understood.
func traceTCP(t *testing.T, p *pair) {
	t.Helper()
	type last struct {
		mu sync.Mutex
		m  map[stack.TCPEndpointID]*probeState
	}
	nets := []*Net{p.a, p.b}
	lasts := make([]*last, len(nets))
	for i, n := range nets {
		l := &last{m: map[stack.TCPEndpointID]*probeState{}}
		lasts[i] = l
		n.stack.AddTCPProbe(func(s *stack.TCPEndpointState) {
			l.mu.Lock()
			st := l.m[s.ID]
			if st == nil {
				st = new(probeState)
				l.m[s.ID] = st
			}
			st.snd, st.rcv, st.rcvBuf = s.Sender, s.Receiver, s.RcvBufState
			st.sndBufSize, st.sndBufUsed = s.SndBufState.SndBufSize, s.SndBufState.SndBufUsed
			l.mu.Unlock()
		})
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for i, n := range nets {
			t.Logf("stack %d link: %+v", i, n.Stats())
			ts := n.stack.Stats().TCP
			t.Logf("stack %d tcp: sent %d retrans %d fastretrans %d timeouts %d sendErrors %d invalidRecv %d segsRecv %d resetsSent %d checksumErr %d",
				i, ts.SegmentsSent.Value(), ts.Retransmits.Value(), ts.FastRetransmit.Value(), ts.Timeouts.Value(),
				ts.SegmentSendErrors.Value(), ts.InvalidSegmentsReceived.Value(), ts.ValidSegmentsReceived.Value(),
				ts.ResetsSent.Value(), ts.ChecksumErrors.Value())
			for _, ep := range n.stack.RegisteredEndpoints() {
				if e, ok := ep.(tcpip.Endpoint); ok {
					var info tcpip.TCPInfoOption
					if err := e.GetSockOpt(&info); err == nil {
						t.Logf("stack %d endpoint %+v", i, info)
					}
					rbuf := e.SocketOptions().GetReceiveBufferSize()
					if st, ok := e.Stats().(*tcp.Stats); ok {
						re := &st.ReceiveErrors
						t.Logf("stack %d endpoint rcvbuf %d: segQueueDropped %d zeroRcvWnd %d wantZeroRcvWnd %d closedRcv %d checksum %d listenOverflow %d",
							i, rbuf, re.SegmentQueueDropped.Value(), re.ZeroRcvWindowState.Value(), re.WantZeroRcvWindow.Value(),
							re.ClosedReceiver.Value(), re.ChecksumErrors.Value(), re.ListenOverflowSynDrop.Value())
					}
				}
			}
			lasts[i].mu.Lock()
			for id, s := range lasts[i].m {
				t.Logf("stack %d last probe %v:%d→%v:%d: sender %+v receiver %+v rcvbuf %+v sndbuf size %d used %d", i, id.LocalAddress, id.LocalPort, id.RemoteAddress, id.RemotePort, s.snd, s.rcv, s.rcvBuf, s.sndBufSize, s.sndBufUsed)
			}
			lasts[i].mu.Unlock()
		}
	})
}
