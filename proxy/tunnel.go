package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// tunnel is an upgraded connection pair being relayed.
type tunnel struct {
	client, upstream net.Conn
	once             sync.Once
	last             atomic.Int64 // unix nanoseconds of the last byte either way
}

func (t *tunnel) close() {
	t.once.Do(func() {
		_ = t.client.Close()
		_ = t.upstream.Close()
	})
}

// addTunnel registers t so that Close can end it. It reports false if the
// Proxy is closed.
func (p *Proxy) addTunnel(t *tunnel) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.tunnels[t] = struct{}{}
	p.wg.Add(1)
	return true
}

// reserveUpgrade takes one of Config.MaxTunnels for an upgrade request
// about to be forwarded, or reports false when none is left. The caller
// gives it back with releaseUpgrade once the request, and the tunnel if it
// became one, has ended.
func (p *Proxy) reserveUpgrade() bool {
	if p.cfg.MaxTunnels < 0 {
		return true
	}
	if p.upgrades.Add(1) > int64(p.cfg.MaxTunnels) {
		p.upgrades.Add(-1)
		return false
	}
	return true
}

func (p *Proxy) releaseUpgrade() {
	if p.cfg.MaxTunnels >= 0 {
		p.upgrades.Add(-1)
	}
}

func (p *Proxy) removeTunnel(t *tunnel) {
	p.mu.Lock()
	delete(p.tunnels, t)
	p.mu.Unlock()
	p.wg.Done()
}

// tunnel completes a protocol switch (101) and relays bytes both ways until
// both sides are done. It reports whether it took ownership of uc.
func (ex *exchange) tunnel(uc *upConn, resp *http.Response, upgrade string) bool {
	p, r := ex.p, ex.r
	if got := resp.Header["Upgrade"]; len(got) == 0 || !strings.EqualFold(got[0], upgrade) {
		ex.fail(fmt.Errorf("proxy: upstream switched to protocol %q, client asked for %q", strings.Join(got, ","), upgrade))
		return false
	}
	cconn, cbr, cbw, err := ex.cs.hijack()
	if err != nil {
		ex.fail(fmt.Errorf("proxy: take over client connection for upgrade: %w", err))
		return false
	}
	// From here on uc and cconn are ours to close.
	p.pool.release()
	t := &tunnel{client: cconn, upstream: uc.conn}
	defer t.close()
	_ = cconn.SetDeadline(time.Time{})
	uc.disarm()
	_ = uc.conn.SetDeadline(time.Time{})

	bw := cbw
	bw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	var tokens connTokens
	if c := resp.Header["Connection"]; len(c) > 0 {
		tokens.parse(c)
	}
	for k, vv := range resp.Header {
		if isHopHeader(k) || ((tokens.n > 0 || len(tokens.more) > 0) && tokens.has(k)) {
			continue
		}
		for _, v := range vv {
			writeHeaderLine(bw, k, v)
		}
	}
	bw.WriteString("Connection: Upgrade\r\nUpgrade: ")
	bw.WriteString(resp.Header["Upgrade"][0])
	bw.WriteString("\r\n\r\n")
	if err := bw.Flush(); err != nil {
		ex.code = 499
		return true
	}
	ex.code = http.StatusSwitchingProtocols
	ex.release() // an upgraded connection no longer counts as in flight

	if !p.addTunnel(t) {
		return true
	}
	defer p.removeTunnel(t)

	if d := p.cfg.TunnelIdleTimeout; d > 0 {
		t.last.Store(time.Now().UnixNano())
		_ = cconn.SetReadDeadline(time.Now().Add(d))
		_ = uc.conn.SetReadDeadline(time.Now().Add(d))
	}
	var wg sync.WaitGroup
	var upErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		upErr = p.pipe(t, uc.conn, cconn, cbr) // client to upstream
	}()
	downErr := p.pipe(t, cconn, uc.conn, uc.br) // upstream to client
	wg.Wait()
	if err := errors.Join(upErr, downErr); err != nil {
		p.log.LogAttrs(ex.ctx, slog.LevelDebug, "proxy: upgraded connection ended",
			slog.String("uri", r.RequestURI), slog.Any("err", err))
	}
	return true
}

// pipe copies src (reading srcConn) to dst until src ends, then
// half-closes dst, or closes the whole tunnel if dst cannot be half-closed,
// on any error, or when no byte went either way for TunnelIdleTimeout. It
// reads into a small buffer while traffic is light and a BufferSize one
// while reads fill the small one.
func (p *Proxy) pipe(t *tunnel, dst, srcConn net.Conn, src *bufio.Reader) error {
	small := p.smallBufs.Get().(*[]byte)
	defer p.smallBufs.Put(small)
	var big *[]byte
	defer func() {
		if big != nil {
			p.putBuf(big)
		}
	}()
	buf := *small
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if p.cfg.TunnelIdleTimeout > 0 {
				t.last.Store(time.Now().UnixNano())
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				t.close()
				return werr
			}
			switch {
			case big == nil && n == len(buf):
				big = p.getBuf()
				buf = *big
			case big != nil && n < smallBufSize:
				p.putBuf(big)
				big = nil
				buf = *small
			}
		}
		if err == io.EOF {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
				return nil
			}
			t.close()
			return nil
		}
		if err != nil && isTimeout(err) && p.cfg.TunnelIdleTimeout > 0 {
			// Idle for a while this way; the other way may not be.
			if last := time.Unix(0, t.last.Load()); time.Since(last) < p.cfg.TunnelIdleTimeout {
				_ = srcConn.SetReadDeadline(last.Add(p.cfg.TunnelIdleTimeout))
				continue
			}
			t.close()
			return fmt.Errorf("proxy: upgraded connection idle for %v: %w", p.cfg.TunnelIdleTimeout, err)
		}
		if err != nil {
			t.close()
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
	}
}
