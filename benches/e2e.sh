#!/usr/bin/env bash
# End-to-end load: examples/e2e_server under wrk, routes alternating.
#
#   benches/e2e.sh [ROUNDS] [SECONDS]
#
# The server runs on core 0 with one tokio worker and wrk on core 1 (two
# threads, 64 connections), so the server's CPU is what limits requests per
# second and the ratio to `/bare` is the stack's cost. Needs `wrk` and
# `taskset` (Debian: wrk, util-linux).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-6}
addr=127.0.0.1:3071

cargo build --release --quiet --example e2e_server
log=$(mktemp)
TOKIO_WORKER_THREADS=1 taskset -c 0 target/release/examples/e2e_server "$addr" >"$log" &
server=$!
trap 'kill $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 50); do grep -q '^key: ' "$log" && break; sleep 0.1; done
key=$(sed -n 's/^key: //p' "$log")
# Without a key every keyward route would measure fast 401s.
[ -n "$key" ] || { echo "e2e_server printed no key:" >&2; cat "$log" >&2; exit 1; }

declare -A results
for round in $(seq "$rounds"); do
  for route in bare pets unrecorded layered; do
    rps=$(taskset -c 1 wrk -t2 -c64 -d"${seconds}s" -H "Authorization: Bearer $key" \
      "http://$addr/$route" | awk '/^Requests\/sec/ {print $2}')
    results[$route]+="$rps "
    echo "round $round /$route $rps req/s"
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bare=$(echo "${results[bare]}" | median)
echo
printf '%-12s %-40s %10s %8s\n' route "req/s (rounds)" median "÷ bare"
for route in bare pets unrecorded layered; do
  m=$(echo "${results[$route]}" | median)
  printf '%-12s %-40s %10s %8.3f\n' "/$route" "${results[$route]}" "$m" "$(echo "$m / $bare" | bc -l)"
done
