package proxy

import "time"

// Moving a connection's deadline costs a runtime timer update
// (runtime_pollSetDeadline), and a forwarded request used to move six of
// them. Per-request deadlines are therefore moved lazily: a deadline that
// is already set is kept while it is at most deadlineSlack of the timeout
// earlier than asked for. Long timeouts (seconds) thus hold to within an
// eighth, and a busy keep-alive connection moves each deadline about once
// per eighth of its timeout instead of once per request.
const deadlineSlack = 8 // slack = timeout / deadlineSlack

// lazyDeadline remembers the deadline last set on one direction of a
// connection. The zero value knows nothing, so the next set goes through.
// It must only be used by the goroutine that owns that direction of the
// connection; whoever moves the deadline behind its back calls forget.
type lazyDeadline struct {
	t     time.Time
	known bool
}

// set sets the deadline to t through setFn unless the deadline already set
// is no later than t and less than slack earlier.
func (l *lazyDeadline) set(setFn func(time.Time) error, t time.Time, slack time.Duration) {
	if l.known {
		if t.IsZero() {
			if l.t.IsZero() {
				return
			}
		} else if !l.t.IsZero() && !l.t.After(t) && t.Sub(l.t) < slack {
			return
		}
	}
	_ = setFn(t)
	l.t, l.known = t, true
}

func (l *lazyDeadline) forget() { l.known = false }

// upReader sits between an upstream connection and its bufio.Reader. While
// an exchange waits on the upstream (ex set), a read that times out before
// the exchange's own deadline (end) — because the lazily kept deadline was
// earlier, or because it was the clientCheckInterval poll — checks that the
// client is still there (Serve), moves the deadline and reads again, so
// that the polling and the lazy deadlines never fail a read that is within
// UpstreamTimeout.
type upReader struct {
	uc  *upConn
	ex  *exchange // the exchange waiting on the upstream; nil: plain reads
	end time.Time // when that wait times out; zero: never

	// Reads since the response began (the exchange resets them), and whether its
	// ACK was hurried (quickAck).
	reads int
	acked bool
	// full: the last read filled its buffer, so the socket may hold more
	// (see upConn.drained).
	full bool
}

func (r *upReader) Read(p []byte) (int, error) {
	if r.reads > 0 && !r.acked {
		// Part of the response is in and more is wanted: see quickAck.
		r.acked = true
		r.uc.quickAck()
	}
	r.reads++
	n, err := r.uc.conn.Read(p)
	for n == 0 && err != nil && r.ex != nil && isTimeout(err) {
		ex, uc := r.ex, r.uc
		if uc.aborted.Load() || ex.ctx.Err() != nil {
			return n, err
		}
		now := time.Now()
		if !r.end.IsZero() && !now.Before(r.end) {
			return n, err
		}
		if ex.watch && !ex.cs.alive() {
			return 0, errClientGone
		}
		dl := ex.pollDeadline(now, r.end)
		_ = uc.conn.SetReadDeadline(dl)
		uc.rdl = lazyDeadline{t: dl, known: true}
		n, err = uc.conn.Read(p)
	}
	r.full = n == len(p)
	return n, err
}

// pollDeadline is the read deadline for a wait on the upstream that ends at
// end: end itself, or the next client check when Serve polls the client.
func (ex *exchange) pollDeadline(now, end time.Time) time.Time {
	if iv := ex.p.clientCheck; ex.watch && (end.IsZero() || end.Sub(now) > iv) {
		return now.Add(iv)
	}
	return end
}

// armRead prepares uc for a wait on the upstream by ex that may last until
// end, moving the read deadline only if the one set is past the wait's
// deadline (or the next client check) or would expire soon.
func (uc *upConn) armRead(ex *exchange, now, end time.Time) {
	uc.rd.ex, uc.rd.end = ex, end
	want := ex.pollDeadline(now, end)
	l := &uc.rdl
	if l.known && !want.IsZero() && !l.t.IsZero() && !l.t.After(want) {
		// Any deadline before want is correct (upReader reads again);
		// keep it unless it is near.
		ahead := want.Sub(now) / deadlineSlack
		if ex.watch {
			ahead = ex.p.clientCheck / 4
		}
		if l.t.Sub(now) >= ahead {
			return
		}
	}
	if l.known && want.IsZero() && l.t.IsZero() {
		return
	}
	_ = uc.conn.SetReadDeadline(want)
	uc.rdl = lazyDeadline{t: want, known: true}
}

// disarm ends the exchange's hold on uc's reads.
func (uc *upConn) disarm() { uc.rd.ex, uc.rd.end = nil, time.Time{} }
