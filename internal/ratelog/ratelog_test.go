package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	now := time.Unix(1_800_000_000, 0)
	l := &Limiter{Now: func() time.Time { return now }}
	for range 5 {
		l.Warn(log, "refused", "n", 1)
	}
	now = now.Add(time.Second)
	l.Warn(log, "refused", "n", 2)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines logged, want 2:\n%s", len(lines), buf.String())
	}
	if strings.Contains(lines[0], "not_logged_since_last") || !strings.Contains(lines[1], "not_logged_since_last=4") {
		t.Errorf("counts of the warnings not logged wrong:\n%s", buf.String())
	}
}
