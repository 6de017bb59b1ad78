#!/usr/bin/env bash
# Runs the same SSE workloads against one Caddy with the memory transport
# and against two Caddy nodes on one NATS JetStream server (the nats
# transport), on this machine, in one run, and prints one table.
# Not part of CI. Needs Go and curl; nats-server is built from the module
# cache, where go.mod's test dependency on it puts it.
#
#   bash bench/cluster.sh            # the full set of workloads
#   QUICK=1 bash bench/cluster.sh    # a short run, to try the script
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/ssecluster.XXXXXX)
trap 'stop_servers; rm -rf "$work"' EXIT

go build -o "$work/caddy" ./cmd/caddy
go build -o "$work/ssebench" ./cmd/ssebench
go build -o "$work/nats-server" github.com/nats-io/nats-server/v2

# The memory transport's Caddy is compare.sh's (admin 2998, streams 8092);
# the two nodes are A (admin 2996, streams 8093) and B (2997, 8094), on a
# NATS of their own at 14222 (monitoring at 18222).
nats_port=14222
nats_http=18222

memory_pid="" nats_pid="" node_a_pid="" node_b_pid=""
# wait_for URL LOG: waits until URL answers, or fails showing LOG.
wait_for() {
	for _ in $(seq 100); do
		if curl -sf -o /dev/null "$1"; then
			return 0
		fi
		sleep 0.1
	done
	echo "$1 did not answer within 10s; $2 says:" >&2
	cat "$2" >&2
	exit 2
}
start_memory() {
	"$work/caddy" run --config bench/caddy.Caddyfile --adapter caddyfile >"$work/caddy-memory.log" 2>&1 &
	memory_pid=$!
	wait_for http://localhost:2998/sse/stats "$work/caddy-memory.log"
}
# start_node NAME SSE_PORT ADMIN_PORT: one Caddy node on the NATS; its pid
# goes to node_<NAME>_pid.
start_node() {
	SSE_PORT=$2 ADMIN_PORT=$3 NATS_URL=nats://127.0.0.1:$nats_port \
		"$work/caddy" run --config bench/caddy-nats.Caddyfile --adapter caddyfile >"$work/caddy-$1.log" 2>&1 &
	printf -v "node_$1_pid" %s $!
	wait_for "http://localhost:$3/sse/stats" "$work/caddy-$1.log"
}
# start_cluster: a NATS with an empty store, so that no run sees another's
# events (a node catches up with the stream's history when it starts), and
# both nodes on it. NATS comes first: a node that finds it up waits at start
# until its consumer is running.
start_cluster() {
	rm -rf "$work/js"
	"$work/nats-server" -a 127.0.0.1 -p "$nats_port" -m "$nats_http" -js -sd "$work/js" >"$work/nats.log" 2>&1 &
	nats_pid=$!
	wait_for "http://127.0.0.1:$nats_http/healthz?js-enabled-only=true" "$work/nats.log"
	start_node a 8093 2996
	start_node b 8094 2997
}
stop_servers() {
	local pid
	for pid in "$memory_pid" "$node_a_pid" "$node_b_pid" "$nats_pid"; do
		[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	done
	memory_pid="" nats_pid="" node_a_pid="" node_b_pid=""
}

results="$work/results.jsonl"
run() { # label clients events rate publishers
	local label=$1 clients=$2 events=$3 rate=$4 publishers=$5
	local common=(-clients "$clients" -events "$events" -rate "$rate" -size 100 -publishers "$publishers"
		-publisher admin -channel bench)
	stop_servers
	start_memory
	"$work/ssebench" -label "memory $label" "${common[@]}" \
		-stream http://127.0.0.1:8092/ -publish http://localhost:2998/sse/broadcast \
		-pid "$memory_pid" >>"$results" || echo "memory $label: exit $? (see above)" >&2
	stop_servers
	# One publisher publishes through node A; several are split over both.
	local publish=http://localhost:2996/sse/broadcast
	if [ "$publishers" -gt 1 ]; then
		publish+=,http://localhost:2997/sse/broadcast
	fi
	start_cluster
	"$work/ssebench" -label "nats $label" "${common[@]}" \
		-stream http://127.0.0.1:8093/,http://127.0.0.1:8094/ -publish "$publish" \
		-pid "$node_a_pid,$node_b_pid" -aux-pid "$nats_pid" >>"$results" || echo "nats $label: exit $? (see above)" >&2
	stop_servers
	if [ "$rate" = 0 ]; then
		# A publish through NATS waits for JetStream and for the node's
		# consumer, so the cluster publishes fewer events a second, and
		# each write to a client carries fewer of them: the memory
		# transport again, at the cluster's pace, compares the fan-outs
		# at one event rate.
		local pace
		pace=$(tail -n 1 "$results" | python3 -c 'import json, sys; print(json.load(sys.stdin)["publishes_per_second"])')
		start_memory
		"$work/ssebench" -label "memory-paced $label" "${common[@]}" -rate "$pace" \
			-stream http://127.0.0.1:8092/ -publish http://localhost:2998/sse/broadcast \
			-pid "$memory_pid" >>"$results" || echo "memory-paced $label: exit $? (see above)" >&2
		stop_servers
	fi
}

# max-rate: one publisher, each event as soon as the previous publish
# returned; max-rate-4-publishers: four such publishers at once; 20/s: one
# publisher paced at 20 events a second. 100-byte payloads throughout.
if [ -n "${QUICK:-}" ]; then
	run "max-rate" 200 200 0 1
	run "max-rate-4-publishers" 200 200 0 4
	run "20/s" 200 40 20 1
else
	run "max-rate" 1000 2000 0 1
	run "max-rate-4-publishers" 1000 2000 0 4
	run "20/s" 1000 200 20 1
fi

echo
echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(go version | cut -d' ' -f3), $("$work/nats-server" --version)"
python3 bench/cluster_table.py "$results"
