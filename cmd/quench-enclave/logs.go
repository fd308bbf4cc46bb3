package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/logship"
)

// logShipTimeout bounds how long quench-enclave, on its way out, waits for
// the host to take the last lines (the app's dying words are among them).
const logShipTimeout = 3 * time.Second

// tee writes to local and, once set, to a log shipper's writer. Writes
// always succeed in full: the shipper never fails or blocks, and a broken
// local output (a closed console) must not stop the lines reaching the host.
type tee struct {
	local io.Writer
	ship  atomic.Pointer[io.Writer]
}

func (t *tee) Write(p []byte) (int, error) {
	_, _ = t.local.Write(p)
	if w := t.ship.Load(); w != nil {
		_, _ = (*w).Write(p)
	}
	return len(p), nil
}

func (t *tee) set(w io.Writer) { t.ship.Store(&w) }

// startLogShip starts shipping quench-enclave's log (o.logTee) to -log-to.
// The returned function sends what is left and stops; it reports lines it
// could not deliver on stderr.
func startLogShip(o *options, stderr io.Writer) (stop func(), err error) {
	a, eopts := o.logTo, o.eopts
	sh, err := logship.New(logship.Config{
		Dial: func(ctx context.Context) (net.Conn, error) {
			return endpoint.Dial(ctx, a, eopts)
		},
		Logger: o.logger,
	})
	if err != nil {
		return nil, err
	}
	w, err := sh.Writer("quench")
	if err != nil {
		return nil, err
	}
	o.logTee.set(w)
	o.logShip = sh
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), logShipTimeout)
		defer cancel()
		err := sh.Close(ctx)
		o.logTee.ship.Store(nil)
		if err != nil {
			fmt.Fprintf(stderr, "quench-enclave: -log-to %s: %v\n", a, err)
		}
	}, nil
}

// appOutput returns where the app's stream (stdout or stderr) goes: local,
// and the host when shipping.
func appOutput(o *options, local io.Writer, stream string) io.Writer {
	if o.logShip == nil {
		return local
	}
	w, err := o.logShip.Writer(stream)
	if err != nil {
		panic(err) // stream names are ours
	}
	t := &tee{local: local}
	t.set(w)
	return t
}
