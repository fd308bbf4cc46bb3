package tool

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/quenchnet/quench/scripts/load/result"
)

// bombardierDefaultTimeout is bombardier's own default for -t.
const bombardierDefaultTimeout = 2 * time.Second

// bombardierAttempts is how many times bombardier's default client
// (fasthttp, MaxIdemponentCallAttempts) tries an idempotent request, so a
// request can take this many timeouts before it is reported.
const bombardierAttempts = 5

// maxCount bounds every count a parser accepts (about 2^50), so sums of
// counts cannot overflow.
const maxCount = 1 << 50

// Bombardier runs github.com/codesenberg/bombardier (v1.2.6 flags).
type Bombardier struct {
	cfg Config
}

var (
	_ Runner             = (*Bombardier)(nil)
	_ ConcurrencyLimiter = (*Bombardier)(nil)
)

// NewBombardier returns a Runner for the bombardier binary at cfg.Path.
func NewBombardier(cfg Config) (*Bombardier, error) {
	if err := cfg.fill(-1); err != nil {
		return nil, err
	}
	return &Bombardier{cfg: cfg}, nil
}

// Name returns "bombardier".
func (b *Bombardier) Name() string { return "bombardier" }

// Version returns Config.Version.
func (b *Bombardier) Version() string { return b.cfg.Version }

// MaxConcurrency returns Config.MaxConcurrency (0: unlimited).
func (b *Bombardier) MaxConcurrency() int { return b.cfg.MaxConcurrency }

// Args returns bombardier's arguments for req: a timed run printing only
// the result, as JSON, with latency percentiles.
func (b *Bombardier) Args(req Request) []string {
	args := []string{
		"-c", strconv.Itoa(req.Concurrency),
		"-d", req.Duration.String(),
	}
	if req.Timeout > 0 {
		args = append(args, "-t", req.Timeout.String())
	}
	if req.Insecure {
		args = append(args, "-k")
	}
	return append(args, "-o", "json", "-p", "result", "-l", req.URL)
}

// Deadline returns the hard deadline for req: the duration, plus every
// attempt of a request started just before the end timing out, plus
// Config.Grace.
func (b *Bombardier) Deadline(req Request) time.Duration {
	t := req.Timeout
	if t <= 0 {
		t = bombardierDefaultTimeout
	}
	return req.Duration + bombardierAttempts*t + b.cfg.Grace
}

// Run runs bombardier once and parses its JSON result.
func (b *Bombardier) Run(ctx context.Context, req Request) (Output, error) {
	if err := checkRequest(req); err != nil {
		return Output{}, err
	}
	args := b.Args(req)
	cmd := commandLine(b.cfg.Path, args)
	stdout, raw, err := execTool(ctx, &b.cfg, b.Deadline(req), args)
	out := Output{Raw: raw}
	if err != nil {
		return out, err
	}
	st, err := ParseBombardier(stdout)
	if err != nil {
		return out, err
	}
	st.Concurrency = req.Concurrency
	st.Command = cmd
	out.Step = st
	return out, nil
}

type bombardierJSON struct {
	Spec struct {
		NumberOfConnections int     `json:"numberOfConnections"`
		TestType            string  `json:"testType"`
		TimeoutSeconds      float64 `json:"timeoutSeconds"`
	} `json:"spec"`
	Result *struct {
		TimeTakenSeconds float64 `json:"timeTakenSeconds"`
		Req1xx           int64   `json:"req1xx"`
		Req2xx           int64   `json:"req2xx"`
		Req3xx           int64   `json:"req3xx"`
		Req4xx           int64   `json:"req4xx"`
		Req5xx           int64   `json:"req5xx"`
		Others           int64   `json:"others"`
		Errors           []struct {
			Description string `json:"description"`
			Count       int64  `json:"count"`
		} `json:"errors"`
		Latency *struct {
			Mean        float64            `json:"mean"`
			Max         float64            `json:"max"`
			Percentiles map[string]float64 `json:"percentiles"`
		} `json:"latency"`
		RPS *struct {
			Mean float64 `json:"mean"`
		} `json:"rps"`
	} `json:"result"`
}

