package enclave

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/quenchnet/quench/internal/dnswire"
	"github.com/quenchnet/quench/internal/egressfw"
	"github.com/quenchnet/quench/internal/ratelog"
)

// The DNS proxy: in TAP mode with an egress policy, the server that the
// enclave's programs ask (resolv.conf names it), on port 53 of a loopback
// address. It passes their questions on to the host's DNS servers: over
// UDP as any program's datagrams, which the egress filter checks name by
// name and whose answers it learns from; over TCP on its own connections,
// which the filter cannot inspect and refuses to other programs, checking
// each whole message itself against the same rules (egressfw.Filter.Query
// and Answer). Without it a resolver whose answer did not fit in a
// datagram (truncated: over 512 bytes without EDNS, glibc's 1200 with it;
// musl and c-ares retry over TCP too) had no way to get it.

// DNS proxy limits.
const (
	// dnsProxyQueries bounds the UDP questions being passed on at once;
	// past it, new ones are dropped (the resolver retries).
	dnsProxyQueries = 256
	// dnsProxyConns bounds the TCP connections served at once; past it,
	// new ones are closed at once.
	dnsProxyConns = 64
	// dnsProxyTimeout bounds one exchange with the host's DNS (each server
	// in turn) and a TCP client's wait between questions.
	dnsProxyTimeout = 5 * time.Second
)

// errDNSAnswerRefused: the egress filter refused a DNS answer from the
// host (it led an allowed name into the enclave, or could not be read).
var errDNSAnswerRefused = errors.New("the DNS answer was refused by the egress policy")

// dnsProxy serves DNS on a loopback address in the enclave.
type dnsProxy struct {
	f       *egressfw.Filter
	servers []netip.AddrPort // the host's DNS servers
	udp     *net.UDPConn
	tcp     *net.TCPListener
	log     *slog.Logger
	timeout time.Duration // dnsProxyTimeout; tests shorten it

	queries chan struct{} // UDP questions in flight
	conns   chan struct{} // TCP connections served

	ctx    context.Context // cancelled by close: dials in progress end
	cancel context.CancelFunc

	mu     sync.Mutex
	open   map[net.Conn]struct{} // guarded by mu: TCP clients and connections to servers, closed by close
	closed bool                  // guarded by mu

	warns   ratelog.Limiter // see warn
	dropped atomic.Uint64   // UDP questions dropped (dnsProxyQueries), TCP connections closed (dnsProxyConns)
	wg      sync.WaitGroup
}

// startDNSProxy listens on addr (UDP and TCP) and serves until close.
func startDNSProxy(addr netip.AddrPort, servers []netip.AddrPort, f *egressfw.Filter, log *slog.Logger) (*dnsProxy, error) {
	p, err := listenDNSProxy(addr, servers, f, log)
	if err != nil {
		return nil, err
	}
	p.start()
	return p, nil
}

// listenDNSProxy is startDNSProxy without serving yet (start): tests set
// the timeout in between, before any goroutine reads it.
func listenDNSProxy(addr netip.AddrPort, servers []netip.AddrPort, f *egressfw.Filter, log *slog.Logger) (*dnsProxy, error) {
	u, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("DNS proxy: %w", err)
	}
	t, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(addr))
	if err != nil {
		_ = u.Close()
		return nil, fmt.Errorf("DNS proxy: %w", err)
	}
	p := &dnsProxy{
		f: f, servers: servers, udp: u, tcp: t, log: log, timeout: dnsProxyTimeout,
		queries: make(chan struct{}, dnsProxyQueries),
		conns:   make(chan struct{}, dnsProxyConns),
		open:    map[net.Conn]struct{}{},
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p, nil
}

// start serves the listeners of listenDNSProxy until close.
func (p *dnsProxy) start() {
	p.wg.Add(2)
	go p.serveUDP()
	go p.serveTCP()
}

// close stops the proxy and waits for its goroutines (each bounded by the
// proxy's timeout).
func (p *dnsProxy) close() {
	p.cancel()
	p.mu.Lock()
	p.closed = true
	for c := range p.open {
		_ = c.Close()
	}
	p.mu.Unlock()
	_ = p.udp.Close()
	_ = p.tcp.Close()
	p.wg.Wait()
}

func (p *dnsProxy) serveUDP() {
	defer p.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := p.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // an ICMP error from an earlier reply, say
		}
		if n < dnswire.MinMessage {
			continue
		}
		answer, err := p.f.Query(buf[:n])
		if err != nil {
			continue // not a query: dropped
		}
		if answer != nil { // a name the policy does not allow: NXDOMAIN
			_, _ = p.udp.WriteToUDPAddrPort(answer, from)
			continue
		}
		select {
		case p.queries <- struct{}{}:
		default:
			p.dropped.Add(1)
			p.warn("DNS proxy: busy; question dropped", "in_flight", dnsProxyQueries)
			continue
		}
		msg := append([]byte(nil), buf[:n]...)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer func() { <-p.queries }()
			if answer := p.exchangeUDP(msg); answer != nil {
				_, _ = p.udp.WriteToUDPAddrPort(answer, from)
			}
		}()
	}
}

// exchangeUDP passes the question msg, which Query let through, on to the
// servers in turn over UDP and returns the first answer with its ID, or
// nil. The datagrams go out through the TAP device, where the egress
// filter checks the question again and the answer (and learns from it), as
// for any program's.
func (p *dnsProxy) exchangeUDP(msg []byte) []byte {
	buf := make([]byte, 65535)
	for _, srv := range p.servers {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(srv))
		if err != nil {
			continue
		}
		if !p.track(c) {
			return nil
		}
		answer := p.readUDPAnswer(c, msg, buf)
		p.untrack(c)
		if answer != nil || p.ctx.Err() != nil {
			return answer
		}
	}
	return nil
}

