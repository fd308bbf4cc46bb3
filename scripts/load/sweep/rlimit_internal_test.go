package sweep

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeLimit is an RLIMIT_NOFILE that only a privileged process may raise
// above its hard limit.
type fakeLimit struct {
	soft, hard uint64
	root       bool
	sets       [][2]uint64
}

func (f *fakeLimit) funcs() rlimitFuncs {
	return rlimitFuncs{
		get: func() (uint64, uint64, error) { return f.soft, f.hard, nil },
		set: func(soft, hard uint64) error {
			f.sets = append(f.sets, [2]uint64{soft, hard})
			if soft > hard || (hard > f.hard && !f.root) {
				return errors.New("operation not permitted")
			}
			f.soft, f.hard = soft, hard
			return nil
		},
	}
}

func TestRaiseNoFile(t *testing.T) {
	tests := []struct {
		name             string
		lim              fakeLimit
		need             uint64
		wantSoft, wantHd uint64
		wantMsg          string
		wantSets         [][2]uint64
	}{
		{"soft to hard", fakeLimit{soft: 1024, hard: 524288}, 2256, 524288, 524288, "soft 524288 (hard 524288); needed 2256", [][2]uint64{{524288, 524288}}},
		{"already enough still set for children", fakeLimit{soft: 20000, hard: 20000}, 2256, 20000, 20000, "soft 20000 (hard 20000)", [][2]uint64{{20000, 20000}}},
		{"root raises hard", fakeLimit{soft: 1024, hard: 1024, root: true}, 2256, 2256, 2256, "raised to 2256", [][2]uint64{{2256, 2256}}},
		{"not root, too low", fakeLimit{soft: 256, hard: 1024}, 2256, 1024, 1024, "below the 2256 needed", [][2]uint64{{2256, 2256}, {1024, 1024}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lim := tc.lim
			got, err := raiseNoFile(tc.need, lim.funcs())
			if err != nil {
				t.Fatal(err)
			}
			if got.NewSoft != tc.wantSoft || got.NewHard != tc.wantHd || !strings.Contains(got.Message, tc.wantMsg) {
				t.Errorf("got %+v, want soft %d hard %d, message with %q", got, tc.wantSoft, tc.wantHd, tc.wantMsg)
			}
			if got.Enough() != (tc.wantSoft >= tc.need) {
				t.Errorf("Enough = %v", got.Enough())
			}
			if diff := cmp.Diff(tc.wantSets, lim.sets); diff != "" {
				t.Errorf("setrlimit calls (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNeedNoFile(t *testing.T) {
	if got := NeedNoFile(2000); got != 2256 {
		t.Errorf("NeedNoFile(2000) = %d", got)
	}
}