// ParseBombardier parses what `bombardier -o json -p result -l` prints
// (bombardier v1.2.6). Text before the JSON object (intro, progress) is
// skipped. Go string escapes that bombardier's template writes but JSON
// does not allow (\x.., \a, \v, \U........) are accepted.
//
// Latencies are converted from microseconds to milliseconds; p50, p90 and
// p99 are bombardier's (they need -l). Errors whose description names a
// timeout count as Timeouts, other errors and 4xx/5xx responses as Errors.
// The returned Step has no Concurrency or Command.
func ParseBombardier(out []byte) (result.Step, error) {
	start := bytes.Index(out, []byte(`{"spec"`))
	if start < 0 {
		start = bytes.IndexByte(out, '{')
	}
	if start < 0 {
		return result.Step{}, fmt.Errorf("tool: bombardier: no JSON in output %q", snippet(out))
	}
	var v bombardierJSON
	if err := json.NewDecoder(bytes.NewReader(out[start:])).Decode(&v); err != nil {
		fixed := fixGoEscapes(out[start:])
		if err2 := json.NewDecoder(bytes.NewReader(fixed)).Decode(&v); err2 != nil {
			return result.Step{}, fmt.Errorf("tool: bombardier: parse JSON: %w", err)
		}
	}
	r := v.Result
	if r == nil {
		return result.Step{}, errors.New("tool: bombardier: JSON has no result")
	}
	if !(r.TimeTakenSeconds > 0) || math.IsInf(r.TimeTakenSeconds, 0) {
		return result.Step{}, fmt.Errorf("tool: bombardier: bad timeTakenSeconds %v", r.TimeTakenSeconds)
	}
	for _, c := range []int64{r.Req1xx, r.Req2xx, r.Req3xx, r.Req4xx, r.Req5xx, r.Others} {
		if c < 0 || c > maxCount {
			return result.Step{}, fmt.Errorf("tool: bombardier: count %d out of range", c)
		}
	}
	st := result.Step{
		Seconds: r.TimeTakenSeconds,
		Codes: result.Codes{
			C1xx: r.Req1xx, C2xx: r.Req2xx, C3xx: r.Req3xx,
			C4xx: r.Req4xx, C5xx: r.Req5xx, Other: r.Others,
		},
		Requests: r.Req1xx + r.Req2xx + r.Req3xx + r.Req4xx + r.Req5xx + r.Others,
		RPS:      result.Unknown,
		ToolRPS:  result.Unknown,
		Latency:  result.NoLatency(),
	}
	var transport, timeouts int64
	counts := map[string]int64{}
	for _, e := range r.Errors {
		if e.Count < 0 || e.Count > maxCount {
			return result.Step{}, fmt.Errorf("tool: bombardier: error count %d out of range", e.Count)
		}
		transport += e.Count
		if isTimeout(e.Description) {
			timeouts += e.Count
		}
		counts[e.Description] += e.Count
	}
	// Failed requests are counted under "others" (status -1); the rest of
	// "others" are responses with a status outside 100-599.
	odd := max(0, r.Others-transport)
	st.HTTPErrors = r.Req4xx + r.Req5xx
	st.Errors = transport - timeouts + st.HTTPErrors + odd
	st.Timeouts = result.Int64(timeouts)
	st.OK = max(0, st.Requests-st.Errors-timeouts)
	st.RPS = result.Num(float64(st.OK) / st.Seconds)
	st.ErrorSamples = result.TopErrors(counts, 5)
	if r.RPS != nil {
		st.ToolRPS = result.Num(r.RPS.Mean)
	}
	if l := r.Latency; l != nil {
		st.Latency.Mean = result.Num(l.Mean / 1000)
		st.Latency.Max = result.Num(l.Max / 1000)
		for key, dst := range map[string]*result.Num{"50": &st.Latency.P50, "90": &st.Latency.P90, "99": &st.Latency.P99} {
			if us, ok := l.Percentiles[key]; ok {
				*dst = result.Num(us / 1000)
			}
		}
	}
	if transport > 0 {
		st.Notes = append(st.Notes, "bombardier's latencies include failed requests")
	}
	if odd > 0 {
		st.Notes = append(st.Notes, fmt.Sprintf("%d responses with a status outside 100-599 counted as errors", odd))
	}
	return st, nil
}

// fixGoEscapes rewrites, inside JSON strings, the escapes Go's %q produces
// that JSON lacks: \a, \v, \xNN (as U+00NN) and \UNNNNNNNN.
func fixGoEscapes(in []byte) []byte {
	out := make([]byte, 0, len(in)+16)
	inString := false
	for i := 0; i < len(in); i++ {
		c := in[i]
		if !inString {
			if c == '"' {
				inString = true
			}
			out = append(out, c)
			continue
		}
		switch c {
		case '"':
			inString = false
			out = append(out, c)
		case '\\':
			if i+1 >= len(in) {
				out = append(out, c)
				continue
			}
			n := in[i+1]
			switch {
			case n == 'a':
				out = append(out, `\u0007`...)
				i++
			case n == 'v':
				out = append(out, `\u000b`...)
				i++
			case n == 'x' && i+3 < len(in) && isHex(in[i+2]) && isHex(in[i+3]):
				out = append(out, `\u00`...)
				out = append(out, in[i+2], in[i+3])
				i += 3
			case n == 'U' && i+9 < len(in):
				r, err := strconv.ParseUint(string(in[i+2:i+10]), 16, 32)
				if err != nil || !utf8.ValidRune(rune(r)) {
					out = append(out, `\ufffd`...)
				} else {
					out = utf8.AppendRune(out, rune(r))
				}
				i += 9
			default:
				out = append(out, c, n)
				i++
			}
		default:
			out = append(out, c)
		}
	}
	return out
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func snippet(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

func checkRequest(req Request) error {
	if req.Concurrency <= 0 {
		return fmt.Errorf("tool: concurrency %d", req.Concurrency)
	}
	if req.Duration < time.Second {
		return fmt.Errorf("tool: duration %v is shorter than 1s", req.Duration)
	}
	if req.URL == "" {
		return errors.New("tool: empty URL")
	}
	return nil
}
