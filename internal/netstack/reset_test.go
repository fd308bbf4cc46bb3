package netstack

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestAcceptAfterReset: a connection that the peer resets after the
// handshake, before the app calls Accept, must come out of Accept with its
// addresses (gonet asks the endpoint, which forgets its peer once reset, and
// returns a nil RemoteAddr, on which callers' RemoteAddr().String()
// panics).
func TestAcceptAfterReset(t *testing.T) {
	n := newRawNet(t)
	ln, err := n.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := newRawPeer(t, n)

	const iss = 5000
	p.send(header.TCPFields{SeqNum: iss, Flags: header.TCPFlagSyn, WindowSize: 65535}, nil, nil)
	synAck := p.next(func(s rawSeg) bool { return s.flags.Contains(header.TCPFlagSyn | header.TCPFlagAck) })
	p.sndNxt, p.rcvNxt = iss+1, synAck.seq+1
	data := []byte("hello")
	p.send(header.TCPFields{SeqNum: uint32(p.sndNxt), AckNum: uint32(p.rcvNxt), Flags: header.TCPFlagAck | header.TCPFlagPsh, WindowSize: 65535}, nil, data)
	p.sndNxt = p.sndNxt.Add(5)
	p.next(func(s rawSeg) bool { return s.ack == p.sndNxt })
	p.send(header.TCPFields{SeqNum: uint32(p.sndNxt), AckNum: uint32(p.rcvNxt), Flags: header.TCPFlagRst | header.TCPFlagAck}, nil, nil)
	// Wait until the stack has handled the RST (the endpoint left
	// ESTABLISHED for CLOSED), so that Accept gets a reset connection.
	for deadline := time.Now().Add(5 * time.Second); n.stack.Stats().TCP.EstablishedResets.Value() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the stack did not handle the RST")
		}
	}

	type result struct {
		c   net.Conn
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		got <- result{c, err}
	}()
	var c net.Conn
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("Accept: %v", r.err)
		}
		c = r.c
	case <-time.After(2 * time.Second):
		// Dropping the reset connection at Accept would be fine too.
		t.Log("Accept skipped the reset connection")
		_ = ln.Close()
		<-got
		return
	}
	defer c.Close()
	ra, la := c.RemoteAddr(), c.LocalAddr()
	if ra == nil || la == nil {
		t.Fatalf("RemoteAddr %v, LocalAddr %v after a reset before Accept; want both set", ra, la)
	}
	if got, want := ra.(*net.TCPAddr).AddrPort(), netip.AddrPortFrom(netip.AddrFrom4(gwIP), 40000); got != want {
		t.Errorf("RemoteAddr = %v, want %v", got, want)
	}
	if got, want := la.(*net.TCPAddr).AddrPort(), netip.AddrPortFrom(netip.AddrFrom4(selfIP), 7); got != want {
		t.Errorf("LocalAddr = %v, want %v", got, want)
	}
	t.Logf("RemoteAddr().String() = %s", ra.String())
}
