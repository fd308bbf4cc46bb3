//go:build !linux

package tap_test

import (
	"errors"
	"testing"

	"github.com/quenchnet/quench/tap"
)

func TestCreateTAPUnsupported(t *testing.T) {
	dev, err := tap.CreateTAP(tap.TAPConfig{})
	if !errors.Is(err, errors.ErrUnsupported) {
		if dev != nil {
			dev.Close()
		}
		t.Fatalf("CreateTAP = %v, want errors.ErrUnsupported", err)
	}
}
