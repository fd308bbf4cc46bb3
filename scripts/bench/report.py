#!/usr/bin/env python3
"""Turns the JSON lines of a benchmark run into Markdown tables of medians,
with ratios to the peer at its best MTU and to the direct app."""
import json, statistics, sys, collections

kind, path = sys.argv[1], sys.argv[2]
recs = [json.loads(l) for l in open(path) if l.strip()]
by = collections.defaultdict(list)
for r in recs:
    by[(r["config"], r["name"])].append(r)

def med(cfg, name, key):
    vals = [r[key] for r in by.get((cfg, name), []) if r.get(key) is not None]
    return statistics.median(vals) if vals else None

configs = []
for r in recs:
    if r["config"] not in configs:
        configs.append(r["config"])
runs = max((r["run"] for r in recs), default=0)

def fmt(v, nd=2):
    return "–" if v is None else f"{v:.{nd}f}"

print(f"Medians of {runs} run(s).\n")
bulk = [("ingress", "host→enclave (published port)"), ("ingress_rev", "enclave→host (published port, -R)"),
        ("egress", "enclave→host (egress NAT)"), ("egress_rev", "host→enclave (egress NAT, -R)")]
tun = [c for c in configs if c != "direct"]
peers = [c for c in tun if c.startswith("peer")]
print("### Bulk throughput (iperf3, Gbit/s; CPU in cores: host daemon / enclave forwarder)\n")
us = [c for c in tun if c.startswith("userspace")]
qt = [c for c in tun if c.startswith("quench")]
extra = " userspace ÷ TAP | userspace ÷ peer best |" if us else ""
print("| path | " + " | ".join(tun) + " | quench TAP best ÷ peer best |" + extra)
print("|---|" + "---|" * (len(tun) + 1 + (2 if us else 0)))

def ratios(name, key):
    if not us:
        return ""
    u = max([med(c, name, key) or 0 for c in us] or [0])
    t = max([med(c, name, key) or 0 for c in qt] or [0])
    p = max([med(c, name, key) or 0 for c in peers] or [0])
    return f" {fmt(u / t) if t else '–'}× | {fmt(u / p) if p else '–'}× |"
for name, label in bulk:
    cells = []
    for c in tun:
        g = med(c, name, "gbps")
        cells.append(f"{fmt(g)} ({fmt(med(c, name, 'host_cpu'), 2)}/{fmt(med(c, name, 'encl_cpu'), 2)})" if g else "–")
    qb = max([med(c, name, "gbps") or 0 for c in qt] or [0])
    pb = max([med(c, name, "gbps") or 0 for c in peers] or [0])
    if not any(med(c, name, "gbps") for c in tun):
        continue
    print(f"| {label} | " + " | ".join(cells) + f" | {fmt(qb / pb) if pb else '–'}× |" + ratios(name, "gbps"))
print()
http = sorted({n for (_, n) in by if n.startswith("http_c")}, key=lambda n: int(n[6:]))
if http:
    print("### HTTP hello through a published port (wrk; req/s, ratio to direct, p99 ms)\n")
    print("| concurrency | " + " | ".join(configs) + " | quench TAP best ÷ peer best |" + extra)
    print("|---|" + "---|" * (len(configs) + 1 + (2 if us else 0)))
    for n in http:
        d = med("direct", n, "rps")
        cells = []
        for c in configs:
            v = med(c, n, "rps")
            p99 = med(c, n, "p99_ms")
            ratio = f" = {v / d:.2f}×" if v and d and c != "direct" else ""
            cells.append(f"{fmt(v, 0)}{ratio}, p99 {fmt(p99, 1)}" if v else "–")
        qb = max([med(c, n, "rps") or 0 for c in qt] or [0])
        pb = max([med(c, n, "rps") or 0 for c in peers] or [0])
        print(f"| {n[6:]} | " + " | ".join(cells) + f" | {fmt(qb / pb) if pb else '–'}× |" + ratios(n, "rps"))
    print()
errs = [r for r in recs if r.get("error") or r.get("errors") or r.get("timeouts")]
if errs:
    print("Errors seen: " + "; ".join(f"{r['config']}/{r['name']}: {r.get('error') or ''} errors={r.get('errors', 0)} timeouts={r.get('timeouts', 0)}" for r in errs))
