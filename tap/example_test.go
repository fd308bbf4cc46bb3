package tap_test

import (
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"time"

	"github.com/quenchnet/quench/tap"
)

// The enclave side: dial the host, send the handshake, exchange frames.
func ExampleConn_ClientHandshake() {
	nc, err := net.Dial("unix", "/run/quench/host.sock") // VSOCK in an enclave
	if err != nil {
		log.Fatal(err)
	}
	c, err := tap.NewConn(nc, tap.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if err := c.ClientHandshake(); err != nil {
		log.Fatal(err)
	}
	var frames [][]byte // Ethernet frames to send
	if _, err := c.WriteFrames(frames, 0); err != nil {
		log.Fatal(err)
	}
	for {
		f, err := c.Next() // valid until the next call
		if err != nil {
			log.Print(err) // io.EOF when the host closes
			return
		}
		_ = f
	}
}

// The host side: accept enclave streams and read frames, batching work
// while frames are buffered.
func ExampleConn_ServerHandshake() {
	ln, err := net.Listen("unix", "/run/quench/host.sock")
	if err != nil {
		log.Fatal(err)
	}
	nc, err := ln.Accept()
	if err != nil {
		log.Fatal(err)
	}
	c, err := tap.NewConn(nc, tap.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if err := c.ServerHandshake(); err != nil {
		log.Print(err) // wraps tap.ErrBadHandshake
		return
	}
	deliver := func(frames [][]byte) { /* hand to the network stack */ }
	var batch [][]byte
	for {
		f, err := c.Next() // aliases c's buffer until Next does a read syscall
		if err != nil {
			return
		}
		batch = append(batch, f)
		if !c.Buffered() { // Next would block: hand over the batch first
			deliver(batch)
			batch = batch[:0]
		}
	}
}

// An enclave daemon: one TAP device, and a Pump that outlives reconnects.
func ExamplePump() {
	dev, err := tap.CreateTAP(tap.TAPConfig{ResolvConf: "/etc/resolv.conf"})
	if err != nil {
		log.Fatal(err)
	}
	p := tap.NewPump(dev, slog.Default())
	defer p.Close() // closes dev

	ctx := context.Background()
	for ctx.Err() == nil {
		nc, err := net.Dial("unix", "/run/quench/host.sock") // vsock.Dial(3, 1024, nil) in an enclave
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		c, err := tap.NewConn(nc, tap.Config{})
		if err != nil {
			log.Fatal(err)
		}
		if err := c.ClientHandshake(); err != nil {
			c.Close()
			continue
		}
		err = p.Run(ctx, c) // closes c
		if errors.Is(err, io.EOF) {
			log.Print("host closed the stream; reconnecting")
		}
	}
}
