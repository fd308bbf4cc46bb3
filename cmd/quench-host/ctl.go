package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/quenchnet/quench/host"
)

const ctlUsage = `quench-host ctl: talk to a running quench-host's control API.

Usage:
  quench-host ctl [-control PATH] status            enclaves, ports, -vsock-proxy ports and counters
  quench-host ctl [-control PATH] ports             published ports and their counters (not -vsock-proxy's)
  quench-host ctl [-control PATH] add SPEC          publish [HOSTIP:]HOSTPORT:ENCLAVEPORT[/udp]
  quench-host ctl [-control PATH] add-vsock SPEC    publish [HOSTIP:]HOSTPORT:VSOCKPORT (fast path)
  quench-host ctl [-control PATH] [-drain D] rm [tcp/|udp/]ADDR
                                                    stop publishing ADDR (as listed by ports),
                                                    draining its connections for up to D

Flags:
`

func runCtl(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("quench-host ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.String("control", "/run/quench-host/control.sock", "control socket of the running quench-host (its -control flag)")
	drainFor := fs.Duration("drain", 0, "rm: how long to let the port's connections finish (default: the daemon's -drain-timeout)")
	timeout := fs.Duration("timeout", 0, "give up after this long (default: none for rm, 10s otherwise)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), ctlUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "quench-host ctl: %v\n", err)
		return 1
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", *sock)
		},
	}}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	want := func(n int) error {
		if len(rest) != n {
			return fmt.Errorf("%s takes %d argument(s), got %d (see -help)", cmd, n, len(rest))
		}
		return nil
	}
	ctx := context.Background()
	if *timeout > 0 || cmd != "rm" {
		d := *timeout
		if d == 0 {
			d = 10 * time.Second
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	var (
		method, path string
		body         any
		wantCode     = http.StatusOK
	)
	switch cmd {
	case "status":
		method, path = "GET", "/v1/status"
	case "ports":
		method, path = "GET", "/v1/ports"
	case "add", "add-vsock":
		if err := want(1); err != nil {
			return fail(err)
		}
		var spec host.Publish
		var err error
		if cmd == "add" {
			spec, err = host.ParsePublish(rest[0])
		} else {
			spec, err = host.ParsePublishVSock(rest[0])
		}
		if err != nil {
			return fail(err)
		}
		method, path, wantCode = "POST", "/v1/ports", http.StatusCreated
		body = host.PortJSON{Network: spec.Network, Host: spec.Host.String(), EnclavePort: spec.EnclavePort, VSockPort: spec.VSockPort}
	case "rm":
		if err := want(1); err != nil {
			return fail(err)
		}
		network, addr := "tcp", rest[0]
		if n, a, ok := strings.Cut(addr, "/"); ok {
			network, addr = n, a
		}
		method, path, wantCode = "DELETE", "/v1/ports/"+url.PathEscape(network)+"/"+url.PathEscape(addr), http.StatusNoContent
		if *drainFor > 0 {
			path += "?drain=" + drainFor.String()
		}
	default:
		return fail(fmt.Errorf("unknown command %q (see -help)", cmd))
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fail(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://quench-host"+path, rd)
	if err != nil {
		return fail(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fail(fmt.Errorf("%w (is quench-host running with -control %s?)", err, *sock))
		}
		return fail(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != wantCode {
		var e struct{ Error string }
		if json.Unmarshal(out, &e) == nil && e.Error != "" {
			return fail(errors.New(e.Error))
		}
		return fail(fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(out)))
	}
	_, _ = stdout.Write(out)
	return 0
}
