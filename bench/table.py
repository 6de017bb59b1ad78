"""Prints bench/compare.sh's results as a Markdown table, with Caddy's
figures as ratios of nchan's from the same run."""
import sys

from results import fmt, load

by_label, workloads = load(sys.argv[1])

def ratio(a, b):
    return "n/a" if a is None or b in (None, 0) else f"{a / b:.2f}"

print("| workload | server | clients × events | delivered | lost/dup/ooo | deliveries/s | p50 ms | p99 ms | max ms | CPU µs/delivery | RSS KiB/idle conn |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for w in workloads:
    for server in ("nchan", "caddy", "caddy-flush5ms"):
        r = by_label.get(f"{server} {w}")
        if r is None:
            continue
        print(f"| {w} | {server} | {r['clients']} × {r['events']} | {r['deliveries_delivered']}/{r['deliveries_expected']} "
              f"| {r['lost']}/{r['duplicates']}/{r['out_of_order']} | {r['deliveries_per_second']:.0f} "
              f"| {fmt(r['latency_p50_ms'])} | {fmt(r['latency_p99_ms'])} | {fmt(r['latency_max_ms'])} "
              f"| {fmt(r['cpu_us_per_delivery'])} | {fmt(r['rss_per_idle_conn_kib'], 1)} |")
print()
print("| workload | Caddy config | ÷ nchan: CPU per delivery | p99 latency | RSS per idle connection |")
print("|---|---|---|---|---|")
for w in workloads:
    n = by_label.get(f"nchan {w}")
    for server in ("caddy", "caddy-flush5ms"):
        c = by_label.get(f"{server} {w}")
        if n and c:
            print(f"| {w} | {server} | {ratio(c['cpu_us_per_delivery'], n['cpu_us_per_delivery'])} "
                  f"| {ratio(c['latency_p99_ms'], n['latency_p99_ms'])} "
                  f"| {ratio(c['rss_per_idle_conn_kib'], n['rss_per_idle_conn_kib'])} |")
