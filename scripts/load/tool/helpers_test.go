package tool_test

import (
	"testing"

	"github.com/quenchnet/quench/scripts/load/result"
	"github.com/quenchnet/quench/scripts/load/tool"
)

func mustStep(t *testing.T, out tool.Output, err error) result.Step {
	t.Helper()
	if err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.Raw)
	}
	return out.Step
}
