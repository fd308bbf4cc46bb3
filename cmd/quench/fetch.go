package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/quenchnet/quench/attestation"
)

const fetchUsage = `usage: quench fetch https://HOST[:PORT]/PATH --pcr N=HEX [flags]

Sends one HTTP request to an enclave app, over a connection to an enclave
that passed attestation first: after the TLS handshake, quench fetches a
document with a fresh nonce on that connection (GET /enclave/attestation),
verifies it (signature, chain, the PCRs given, that it binds the certificate
presented), and only then sends the request, on that same connection. A
connection that fails the check gets nothing of the request. The response
body goes to standard output (or -o FILE), as curl writes it. Redirects are
not followed (curl without -L): -i shows the Location.

Against an enclave with the development attester (-dev-attester), give the
root it wrote (-dev-root-out) with --roots, and --any-image: its documents
report all-zero PCRs, which pin no image.

It is for shell scripts and programs in any language; Go programs get the
same for every connection of an http.Client from attestation.NewTransport.

exit status: 0 the response came (any status, unless --fail); 1 attestation
or the request failed, or --fail and the status was 400 or more; 2 bad usage.

flags:
`

type fetchConfig struct {
	url      string
	method   string
	data     string
	hasData  bool // -d given, perhaps empty: a POST, as with curl
	headers  headerFlag
	include  bool
	output   string
	fail     bool
	verbose  bool
	anyImage bool
	pcrs     pcrFlag
	appKey   hexFlag
	roots    string
	maxAge   time.Duration
	timeout  time.Duration
	insecure bool
}

// headerFlag collects repeated -H "Name: value" flags.
type headerFlag []string

func (h *headerFlag) String() string { return strings.Join(*h, "; ") }

func (h *headerFlag) Set(s string) error {
	name, value, ok := strings.Cut(s, ":")
	name = strings.TrimSpace(name)
	if !ok || name == "" {
		return errors.New(`want "Name: value"`)
	}
	if !isToken(name) {
		return fmt.Errorf("header name %q: not a token", name)
	}
	if strings.ContainsAny(value, "\r\n\x00") {
		return fmt.Errorf("header %s: value holds a line break or NUL", name)
	}
	*h = append(*h, s)
	return nil
}

// isToken reports whether s is an HTTP token (RFC 9110 section 5.6.2), as
// header names and methods must be.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune(`()<>@,;:\"/[]?={}`, r) {
			return false
		}
	}
	return true
}

func parseFetch(args []string, stderr io.Writer) (*fetchConfig, int) {
	c := &fetchConfig{pcrs: pcrFlag{}, appKey: hexFlag{len: sha256.Size}}
	fs := flag.NewFlagSet("quench fetch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), fetchUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.method, "X", "", "request `METHOD` (default GET, or POST with -d)")
	fs.Func("d", "request body `DATA`; @FILE reads FILE, @- standard input (read whole, sent with a Content-Length); sent as is (like curl --data-binary: line breaks kept) and with no Content-Type unless -H gives one", func(v string) error {
		if c.hasData {
			return errors.New("given twice: one body per request (curl would join them with &)")
		}
		c.data, c.hasData = v, true
		return nil
	})
	fs.Var(&c.headers, "H", "request `HEADER`, as \"Name: value\" (repeatable)")
	fs.BoolVar(&c.include, "i", false, "print the response status line and headers before the body")
	fs.StringVar(&c.output, "o", "", "write the body to `FILE` instead of standard output (- is standard output)")
	fs.BoolVar(&c.fail, "fail", false, "exit 1 without printing the body when the status is 400 or more")
	fs.BoolVar(&c.verbose, "v", false, "print each verified document's summary to standard error")
	fs.Var(c.pcrs, "pcr", "require PCR N to equal HEX, as `N=HEX` (repeatable; at least one unless --any-image)")
	fs.BoolVar(&c.anyImage, "any-image", false, "accept an enclave of any image: no --pcr, or all-zero ones (debug mode, -dev-attester); for tests only")
	fs.Var(&c.appKey, "app-key-sha256", "require the user data to bind the application key with this SHA-256 `HEX`")
	fs.StringVar(&c.roots, "roots", "", "trust the root certificates in PEM `FILE` instead of the AWS Nitro root (e.g. a development root)")
	fs.DurationVar(&c.maxAge, "max-age", 0, "reject documents whose timestamp is further than `DURATION` from now (default: not checked; the fresh nonce proves the document new)")
	fs.BoolVar(&c.insecure, "insecure-skip-tls-verify", false, "do not verify the server certificate against the system roots\n(enclave certificates are usually self-signed; the attestation document's\ncertificate binding still authenticates the connection)")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "give up after `DURATION` (attestation, request and response)")

	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return nil, code
	}
	usageErr := func(format string, a ...any) (*fetchConfig, int) {
		fmt.Fprintf(stderr, "quench fetch: "+format+"\n", a...)
		return nil, exitUsage
	}
	if len(pos) != 1 {
		return usageErr("one URL expected, got %d arguments; see quench fetch -h", len(pos))
	}
	u, err := url.Parse(pos[0])
	switch {
	case err != nil || !strings.EqualFold(u.Scheme, "https"):
		return usageErr("URL %q must start with https:// (the document binds the TLS certificate)", pos[0])
	case u.Hostname() == "":
		return usageErr("URL %q has no host", pos[0])
	case len(c.pcrs) == 0 && !c.anyImage:
		return usageErr("give the enclave image's PCRs (--pcr 0=HEX, PCR0 from nitro-cli build-enclave): without them any enclave passes, including one someone else runs at that address (--any-image for tests)")
	case attestation.DebugModePCRs(c.pcrs) && !c.anyImage:
		return usageErr("every --pcr value is all zero: every enclave in debug mode reports those, whatever its image (the development attester too); pin a production measurement, or add --any-image to accept them (tests, -dev-attester)")
	case c.method != "" && !isToken(c.method):
		return usageErr("-X %q: not an HTTP method (a token: letters, digits, no spaces)", c.method)
	case c.timeout <= 0:
		return usageErr("--timeout must be positive, got %s", c.timeout)
	case c.maxAge < 0:
		return usageErr("--max-age must not be negative")
	}
	c.url = pos[0]
	if c.method == "" {
		c.method = http.MethodGet
		if c.hasData {
			c.method = http.MethodPost
		}
	}
	return c, exitOK
}

