package attestation_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hf/nsm/request"
	"github.com/hf/nsm/response"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/attestationtest"
)

// The NSM attester is tested through its session seam: FakeNSM answers the
// same requests /dev/nsm does (see nsm_linux_test.go for the device itself).
func TestNSMAttesterWithFakeNSM(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	fake := attestationtest.NewFakeNSM(dev)
	a, err := attestation.NewNSMAttester(attestation.NSMConfig{Session: fake})
	if err != nil {
		t.Fatal(err)
	}
	req := attestation.Request{Nonce: []byte("n"), UserData: []byte("u"), PublicKey: []byte("k")}
	doc, err := a.Attest(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	res, err := attestation.Verify(doc, attestation.Options{Time: time.Now(), Roots: dev.Roots(), Nonce: req.Nonce, UserData: req.UserData})
	if err != nil {
		t.Fatal(err)
	}
	if string(res.PublicKey) != "k" {
		t.Errorf("public key %q", res.PublicKey)
	}
	last := fake.LastAttestation()
	if string(last.Nonce) != "n" || string(last.UserData) != "u" || string(last.PublicKey) != "k" {
		t.Errorf("NSM received %+v", last)
	}

	// Empty fields are sent as absent (nil), as the NSM expects.
	if _, err := a.Attest(context.Background(), attestation.Request{Nonce: []byte{}}); err != nil {
		t.Fatal(err)
	}
	if last := fake.LastAttestation(); len(last.Nonce) != 0 {
		t.Errorf("empty nonce sent as %x", last.Nonce)
	}

	// Random source.
	buf := make([]byte, 1000)
	if n, err := io.ReadFull(a, buf); err != nil || n != len(buf) || bytes.Equal(buf, make([]byte, 1000)) {
		t.Fatalf("Read = %d, %v", n, err)
	}

	// NSM error codes and transport errors.
	fake.FailWith(response.ECInternalError, nil)
	_, err = a.Attest(context.Background(), req)
	var ne *attestation.NSMError
	if !errors.As(err, &ne) || ne.Code != "InternalError" {
		t.Errorf("Attest with NSM error = %v, want NSMError InternalError", err)
	}
	if _, err := a.Read(buf); err == nil {
		t.Error("Read with NSM error succeeded")
	}
	ioctl := errors.New("ioctl failed on device with errno EIO")
	fake.FailWith("", ioctl)
	if _, err := a.Attest(context.Background(), req); !errors.Is(err, ioctl) || !strings.HasPrefix(err.Error(), "attestation: ") {
		t.Errorf("Attest with ioctl error = %v", err)
	}
	fake.FailWith("", nil)

	// Cancelled context: nothing is sent.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	before := fake.Attestations()
	if _, err := a.Attest(ctx, req); !errors.Is(err, context.Canceled) || fake.Attestations() != before {
		t.Errorf("Attest with cancelled ctx = %v (sent %d)", err, fake.Attestations()-before)
	}

	// Close closes the session once; later calls fail with ErrClosed.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if !fake.Closed() {
		t.Error("session not closed")
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if _, err := a.Attest(context.Background(), req); !errors.Is(err, attestation.ErrClosed) {
		t.Errorf("Attest after Close = %v, want ErrClosed", err)
	}
	if _, err := a.Read(buf); !errors.Is(err, attestation.ErrClosed) {
		t.Errorf("Read after Close = %v, want ErrClosed", err)
	}
}

// TestNSMAttesterCloseWaits: Close while Attest calls are in flight (for -race).
func TestNSMAttesterCloseWaits(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	a, err := attestation.NewNSMAttester(attestation.NSMConfig{Session: attestationtest.NewFakeNSM(dev)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 5 {
				_, err := a.Attest(context.Background(), attestation.Request{})
				if err != nil && !errors.Is(err, attestation.ErrClosed) {
					t.Error(err)
				}
			}
		})
	}
	if err := a.Close(); err != nil {
		t.Error(err)
	}
	wg.Wait()
}

