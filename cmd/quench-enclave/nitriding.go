package main

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
)

// nitridingFlag is one of nitriding-daemon's flags (brave/nitriding-daemon
// main.go): either taken as quench-enclave's flag of the same meaning
// (to, with conv turning the value into to's), or refused with hint.
type nitridingFlag struct {
	to   string
	conv func(string) (string, error)
	hint string
	warn string // taken and dropped, with this warning
}

// port parses nitriding's uint port flags (1-65535).
func port(v string) (int, error) {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q: want a port in 1-65535", v)
	}
	return int(n), nil
}

func portConv(format string) func(string) (string, error) {
	return func(v string) (string, error) {
		n, err := port(v)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf(format, n), nil
	}
}

var nitridingFlags = map[string]nitridingFlag{
	"appwebsrv":    {to: "app-url"},
	"appcmd":       {to: "app-cmd"},
	"appurl":       {to: "source-url"},
	"intport":      {to: "internal-addr", conv: portConv("127.0.0.1:%d")},
	"ext-pub-port": {to: "public-addr", conv: portConv(":%d")},
	// -ext-pub-port's name in releases before key synchronisation.
	"extport":       {to: "public-addr", conv: portConv(":%d")},
	"ext-priv-port": {to: "ext-priv-addr", conv: portConv(":%d")},
	// Amnesic Systems' fork (github.com/Amnesic-Systems/nitriding) spells
	// -intport so, and takes -app-url for the code repository (see the
	// -app-url check in parse) and -loader.
	"int-port": {to: "internal-addr", conv: portConv("127.0.0.1:%d")},
	// nitriding's default 1024 is quench's -host vsock://3:1024.
	"host-proxy-port": {to: "host", conv: func(v string) (string, error) {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n == 0 {
			return "", fmt.Errorf("%q: want a VSOCK port", v)
		}
		return fmt.Sprintf("vsock://3:%d", n), nil
	}},
	// 0, nitriding's default, is off; quench serves on the enclave's
	// network as nitriding does.
	"prometheus-port": {to: "metrics", conv: func(v string) (string, error) {
		if v == "0" {
			return "", nil
		}
		return portConv(":%d")(v)
	}},

	"debug":                 {hint: "for more log use -log-level debug; for a dummy attester outside an enclave use -dev-attester (it signs real-format documents with a root you give verifiers: -dev-root-out FILE)"},
	"profile":               {hint: "use -pprof: quench serves the profiles under /debug/pprof/ on -internal-addr (the enclave's loopback), never on the public server as nitriding's /enclave/debug; attestation is refused while it is on, as in nitriding"},
	"mock-cert-fp":          {hint: "not needed: the attestation document always binds the certificate served; for tests use -dev-attester"},
	"prometheus-namespace":  {warn: "metric names are fixed (quench_enclave_*, see README), so dashboards built on nitriding's NAMESPACE_* names need new queries"},
	"loader":                {hint: "apps are not loaded at run time: the app is part of the measured image; start it with -app-cmd"},
	"disable-keep-alives":   {hint: "not offered: keep-alive is what makes the proxy fast; idle connections close after 120 s"},
	"vsock-ext":             {hint: "use -ingress vsock://:PORT with quench-host -publish-vsock HOSTIP:HOSTPORT:PORT (each connection starts with a PROXY header from quench-host)"},
	"host-ip-provider-port": {warn: "not needed: quench-host passes the client's address in a PROXY header (-ingress) and the leader takes a worker's address from its heartbeats (-sync-advertise to set it)"},
}

// translateNitriding rewrites nitriding-daemon's flags in args into
// quench-enclave's, or fails with a hint for those it does not take. It
// walks args as fs.Parse will: flags up to the first non-flag argument or
// "--", the values of fs's non-boolean flags skipped.
func translateNitriding(fs *flag.FlagSet, args []string) (out, warnings []string, err error) {
	out = make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if len(a) < 2 || a[0] != '-' || a == "--" {
			return append(out, args[i:]...), warnings, nil
		}
		name := strings.TrimPrefix(a[1:], "-")
		name, value, hasValue := strings.Cut(name, "=")
		nf, ok := nitridingFlags[name]
		if !ok {
			out = append(out, a)
			if f := fs.Lookup(name); f != nil && !hasValue && !isBoolFlag(f) && i+1 < len(args) {
				i++
				out = append(out, args[i])
			}
			continue
		}
		if nf.hint != "" {
			return nil, nil, fmt.Errorf("-%s is nitriding-daemon's flag, which quench-enclave does not take: %s (README: nitriding-daemon flags and quench-enclave's)", name, nf.hint)
		}
		if !hasValue {
			if i+1 >= len(args) {
				return nil, nil, fmt.Errorf("-%s (nitriding-daemon's flag) needs a value", name)
			}
			i++
			value = args[i]
		}
		if nf.warn != "" {
			warnings = append(warnings, fmt.Sprintf("-%s %s (nitriding-daemon's flag) ignored: %s", name, value, nf.warn))
			continue
		}
		if nf.conv != nil {
			v, err := nf.conv(value)
			if err != nil {
				return nil, nil, fmt.Errorf("-%s (nitriding-daemon's flag, -%s here): %w", name, nf.to, err)
			}
			if v == "" {
				continue // the flag's "off"
			}
			value = v
		}
		out = append(out, "-"+nf.to+"="+value)
	}
	return out, warnings, nil
}

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}
