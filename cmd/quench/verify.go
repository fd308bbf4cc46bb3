package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/quenchnet/quench/attestation"
)

const verifyUsage = `usage: quench verify https://HOST[:PORT][/PATH] [flags]
       quench verify --config https://HOST[:PORT][/PATH] [flags]
       quench verify --doc FILE [flags]

With a URL, quench picks a random nonce, fetches GET /enclave/attestation?nonce=...
over TLS, verifies the document, and checks that it binds the certificate the
server presented on that same connection. With --config, it fetches the
enclave's configuration instead (GET /enclave/config?nonce=...: its egress
policy, how its app is sandboxed, ...), checks the same and that the document
binds that configuration, and prints it. A PATH in the URL is fetched in
place of that path. With --doc, it verifies a stored document (base64 or raw
CBOR; "-" reads stdin).

flags:
`

// pcrFlag collects repeated --pcr N=HEX flags.
type pcrFlag map[uint][]byte

func (p pcrFlag) String() string {
	var parts []string
	for i, v := range p {
		parts = append(parts, fmt.Sprintf("%d=%x", i, v))
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

func (p pcrFlag) Set(s string) error {
	idx, val, ok := strings.Cut(s, "=")
	if !ok {
		return errors.New("want N=HEX")
	}
	i, err := strconv.ParseUint(idx, 10, 8)
	if err != nil || i > 31 {
		return fmt.Errorf("PCR index %q: want 0 to 31", idx)
	}
	b, err := hex.DecodeString(val)
	if err != nil {
		return fmt.Errorf("PCR%d value: %v", i, err)
	}
	if n := len(b); n != 32 && n != 48 && n != 64 {
		return fmt.Errorf("PCR%d value is %d bytes, want 32, 48 or 64 (SHA-384: 96 hex digits)", i, n)
	}
	if _, dup := p[uint(i)]; dup {
		return fmt.Errorf("PCR%d given twice", i)
	}
	p[uint(i)] = b
	return nil
}

// hexFlag is an optional hex-encoded byte string.
type hexFlag struct {
	b   []byte
	set bool
	len int // required length in bytes, 0 for any
}

func (h *hexFlag) String() string { return hex.EncodeToString(h.b) }

func (h *hexFlag) Set(s string) error {
	if s == "" {
		// An empty expected nonce would match a document without one.
		return errors.New("empty value")
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return err
	}
	if h.len != 0 && len(b) != h.len {
		return fmt.Errorf("%d bytes, want %d (%d hex digits)", len(b), h.len, 2*h.len)
	}
	h.b, h.set = b, true
	return nil
}

type verifyConfig struct {
	url      string
	docPath  string
	at       time.Time
	pcrs     pcrFlag
	nonce    hexFlag
	certHash hexFlag
	appKey   hexFlag
	roots    string
	maxAge   time.Duration
	timeout  time.Duration
	insecure bool
	json     bool
	config   bool
}

// parseVerify parses the verify arguments; flags and the URL may come in any
// order. It returns nil and the exit status when it should stop.
func parseVerify(args []string, stderr io.Writer) (*verifyConfig, int) {
	c := &verifyConfig{
		pcrs:     pcrFlag{},
		certHash: hexFlag{len: sha256.Size},
		appKey:   hexFlag{len: sha256.Size},
	}
	var at string
	fs := flag.NewFlagSet("quench verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), verifyUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.docPath, "doc", "", "verify the stored document in `FILE` (base64 or raw CBOR; - for stdin) instead of fetching one")
	fs.StringVar(&at, "at", "", "verify at this time, `RFC3339` (default: now)")
	fs.Var(c.pcrs, "pcr", "require PCR N to equal HEX, as `N=HEX` (repeatable)")
	fs.Var(&c.nonce, "nonce", "expected nonce, `HEX`; with a URL, the nonce to send (40 hex digits; default: random)")
	fs.StringVar(&c.roots, "roots", "", "trust the root certificates in PEM `FILE` instead of the AWS Nitro root (e.g. a development root)")
	fs.DurationVar(&c.maxAge, "max-age", 0, "reject documents whose timestamp is further than `DURATION` from --at (default: not checked)")
	fs.Var(&c.certHash, "cert-sha256", "with --doc: require the user data to bind the TLS certificate with this SHA-256 `HEX`")
	fs.Var(&c.appKey, "app-key-sha256", "require the user data to bind the application key with this SHA-256 `HEX`")
	fs.BoolVar(&c.insecure, "insecure-skip-tls-verify", false, "with a URL: do not verify the server certificate against the system roots\n(enclave certificates are usually self-signed; the attestation document's\ncertificate binding still authenticates the connection)")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "with a URL: give up after `DURATION`")
	fs.BoolVar(&c.json, "json", false, "print the verified document and the checks as JSON (with --config, the configuration too, as \"config\")")
	fs.BoolVar(&c.config, "config", false, "with a URL: verify and print the enclave's attested configuration (/enclave/config) rather than a bare document")

	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return nil, code
	}
	usageErr := func(format string, a ...any) (*verifyConfig, int) {
		fmt.Fprintf(stderr, "quench verify: "+format+"\n", a...)
		return nil, exitUsage
	}
	switch {
	case len(pos) > 1:
		return usageErr("one URL expected, got %d arguments", len(pos))
	case len(pos) == 1 && c.docPath != "":
		return usageErr("give either a URL or --doc, not both")
	case len(pos) == 0 && c.docPath == "":
		return usageErr("give a URL (https://HOST[:PORT]) or --doc FILE; see quench verify -h")
	case len(pos) == 1:
		c.url = pos[0]
		if !strings.HasPrefix(c.url, "https://") {
			return usageErr("URL %q must start with https://", c.url)
		}
		if c.certHash.set {
			return usageErr("--cert-sha256 is for --doc; with a URL the certificate is the one the server presents")
		}
		if c.nonce.set && len(c.nonce.b) != attestation.NonceSize {
			return usageErr("--nonce with a URL must be %d hex digits", 2*attestation.NonceSize)
		}
		if c.timeout <= 0 {
			return usageErr("--timeout must be positive, got %s", c.timeout)
		}
	default:
		if c.insecure {
			return usageErr("--insecure-skip-tls-verify is for a URL")
		}
		if c.config {
			return usageErr("--config is for a URL: a stored document does not carry the configuration")
		}
	}
	if at == "" {
		c.at = time.Now()
	} else {
		t, err := time.Parse(time.RFC3339Nano, at)
		if err != nil {
			return usageErr("--at: %v", err)
		}
		c.at = t
	}
	if c.maxAge < 0 {
		return usageErr("--max-age must not be negative")
	}
	return c, exitOK
}

func runVerify(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c, code := parseVerify(args, stderr)
	if c == nil {
		return code
	}
	res, config, err := verify(ctx, c, stdin)
	if err != nil {
		msg := failureMessage(err, c.roots, c.insecure, c.timeout, c.url)
		fmt.Fprintf(stderr, "quench verify: FAILED: %s\n", msg)
		if c.json {
			_ = json.NewEncoder(stdout).Encode(map[string]any{"verified": false, "error": msg})
		}
		return exitFailed
	}
	if len(c.pcrs) == 0 {
		// Signature, chain and bindings hold for every genuine enclave:
		// only PCRs say which image it runs.
		fmt.Fprintln(stderr, "quench verify: note: no --pcr given: a document from any enclave image passes; pin yours with --pcr 0=HEX (PCR0 from nitro-cli build-enclave)")
	} else if attestation.DebugModePCRs(c.pcrs) {
		// What every enclave in debug mode reports (and the development
		// attester by default): they pin no image.
		fmt.Fprintln(stderr, "quench verify: note: every --pcr given is all zero, as every enclave in debug mode (and -dev-attester) reports whatever its image: this pins nothing; pin a production measurement (PCR0 from nitro-cli build-enclave)")
	}
	if to := logsToHost(config); to != "" {
		// The egress policy does not hold what the enclave logs: a client
		// relying on it should know where the logs go.
		fmt.Fprintf(stderr, "quench verify: note: the enclave sends its log and its app's output to the parent instance in clear (annotations.logs_to_host: %s); -allow does not cover them\n", terminalSafe(to))
	}
	if c.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		j := jsonResult(res, c.at)
		j.Config = jsonTerminalSafe(config)
		if err := enc.Encode(j); err != nil {
			fmt.Fprintf(stderr, "quench verify: %v\n", err)
			return exitFailed
		}
		return exitOK
	}
	printResult(stdout, res, c.at)
	if config != nil {
		printConfig(stdout, config)
	}
	return exitOK
}

