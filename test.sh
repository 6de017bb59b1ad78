#!/usr/bin/env bash
# The whole test suite, on a fresh machine with Go: installs what the tests
# need if it is missing (Debian's packages, with root or sudo): Chromium for
# the browser tests, and, when run as root, iproute2's ip for the half-open
# peer tests, which make a network namespace (they skip without root). Then
# runs every test under the race detector. Arguments go to go test.
#
#   bash test.sh
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v chromium >/dev/null || missing+=(chromium)
if [ "$(id -u)" -eq 0 ] && ! command -v ip >/dev/null; then
	missing+=(iproute2)
fi
if [ ${#missing[@]} -gt 0 ]; then
	echo "--- installing ${missing[*]} (for the browser and half-open peer tests)"
	sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || { echo "${missing[*]} missing, and installing needs root or sudo" >&2; exit 1; }
		sudo=(sudo)
	fi
	log=$(mktemp)
	if ! { "${sudo[@]}" apt-get update -qq &&
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >"$log" 2>&1; then
		cat "$log" >&2
		echo "installing ${missing[*]} failed" >&2
		exit 1
	fi
	rm -f "$log"
fi

go test -race "$@" ./...
