package attestation_test

import (
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"testing"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/attestationtest"
)

// There is no /dev/nsm on build machines: only the "absent" path of the real
// device is tested here. The request/response handling is tested through the
// session seam (nsm_test.go); the ioctl itself only runs in an enclave.
func TestNSMAttesterWithoutDevice(t *testing.T) {
	if _, err := os.Stat("/dev/nsm"); err == nil {
		t.Skip("/dev/nsm exists: this machine is a Nitro Enclave")
	}
	a, err := attestation.NewNSMAttester(attestation.NSMConfig{})
	if a != nil || !errors.Is(err, attestation.ErrNoNSM) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("NewNSMAttester = %v, %v; want ErrNoNSM wrapping fs.ErrNotExist", a, err)
	}
}

// TestSeedEntropyKernel adds 64 bytes from crypto/rand to this machine's
// kernel pool, as an enclave does at start with NSM bytes. Crediting needs
// CAP_SYS_ADMIN; without it the bytes are only mixed in.
func TestSeedEntropyKernel(t *testing.T) {
	err := attestation.SeedEntropy(rand.Reader, 64)
	if os.Geteuid() != 0 {
		if !errors.Is(err, attestation.ErrEntropyNotCredited) && !errors.Is(err, fs.ErrPermission) {
			t.Fatalf("SeedEntropy as non-root = %v, want ErrEntropyNotCredited or a permission error", err)
		}
		t.Skipf("not root: %v (run as root to test crediting)", err)
	}
	if errors.Is(err, attestation.ErrEntropyNotCredited) {
		t.Skipf("root without CAP_SYS_ADMIN (container?): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestSeedEntropyFromFakeNSM: the NSM attester is the entropy source.
func TestSeedEntropyFromFakeNSM(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	a, err := attestation.NewNSMAttester(attestation.NSMConfig{Session: attestationtest.NewFakeNSM(dev)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := attestation.SeedEntropy(a, 256); err != nil && !errors.Is(err, attestation.ErrEntropyNotCredited) {
		t.Fatal(err)
	}
}