// parseArgs parses args with fs, flags and positional arguments in any
// order, and returns the positional ones; ok is false when the command
// should stop with code (help asked for, or a bad flag, reported here).
//
// A bad flag is reported on one line that points to -h, not followed by the
// whole help, in which the error above scrolls out of sight.
func parseArgs(fs *flag.FlagSet, args []string) (pos []string, code int, ok bool) {
	out, usage := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	defer func() { fs.SetOutput(out); fs.Usage = usage }()
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(out)
				usage()
				return nil, exitOK, false
			}
			fmt.Fprintf(out, "%s: %s; see %s -h\n", fs.Name(), terminalSafe(err.Error()), fs.Name())
			return nil, exitUsage, false
		}
		if fs.NArg() == 0 {
			return pos, exitOK, true
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// failureMessage is err on one line, terminal-safe, with a hint for the
// two failures a first try usually meets: a development document checked
// against the AWS root, and a self-signed certificate checked against the
// system's.
//
// A timeout says which flag set it and where: "context deadline exceeded"
// alone, or nested in the errors of the steps it cut short, does not.
func failureMessage(err error, roots string, insecure bool, timeout time.Duration, rawURL string) string {
	if errors.Is(err, context.DeadlineExceeded) && timeout > 0 {
		host := rawURL
		if u, perr := url.Parse(rawURL); perr == nil && u.Host != "" {
			host = u.Host
		}
		return terminalSafe(fmt.Sprintf("%s: no answer within --timeout %s (the server accepted the connection but did not finish answering; raise --timeout for a slow enclave)", host, timeout))
	}
	msg := terminalSafe(strings.Join(strings.Fields(err.Error()), " "))
	if errors.Is(err, attestation.ErrUntrustedChain) && roots == "" {
		msg += " (checked against the AWS Nitro root; documents of a development attester, -dev-attester, need --roots with its -dev-root-out file)"
	}
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) && !insecure {
		msg += " (an enclave's certificate is usually self-signed: add --insecure-skip-tls-verify; the attestation document's certificate binding still authenticates the connection)"
	}
	return msg
}

