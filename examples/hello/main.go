// Command hello is a Go enclave app that imports package enclave: it serves
// HTTPS with attestation from inside the enclave, its handler running in
// process (no proxy hop), in either network mode. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/logship"
	"github.com/quenchnet/quench/policy"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "hello:", err)
		os.Exit(1)
	}
}

func run(args []string) (runErr error) {
	fs := flag.NewFlagSet("hello", flag.ContinueOnError)
	var (
		network    = fs.String("network", "userspace", "tap or userspace")
		hostURL    = fs.String("host", "vsock://3:1024", "quench-host: vsock://CID:PORT or unix:///path")
		publicAddr = fs.String("public-addr", enclave.DefaultPublicAddr, "public HTTPS address on the enclave's network")
		intAddr    = fs.String("internal-addr", "-", "internal server for sidecars (- for none: this app is in process)")
		fqdn       = fs.String("fqdn", "", "public name (certificate)")
		acme       = fs.Bool("acme", false, "obtain the certificate for -fqdn by ACME")
		devAtt     = fs.Bool("dev-attester", false, "INSECURE development attester instead of the Nitro Secure Module")
		devRootOut = fs.String("dev-root-out", "", "with -dev-attester: write its root certificate (PEM) here")
		resolvConf = fs.String("resolv-conf", "/etc/resolv.conf", "TAP mode: resolv.conf to write; - to leave it alone")
		ingress    = fs.String("ingress", "", "also serve HTTPS on this listener for quench-host's ingress fast path (-publish-vsock; PROXY header first), e.g. vsock://:8443")
		logTo      = fs.String("log-to", "", "also send the log to quench-host -enclave-logs at this `URL` (vsock://3:1025); the host reads every line")
	)
	var allow []string
	fs.Func("allow", "egress policy `RULE` (repeatable; see package policy): where the app may connect, enforced in the enclave (in TAP mode for every program)", func(v string) error {
		allow = append(allow, v)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	var egress *policy.Policy
	if len(allow) > 0 {
		p, err := policy.Parse(allow)
		if err != nil {
			return fmt.Errorf("-allow: %w", err)
		}
		egress = p
	}
	eopts := endpoint.Options{VSockDir: endpoint.VSockDirFromEnv("")}
	var logOut io.Writer = os.Stderr
	var annotations map[string]string
	if *logTo != "" {
		// The log goes to the parent too (package logship): a production
		// enclave has no console. /enclave/config says so.
		la, err := endpoint.Parse(*logTo)
		if err != nil {
			return fmt.Errorf("-log-to: %w", err)
		}
		if la.Scheme == "vsock" && la.CID == endpoint.AnyCID {
			return fmt.Errorf("-log-to %s: no CID to send to (the parent is vsock://3:PORT)", *logTo)
		}
		ship, err := logship.New(logship.Config{
			Dial: func(ctx context.Context) (net.Conn, error) {
				return endpoint.Dial(ctx, la, eopts)
			},
			// The shipper's news (host unreachable, reached again) on
			// standard error only: without it a wrong -log-to or a host
			// without -enclave-logs went unnoticed.
			Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
		})
		if err != nil {
			return err
		}
		w, err := ship.Writer("app")
		if err != nil {
			return err
		}
		defer func() {
			if runErr != nil {
				// What main prints goes to the host too: a
				// production enclave has no console.
				fmt.Fprintf(w, "hello: %v\n", runErr)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if err := ship.Close(ctx); err != nil {
				fmt.Fprintln(os.Stderr, "hello: -log-to:", err)
			}
		}()
		logOut = io.MultiWriter(os.Stderr, w)
		annotations = map[string]string{"logs_to_host": la.String()}
	}
	log := slog.New(slog.NewTextHandler(logOut, nil))
	ha, err := endpoint.Parse(*hostURL)
	if err != nil {
		return err
	}
	var att attestation.Attester
	if *devAtt {
		dev, err := attestation.NewDevAttester(attestation.DevConfig{Logger: log})
		if err != nil {
			return err
		}
		if *devRootOut != "" {
			if err := dev.WriteRootPEM(*devRootOut); err != nil {
				return err
			}
		}
		att = dev
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the enclave (%s mode); you are %s\n", *network, r.RemoteAddr)
	})
	var ingressListen func() (net.Listener, error)
	if *ingress != "" {
		ia, err := endpoint.Parse(*ingress)
		if err == nil {
			err = eopts.CheckListen(ia)
		}
		if err != nil {
			return fmt.Errorf("-ingress %s: %w", *ingress, err)
		}
		ingressListen = func() (net.Listener, error) { return endpoint.Listen(ia, eopts) }
	}
	e, err := enclave.New(enclave.Config{
		Network: enclave.NetworkMode(*network),
		DialHost: func(ctx context.Context) (net.Conn, error) {
			return endpoint.Dial(ctx, ha, eopts)
		},
		ResolvConf:    *resolvConf,
		Handler:       mux,
		PublicAddr:    *publicAddr,
		IngressListen: ingressListen,
		InternalAddr:  *intAddr,
		WaitForApp:    true,
		FQDN:          *fqdn,
		ACME:          *acme,
		Attester:      att, // nil: the Nitro Secure Module
		Egress:        egress,
		Logger:        log,
		Annotations:   annotations,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := e.Start(startCtx); err != nil {
		return err
	}
	// The app would initialise here (keys, state); then it opens the door.
	if err := e.Ready(); err != nil {
		return errors.Join(err, e.Close())
	}
	log.Info("serving", "public", *publicAddr)
	<-ctx.Done()
	log.Info("shutting down")
	return e.Close()
}
