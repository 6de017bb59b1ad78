"""Prints bench/cluster.sh's results as Markdown tables: each workload on
one Caddy with the memory transport and on two Caddy nodes on one NATS,
the nodes' figures against the memory transport's from the same run, and
issue 12's targets."""
import sys

from results import fmt, load

by_label, workloads = load(sys.argv[1])

def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b

def total_cpu(r):
    """The Caddy nodes' and NATS's CPU per delivery together."""
    if r["cpu_us_per_delivery"] is None:
        return None
    return r["cpu_us_per_delivery"] + (r.get("aux_cpu_us_per_delivery") or 0)

print("| workload | transport | nodes | publishers | clients × events | delivered | lost/dup/ooo | publishes/s | deliveries/s "
      "| p50 ms | p99 ms | max ms | Caddy CPU µs/delivery | NATS CPU µs/delivery | RSS KiB/idle conn |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for w in workloads:
    for transport in ("memory", "nats", "memory-paced"):
        r = by_label.get(f"{transport} {w}")
        if r is None:
            continue
        print(f"| {w} | {transport} | {r['nodes']} | {r['publishers']} | {r['clients']} × {r['events']} "
              f"| {r['deliveries_delivered']}/{r['deliveries_expected']} "
              f"| {r['lost']}/{r['duplicates']}/{r['out_of_order']} "
              f"| {r['publishes_per_second']:.0f} | {r['deliveries_per_second']:.0f} "
              f"| {fmt(r['latency_p50_ms'])} | {fmt(r['latency_p99_ms'])} | {fmt(r['latency_max_ms'])} "
              f"| {fmt(r['cpu_us_per_delivery'])} | {fmt(r.get('aux_cpu_us_per_delivery'))} "
              f"| {fmt(r['rss_per_idle_conn_kib'], 1)} |")
print()
print("| workload | nats ÷ memory: Caddy CPU per delivery | Caddy + NATS CPU per delivery | publishes/s | p99 nats − memory, ms |")
print("|---|---|---|---|---|")
targets = []
for w in workloads:
    m, n = by_label.get(f"memory {w}"), by_label.get(f"nats {w}")
    if not (m and n):
        continue
    cpu = ratio(n["cpu_us_per_delivery"], m["cpu_us_per_delivery"])
    p99 = n["latency_p99_ms"] - m["latency_p99_ms"]
    print(f"| {w} | {fmt(cpu)} | {fmt(ratio(total_cpu(n), m['cpu_us_per_delivery']))} "
          f"| {fmt(ratio(n['publishes_per_second'], m['publishes_per_second']))} | {p99:+.2f} |")
    met = "n/a" if cpu is None else ("yes" if cpu <= 1.2 else "no")
    targets.append((f"Caddy nodes' CPU per delivery ≤ 1.2 × memory ({w})", f"{fmt(cpu)} ×", met))
    paced = by_label.get(f"memory-paced {w}")
    if paced:
        pcpu = ratio(n["cpu_us_per_delivery"], paced["cpu_us_per_delivery"])
        pp99 = n["latency_p99_ms"] - paced["latency_p99_ms"]
        print(f"| {w}, memory at nats's publishes/s | {fmt(pcpu)} | {fmt(ratio(total_cpu(n), paced['cpu_us_per_delivery']))} "
              f"| {fmt(ratio(n['publishes_per_second'], paced['publishes_per_second']))} | {pp99:+.2f} |")
        targets.append((f"Caddy nodes' CPU per delivery ≤ 1.2 × memory at the same publishes/s ({w})", f"{fmt(pcpu)} ×",
                        "n/a" if pcpu is None else ("yes" if pcpu <= 1.2 else "no")))
    if m["rate"] > 0:
        targets.append((f"p99 ≤ memory + 5 ms ({w})", f"{p99:+.2f} ms ({fmt(n['latency_p99_ms'])} against {fmt(m['latency_p99_ms'])})",
                        "yes" if p99 <= 5 else "no"))
print()
print("| target (issue 12) | measured | met |")
print("|---|---|---|")
for target, measured, met in targets:
    print(f"| {target} | {measured} | {met} |")