// logsToHost returns the configuration's annotations.logs_to_host
// (quench-enclave -log-to), or "".
func logsToHost(config []byte) string {
	var c struct {
		Annotations map[string]any `json:"annotations"`
	}
	if config == nil || json.Unmarshal(config, &c) != nil {
		return ""
	}
	to, _ := c.Annotations["logs_to_host"].(string)
	return to
}

// printConfig prints an attested configuration indented, one line at a
// time through terminalSafe: JSON strings may hold characters (U+202E)
// that reorder what a terminal shows.
func printConfig(w io.Writer, config []byte) {
	var b bytes.Buffer
	if err := json.Indent(&b, config, "", "  "); err != nil {
		b.Reset()
		b.Write(config)
	}
	fmt.Fprintln(w, "config (bound by public_key):")
	for _, line := range strings.Split(b.String(), "\n") {
		fmt.Fprintln(w, terminalSafe(line))
	}
}

// terminalSafe returns s with every character that is neither printable nor
// a space escaped as in a Go string literal (\x1b, \a, \u202e): C0 and C1
// controls, DEL, and format characters such as bidirectional overrides.
// Errors carry text the server chose (the DNS names of its certificate, in
// a hostname mismatch), which must not reach the terminal of whoever runs
// quench verify as escape sequences.
func terminalSafe(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r == ' ' || unicode.IsPrint(r) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRuneToASCII(r)
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}

// jsonTerminalSafe returns the JSON value v with what terminalSafe escapes
// (and bytes that are not UTF-8) written as \u escapes, which decode to the
// same strings (U+FFFD for bytes that are not UTF-8, as encoding/json
// decodes them): --json writes the attested configuration to a terminal
// too. In valid JSON such characters occur in strings only.
func jsonTerminalSafe(v []byte) json.RawMessage {
	var b bytes.Buffer
	for len(v) > 0 {
		r, n := utf8.DecodeRune(v)
		switch {
		case r < utf8.RuneSelf && r != 0x7f, r != utf8.RuneError && unicode.IsPrint(r):
			b.Write(v[:n])
		default: // U+FFFD too: a byte that is not UTF-8 decodes to it
			r1, r2 := utf16.EncodeRune(r)
			if r1 == unicode.ReplacementChar {
				fmt.Fprintf(&b, `\u%04x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x\u%04x`, r1, r2)
			}
		}
		v = v[n:]
	}
	return b.Bytes()
}

// verify builds the policy from c and runs the library. It returns the
// attested configuration too with --config.
func verify(ctx context.Context, c *verifyConfig, stdin io.Reader) (*attestation.Result, []byte, error) {
	opts := attestation.Options{Time: c.at, MaxAge: c.maxAge}
	if len(c.pcrs) > 0 {
		opts.PCRs = c.pcrs
	}
	if c.nonce.set {
		opts.Nonce = c.nonce.b
	}
	if c.certHash.set {
		opts.TLSCertHash = c.certHash.b
	}
	if c.appKey.set {
		opts.AppKeyHash = c.appKey.b
	}
	if c.roots != "" {
		roots, err := attestation.LoadRoots(c.roots)
		if err != nil {
			return nil, nil, err
		}
		opts.Roots = roots
	}
	if c.url != "" {
		rc := attestation.RemoteConfig{
			Options:   opts,
			TLSConfig: &tls.Config{InsecureSkipVerify: c.insecure}, //nolint:gosec // see the flag's help
			Timeout:   c.timeout,
		}
		if c.config {
			return attestation.VerifyRemoteConfig(ctx, c.url, rc)
		}
		res, err := attestation.VerifyRemote(ctx, c.url, rc)
		return res, nil, err
	}
	data, err := readDoc(c.docPath, stdin)
	if err != nil {
		return nil, nil, err
	}
	doc, err := attestation.DecodeDocument(data)
	if err != nil {
		return nil, nil, err
	}
	res, err := attestation.Verify(doc, opts)
	return res, nil, err
}

