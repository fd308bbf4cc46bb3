package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
)

// Exit statuses.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: quench <command> [arguments]

commands:
  verify    verify a Nitro attestation document, fetched from an enclave or stored,
            or an enclave's attested configuration (--config)
  fetch     send one HTTP request to an enclave app over a connection verified
            by attestation first (curl with the enclave's PCRs pinned)
  help      show this help

Run "quench verify -h" and "quench fetch -h" for their flags.
`

// run executes one quench command and returns the exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "verify":
		return runVerify(ctx, args[1:], stdin, stdout, stderr)
	case "fetch":
		return runFetch(ctx, args[1:], stdin, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "quench: unknown command %q\n\n%s", args[0], usage)
	return exitUsage
}
