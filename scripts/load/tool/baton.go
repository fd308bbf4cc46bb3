package tool

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/quenchnet/quench/scripts/load/result"
)

// batonMaxConns is fasthttp's DefaultMaxConnsPerHost, which baton's client
// keeps: above it, requests fail at once with "no free connections".
const batonMaxConns = 512

// Baton runs github.com/americanexpress/baton in timed mode.
//
// Baton has no request timeout: a request the target never answers stalls
// it until the hard deadline kills it. In timed mode it reports no
// latencies at all.
type Baton struct {
	cfg Config
}

var (
	_ Runner             = (*Baton)(nil)
	_ ConcurrencyLimiter = (*Baton)(nil)
)

// NewBaton returns a Runner for the baton binary at cfg.Path.
func NewBaton(cfg Config) (*Baton, error) {
	if err := cfg.fill(batonMaxConns); err != nil {
		return nil, err
	}
	return &Baton{cfg: cfg}, nil
}

// Name returns "baton".
func (b *Baton) Name() string { return "baton" }

// Version returns Config.Version.
func (b *Baton) Version() string { return b.cfg.Version }

// MaxConcurrency returns Config.MaxConcurrency (default 512; 0: unlimited).
func (b *Baton) MaxConcurrency() int { return b.cfg.MaxConcurrency }

// batonSeconds is the duration baton is given: whole seconds, rounded up.
func batonSeconds(d time.Duration) int {
	return int(math.Ceil(d.Seconds()))
}

// Args returns baton's arguments for req: a timed run (-t whole seconds,
// rounded up). req.Timeout is not used: baton has none.
func (b *Baton) Args(req Request) []string {
	args := []string{
		"-u", req.URL,
		"-c", strconv.Itoa(req.Concurrency),
		"-t", strconv.Itoa(batonSeconds(req.Duration)),
	}
	if req.Insecure {
		args = append(args, "-i")
	}
	return args
}

// Deadline returns the hard deadline for req: the duration plus
// Config.Grace (baton has no request timeout to wait out).
func (b *Baton) Deadline(req Request) time.Duration {
	return time.Duration(batonSeconds(req.Duration))*time.Second + b.cfg.Grace
}

// Run runs baton once and parses its report.
func (b *Baton) Run(ctx context.Context, req Request) (Output, error) {
	if err := checkRequest(req); err != nil {
		return Output{}, err
	}
	args := b.Args(req)
	cmd := commandLine(b.cfg.Path, args)
	stdout, raw, err := execTool(ctx, &b.cfg, b.Deadline(req), args)
	out := Output{Raw: raw}
	if err != nil {
		if errors.Is(err, ErrKilled) {
			err = fmt.Errorf("%w; baton has no request timeout, so a request the target never answered stalls it", err)
		}
		return out, err
	}
	st, err := ParseBaton(stdout)
	if err != nil {
		return out, err
	}
	st.Concurrency = req.Concurrency
	st.Command = cmd
	secs := batonSeconds(req.Duration)
	if time.Duration(secs)*time.Second != req.Duration {
		st.Notes = append(st.Notes, fmt.Sprintf("baton takes whole seconds: ran %ds for a %v step", secs, req.Duration))
	}
	if st.Seconds > float64(secs)+1 {
		st.Notes = append(st.Notes, fmt.Sprintf("baton ran %.1fs for a %ds step: some requests took longer than the step", st.Seconds, secs))
	}
	out.Step = st
	return out, nil
}

var (
	batonTotal    = regexp.MustCompile(`^Total requests:\s+(\d+)$`)
	batonTime     = regexp.MustCompile(`^Time taken to complete requests:\s+(\S+)$`)
	batonRPS      = regexp.MustCompile(`^Requests per second:\s+(\d+)$`)
	batonMax      = regexp.MustCompile(`^Max response time \(ms\):\s+(\d+)$`)
	batonAvg      = regexp.MustCompile(`^Avg response time \(ms\):\s+([0-9.]+|NaN)$`)
	batonConnErrs = regexp.MustCompile(`^Number of connection errors:\s+(\d+)$`)
	batonCodes    = regexp.MustCompile(`^Number of ([1-5])xx responses:\s+(\d+)$`)
)

