#!/usr/bin/env bash
# Runs the same SSE workloads against nchan (nginx) and against Caddy with
# ssebroadcast, on this machine, in one run, and prints a table per protocol:
#
#   h1  HTTP/1.1 over cleartext: nchan, Caddy, Caddy with flush_interval 5ms
#   h2  HTTP/2 over TLS, each client on a TLS connection of its own: nchan
#       (a self-signed P-256 certificate made here with openssl), Caddy (its
#       internal issuer's certificate), go-h2, Go's own net/http server
#       alone (bench/goh2), the floor of an HTTP/2 server in Go, and
#       caddy-floor, the least a handler inside Caddy can do
#       (bench/caddyfloor), the floor of Caddy's HTTP/2 server
#   h3  HTTP/3 over QUIC: Caddy only, which nchan cannot serve, against
#       Caddy over h2 in the same run
#
# Events are published over cleartext HTTP/1.1 throughout: to nchan's
# publisher location, Caddy's admin API and go-h2's and caddy-floor's
# publish ports.
# Not part of CI. Needs the Debian packages nginx-light and
# libnginx-mod-nchan (installed here if missing), openssl, curl, and Go.
#
#   bash bench/compare.sh                 # every protocol, the full workloads
#   PROTOS="h2 h3" bash bench/compare.sh  # some protocols only
#   QUICK=1 bash bench/compare.sh         # a short run, to try the script
#   PROFILE=/tmp/h2.pprof bash bench/compare.sh
#       # and a 10 s CPU profile of Caddy publishing at max rate over h2,
#       # from a run of its own; Caddy's binary goes beside it, .caddy added
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/ssebench.XXXXXX)
trap 'stop_servers; rm -rf "$work"' EXIT
protos=${PROTOS:-h1 h2 h3}
want() { [[ " $protos " == *" $1 "* ]]; }

