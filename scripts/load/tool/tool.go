package tool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/quenchnet/quench/scripts/load/result"
)

// Request describes one load step.
type Request struct {
	// URL is the target URL (http or https).
	URL string
	// Concurrency is the number of concurrent connections.
	Concurrency int
	// Duration is how long the tool sends requests; at least one second.
	Duration time.Duration
	// Timeout is the per-request timeout, for tools that have one
	// (bombardier -t). Zero means the tool's default.
	Timeout time.Duration
	// Insecure skips TLS certificate verification (bombardier -k, baton -i),
	// for enclaves with self-signed certificates.
	Insecure bool
}

// Runner runs one load step and returns its result. Implementations must
// return within a bounded time even if the target never answers.
type Runner interface {
	// Name is the tool name recorded in results ("bombardier").
	Name() string
	// Run runs one step. On error the returned Output may still hold what
	// the tool printed, for diagnosis.
	Run(ctx context.Context, req Request) (Output, error)
}

// ConcurrencyLimiter is implemented by runners that cannot drive more than
// a given number of connections; the sweep skips steps above the limit.
type ConcurrencyLimiter interface {
	// MaxConcurrency returns the highest usable concurrency; 0 means none.
	MaxConcurrency() int
}

// Output is the result of one Run.
type Output struct {
	// Step is the parsed result; Step.Command is the command line.
	Step result.Step
	// Raw is what the tool printed on stdout and stderr, capped at
	// Config.MaxOutput bytes each.
	Raw []byte
}

// Config configures a Runner.
type Config struct {
	// Path is the tool binary. Required.
	Path string
	// Version is the tool's version, recorded in results ("v1.2.6").
	// Default: none.
	Version string
	// Grace is added to each step's expected length to form the hard
	// deadline at which the process is killed. Default: 10s.
	Grace time.Duration
	// MaxOutput caps the bytes kept from each of stdout and stderr.
	// Default: 1 MiB.
	MaxOutput int
	// MaxConcurrency is the highest concurrency the runner accepts; see
	// [ConcurrencyLimiter]. Default: 512 for baton (its fasthttp client
	// opens at most 512 connections per host and fails every other request
	// with "no free connections"), unlimited for bombardier. Negative means
	// unlimited.
	MaxConcurrency int
	// Logger receives debug messages. Default: discard.
	Logger *slog.Logger
}

func (c *Config) fill(defaultMax int) error {
	if c.Path == "" {
		return errors.New("tool: empty Path")
	}
	if c.Grace <= 0 {
		c.Grace = 10 * time.Second
	}
	if c.MaxOutput <= 0 {
		c.MaxOutput = 1 << 20
	}
	if c.MaxConcurrency == 0 {
		c.MaxConcurrency = defaultMax
	}
	if c.MaxConcurrency < 0 {
		c.MaxConcurrency = 0
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// ErrKilled is returned (wrapped) when a tool did not finish before its
// hard deadline and was killed. The sweep stops the series.
var ErrKilled = errors.New("tool: killed at its deadline")

// exec runs path with args, killing it at deadline. It returns stdout and
// the combined raw output for the record.
func execTool(parent context.Context, cfg *Config, deadline time.Duration, args []string) (stdout, raw []byte, err error) {
	ctx, cancel := context.WithTimeout(parent, deadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, cfg.Path, args...)
	cmd.WaitDelay = 2 * time.Second
	out := &capWriter{max: cfg.MaxOutput}
	errOut := &capWriter{max: cfg.MaxOutput}
	cmd.Stdout, cmd.Stderr = out, errOut
	cfg.Logger.Debug("run", "cmd", commandLine(cfg.Path, args), "deadline", deadline)
	runErr := cmd.Run()
	stdout = out.Bytes()
	raw = append(out.Bytes(), errOut.Bytes()...)
	switch {
	case parent.Err() != nil:
		return stdout, raw, fmt.Errorf("tool: %s interrupted: %w", baseName(cfg.Path), context.Cause(parent))
	case ctx.Err() != nil:
		return stdout, raw, fmt.Errorf("%w (%s still running after %v)", ErrKilled, baseName(cfg.Path), deadline)
	case runErr != nil:
		msg := strings.TrimSpace(lastLine(stdout) + " " + lastLine(errOut.Bytes()))
		return stdout, raw, fmt.Errorf("tool: %s: %w: %s", baseName(cfg.Path), runErr, msg)
	}
	return stdout, raw, nil
}

// capWriter keeps the first max bytes written and discards the rest, so a
// chatty tool can neither block nor exhaust memory.
type capWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (w *capWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if room := w.max - w.buf.Len(); room > 0 {
		w.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (w *capWriter) Bytes() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return bytes.Clone(w.buf.Bytes())
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

func commandLine(path string, args []string) string {
	parts := []string{baseName(path)}
	for _, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'$&;|<>*?") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// isTimeout reports whether a tool's error description is a timeout:
// fasthttp's "timeout" and "dialing ... timed out", net/http's
// "context deadline exceeded (Client.Timeout ...)" and "i/o timeout".
func isTimeout(desc string) bool {
	d := strings.ToLower(desc)
	return strings.Contains(d, "timeout") || strings.Contains(d, "timed out") ||
		strings.Contains(d, "deadline exceeded")
}
