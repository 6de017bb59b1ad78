"""Prints bench/compare.sh's results as Markdown tables, one pair per
protocol: each server's figures, then ratios. Over HTTP/1.1 and HTTP/2 the
ratios are of nchan's figures from the same run (and over HTTP/2, of the
floors too: go-h2, Go's own HTTP/2 server alone, and caddy-floor, the least
a handler inside Caddy can do); over HTTP/3, which nchan does not serve, of
Caddy's over HTTP/2 in the same run.

A label is "<server> <workload>"; h2 and h3 workloads are named
"h2 <name>" and "h3 <name>", h1's by their name alone."""
import sys

from results import fmt, load

by_label, workloads = load(sys.argv[1])


def ratio(a, b):
    return "n/a" if a is None or b in (None, 0) else f"{a / b:.2f}"


def proto_of(workload):
    first = workload.split(" ", 1)[0]
    return first if first in ("h2", "h3") else "h1"


def name_of(workload):
    return workload.split(" ", 1)[1] if proto_of(workload) != "h1" else workload


SECTIONS = {
    # proto: (title, the rows of the figures table as (server, workload
    # prefix), the ratios as (server, its prefix, reference, its prefix))
    "h1": ("HTTP/1.1, cleartext, one connection per client",
           [("nchan", ""), ("caddy", ""), ("caddy-flush5ms", "")],
           [("caddy", "", "nchan", ""), ("caddy-flush5ms", "", "nchan", "")]),
    "h2": ("HTTP/2 over TLS, one TLS connection per client",
           [("nchan", "h2 "), ("caddy", "h2 "), ("go-h2", "h2 "), ("caddy-floor", "h2 ")],
           [("caddy", "h2 ", "nchan", "h2 "), ("go-h2", "h2 ", "nchan", "h2 "),
            ("caddy-floor", "h2 ", "go-h2", "h2 "), ("caddy", "h2 ", "caddy-floor", "h2 ")]),
    "h3": ("HTTP/3 over QUIC, one QUIC connection per client, against Caddy over HTTP/2",
           [("caddy", "h3 "), ("caddy", "h2 ")],
           [("caddy", "h3 ", "caddy", "h2 ")]),
}


def figures_row(name, server, r):
    return (f"| {name} | {server} | {r['clients']} × {r['events']} | {r['deliveries_delivered']}/{r['deliveries_expected']} "
            f"| {r['lost']}/{r['duplicates']}/{r['out_of_order']} | {r['deliveries_per_second']:.0f} "
            f"| {fmt(r['latency_p50_ms'])} | {fmt(r['latency_p99_ms'])} | {fmt(r['latency_max_ms'])} "
            f"| {fmt(r['cpu_us_per_delivery'])} | {fmt(r['rss_per_idle_conn_kib'], 1)} |")


names = {}  # proto: its workloads' names, in order
for w in workloads:
    names.setdefault(proto_of(w), [])
    if name_of(w) not in names[proto_of(w)]:
        names[proto_of(w)].append(name_of(w))

# Caddy over h2 alone is h3's reference, run for it when h2 was not asked
# for: it shows in h3's table.
if "h2" in names and not any(by_label.get(f"{server} h2 {name}")
                             for server in ("nchan", "go-h2", "caddy-floor") for name in names["h2"]):
    del names["h2"]

first = True
for proto, (title, rows, ratios) in SECTIONS.items():
    if proto not in names:
        continue
    if not first:
        print()
    first = False
    print(f"**{title}**")
    print()
    print("| workload | server | clients × events | delivered | lost/dup/ooo | deliveries/s | p50 ms | p99 ms | max ms | CPU µs/delivery | RSS KiB/idle conn |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    sessions = {}
    for name in names[proto]:
        for server, prefix in rows:
            r = by_label.get(f"{server} {prefix}{name}")
            if r is None:
                continue
            shown = f"{server} {prefix.strip()}" if proto == "h3" else server
            print(figures_row(name, shown, r))
            if r.get("tls"):
                sessions.setdefault(shown, r["tls"])
    if sessions:
        print()
        print("TLS: " + "; ".join(f"{server} {tls}" for server, tls in sessions.items()))
    lines = []
    for name in names[proto]:
        for server, prefix, ref, ref_prefix in ratios:
            a = by_label.get(f"{server} {prefix}{name}")
            b = by_label.get(f"{ref} {ref_prefix}{name}")
            if not (a and b):
                continue
            what = {"h1": server, "h2": f"{server} ÷ {ref}"}.get(proto, f"{server} {prefix.strip()} ÷ {ref} {ref_prefix.strip()}")
            lines.append(f"| {name} | {what} | {ratio(a['cpu_us_per_delivery'], b['cpu_us_per_delivery'])} "
                         f"| {ratio(a['latency_p99_ms'], b['latency_p99_ms'])} "
                         f"| {ratio(a['rss_per_idle_conn_kib'], b['rss_per_idle_conn_kib'])} |")
    if not lines:
        continue
    print()
    if proto == "h1":
        print("| workload | Caddy config | ÷ nchan: CPU per delivery | p99 latency | RSS per idle connection |")
    else:
        print("| workload | ratio | CPU per delivery | p99 latency | RSS per idle connection |")
    print("|---|---|---|---|---|")
    print("\n".join(lines))