func TestSeedEntropyArguments(t *testing.T) {
	tests := []struct {
		name string
		src  io.Reader
		n    int
	}{
		{"zero", bytes.NewReader(make([]byte, 10)), 0},
		{"too many", bytes.NewReader(make([]byte, 10)), attestation.MaxEntropySeed + 1},
		{"short source", bytes.NewReader(make([]byte, 10)), 64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := attestation.SeedEntropy(tt.src, tt.n); err == nil {
				t.Fatal("SeedEntropy succeeded")
			}
		})
	}
}

// gatedNSM holds every Send until gate is closed (or, with hold set, for
// hold), counting the requests inside the NSM at once.
type gatedNSM struct {
	*attestationtest.FakeNSM
	gate          chan struct{}
	hold          time.Duration
	inside, most  atomic.Int32
	entered       chan struct{}
	enteredClosed sync.Once
}

func (g *gatedNSM) Send(req request.Request) (response.Response, error) {
	n := g.inside.Add(1)
	defer g.inside.Add(-1)
	for m := g.most.Load(); n > m && !g.most.CompareAndSwap(m, n); m = g.most.Load() {
	}
	g.enteredClosed.Do(func() { close(g.entered) })
	if g.hold > 0 {
		time.Sleep(g.hold)
	} else {
		<-g.gate
	}
	return g.FakeNSM.Send(req)
}

// TestNSMAttesterOneRequestAtATime: concurrent Attest calls reach the NSM one
// at a time (each would otherwise hold an OS thread blocked in the driver,
// which serves one request at a time).
func TestNSMAttesterOneRequestAtATime(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	g := &gatedNSM{FakeNSM: attestationtest.NewFakeNSM(dev), hold: 5 * time.Millisecond, entered: make(chan struct{})}
	a, err := attestation.NewNSMAttester(attestation.NSMConfig{Session: g})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			if _, err := a.Attest(context.Background(), attestation.Request{}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if m := g.most.Load(); m != 1 {
		t.Errorf("%d requests in the NSM at once, want 1", m)
	}
}

// attestAsync calls a.Attest in a goroutine; its error arrives on the
// channel.
func attestAsync(ctx context.Context, a *attestation.NSMAttester) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := a.Attest(ctx, attestation.Request{})
		ch <- err
	}()
	return ch
}

// TestNSMAttesterWaitCancelled: a caller waiting for the NSM gives up when
// its context ends, while the request ahead of it is still in the NSM.
func TestNSMAttesterWaitCancelled(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	g := &gatedNSM{FakeNSM: attestationtest.NewFakeNSM(dev), gate: make(chan struct{}), entered: make(chan struct{})}
	a, err := attestation.NewNSMAttester(attestation.NSMConfig{Session: g})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	first := attestAsync(context.Background(), a)
	<-g.entered
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	select {
	case err := <-attestAsync(ctx, a):
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Attest waiting behind a stuck request = %v, want DeadlineExceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("Attest waiting behind a stuck request did not return when its context ended")
	}
	close(g.gate)
	if err := <-first; err != nil {
		t.Errorf("first Attest = %v", err)
	}
}

func TestNSMAttesterMaxConcurrent(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	if _, err := attestation.NewNSMAttester(attestation.NSMConfig{Session: attestationtest.NewFakeNSM(dev), MaxConcurrent: -1}); err == nil {
		t.Error("MaxConcurrent -1 accepted")
	}
	g := &gatedNSM{FakeNSM: attestationtest.NewFakeNSM(dev), gate: make(chan struct{}), entered: make(chan struct{})}
	a, err := attestation.NewNSMAttester(attestation.NSMConfig{Session: g, MaxConcurrent: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() { _, _ = a.Attest(context.Background(), attestation.Request{}) })
	}
	for g.inside.Load() < 3 {
		time.Sleep(time.Millisecond)
	}
	close(g.gate)
	wg.Wait()
	if m := g.most.Load(); m != 3 {
		t.Errorf("%d requests in the NSM at once, want 3", m)
	}
}
