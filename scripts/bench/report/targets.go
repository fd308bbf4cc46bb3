package main

import "fmt"

// Status of a target on one run's data.
type Status int

const (
	// Info rows have no threshold.
	Info Status = iota
	Met
	Missed
	// NotMeasured: the run lacks the data.
	NotMeasured
)

func (s Status) String() string {
	return [...]string{"info", "met", "missed", "not measured"}[s]
}

// Target is one issue target evaluated on a run.
type Target struct {
	Issue    string
	Goal     string
	Measured string
	Status   Status
	// Detail is "by 12 %" for a miss, the margin for a met target.
	Detail string
}

// atLeast compares a ratio-like value v with its floor want.
func atLeast(v, want float64) (Status, string) {
	if !known(v) {
		return NotMeasured, ""
	}
	if v >= want {
		return Met, fmt.Sprintf("%+.0f %% margin", (v/want-1)*100)
	}
	return Missed, fmt.Sprintf("by %.0f %% (%.2f× of the %.2g× wanted)", (1-v/want)*100, v, want)
}

// atMost compares v with its ceiling limit (lower is better).
func atMost(v, limit float64) (Status, string) {
	if !known(v) || !known(limit) {
		return NotMeasured, ""
	}
	if v <= limit {
		if limit == 0 {
			return Met, ""
		}
		return Met, fmt.Sprintf("%.0f %% below", (1-v/limit)*100)
	}
	return Missed, fmt.Sprintf("by %.0f %% (%.3g over %.3g)", (v/limit-1)*100, v, limit)
}

func x(v float64) string {
	if !known(v) {
		return "–"
	}
	return fmt.Sprintf("%.2f×", v)
}

func ms(v float64) string {
	if !known(v) {
		return "–"
	}
	if v >= 100 {
		return fmt.Sprintf("%.0f ms", v)
	}
	return fmt.Sprintf("%.1f ms", v)
}

func num(v float64, digits int) string {
	if !known(v) {
		return "–"
	}
	return fmt.Sprintf("%.*f", digits, v)
}

// bulkDirs are the tunnel's bulk measurements and their labels.
var bulkDirs = []struct{ Name, Label string }{
	{"ingress", "host→enclave (published port)"},
	{"ingress_rev", "enclave→host (published port, -R)"},
	{"egress", "enclave→host (egress NAT)"},
	{"egress_rev", "host→enclave (egress NAT, -R)"},
	{"bulk", "one stream into a sink"},
}