// ParseBaton parses baton's text report. Log lines before the report are
// skipped; a configuration error baton printed is returned as an error.
//
// Baton counts connection errors (refused, reset, dial timeouts, no free
// connection) in one number, so Timeouts is nil (unknown) and they all go
// to Errors along with 4xx/5xx responses. Timed runs (-t) report no
// latencies; a counted run (-r) reports average and maximum (whole ms,
// successful requests only, each worker's first request left out), which
// become Latency.Mean and Latency.Max; its "percentage within" brackets are
// not percentiles and are not used. The returned Step has no Concurrency or
// Command.
func ParseBaton(out []byte) (result.Step, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	st := result.Step{RPS: result.Unknown, ToolRPS: result.Unknown, Latency: result.NoLatency()}
	var inResults, haveTotal, haveTime, haveConn bool
	haveCode := map[string]bool{}
	var connErrs int64
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !inResults {
			if strings.HasPrefix(line, "Invalid configuration:") || strings.HasPrefix(line, "Error during run preparation:") {
				return result.Step{}, fmt.Errorf("tool: baton: %s", line)
			}
			if strings.HasPrefix(line, "=") && strings.Contains(line, " Results ") {
				inResults = true
			}
			continue
		}
		var err error
		switch {
		case batonTotal.MatchString(line):
			st.Requests, err = strconv.ParseInt(batonTotal.FindStringSubmatch(line)[1], 10, 64)
			haveTotal = true
		case batonTime.MatchString(line):
			var d time.Duration
			d, err = time.ParseDuration(batonTime.FindStringSubmatch(line)[1])
			st.Seconds = d.Seconds()
			haveTime = true
		case batonRPS.MatchString(line):
			var v int64
			v, err = strconv.ParseInt(batonRPS.FindStringSubmatch(line)[1], 10, 64)
			st.ToolRPS = result.Num(v)
		case batonMax.MatchString(line):
			var v int64
			v, err = strconv.ParseInt(batonMax.FindStringSubmatch(line)[1], 10, 64)
			st.Latency.Max = result.Num(v)
		case batonAvg.MatchString(line):
			var v float64
			v, err = strconv.ParseFloat(batonAvg.FindStringSubmatch(line)[1], 64)
			st.Latency.Mean = result.Num(v)
		case batonConnErrs.MatchString(line):
			connErrs, err = strconv.ParseInt(batonConnErrs.FindStringSubmatch(line)[1], 10, 64)
			haveConn = true
		case batonCodes.MatchString(line):
			m := batonCodes.FindStringSubmatch(line)
			var v int64
			v, err = strconv.ParseInt(m[2], 10, 64)
			haveCode[m[1]] = true
			switch m[1] {
			case "1":
				st.Codes.C1xx = v
			case "2":
				st.Codes.C2xx = v
			case "3":
				st.Codes.C3xx = v
			case "4":
				st.Codes.C4xx = v
			case "5":
				st.Codes.C5xx = v
			}
		}
		if err != nil {
			return result.Step{}, fmt.Errorf("tool: baton: line %q: %w", line, err)
		}
		if st.Requests > maxCount || connErrs > maxCount || st.Codes.C1xx > maxCount || st.Codes.C2xx > maxCount ||
			st.Codes.C3xx > maxCount || st.Codes.C4xx > maxCount || st.Codes.C5xx > maxCount {
			return result.Step{}, fmt.Errorf("tool: baton: line %q: count out of range", line)
		}
	}
	if err := sc.Err(); err != nil {
		return result.Step{}, fmt.Errorf("tool: baton: %w", err)
	}
	if !inResults {
		return result.Step{}, fmt.Errorf("tool: baton: no results in output %q", snippet(out))
	}
	if !haveTotal || !haveTime || !haveConn || len(haveCode) != 5 {
		return result.Step{}, errors.New("tool: baton: incomplete results")
	}
	c := st.Codes
	if sum := connErrs + c.C1xx + c.C2xx + c.C3xx + c.C4xx + c.C5xx; sum != st.Requests {
		return result.Step{}, fmt.Errorf("tool: baton: total %d != connection errors + responses %d", st.Requests, sum)
	}
	if !(st.Seconds > 0) {
		return result.Step{}, fmt.Errorf("tool: baton: time taken %vs", st.Seconds)
	}
	st.HTTPErrors = c.C4xx + c.C5xx
	st.Errors = connErrs + st.HTTPErrors
	st.OK = c.C1xx + c.C2xx + c.C3xx
	st.RPS = result.Num(float64(st.OK) / st.Seconds)
	if connErrs > 0 {
		st.ErrorSamples = []result.ErrorCount{{Error: "connection errors (baton does not say which)", Count: connErrs}}
	}
	if st.Latency.Mean.Known() {
		st.Notes = append(st.Notes, "baton latencies: whole ms, successful requests only, first request per worker left out")
	} else {
		st.Notes = append(st.Notes, "baton reports no latency in timed mode; timeouts unknown (no request timeout)")
	}
	return st, nil
}