func (p *dnsProxy) readUDPAnswer(c *net.UDPConn, msg, buf []byte) []byte {
	_ = c.SetDeadline(time.Now().Add(p.timeout))
	if _, err := c.Write(msg); err != nil {
		return nil
	}
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil // timed out, refused (ICMP) or closed
		}
		if dnswire.IsAnswerTo(buf[:n], msg) {
			return append([]byte(nil), buf[:n]...)
		}
	}
}

// track records c, to be closed by close; false (c closed) if the proxy
// is closed already.
func (p *dnsProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.open[c] = struct{}{}
	return true
}

// untrack closes c and forgets it.
func (p *dnsProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.open, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *dnsProxy) serveTCP() {
	defer p.wg.Done()
	for {
		c, err := p.tcp.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // out of descriptors, say
			continue
		}
		select {
		case p.conns <- struct{}{}:
		default:
			p.dropped.Add(1)
			p.warn("DNS proxy: busy; TCP connection closed", "connections", dnsProxyConns)
			_ = c.Close()
			continue
		}
		if !p.track(c) {
			<-p.conns
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer func() { <-p.conns }()
			defer p.untrack(c)
			p.serveConn(c)
		}()
	}
}

// serveConn answers the questions of one TCP client (RFC 7766: each
// message after its length in 2 bytes), one at a time, until it closes,
// idles for the timeout or sends something that is not a DNS query.
func (p *dnsProxy) serveConn(c net.Conn) {
	var up net.Conn // to the host's DNS, dialled at the first question that needs it
	defer func() {
		if up != nil {
			p.untrack(up)
		}
	}()
	for {
		_ = c.SetReadDeadline(time.Now().Add(p.timeout))
		msg, err := dnswire.ReadMessage(c)
		if err != nil {
			return
		}
		answer, err := p.f.Query(msg)
		if err != nil {
			p.log.Debug("DNS proxy: not a DNS query; connection closed", "err", err)
			return
		}
		if answer == nil {
			// The EDNS size is for UDP; stock gvproxy's DNS would
			// truncate its TCP answer to it (package dnswire).
			answer, err = p.exchangeTCP(&up, dnswire.WidenEDNS(msg))
			if err != nil {
				p.warn("DNS proxy: no answer over TCP; answering SERVFAIL", "err", err)
				if answer, err = servFail(msg); err != nil {
					return
				}
			}
		}
		_ = c.SetWriteDeadline(time.Now().Add(p.timeout))
		if err := dnswire.WriteMessage(c, answer); err != nil {
			return
		}
	}
}

// exchangeTCP sends the question msg to the host's DNS over *up, dialling
// it if nil (and again once if the server had closed it), and returns the
// answer once the egress filter has checked it.
func (p *dnsProxy) exchangeTCP(up *net.Conn, msg []byte) ([]byte, error) {
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		fresh := *up == nil
		if fresh {
			c, err := p.dialServer()
			if err != nil {
				return nil, err
			}
			if !p.track(c) {
				return nil, net.ErrClosed
			}
			*up = c
		}
		answer, err := p.roundTrip(*up, msg)
		if err == nil {
			if !p.f.Answer(answer) {
				return nil, errDNSAnswerRefused
			}
			return answer, nil
		}
		p.untrack(*up)
		*up = nil
		lastErr = err
		if fresh {
			break // a new connection failed: do not retry
		}
	}
	return nil, lastErr
}

func (p *dnsProxy) roundTrip(c net.Conn, msg []byte) ([]byte, error) {
	_ = c.SetDeadline(time.Now().Add(p.timeout))
	if err := dnswire.WriteMessage(c, msg); err != nil {
		return nil, err
	}
	for {
		answer, err := dnswire.ReadMessage(c)
		if err != nil {
			return nil, err
		}
		if dnswire.IsAnswerTo(answer, msg) {
			return answer, nil
		}
		// An answer to another question: not ours (the proxy sends one
		// at a time), skipped.
	}
}

// dialServer connects to the first of the host's DNS servers that
// answers. Each connection's socket is bound to its port before it
// connects, so the egress filter lets exactly it through (PermitFrom): no
// rule allows DNS over TCP to these servers, and a program that connects
// there in the same moment must still be refused.
func (p *dnsProxy) dialServer() (net.Conn, error) {
	var firstErr error
	for _, srv := range p.servers {
		d := net.Dialer{Timeout: p.timeout, Control: permitOwn(p.f, "tcp", srv)}
		c, err := d.DialContext(p.ctx, "tcp4", srv.String())
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = errors.New("no DNS server")
	}
	return nil, firstErr
}

// warn logs msg at most once a second, with the count of those not
// logged: a program can make exchanges fail as often as it asks (a name of
// its own that resolves to 127.0.0.1, under a rule such as *), and the log
// is the egress filter's too, which bounds its own warnings so.
func (p *dnsProxy) warn(msg string, args ...any) { p.warns.Warn(p.log, msg, args...) }

// servFail returns a SERVFAIL answer to the query msg, with its questions.
func servFail(msg []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return nil, err
	}
	qs, err := p.AllQuestions()
	if err != nil {
		return nil, err
	}
	return dnswire.Reply(h, qs, dnsmessage.RCodeServerFailure)
}
