package enclave

import (
	"sync"
	"sync/atomic"
)

type tunnelStatus struct {
	up         atomic.Bool
	reconnects atomic.Uint64
	mu         sync.Mutex
	lastErr    string // guarded by mu
}

func (s *tunnelStatus) setUp(v bool) { s.up.Store(v) }

func (s *tunnelStatus) setErr(err error) {
	if err == nil {
		return
	}
	s.mu.Lock()
	s.lastErr = err.Error()
	s.mu.Unlock()
}

func (s *tunnelStatus) get() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Status{Connected: s.up.Load(), Reconnects: s.reconnects.Load(), LastError: s.lastErr}
}
