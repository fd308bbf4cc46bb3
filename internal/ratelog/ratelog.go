// Package ratelog bounds warnings that the enclave's programs or the host
// can cause as often as they like (refusals by the egress filter, failed
// exchanges of the DNS proxy): at most one a second reaches the log, with
// the count of those not logged since the last.
package ratelog

import (
	"log/slog"
	"sync"
	"time"
)

// Limiter logs at most one warning a second. The zero value is ready;
// Now, if set, is its clock (tests set it). Safe for concurrent use.
type Limiter struct {
	Now func() time.Time

	mu      sync.Mutex
	last    time.Time
	skipped uint64
}

// Warn logs msg with args to log unless a warning was logged less than a
// second ago; the first one logged after some were not carries their
// count (not_logged_since_last).
func (l *Limiter) Warn(log *slog.Logger, msg string, args ...any) {
	now := time.Now()
	if l.Now != nil {
		now = l.Now()
	}
	l.mu.Lock()
	if !l.last.IsZero() && now.Sub(l.last) < time.Second {
		l.skipped++
		l.mu.Unlock()
		return
	}
	l.last = now
	n := l.skipped
	l.skipped = 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "not_logged_since_last", n)
	}
	log.Warn(msg, args...)
}
