#!/usr/bin/env python3
"""Parses one benchmark tool's output (stdin) into a JSON line.

argv: name config run host_ticks0 host_ticks1 encl_ticks0 encl_ticks1 t0 t1 hz
iperf3 -J output gives gbps; wrk --latency output gives rps and latencies.
"""
import json, re, sys

name, cfg, run = sys.argv[1:4]
h0, h1, e0, e1 = (float(x) for x in sys.argv[4:8])
t0, t1, hz = float(sys.argv[8]), float(sys.argv[9]), float(sys.argv[10])
text = sys.stdin.read()
wall = max(t1 - t0, 1e-9)
rec = {"name": name, "config": cfg, "run": int(run),
       "host_cpu": (h1 - h0) / hz / wall, "encl_cpu": (e1 - e0) / hz / wall}

def dur_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s)$", s)
    if not m:
        return None
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v

if text.lstrip().startswith("{"):
    try:
        j = json.loads(text)
        if "error" in j:
            rec["error"] = j["error"]
        else:
            rec["gbps"] = j["end"]["sum_received"]["bits_per_second"] / 1e9
            rec["retransmits"] = j["end"].get("sum_sent", {}).get("retransmits")
    except (ValueError, KeyError) as e:
        rec["error"] = "unparsable iperf3 output: %s" % e
else:
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        rec["rps"] = float(m.group(1))
        for p in ("50", "90", "99"):
            m = re.search(r"^\s+%s(?:\.000)?%%\s+(\S+)" % p, text, re.M)
            if m:
                rec["p" + p + "_ms"] = dur_ms(m.group(1))
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        rec["errors"] = sum(int(x) for x in m.groups()[:3]) if m else 0
        rec["timeouts"] = int(m.group(4)) if m else 0
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        rec["non2xx"] = int(m.group(1)) if m else 0
    else:
        rec["error"] = "unparsable output: " + text[-300:]
print(json.dumps(rec))
