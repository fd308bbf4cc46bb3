package policy_test

import (
	"encoding/binary"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
	"github.com/quenchnet/quench/policy"
)

// TestRefuseQueryManyQuestions: a query of thousands of questions (a
// 64 KB datagram, or a message to the enclave's DNS proxy over TCP, each
// question a 2-byte pointer to a name of 253 bytes) is not one a resolver
// sends, and must not cost the filter, on the path of every frame, many
// times its size and tens of milliseconds: it is not a query.
func TestRefuseQueryManyQuestions(t *testing.T) {
	p, err := policy.Parse([]string{"*.example:443"})
	if err != nil {
		t.Fatal(err)
	}
	msg := testutil.CostlyDNSQuery(0)
	n := binary.BigEndian.Uint16(msg[4:])

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	answer, _, err := p.RefuseQuery(msg)
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, policy.ErrNotQuery) {
		t.Errorf("%d questions: answer of %d bytes, %v; want ErrNotQuery", n, len(answer), err)
	}
	if a := after.TotalAlloc - before.TotalAlloc; a > uint64(len(msg)) {
		t.Errorf("%d questions: %d bytes allocated (%v) for a %d-byte message", n, a, took, len(msg))
	}
}
