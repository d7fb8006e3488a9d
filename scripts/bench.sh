#!/usr/bin/env bash
# Throughput benchmark on this machine against one local `cofferfs serve`:
# `cofferfs put` / `cofferfs get` of a 1 GiB file next to `openssl md5` and a
# local `cp` (the ceilings), medians of 3 runs, plus peak RSS of put.
# Usage: scripts/bench.sh [SIZE_MIB]   (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=${1:-1024}
runs=3
cargo build --release --quiet
bin=$PWD/target/release/cofferfs
work=$(mktemp -d "${TMPDIR:-/tmp}/cofferfs-bench.XXXXXX")
coffer=bench-1250000000
cleanup() {
    [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

"$bin" serve --root "$work/coffer" --listen 127.0.0.1:0 --coffer "$coffer" >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
for _ in $(seq 100); do
    grep -q '^listening on ' "$work/serve.out" 2>/dev/null && break
    sleep 0.1
done
endpoint=$(sed -n 's/^listening on //p' "$work/serve.out")
[ -n "$endpoint" ] || { echo "server did not start" >&2; cat "$work/serve.err" >&2; exit 1; }

head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$work/src.bin"
bytes=$((size_mib * 1024 * 1024))

# seconds for a command, wall clock
timeit() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mbps() { echo "$bytes / $1 / 1000000" | bc -l | xargs printf '%.0f'; }

declare -A med
measure() {
    local name=$1
    shift
    local i
    for i in $(seq $runs); do
        timeit "$@" "$i"
    done | median
}

put_run() { "$bin" --endpoint "$endpoint" put "$work/src.bin" "$coffer/put-$1"; }
get_run() { "$bin" --endpoint "$endpoint" get "$coffer/put-1" "$work/got-$1.bin" && rm -f "$work/got-$1.bin"; }
md5_run() { openssl md5 "$work/src.bin"; }
cp_run() { cp "$work/src.bin" "$work/cp-$1.bin" && sync "$work/cp-$1.bin" && rm -f "$work/cp-$1.bin"; }

med[md5]=$(measure md5 md5_run)
med[cp]=$(measure cp cp_run)
med[put]=$(measure put put_run)
med[get]=$(measure get get_run)

# Peak RSS of one more put (GNU time is not always installed: read VmHWM instead).
"$bin" --endpoint "$endpoint" put "$work/src.bin" "$coffer/rss" &
put_pid=$!
peak=0
while kill -0 "$put_pid" 2>/dev/null; do
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$put_pid/status" 2>/dev/null || echo 0)
    [ -n "$hwm" ] && [ "$hwm" -gt "$peak" ] && peak=$hwm
    sleep 0.05
done
wait "$put_pid"

printf '\n%s MiB, median of %d runs, %s\n' "$size_mib" "$runs" "$(nproc) cores"
printf '%-28s %10s %8s\n' "what" "MB/s" "ratio"
printf '%-28s %10s %8s\n' "openssl md5 (ceiling)" "$(mbps "${med[md5]}")" "1.00"
printf '%-28s %10s %8s\n' "cp to local disk" "$(mbps "${med[cp]}")" "$(echo "${med[md5]} / ${med[cp]}" | bc -l | xargs printf '%.2f')"
printf '%-28s %10s %8s\n' "cofferfs put" "$(mbps "${med[put]}")" "$(echo "${med[md5]} / ${med[put]}" | bc -l | xargs printf '%.2f')"
printf '%-28s %10s %8s\n' "cofferfs get" "$(mbps "${med[get]}")" "$(echo "${med[md5]} / ${med[get]}" | bc -l | xargs printf '%.2f')"
printf 'cofferfs put peak RSS (VmHWM): %d MiB\n' $((peak / 1024))
