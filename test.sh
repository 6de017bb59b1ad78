#!/usr/bin/env bash
# The whole test suite, on a fresh machine with Go: installs Chromium for
# the browser tests if it is missing (Debian's package, with root or sudo),
# then runs every test under the race detector. Arguments go to go test.
#
#   bash test.sh
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v chromium >/dev/null; then
	echo "--- installing chromium (for the browser tests)"
	sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || { echo "chromium is missing, and installing it needs root or sudo" >&2; exit 1; }
		sudo=(sudo)
	fi
	log=$(mktemp)
	if ! { "${sudo[@]}" apt-get update -qq &&
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$log" 2>&1; then
		cat "$log" >&2
		echo "installing chromium failed" >&2
		exit 1
	fi
	rm -f "$log"
fi

go test -race "$@" ./...
