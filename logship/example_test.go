package logship_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/quenchnet/quench/logship"
)

// A Go app in an enclave ships its log to the parent, where quench-host
// -enclave-logs vsock://:1025 writes each line with the enclave's CID.
// The app keeps writing to its standard error too (the console of a debug
// enclave); shipping never blocks it.
func ExampleShipper() {
	ship, err := logship.New(logship.Config{
		Dial: func(ctx context.Context) (net.Conn, error) {
			// The parent instance is CID 3 in a Nitro Enclave (not
			// vsock.Host, which is CID 2).
			return vsock.Dial(3, 1025, nil)
		},
		// Its own news (host unreachable, reached again): without it a
		// wrong port or a host without -enclave-logs goes unnoticed.
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		panic(err)
	}
	w, _ := ship.Writer("app")
	log := slog.New(slog.NewTextHandler(io.MultiWriter(os.Stderr, w), nil))
	log.Info("started", "version", "1.2.3")

	// ... serve; pass log as enclave.Config.Logger to get the library's
	// lines too, and set enclave.Config.Annotations["logs_to_host"] so that
	// clients see in /enclave/config that the logs leave the enclave.

	// On the way out, give the host a moment to take the last lines.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := ship.Close(ctx); err != nil {
		log.Warn("logs", "err", err)
	}
}