if ! [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-nchan >/dev/null
fi
# nginx starts by itself when installed; it is not ours to measure.
systemctl stop nginx 2>/dev/null || true

go build -o "$work/caddy" ./cmd/caddy
go build -o "$work/ssebench" ./cmd/ssebench
go build -o "$work/goh2" ./bench/goh2
go build -o "$work/caddyfloor" ./bench/caddyfloor

# nchan's TLS server block (and go-h2) need a certificate beside nchan.conf:
# self-signed, P-256, for localhost, as the issue's nchan had.
mkdir -p "$work/nchan/tmp"
cp bench/nchan.conf "$work/nchan/"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
	-subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
	-keyout "$work/nchan/key.pem" -out "$work/nchan/cert.pem" 2>/dev/null
# Caddy keeps its internal CA and certificates here, not in $HOME: made at
# the first TLS start, reused by the next.
export XDG_DATA_HOME="$work/caddy-data"
# quic-go warns when it cannot enlarge a UDP socket's buffers; ssebench
# has one socket per h3 client.
export QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true

# Ports: nchan 8091 (HTTP/1.1, streams and publishing) and 8444 (TLS,
# HTTP/2); Caddy 8092 (HTTP/1.1, bench/caddy.Caddyfile) or 8443 (TLS, TCP
# and UDP, bench/caddy-tls.Caddyfile), admin 2998 for both; go-h2 8445
# (TLS) and 8095 (publishing); caddy-floor 8446 (TLS) and 8096
# (publishing), admin 2996.
nginx_pid="" caddy_pid="" goh2_pid="" floor_pid=""
# wait_until WHAT LOG COMMAND...: retries COMMAND for 10 s, or fails
# showing LOG.
wait_until() {
	local what=$1 log=$2
	shift 2
	for _ in $(seq 100); do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	echo "$what: not ready within 10s; $log says:" >&2
	cat "$log" >&2
	exit 2
}
# tls_ready PORT: a TLS handshake with the server at PORT succeeds, so that
# its certificate is there (Caddy's internal issuer makes it after start).
tls_ready() { openssl s_client -connect "127.0.0.1:$1" -servername localhost </dev/null; }
udp_listening() { [ -n "$(ss -Hlun "sport = :$1")" ]; }
start_nchan() {
	rm -f "$work/nchan/nginx.pid"
	nginx -p "$work/nchan" -c "$work/nchan/nchan.conf" -g 'daemon off;' &
	nginx_pid=$!
	wait_until nginx "$work/nchan/error.log" test -s "$work/nchan/nginx.pid"
	wait_until nginx "$work/nchan/error.log" tls_ready 8444
}
# start_caddy CADDYFILE: Caddy on CADDYFILE, with FLUSH_INTERVAL from the
# environment if set.
start_caddy() {
	"$work/caddy" run --config "$1" --adapter caddyfile >"$work/caddy.log" 2>&1 &
	caddy_pid=$!
	wait_until caddy "$work/caddy.log" curl -sf -o /dev/null localhost:2998/sse/stats
	if [ "$1" = bench/caddy-tls.Caddyfile ]; then
		wait_until caddy "$work/caddy.log" tls_ready 8443
		wait_until caddy "$work/caddy.log" udp_listening 8443
	fi
}
start_goh2() {
	"$work/goh2" -addr 127.0.0.1:8445 -pub 127.0.0.1:8095 \
		-cert "$work/nchan/cert.pem" -key "$work/nchan/key.pem" >"$work/goh2.log" 2>&1 &
	goh2_pid=$!
	wait_until go-h2 "$work/goh2.log" tls_ready 8445
}
start_caddyfloor() {
	XDG_DATA_HOME="$work/caddyfloor-data" "$work/caddyfloor" run --config bench/caddy-floor.Caddyfile \
		--adapter caddyfile >"$work/caddyfloor.log" 2>&1 &
	floor_pid=$!
	wait_until caddy-floor "$work/caddyfloor.log" tls_ready 8446
}
stop_servers() {
	local pid
	for pid in "$caddy_pid" "$nginx_pid" "$goh2_pid" "$floor_pid"; do
		[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	done
	caddy_pid="" nginx_pid="" goh2_pid="" floor_pid=""
}
# ssebench sums a pid's descendants, so nginx's master pid counts its
# worker, where nchan does its work.
nchan_worker() { cat "$work/nchan/nginx.pid"; }

results="$work/results.jsonl"
# bench LABEL PID FLAGS...: one ssebench run of the current workload
# against the server PID, its result appended to the results.
bench() {
	local label=$1 pid=$2
	shift 2
	"$work/ssebench" -label "$label" -clients "$clients" -events "$events" -rate "$rate" -size 100 \
		-pid "$pid" "$@" >>"$results" || echo "$label: exit $? (see above)" >&2
}
# Each server's stream and publish flags, by protocol.
nchan_h1=(-stream http://127.0.0.1:8091/sub -publisher nchan -publish http://127.0.0.1:8091/pub)
nchan_h2=(-proto h2 -stream https://localhost:8444/sub -publisher nchan -publish http://127.0.0.1:8091/pub)
caddy_h1=(-stream http://127.0.0.1:8092/ -publisher admin -publish http://localhost:2998/sse/broadcast -channel bench)
caddy_h2=(-proto h2 -stream https://localhost:8443/ -publisher admin -publish http://localhost:2998/sse/broadcast -channel bench)
caddy_h3=(-proto h3 -stream https://localhost:8443/ -publisher admin -publish http://localhost:2998/sse/broadcast -channel bench)
goh2_h2=(-proto h2 -stream https://localhost:8445/ -publisher nchan -publish http://127.0.0.1:8095/)
floor_h2=(-proto h2 -stream https://localhost:8446/ -publisher nchan -publish http://127.0.0.1:8096/)

# Each workload starts its servers afresh, and measures each server once,
# so that every figure comes from a process that served nothing before.
clients="" events="" rate=""
workload() { clients=$1 events=$2 rate=$3; }
run_h1() { # name
	stop_servers
	start_nchan
	start_caddy bench/caddy.Caddyfile
	bench "nchan $1" "$(nchan_worker)" "${nchan_h1[@]}"
	bench "caddy $1" "$caddy_pid" "${caddy_h1[@]}"
	# The same Caddy with flush_interval 5ms: writes to a client at least
	# 5 ms apart, so that events coming faster share them.
	stop_servers
	FLUSH_INTERVAL=5ms start_caddy bench/caddy.Caddyfile
	bench "caddy-flush5ms $1" "$caddy_pid" "${caddy_h1[@]}"
	stop_servers
}
run_h2() { # name
	stop_servers
	start_nchan
	start_caddy bench/caddy-tls.Caddyfile
	start_goh2
	start_caddyfloor
	bench "nchan h2 $1" "$(nchan_worker)" "${nchan_h2[@]}"
	bench "caddy h2 $1" "$caddy_pid" "${caddy_h2[@]}"
	bench "go-h2 h2 $1" "$goh2_pid" "${goh2_h2[@]}"
	bench "caddy-floor h2 $1" "$floor_pid" "${floor_h2[@]}"
	stop_servers
}
run_h3() { # name
	if ! want h2; then
		# Caddy over h2, which h3 is measured against.
		stop_servers
		start_caddy bench/caddy-tls.Caddyfile
		bench "caddy h2 $1" "$caddy_pid" "${caddy_h2[@]}"
	fi
	stop_servers
	start_caddy bench/caddy-tls.Caddyfile
	bench "caddy h3 $1" "$caddy_pid" "${caddy_h3[@]}"
	stop_servers
}
# run NAME CLIENTS EVENTS RATE: the workload over each protocol asked for;
# h1's 10k-clients is h1's alone, 2k-clients (RSS per idle connection, the
# issue's figure) the TLS protocols'.
run() {
	workload "$2" "$3" "$4"
	if want h1 && [ "$1" != 2k-clients ]; then run_h1 "$1"; fi
	if [ "$1" = 10k-clients ]; then return; fi
	if want h2; then run_h2 "$1"; fi
	if want h3; then run_h3 "$1"; fi
}

if [ -n "${QUICK:-}" ]; then
	run "max-rate" 200 200 0
	run "20/s" 200 40 20
	run "2k-clients" 400 20 20
else
	run "max-rate" 1000 2000 0
	run "20/s" 1000 200 20
	run "10k-clients" 10000 100 20
	run "2k-clients" 2000 20 20
fi

if [ -n "${PROFILE:-}" ]; then
	# Twice max-rate's events, so that publishing outlasts the profile,
	# which starts when ssebench says it publishes.
	workload 1000 4000 0
	if [ -n "${QUICK:-}" ]; then workload 200 1000 0; fi
	start_caddy bench/caddy-tls.Caddyfile
	: >"$work/profiled.err"
	(
		for _ in $(seq 1200); do
			if grep -q "^ssebench: publishing" "$work/profiled.err"; then
				exec curl -sf -o "$PROFILE" "http://localhost:2998/debug/pprof/profile?seconds=10"
			fi
			sleep 0.05
		done
		exit 1
	) &
	profiler=$!
	"$work/ssebench" -label "caddy h2 max-rate, profiled" -clients "$clients" -events "$events" -size 100 \
		-pid "$caddy_pid" "${caddy_h2[@]}" >/dev/null 2>"$work/profiled.err" || true
	wait "$profiler" || echo "profile: curl failed" >&2
	stop_servers
	tail -n 1 "$work/profiled.err" >&2
	cp "$work/caddy" "$PROFILE.caddy"
	echo "profile: $PROFILE, binary $PROFILE.caddy: go tool pprof -top $PROFILE.caddy $PROFILE" >&2
fi

echo
echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(go version | cut -d' ' -f3), $(nginx -v 2>&1 | cut -d' ' -f3), $(openssl version | cut -d' ' -f1-2), quic-go $(go list -m -f '{{.Version}}' github.com/quic-go/quic-go)"
python3 bench/table.py "$results"
