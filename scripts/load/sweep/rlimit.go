package sweep

import "fmt"

// NoFile reports the open-file limit (RLIMIT_NOFILE) before and after
// RaiseNoFile, and what it did.
type NoFile struct {
	// Need is the soft limit asked for.
	Need uint64
	// Soft and Hard are the limits before; NewSoft and NewHard after.
	Soft, Hard, NewSoft, NewHard uint64
	// Message says in one sentence what happened, for the user.
	Message string
}

// Enough reports whether the soft limit now covers Need.
func (n NoFile) Enough() bool { return n.NewSoft >= n.Need }

// NeedNoFile returns the open files a load tool needs for concurrency c:
// one socket per connection plus headroom for the process itself.
func NeedNoFile(c int) uint64 { return uint64(c) + 256 }

type rlimitFuncs struct {
	get func() (soft, hard uint64, err error)
	set func(soft, hard uint64) error
}

// raiseNoFile sets the soft limit to the hard limit when the hard limit
// covers need, or else tries to raise both to need (this works as root).
// It always calls set, even with unchanged values: Go raises its own soft
// limit at startup but gives child processes the original limit unless the
// program sets the limit itself.
func raiseNoFile(need uint64, f rlimitFuncs) (NoFile, error) {
	soft, hard, err := f.get()
	if err != nil {
		return NoFile{}, fmt.Errorf("sweep: get RLIMIT_NOFILE: %w", err)
	}
	n := NoFile{Need: need, Soft: soft, Hard: hard}
	newSoft, newHard := max(soft, hard), hard
	if newSoft < need {
		if err := f.set(need, need); err == nil {
			n.NewSoft, n.NewHard = need, need
			n.Message = fmt.Sprintf("open-file limit raised to %d (soft and hard) for the load tools; needed %d", need, need)
			return n, nil
		}
	}
	if err := f.set(newSoft, newHard); err != nil {
		// Some systems refuse a soft limit of "unlimited" (macOS); ask for
		// only what is needed.
		if need >= newSoft || f.set(max(soft, need), newHard) != nil {
			return n, fmt.Errorf("sweep: set RLIMIT_NOFILE to %d: %w", newSoft, err)
		}
		newSoft = max(soft, need)
	}
	n.NewSoft, n.NewHard = newSoft, newHard
	if newSoft < need {
		n.Message = fmt.Sprintf("open-file limit is %d (hard limit %d), below the %d needed: high-concurrency steps may fail; raise it with `ulimit -Hn %d` as root",
			newSoft, newHard, need, need)
		return n, nil
	}
	n.Message = fmt.Sprintf("open-file limit for the load tools: soft %d (hard %d); needed %d", newSoft, newHard, need)
	return n, nil
}
