#!/usr/bin/env bash
# Runs the same SSE workloads against nchan (nginx) and against Caddy with
# ssebroadcast, on this machine, in one run, and prints one table.
# Not part of CI. Needs the Debian packages nginx-light and
# libnginx-mod-nchan (installed here if missing), and Go.
#
#   bash bench/compare.sh            # the full set of workloads
#   QUICK=1 bash bench/compare.sh    # a short run, to try the script
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d /tmp/ssebench.XXXXXX)
trap 'stop_servers; rm -rf "$work"' EXIT

if ! [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-nchan >/dev/null
fi
# nginx starts by itself when installed; it is not ours to measure.
systemctl stop nginx 2>/dev/null || true

go build -o "$work/caddy" ./cmd/caddy
go build -o "$work/ssebench" ./cmd/ssebench

nginx_pid=""
caddy_pid=""
start_servers() {
	mkdir -p "$work/nchan/tmp"
	cp bench/nchan.conf "$work/nchan/"
	nginx -p "$work/nchan" -c "$work/nchan/nchan.conf" -g 'daemon off;' &
	nginx_pid=$!
	"$work/caddy" run --config bench/caddy.Caddyfile --adapter caddyfile >"$work/caddy.log" 2>&1 &
	caddy_pid=$!
	for _ in $(seq 100); do
		if curl -s -o /dev/null localhost:2998/sse/stats && [ -s "$work/nchan/nginx.pid" ]; then
			break
		fi
		sleep 0.1
	done
}
stop_servers() {
	[ -n "$caddy_pid" ] && kill "$caddy_pid" 2>/dev/null && wait "$caddy_pid" 2>/dev/null || true
	[ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null || true
	caddy_pid="" nginx_pid=""
}
# ssebench sums a pid's descendants, so nginx's master pid counts its
# worker, where nchan does its work.
nchan_worker() { cat "$work/nchan/nginx.pid"; }

results="$work/results.jsonl"
run() { # label clients events rate size
	local label=$1 clients=$2 events=$3 rate=$4 size=$5
	stop_servers
	start_servers
	"$work/ssebench" -label "nchan $label" -clients "$clients" -events "$events" -rate "$rate" -size "$size" \
		-stream http://127.0.0.1:8091/sub -publisher nchan -publish http://127.0.0.1:8091/pub \
		-pid "$(nchan_worker)" >>"$results" || echo "nchan $label: exit $? (see above)" >&2
	"$work/ssebench" -label "caddy $label" -clients "$clients" -events "$events" -rate "$rate" -size "$size" \
		-stream http://127.0.0.1:8092/ -publisher admin -publish http://localhost:2998/sse/broadcast \
		-channel bench -pid "$caddy_pid" >>"$results" || echo "caddy $label: exit $? (see above)" >&2
	# The same Caddy with flush_interval 5ms: writes to a client at least
	# 5 ms apart, so that events coming faster share them.
	stop_servers
	FLUSH_INTERVAL=5ms start_servers
	"$work/ssebench" -label "caddy-flush5ms $label" -clients "$clients" -events "$events" -rate "$rate" -size "$size" \
		-stream http://127.0.0.1:8092/ -publisher admin -publish http://localhost:2998/sse/broadcast \
		-channel bench -pid "$caddy_pid" >>"$results" || echo "caddy-flush5ms $label: exit $? (see above)" >&2
}

if [ -n "${QUICK:-}" ]; then
	run "max-rate" 200 200 0 100
	run "20/s" 200 40 20 100
else
	run "max-rate" 1000 2000 0 100
	run "20/s" 1000 200 20 100
	run "10k-clients" 10000 100 20 100
fi
stop_servers

echo
echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(go version | cut -d' ' -f3)"
python3 bench/table.py "$results"
