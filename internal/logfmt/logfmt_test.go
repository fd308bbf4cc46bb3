package logfmt_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/quenchnet/quench/internal/logfmt"
)

func TestFormatsAndLevels(t *testing.T) {
	var b bytes.Buffer
	l, err := logfmt.New(&b, "json", "warn")
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hidden")
	l.Warn("shown", "line", "a \x1b[2J b")
	var rec map[string]any
	if err := json.Unmarshal(b.Bytes(), &rec); err != nil || rec["msg"] != "shown" || rec["line"] != "a \x1b[2J b" {
		t.Fatalf("json record %q: %v", b.String(), err)
	}
	if strings.Contains(b.String(), "\x1b") {
		t.Fatalf("a raw escape in the JSON output: %q", b.String())
	}
	b.Reset()
	l, err = logfmt.New(&b, "text", "debug")
	if err != nil {
		t.Fatal(err)
	}
	l.Debug("d")
	if !strings.Contains(b.String(), "level=DEBUG msg=d") {
		t.Fatalf("text record %q", b.String())
	}
	for _, tc := range []struct{ format, level, want string }{
		{"xml", "info", `-log-format "xml": want text or json`},
		{"text", "loud", "-log-level"},
	} {
		if _, err := logfmt.New(&b, tc.format, tc.level); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s/%s: %v, want %q", tc.format, tc.level, err, tc.want)
		}
	}
	if _, err := logfmt.NewAt(&b, "", slog.LevelInfo); err != nil {
		t.Errorf("empty format: %v", err)
	}
}
