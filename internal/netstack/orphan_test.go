package netstack

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/quenchnet/quench/internal/ethlink"
)

// TestOrphanAtZeroWindowAborted: the app writes a response and closes its
// conn (as an HTTP server does after a "Connection: close" request, or when
// its write timeout gives up on a client that stopped reading), and the
// host announces a zero window and answers every window probe. gVisor kept
// such a connection, and its unsent data (up to the send buffer, 1 MiB and
// more), for good: a host could leak the enclave's memory one connection
// at a time. A closed conn now gets gVisor's user timeout (TCP_USER_TIMEOUT):
// it is dropped after ethlink.OrphanTimeout without the window opening.
// orphan returns a raw peer whose connection the app has written 200 KB
// to and closed, the time of Close, the right edge of the window the
// peer announced, and a func reporting whether the stack still has the
// connection.
func orphan(t *testing.T) (p *rawPeer, closed time.Time, edge seqnum.Value, alive func() bool) {
	t.Helper()
	n := newRawNet(t)
	p = newRawPeer(t, n)
	ln, err := n.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p.sndNxt = 100
	p.send(header.TCPFields{SeqNum: uint32(p.sndNxt), Flags: header.TCPFlagSyn, WindowSize: 65535}, nil, nil)
	synAck := p.next(func(s rawSeg) bool { return s.flags.Contains(header.TCPFlagSyn | header.TCPFlagAck) })
	p.sndNxt++
	p.rcvNxt = synAck.seq + 1
	const window = 20000
	edge = p.rcvNxt.Add(window)
	p.send(header.TCPFields{SeqNum: uint32(p.sndNxt), AckNum: uint32(p.rcvNxt), Flags: header.TCPFlagAck, WindowSize: window}, nil, nil)
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(make([]byte, 200_000)); err != nil {
		t.Fatal(err)
	}
	closed = time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	alive = func() bool {
		for _, te := range n.stack.RegisteredEndpoints() {
			ep, ok := te.(tcpip.Endpoint)
			if !ok {
				continue
			}
			info, ok := ep.Info().(*stack.TransportEndpointInfo)
			if ok && info.TransProto == header.TCPProtocolNumber && info.ID.RemotePort == 40000 {
				switch tcp.EndpointState(ep.State()) {
				case tcp.StateClose, tcp.StateError:
				default:
					return true
				}
			}
		}
		return false
	}
	return p, closed, edge, alive
}

func TestOrphanAtZeroWindowAborted(t *testing.T) {
	defer ethlink.SetOrphanTimeout(ethlink.SetOrphanTimeout(time.Second))

	p, closed, edge, alive := orphan(t)

	// Take the window's worth, then hold the window at zero and answer
	// everything the stack sends (its probes), until the stack lets go of
	// the connection.
	limit := time.After(ethlink.OrphanTimeout() + 15*time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	probes := 0
	for alive() {
		select {
		case s := <-p.segs:
			if end := s.seq.Add(seqnum.Size(s.payload)); s.payload > 0 && s.seq == p.rcvNxt && end.LessThanEq(edge) {
				p.rcvNxt = end
			} else {
				probes++
			}
			p.send(header.TCPFields{SeqNum: uint32(p.sndNxt), AckNum: uint32(p.rcvNxt), Flags: header.TCPFlagAck, WindowSize: 0}, nil, nil)
		case <-tick.C:
		case <-limit:
			t.Fatalf("the closed conn is still alive %v after Close, with the host's window at zero (%d probes answered)", time.Since(closed).Round(time.Second), probes)
		}
	}
	t.Logf("let go %v after Close (%d probes answered)", time.Since(closed).Round(100*time.Millisecond), probes)
}

// TestOrphanSlowReaderKept: a closed conn whose peer keeps taking data,
// however slowly, is not cut by the user timeout: it counts from the last
// time the window opened.
func TestOrphanSlowReaderKept(t *testing.T) {
	defer ethlink.SetOrphanTimeout(ethlink.SetOrphanTimeout(2 * time.Second))

	p, closed, _, alive := orphan(t)
	// Every 200 ms, open the window for one segment.
	open := time.NewTicker(200 * time.Millisecond)
	defer open.Stop()
	for time.Since(closed) < 2*ethlink.OrphanTimeout() {
		if !alive() {
			t.Fatalf("the closed conn was dropped %v after Close while its peer kept taking data", time.Since(closed).Round(100*time.Millisecond))
		}
		win := uint16(0)
		select {
		case s := <-p.segs:
			if s.payload > 0 && s.seq == p.rcvNxt {
				p.rcvNxt = s.seq.Add(seqnum.Size(s.payload))
			}
		case <-open.C:
			win = 536
		}
		p.send(header.TCPFields{SeqNum: uint32(p.sndNxt), AckNum: uint32(p.rcvNxt), Flags: header.TCPFlagAck, WindowSize: win}, nil, nil)
	}
}
