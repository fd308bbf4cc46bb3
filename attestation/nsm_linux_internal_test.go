package attestation

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestSeedEntropyFallbackToWrite(t *testing.T) {
	// A regular file refuses the ioctl (ENOTTY), so the bytes are written
	// (mixed, not credited) and the error says so.
	dev := filepath.Join(t.TempDir(), "random")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	src := bytes.Repeat([]byte{0xab}, 100)
	err := seedEntropy(dev, bytes.NewReader(src), 64)
	if !errors.Is(err, ErrEntropyNotCredited) {
		t.Fatalf("seedEntropy = %v, want ErrEntropyNotCredited", err)
	}
	got, _ := os.ReadFile(dev)
	if !bytes.Equal(got, src[:64]) {
		t.Fatalf("device got %x, want 64 bytes of ab", got)
	}
}