// readDoc reads at most a little more than any valid document.
func readDoc(path string, stdin io.Reader) ([]byte, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	return io.ReadAll(io.LimitReader(r, 2*attestation.MaxDocumentSize+1))
}

type resultJSON struct {
	Verified     bool              `json:"verified"`
	VerifiedAt   string            `json:"verified_at"`
	ModuleID     string            `json:"module_id"`
	Timestamp    string            `json:"timestamp"`
	Digest       string            `json:"digest"`
	PCRs         map[string]string `json:"pcrs"`
	UserData     *string           `json:"user_data"`
	TLSCertHash  *string           `json:"tls_cert_sha256,omitempty"`
	AppKeyHash   *string           `json:"app_key_sha256,omitempty"`
	Nonce        *string           `json:"nonce"`
	PublicKey    *string           `json:"public_key"`
	Certificate  string            `json:"certificate_subject"`
	CertNotAfter string            `json:"certificate_not_after"`
	Checks       []string          `json:"checks"`
	Config       json.RawMessage   `json:"config,omitempty"` // --config: the attested configuration
}

func hexPtr(b []byte) *string {
	if b == nil {
		return nil
	}
	s := hex.EncodeToString(b)
	return &s
}

func jsonResult(r *attestation.Result, at time.Time) resultJSON {
	out := resultJSON{
		Verified:     true,
		VerifiedAt:   at.UTC().Format(time.RFC3339Nano),
		ModuleID:     r.ModuleID,
		Timestamp:    r.Timestamp.UTC().Format(time.RFC3339Nano),
		Digest:       r.Digest,
		PCRs:         map[string]string{},
		UserData:     hexPtr(r.UserData),
		Nonce:        hexPtr(r.Nonce),
		PublicKey:    hexPtr(r.PublicKey),
		Certificate:  r.Certificate.Subject.String(),
		CertNotAfter: r.Certificate.NotAfter.UTC().Format(time.RFC3339),
	}
	for i, v := range r.PCRs {
		out.PCRs[strconv.FormatUint(uint64(i), 10)] = hex.EncodeToString(v)
	}
	if ud, err := attestation.ParseUserData(r.UserData); err == nil {
		out.TLSCertHash = hexPtr(ud.TLSCertHash[:])
		if ud.HasAppKey() {
			out.AppKeyHash = hexPtr(ud.AppKeyHash[:])
		}
	}
	for _, c := range r.Checks {
		out.Checks = append(out.Checks, string(c))
	}
	return out
}

func printResult(w io.Writer, r *attestation.Result, at time.Time) {
	j := jsonResult(r, at)
	orNone := func(s *string) string {
		if s == nil {
			return "(none)"
		}
		return *s
	}
	fmt.Fprintf(w, "verified at %s: %s\n", j.VerifiedAt, strings.Join(j.Checks, ", "))
	fmt.Fprintf(w, "module_id:   %s\n", j.ModuleID)
	fmt.Fprintf(w, "timestamp:   %s\n", j.Timestamp)
	fmt.Fprintf(w, "digest:      %s\n", j.Digest)
	idx := make([]uint, 0, len(r.PCRs))
	for i := range r.PCRs {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	for _, i := range idx {
		fmt.Fprintf(w, "pcr%-2d        %x\n", i, r.PCRs[i])
	}
	fmt.Fprintf(w, "user_data:   %s\n", orNone(j.UserData))
	if j.TLSCertHash != nil {
		fmt.Fprintf(w, "  tls_cert_sha256: %s\n", *j.TLSCertHash)
	}
	if j.AppKeyHash != nil {
		fmt.Fprintf(w, "  app_key_sha256:  %s\n", *j.AppKeyHash)
	}
	fmt.Fprintf(w, "nonce:       %s\n", orNone(j.Nonce))
	fmt.Fprintf(w, "public_key:  %s\n", orNone(j.PublicKey))
	fmt.Fprintf(w, "certificate: %s (until %s)\n", j.Certificate, j.CertNotAfter)
}
