package host

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/quenchnet/quench/logship"
)

// DefaultMaxEnclaveLogStreams is the default of Config.MaxEnclaveLogStreams.
const DefaultMaxEnclaveLogStreams = 64

// DefaultEnclaveLogRate is the default of Config.EnclaveLogRate.
const DefaultEnclaveLogRate = 1000

// maxLogStreamsPerPeer: an enclave opens one log stream; a second stands
// while it reconnects before the host has seen the first one end.
const maxLogStreamsPerPeer = 4

// logAckTimeout bounds each acknowledgement write to an enclave's log
// stream: an enclave that stops reading them loses its stream.
const logAckTimeout = 30 * time.Second

// enclaveLogStats are ServeEnclaveLogs's counters.
type enclaveLogStats struct {
	streams     flowLimit[string] // open log streams, per peer (peerID)
	accepted    atomic.Uint64
	lines       atomic.Uint64
	bytes       atomic.Uint64 // line bytes
	errors      atomic.Uint64 // streams ended by a bad header or record, or a failed read
	delayed     atomic.Uint64 // lines held back by Config.EnclaveLogRate
	lastErrWarn atomic.Int64

	rateMu sync.Mutex
	rates  map[string]*logLimiter // guarded by rateMu; per peer with streams open
}

// logLimiter is one enclave's rate of log lines, shared by its streams.
type logLimiter struct {
	refs int // guarded by enclaveLogStats.rateMu
	*rate.Limiter
}

// limiter returns peer's limiter (lines a second, a second's worth of
// burst, full at first); release it with releaseLimiter.
func (s *enclaveLogStats) limiter(peer string, perSecond int) *logLimiter {
	s.rateMu.Lock()
	defer s.rateMu.Unlock()
	if s.rates == nil {
		s.rates = map[string]*logLimiter{}
	}
	l := s.rates[peer]
	if l == nil {
		// The burst holds the heaviest line (lineCost of MaxLine).
		l = &logLimiter{Limiter: rate.NewLimiter(rate.Limit(perSecond), max(perSecond, lineCost(logship.MaxLine)))}
		s.rates[peer] = l
	}
	l.refs++
	return l
}

func (s *enclaveLogStats) releaseLimiter(peer string) {
	s.rateMu.Lock()
	defer s.rateMu.Unlock()
	if l := s.rates[peer]; l != nil {
		if l.refs--; l.refs <= 0 {
			delete(s.rates, peer)
		}
	}
}

// lineCost is what a line of size bytes takes from its enclave's rate: 1,
// and 1 per KiB (long lines, quoted by slog up to four times their size,
// weigh on the host's log as several).
func lineCost(size int) int { return 1 + size>>10 }

// EnclaveLogStats are the counters of ServeEnclaveLogs.
type EnclaveLogStats struct {
	Streams  uint64 // log streams open
	Accepted uint64 // log streams accepted
	Refused  uint64 // log streams closed at once at MaxEnclaveLogStreams, or 4 from one enclave
	Lines    uint64 // lines received
	Bytes    uint64 // bytes of lines received
	Errors   uint64 // streams ended by a malformed stream or a failed read or acknowledgement
	Delayed  uint64 // lines held back by Config.EnclaveLogRate
}

// EnclaveLogStats returns the counters of ServeEnclaveLogs.
func (h *Host) EnclaveLogStats() EnclaveLogStats {
	s := &h.logStats
	return EnclaveLogStats{
		Streams:  uint64(s.streams.live()),
		Accepted: s.accepted.Load(),
		Refused:  s.streams.refused.Load(),
		Lines:    s.lines.Load(),
		Bytes:    s.bytes.Load(),
		Errors:   s.errors.Load(),
		Delayed:  s.delayed.Load(),
	}
}

// ServeEnclaveLogs accepts enclaves' log streams on ln (quench-host
// listens on vsock://:1025 with -enclave-logs; see package logship) and
// gives each line to Config.EnclaveLog, with its enclave (a VSOCK CID:
// "vsock:16") and stream name ("stdout", "stderr", "quench"), until ln
// fails or Close is called. Streams beyond Config.MaxEnclaveLogStreams, or
// 4 from one enclave, are closed at once and counted; a malformed stream
// is closed and counted (a warning at most once a second). Like Serve, it
// may be called for several listeners, closes ln before returning and
// returns nil after Close.
func (h *Host) ServeEnclaveLogs(ln net.Listener) error {
	addr := ln.Addr().String()
	return h.acceptOn(ln, "ServeEnclaveLogs", "enclave logs: ", func() error {
		h.log.Info("enclave logs: accepting log streams", "addr", addr)
		return nil
	}, nil, func(c net.Conn) bool {
		peer := peerID(c)
		if !h.logStats.streams.acquire(peer) {
			h.warnDial("enclave logs: too many log streams; stream closed", errLogLimit, "enclave", peer)
			_ = c.Close()
			return true
		}
		h.logStats.accepted.Add(1)
		if !h.goTracked(func() { h.serveLogStream(c, peer) }) {
			h.logStats.streams.release(peer)
			_ = c.Close()
			return false
		}
		return true
	})
}

var errLogLimit = errors.New("too many log streams (Config.MaxEnclaveLogStreams, or 4 from one enclave)")

func (h *Host) serveLogStream(c net.Conn, peer string) {
	defer h.logStats.streams.release(peer)
	if !h.track(c) {
		_ = c.Close()
		return
	}
	defer h.untrack(c)
	defer c.Close()
	h.log.Debug("enclave logs: stream opened", "enclave", peer)
	var lim *logLimiter
	if perSecond := h.cfg.EnclaveLogRate; perSecond > 0 {
		lim = h.logStats.limiter(peer, perSecond)
		defer h.logStats.releaseLimiter(peer)
	}
	err := logship.Receive(ackDeadline{c}, func(stream string, line []byte) {
		if h.ctx.Err() != nil {
			// Shutting down: what was read ahead is not written (past the
			// rate) nor acknowledged (closed), so the enclave sends it to
			// the next host, once.
			_ = c.Close()
			return
		}
		if lim != nil {
			// Past its rate, the enclave's streams are read no faster:
			// its Shipper buffers, then drops and says so.
			r := lim.ReserveN(time.Now(), lineCost(len(line)))
			if d := r.Delay(); d > 0 {
				h.logStats.delayed.Add(1)
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-h.ctx.Done():
					t.Stop()
					r.Cancel()
					_ = c.Close()
					return
				}
			}
		}
		h.logStats.lines.Add(1)
		h.logStats.bytes.Add(uint64(len(line)))
		h.cfg.EnclaveLog(peer, stream, line)
	})
	if err != nil && h.ctx.Err() == nil {
		h.logStats.errors.Add(1)
		now := time.Now().UnixNano()
		last := h.logStats.lastErrWarn.Load()
		msg, args := "enclave logs: stream ended", []any{"enclave", peer, "err", err}
		if now-last >= int64(time.Second) && h.logStats.lastErrWarn.CompareAndSwap(last, now) {
			h.log.Warn(msg, args...)
		} else {
			h.log.Debug(msg, args...)
		}
		return
	}
	h.log.Debug("enclave logs: stream closed", "enclave", peer)
}

// ackDeadline bounds each acknowledgement write by logAckTimeout.
type ackDeadline struct{ net.Conn }

func (a ackDeadline) Write(p []byte) (int, error) {
	_ = a.SetWriteDeadline(time.Now().Add(logAckTimeout))
	n, err := a.Conn.Write(p)
	if err != nil {
		err = fmt.Errorf("within %s: %w", logAckTimeout, err)
	}
	return n, err
}