func runFetch(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c, code := parseFetch(args, stderr)
	if c == nil {
		return code
	}
	failed := func(err error) int {
		fmt.Fprintf(stderr, "quench fetch: FAILED: %s\n", failureMessage(err, c.roots, c.insecure, c.timeout, c.url))
		return exitFailed
	}
	opts := attestation.Options{MaxAge: c.maxAge}
	if len(c.pcrs) > 0 {
		opts.PCRs = c.pcrs
	}
	if c.appKey.set {
		opts.AppKeyHash = c.appKey.b
	}
	if c.roots != "" {
		roots, err := attestation.LoadRoots(c.roots)
		if err != nil {
			return failed(err)
		}
		opts.Roots = roots
	}
	tr, err := attestation.NewTransport(attestation.ClientConfig{
		Options:   opts,
		AnyImage:  c.anyImage,
		TLSConfig: &tls.Config{InsecureSkipVerify: c.insecure}, //nolint:gosec // see the flag's help
		Timeout:   c.timeout,
		OnVerify: func(addr string, res *attestation.Result) {
			if c.verbose {
				fmt.Fprintf(stderr, "quench fetch: verified %s: module %s, %s\n", terminalSafe(addr), terminalSafe(res.ModuleID), checksList(res))
			}
		},
	})
	if err != nil {
		return failed(err)
	}
	defer tr.Close()

	// The body is read whole first, as curl -d does, so that it goes with a
	// Content-Length: a stream of unknown length would go chunked, which
	// many apps and proxies refuse (411 Length Required).
	var body io.Reader
	if c.hasData {
		var b []byte
		var err error
		switch {
		case c.data == "@-":
			b, err = io.ReadAll(stdin)
		case strings.HasPrefix(c.data, "@"):
			b, err = os.ReadFile(c.data[1:])
		default:
			b = []byte(c.data)
		}
		if err != nil {
			return failed(err)
		}
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, c.method, c.url, body)
	if err != nil {
		return failed(err)
	}
	for _, h := range c.headers {
		name, value, _ := strings.Cut(h, ":")
		name = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(name))
		if name == "Host" {
			req.Host = strings.TrimSpace(value)
			continue
		}
		req.Header.Add(name, strings.TrimSpace(value))
	}
	if _, ok := req.Header["User-Agent"]; !ok {
		// Only when -H gave none: net/http sends the first value alone.
		req.Header.Set("User-Agent", "quench-fetch")
	}
	client := &http.Client{
		Transport: tr,
		// Redirects are the caller's to follow: a Location may name
		// another enclave, which the same policy would accept silently.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return failed(err)
	}
	defer resp.Body.Close()
	if c.fail && resp.StatusCode >= 400 {
		return failed(fmt.Errorf("the enclave answered %s", resp.Status))
	}
	out := stdout
	if c.output != "" && c.output != "-" {
		f, err := os.Create(c.output)
		if err != nil {
			return failed(err)
		}
		defer f.Close()
		out = f
	}
	if c.include {
		fmt.Fprintf(out, "%s %s\r\n", resp.Proto, resp.Status)
		_ = resp.Header.Write(out) // sorted by name, values' line breaks replaced
		fmt.Fprint(out, "\r\n")
	}
	if _, err := io.Copy(out, resp.Body); err != nil {
		return failed(fmt.Errorf("reading the response: %w", err))
	}
	if f, ok := out.(*os.File); ok && c.output != "" && c.output != "-" {
		if err := f.Close(); err != nil {
			return failed(err)
		}
	}
	return exitOK
}

func checksList(res *attestation.Result) string {
	s := make([]string, len(res.Checks))
	for i, c := range res.Checks {
		s[i] = string(c)
	}
	return strings.Join(s, ", ")
}