// Targets evaluates every issue's targets on d.
func Targets(d *Data) []Target {
	var out []Target
	add := func(issue, goal, measured string, st Status, detail string) {
		if st == NotMeasured {
			measured = ""
		}
		out = append(out, Target{issue, goal, measured, st, detail})
	}

	// Issue 2: quench's published ports and egress against gvproxy +
	// gvforwarder. A published port is quench's best way to publish one:
	// the frame tunnel (quench:MTU) or, where measured, the ingress fast
	// path with an enclave-side forward (fastpath:MTU); the tunnel's own
	// figures follow as information when both were measured.
	const tn = "tunnel"
	qs, ps := d.withPrefix(tn, "quench:"), d.withPrefix(tn, "peer:")
	fs := d.withPrefix(tn, "fastpath:")
	pub := append(append([]string(nil), qs...), fs...)
	for _, dir := range bulkDirs[:4] {
		cands := qs
		if dir.Name == "ingress" || dir.Name == "ingress_rev" {
			cands = pub
		}
		qc, q := d.best(tn, cands, dir.Name, 0, fGbps, false)
		pc, p := d.best(tn, ps, dir.Name, 0, fGbps, false)
		r := ratio(q, p)
		st, det := atLeast(r, 2.5)
		add("2", "bulk "+dir.Label+" ≥ 2.5× the peer at its best MTU",
			fmt.Sprintf("%s: %s Gbit/s (%s) vs %s (%s)", x(r), num(q, 2), qc, num(p, 2), pc), st, det)
	}
	{
		qc, q := d.best(tn, pub, "http", 100, fRPS, false)
		pc, p := d.best(tn, ps, "http", 100, fRPS, false)
		r := ratio(q, p)
		st, det := atLeast(r, 2)
		add("2", "HTTP req/s at c = 100 ≥ 2× the peer's",
			fmt.Sprintf("%s: %s (%s) vs %s (%s)", x(r), num(q, 0), qc, num(p, 0), pc), st, det)
		qc, q = d.best(tn, pub, "http", 1000, fP99, true)
		pc, p = d.best(tn, ps, "http", 1000, fP99, true)
		st, det = atMost(q, p)
		add("2", "p99 at c = 1000 no worse than the peer's",
			fmt.Sprintf("%s (%s) vs %s (%s)", ms(q), qc, ms(p), pc), st, det)
	}
	if len(fs) > 0 && len(qs) > 0 {
		for _, dir := range bulkDirs[:2] {
			qc, q := d.best(tn, qs, dir.Name, 0, fGbps, false)
			_, p := d.best(tn, ps, dir.Name, 0, fGbps, false)
			add("2", "frame tunnel alone: bulk "+dir.Label,
				fmt.Sprintf("%s the peer: %s Gbit/s (%s)", x(ratio(q, p)), num(q, 2), qc), Info, "")
		}
		qc, q := d.best(tn, qs, "http", 100, fRPS, false)
		_, p := d.best(tn, ps, "http", 100, fRPS, false)
		add("2", "frame tunnel alone: HTTP req/s at c = 100",
			fmt.Sprintf("%s the peer: %s (%s)", x(ratio(q, p)), num(q, 0), qc), Info, "")
	}

	if fu := d.withPrefix(tn, "fastpath-unix:"); len(fu) > 0 {
		qc, q := d.best(tn, fu, "http", 100, fRPS, false)
		_, p := d.best(tn, ps, "http", 100, fRPS, false)
		add("2", "HTTP req/s at c = 100 with the app on a unix socket (the peer cannot)",
			fmt.Sprintf("%s the peer: %s (%s)", x(ratio(q, p)), num(q, 0), qc), Info, "")
	}

	// Issue 3: userspace mode, for information.
	const us = "userspace"
	if len(d.Configs[us]) > 0 {
		uc := d.withPrefix(us, "userspace:")
		tc, pc := d.withPrefix(us, "quench:"), d.withPrefix(us, "peer:")
		for _, dir := range bulkDirs[:2] {
			_, u := d.best(us, uc, dir.Name, 0, fGbps, false)
			_, t := d.best(us, tc, dir.Name, 0, fGbps, false)
			_, p := d.best(us, pc, dir.Name, 0, fGbps, false)
			st := Info
			if !known(u) {
				st = NotMeasured
			}
			add("3", "userspace bulk "+dir.Label+" (bulkcmd)",
				fmt.Sprintf("%s Gbit/s = %s TAP mode, %s the peer's best", num(u, 2), x(ratio(u, t)), x(ratio(u, p))), st, "")
		}
		_, u := d.best(us, uc, "http", 100, fRPS, false)
		_, p := d.best(us, pc, "http", 100, fRPS, false)
		st := Info
		if !known(u) {
			st = NotMeasured
		}
		add("3", "userspace HTTP req/s at c = 100",
			fmt.Sprintf("%s = %s direct, %s the peer's best", num(u, 0), x(ratio(u, d.val(us, "direct", "http", 100, fRPS))), x(ratio(u, p))), st, "")
	}

	// Issue 4: the reverse proxy against nginx and nitriding's tuning.
	const px = "proxy"
	concs := d.concs(px, "http")
	if len(concs) == 0 {
		add("4", "proxy: ratio to direct ≥ nginx's, ≥ 1.5× go-nitriding, p99 ≤ nginx's", "", NotMeasured, "")
	}
	for _, c := range concs {
		dir := d.val(px, "direct", "http", c, fRPS)
		q := d.val(px, "quench", "http", c, fRPS)
		n := d.val(px, "nginx", "http", c, fRPS)
		g := d.val(px, "go-nitriding", "http", c, fRPS)
		qr, nr := ratio(q, dir), ratio(n, dir)
		st, det := atLeast(ratio(qr, nr), 1)
		add("4", fmt.Sprintf("c = %d: quench ratio to direct ≥ nginx's", c),
			fmt.Sprintf("%s vs %s", x(qr), x(nr)), st, det)
		r := ratio(q, g)
		st, det = atLeast(r, 1.5)
		add("4", fmt.Sprintf("c = %d: quench ≥ 1.5× go-nitriding", c),
			fmt.Sprintf("%s (%s vs %s req/s)", x(r), num(q, 0), num(g, 0)), st, det)
		qp, np := d.val(px, "quench", "http", c, fP99), d.val(px, "nginx", "http", c, fP99)
		st, det = atMost(qp, np)
		add("4", fmt.Sprintf("c = %d: quench p99 ≤ nginx's", c), fmt.Sprintf("%s vs %s", ms(qp), ms(np)), st, det)
	}
	for _, t := range overloadTargets(d) {
		add(t.Issue, t.Goal, t.Measured, t.Status, t.Detail)
	}

	// Issue 6: the full HTTPS path against nitriding's stack.
	const en = "enclave"
	qe := []string{"quench", "quench-fast"}
	{
		qc, q := d.best(en, qe, "http", 100, fRPS, false)
		n := d.val(en, "nitriding", "http", 100, fRPS)
		r := ratio(q, n)
		st, det := atLeast(r, 3)
		add("6", "full HTTPS path req/s at c = 100 ≥ 3× nitriding's (best quench path)",
			fmt.Sprintf("%s: %s (%s) vs %s", x(r), num(q, 0), qc, num(n, 0)), st, det)
		qc, q = d.best(en, qe, "http", 1000, fP99, true)
		n = d.val(en, "nitriding", "http", 1000, fP99)
		st, det = atMost(q, n)
		if st == Met && q == n {
			st, det = Missed, "equal, lower wanted"
		}
		add("6", "full HTTPS path p99 at c = 1000 lower than nitriding's",
			fmt.Sprintf("%s (%s) vs %s", ms(q), qc, ms(n)), st, det)
		for _, row := range []struct{ cfg, goal string }{
			{"quench-unix", "with the app on a unix socket (nitriding cannot)"},
			{"quench-go", "a Go app importing enclave (handler in process, no proxy)"},
		} {
			if q, n := d.val(en, row.cfg, "http", 100, fRPS), d.val(en, "nitriding", "http", 100, fRPS); known(q) {
				add("6", "full HTTPS path req/s at c = 100, "+row.goal,
					fmt.Sprintf("%s nitriding's: %s vs %s", x(ratio(q, n)), num(q, 0), num(n, 0)), Info, "")
			}
		}
	}

	// Issue 7: the ingress fast path.
	const in = "ingress"
	{
		f, dr := d.val(in, "fastpath", "http", 100, fRPS), d.val(in, "direct", "http", 100, fRPS)
		r := ratio(f, dr)
		st, det := atLeast(r, 0.6)
		add("7", "fast path req/s at c = 100 ≥ 0.6× direct",
			fmt.Sprintf("%s: %s vs %s", x(r), num(f, 0), num(dr, 0)), st, det)
		fk, gk := d.val(in, "fastpath", "idle", 0, fKB), d.val(in, "gvproxy-tunnel", "idle", 0, fKB)
		r = ratio(fk, gk)
		st, det = atMost(r, 0.25)
		if known(r) && r < 0 {
			det += " (RSS shrank: rerun)"
		}
		add("7", "host memory per idle connection ≤ 1/4 of gvproxy's",
			fmt.Sprintf("%s: %s vs %s KiB", x(r), num(fk, 1), num(gk, 1)), st, det)
		fb, rb := d.val(in, "fastpath", "bulk", 0, fGbps), d.val(in, "raw-unix", "bulk", 0, fGbps)
		st = Info
		if !known(fb) {
			st = NotMeasured
		}
		add("7", "fast path bulk vs a raw unix socket",
			fmt.Sprintf("%s: %s vs %s Gbit/s", x(ratio(fb, rb)), num(fb, 2), num(rb, 2)), st, "")
	}
	return out
}

// summary counts met and missed targets.
func summary(ts []Target) (met, missed, absent int) {
	for _, t := range ts {
		switch t.Status {
		case Met:
			met++
		case Missed:
			missed++
		case NotMeasured:
			absent++
		}
	}
	return
}
