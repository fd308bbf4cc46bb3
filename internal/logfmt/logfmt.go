// Package logfmt builds the daemons' loggers from their -log-format and
// -log-level flags.
package logfmt

import (
	"fmt"
	"io"
	"log/slog"
)

// Formats is the help text's list of formats.
const Formats = "text (logfmt-style key=value) or json (one object per line, for log pipelines)"

// New returns a logger writing to w in format ("text" or "json") at level
// ("debug", "info", "warn", "error"); the errors name the flag.
func New(w io.Writer, format, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	return NewAt(w, format, l)
}

// NewAt is New with a parsed level.
func NewAt(w io.Writer, format string, level slog.Leveler) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format %q: want text or json", format)
}
