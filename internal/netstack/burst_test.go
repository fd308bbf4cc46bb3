package netstack

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestListenBurstNotReset: more clients than the listen backlog connect at
// once, each sending a request and half-closing, while the app has not
// caught up with Accept yet. Past the backlog the listener answers with SYN
// cookies; a cookie's handshake ACK that finds the accept queue full is
// dropped, and the client's next segment (its FIN, or more data) no longer
// carries a valid cookie. gVisor answered it with a reset, so that clients
// of an app that was merely behind lost their connections; now the
// segment is dropped, as its ACK was, and the connection completes when the
// client retransmits. Every client must get its answer.
func TestListenBurstNotReset(t *testing.T) {
	p := newPair(t, wireDirect, nil)
	ln, err := p.b.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	const clients = 300
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var (
		wg     sync.WaitGroup
		dialed sync.WaitGroup
		failed atomic.Int64
		errs   = make(chan error, clients)
	)
	for i := range clients {
		wg.Add(1)
		dialed.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.a.Dial(ctx, "tcp", "192.168.127.2:80")
			dialed.Done()
			if err != nil {
				failed.Add(1)
				errs <- err
				return
			}
			defer c.Close()
			msg := fmt.Sprintf("request %d", i)
			_ = c.SetDeadline(time.Now().Add(50 * time.Second))
			if _, err := c.Write([]byte(msg)); err != nil {
				failed.Add(1)
				errs <- err
				return
			}
			if err := c.(*tcpConn).CloseWrite(); err != nil {
				failed.Add(1)
				errs <- err
				return
			}
			b, err := io.ReadAll(c)
			if err != nil || string(b) != msg {
				failed.Add(1)
				errs <- fmt.Errorf("client %d read %q, %v", i, b, err)
			}
		}()
	}
	// The app catches up only once the burst has arrived: every dial has
	// returned, or the listener has been answering with cookies for half a
	// second (dials past the backlog may wait for SYN retransmissions). On
	// a loaded machine the goroutines' dials straggle: the wait is bounded
	// by the cookies, not by a fixed time that they may not reach.
	waited := make(chan struct{})
	go func() { dialed.Wait(); close(waited) }()
	var firstCookie time.Time
	for giveUp := time.Now().Add(20 * time.Second); time.Now().Before(giveUp); {
		select {
		case <-waited:
		case <-time.After(10 * time.Millisecond):
			if firstCookie.IsZero() && p.b.stack.Stats().TCP.ListenOverflowSynCookieSent.Value() > 0 {
				firstCookie = time.Now()
			}
			if firstCookie.IsZero() || time.Since(firstCookie) < 500*time.Millisecond {
				continue
			}
		}
		break
	}
	var served sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			served.Add(1)
			go func() {
				defer served.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	wg.Wait()
	close(errs)
	s := p.b.stack.Stats().TCP
	if n := failed.Load(); n > 0 {
		for err := range errs {
			t.Log(err)
			break
		}
		t.Fatalf("%d of %d clients failed; cookies sent %d, invalid cookies %d, handshake ACKs dropped %d", n, clients,
			s.ListenOverflowSynCookieSent.Value(), s.ListenOverflowInvalidSynCookieRcvd.Value(), s.ListenOverflowAckDrop.Value())
	}
	if s.ListenOverflowSynCookieSent.Value() == 0 {
		t.Fatal("the burst never overflowed the backlog (no SYN cookie sent): the test proves nothing")
	}
	t.Logf("cookies sent %d, invalid cookies %d, listener resets held back %d",
		s.ListenOverflowSynCookieSent.Value(), s.ListenOverflowInvalidSynCookieRcvd.Value(), p.b.ep.rst.held.Load())
}
