package testutil

import (
	"sync"
	"sync/atomic"
)

// LoadResult is what a Load saw.
type LoadResult struct {
	OK, Failed int64
	First      error // the first failure, nil if none
}

// Load calls f in a loop from workers goroutines until the returned stop
// is called; stop waits for them and reports the calls that succeeded and
// failed.
func Load(workers int, f func() error) (stop func() LoadResult) {
	var (
		ok, failed atomic.Int64
		first      atomic.Pointer[error]
		done       = make(chan struct{})
		wg         sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				if err := f(); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, &err)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	return func() LoadResult {
		close(done)
		wg.Wait()
		r := LoadResult{OK: ok.Load(), Failed: failed.Load()}
		if p := first.Load(); p != nil {
			r.First = *p
		}
		return r
	}
}
