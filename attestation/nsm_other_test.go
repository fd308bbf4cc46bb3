//go:build !linux

package attestation_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/quenchnet/quench/attestation"
)

func TestNSMUnsupported(t *testing.T) {
	if _, err := attestation.NewNSMAttester(attestation.NSMConfig{}); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("NewNSMAttester = %v, want errors.ErrUnsupported", err)
	}
	if err := attestation.SeedEntropy(bytes.NewReader(make([]byte, 64)), 64); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("SeedEntropy = %v, want errors.ErrUnsupported", err)
	}
}
