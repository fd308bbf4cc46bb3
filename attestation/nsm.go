package attestation

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/hf/nsm/request"
	"github.com/hf/nsm/response"
)

// NSMSession is the part of *nsm.Session (github.com/hf/nsm) that NSMAttester
// uses. It is the seam for fakes: attestationtest.FakeNSM implements it on top
// of a DevAttester, so code that drives the NSM can be tested without
// /dev/nsm. Implementations must allow Send and Read to be called
// concurrently (Close is never called concurrently with them).
type NSMSession interface {
	Send(req request.Request) (response.Response, error)
	Read(p []byte) (int, error)
	Close() error
}

// NSMConfig configures an NSMAttester. The zero value opens /dev/nsm.
type NSMConfig struct {
	// Session is the NSM session to use; NSMAttester.Close closes it.
	// Default (nil): open /dev/nsm. That fails with ErrNoNSM when the device
	// does not exist (outside an enclave), and with an error wrapping
	// errors.ErrUnsupported on operating systems other than Linux.
	Session NSMSession

	// MaxConcurrent bounds the requests (Attest and Read) in the NSM at
	// once. Callers past it wait in Go, where Attest's context can cancel
	// them, instead of each holding an OS thread blocked in the ioctl: the
	// Linux driver serves one request at a time, so without a bound a
	// flood of attestation requests parks one thread per request in the
	// kernel, and past 10,000 threads the Go runtime aborts the process.
	// Default: DefaultNSMConcurrency (1, what the driver serves anyway).
	MaxConcurrent int
}

// DefaultNSMConcurrency is NSMConfig.MaxConcurrent's default.
const DefaultNSMConcurrency = 1

// NSMAttester is the production Attester: it asks the Nitro Secure Module
// (/dev/nsm) for attestation documents. It is also an io.Reader of random
// bytes from the NSM (see SeedEntropy). It is safe for concurrent use. When
// it is no longer needed, Close must be called; it waits for calls in flight.
type NSMAttester struct {
	mu    sync.RWMutex
	sess  NSMSession    // guarded by mu; nil after Close
	slots chan struct{} // one token per request in the NSM
}

var (
	_ Attester  = (*NSMAttester)(nil)
	_ io.Reader = (*NSMAttester)(nil)
)

// NewNSMAttester opens the NSM session (unless cfg.Session is given).
func NewNSMAttester(cfg NSMConfig) (*NSMAttester, error) {
	if cfg.MaxConcurrent < 0 {
		return nil, fmt.Errorf("attestation: NSMConfig.MaxConcurrent %d is negative", cfg.MaxConcurrent)
	}
	if cfg.MaxConcurrent == 0 {
		cfg.MaxConcurrent = DefaultNSMConcurrency
	}
	sess := cfg.Session
	if sess == nil {
		var err error
		if sess, err = openNSM(); err != nil {
			return nil, err
		}
	}
	return &NSMAttester{sess: sess, slots: make(chan struct{}, cfg.MaxConcurrent)}, nil
}

// Attest asks the NSM for a document carrying req. The ctx cancels the wait
// for the NSM (see NSMConfig.MaxConcurrent), not the request once it is in
// the NSM: that is a single ioctl that cannot be interrupted.
func (a *NSMAttester) Attest(ctx context.Context, req Request) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("attestation: NSM attest: %w", err)
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	select {
	case a.slots <- struct{}{}:
		defer func() { <-a.slots }()
	case <-ctx.Done():
		return nil, fmt.Errorf("attestation: NSM attest: waiting for the NSM: %w", ctx.Err())
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.sess == nil {
		return nil, ErrClosed
	}
	res, err := a.sess.Send(&request.Attestation{
		Nonce:     nilIfEmpty(req.Nonce),
		UserData:  nilIfEmpty(req.UserData),
		PublicKey: nilIfEmpty(req.PublicKey),
	})
	if err != nil {
		return nil, fmt.Errorf("attestation: NSM attest: %w", err)
	}
	if res.Error != "" {
		return nil, &NSMError{Code: string(res.Error)}
	}
	if res.Attestation == nil || len(res.Attestation.Document) == 0 {
		return nil, fmt.Errorf("attestation: NSM attest: response carries no document")
	}
	return bytes.Clone(res.Attestation.Document), nil
}

// Read fills p with random bytes from the NSM's hardware generator. It blocks
// until p is full or the NSM fails.
func (a *NSMAttester) Read(p []byte) (int, error) {
	a.slots <- struct{}{}
	defer func() { <-a.slots }()
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.sess == nil {
		return 0, ErrClosed
	}
	n, err := a.sess.Read(p)
	if err != nil {
		return n, fmt.Errorf("attestation: NSM random: %w", err)
	}
	return n, nil
}

// Close closes the NSM session. Later calls return ErrClosed; a second Close
// returns nil.
func (a *NSMAttester) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sess == nil {
		return nil
	}
	err := a.sess.Close()
	a.sess = nil
	if err != nil {
		return fmt.Errorf("attestation: close NSM session: %w", err)
	}
	return nil
}

// MaxEntropySeed bounds the n of SeedEntropy.
const MaxEntropySeed = 64 << 10

// randomDevice is the kernel entropy pool device SeedEntropy writes to.
const randomDevice = "/dev/random"

// SeedEntropy reads n bytes from src (an NSMAttester at enclave start) and
// adds them to the kernel entropy pool, crediting them as entropy
// (ioctl RNDADDENTROPY on /dev/random, which needs CAP_SYS_ADMIN). An enclave
// boots with an empty pool; seeding it from the NSM unblocks getrandom early.
// 256 bytes are ample for the kernel's 256-bit pool.
//
// When crediting is not permitted, the bytes are written to /dev/random
// (mixed in, not credited) and the error wraps ErrEntropyNotCredited; the
// caller may carry on. On operating systems other than Linux the error wraps
// errors.ErrUnsupported.
func SeedEntropy(src io.Reader, n int) error {
	return seedEntropy(randomDevice, src, n)
}

func seedEntropy(device string, src io.Reader, n int) error {
	if n <= 0 || n > MaxEntropySeed {
		return fmt.Errorf("attestation: seed entropy: n = %d out of range [1, %d]", n, MaxEntropySeed)
	}
	buf := make([]byte, n)
	defer clear(buf)
	if _, err := io.ReadFull(src, buf); err != nil {
		return fmt.Errorf("attestation: seed entropy: read source: %w", err)
	}
	return seedKernel(device, buf)
}
