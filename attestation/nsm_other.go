//go:build !linux

package attestation

import (
	"errors"
	"fmt"
	"runtime"
)

func openNSM() (NSMSession, error) {
	return nil, fmt.Errorf("attestation: NSM attester: %w on %s (Nitro Enclaves run Linux)", errors.ErrUnsupported, runtime.GOOS)
}

func seedKernel(string, []byte) error {
	return fmt.Errorf("attestation: seed entropy: %w on %s", errors.ErrUnsupported, runtime.GOOS)
}
