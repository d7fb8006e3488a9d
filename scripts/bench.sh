#!/usr/bin/env bash
# Throughput benchmark on this machine against one local `cofferfs serve`,
# medians of 3 runs:
#   writes: 1 GiB through the mount vs `cofferfs put` vs `cp` to local disk,
#           1000 x 4 KiB files through the mount;
#   reads:  `cofferfs get`; cold and warm reads through the mount, 4 KiB random
#           reads, ls -l of 1000 entries; `openssl md5` as the CPU ceiling;
#   memory: peak RSS (VmHWM) of `cofferfs put` and of the mount daemon.
# Timed rows show the median and, in brackets, the slowest and fastest run.
# Usage: scripts/bench.sh [SIZE_MIB]   (default 1024)
#   BENCH_SAVE=FILE    also writes the table's values to FILE;
#   BENCH_BEFORE=FILE  prints the values a earlier run saved beside these
#                      (e.g. saved on the commit before a change);
#   BENCH_BIN=FILE     measures that cofferfs binary instead of building this tree.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

size_mib=${1:-1024}
runs=3
small_files=1000
ensure_deps
bin=$(cofferfs_bin "${BENCH_BIN:-}")
work=$(mktemp -d "${TMPDIR:-/tmp}/cofferfs-bench.XXXXXX")
coffer=bench-1250000000
cleanup() {
    mountpoint -q "$work/mnt" 2>/dev/null && fusermount3 -u -z "$work/mnt"
    mountpoint -q "$work/mnt2" 2>/dev/null && fusermount3 -u -z "$work/mnt2"
    [ -n "${mount_pid:-}" ] && kill "$mount_pid" 2>/dev/null && wait "$mount_pid" 2>/dev/null
    [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
start_server "$bin" "$work/coffer" "$coffer" --test-api  # stat_of/requests read /-/stats

head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$work/src.bin"
bytes=$((size_mib * 1024 * 1024))
mkdir -p "$work/small"
for i in $(seq $small_files); do head -c 4096 /dev/urandom >"$work/small/f$i"; done

mkdir -p "$work/mnt"
"$bin" mount --endpoint "$endpoint" "$coffer" "$work/mnt" --foreground 2>"$work/mount.log" &
mount_pid=$!
wait_mounted "$work/mnt"

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
ratio() { echo "$2 / $1" | bc -l | xargs printf '%.2f'; }

# med/slow/fast[NAME]: the median, longest and shortest of a row's run times.
# times[NAME]: every run time, in run order.
declare -A med slow fast times
summarize() {
    local name=$1
    shift
    times[$name]="$*"
    med[$name]=$(printf '%s\n' "$@" | median)
    slow[$name]=$(printf '%s\n' "$@" | sort -g | tail -1)
    fast[$name]=$(printf '%s\n' "$@" | sort -g | head -1)
}
# measure NAME CMD: runs CMD (with the run number) $runs times.
measure() {
    local name=$1 i ts=()
    shift
    for i in $(seq $runs); do
        ts+=("$(timeit "$@" "$i")")
    done
    summarize "$name" "${ts[@]}"
}
# alternate A CMD_A B CMD_B: runs A, B, A, B, ... so both meet the same load,
# page-cache and disk state. With cold=1, each run starts with the page cache
# dropped (untimed).
alternate() {
    local i a=() b=()
    for i in $(seq $runs); do
        [ "${cold:-0}" = 1 ] && drop_caches
        a+=("$(timeit "$2" "$i")")
        [ "${cold:-0}" = 1 ] && drop_caches
        b+=("$(timeit "$4" "$i")")
    done
    summarize "$1" "${a[@]}"
    summarize "$3" "${b[@]}"
}

put_run() { "$bin" --endpoint "$endpoint" put "$work/src.bin" "$coffer/put-$1"; }
get_run() { "$bin" --endpoint "$endpoint" get "$coffer/put-1" "$work/got-$1.bin" && rm -f "$work/got-$1.bin"; }
md5_run() { openssl md5 "$work/src.bin"; }
cp_run() { cp "$work/src.bin" "$work/cp-$1.bin" && sync "$work/cp-$1.bin" && rm -f "$work/cp-$1.bin"; }
mount_run() { cp "$work/src.bin" "$work/mnt/mount-$1.bin"; }
small_run() { cp -r "$work/small" "$work/mnt/small-$1"; }

# Cold runs (get, and reads through the mount) start with no page cache on
# either side: the server's files are read from disk in both.
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
measure md5 md5_run
measure cp cp_run
alternate put put_run mount mount_run
measure small small_run

# Reads through the mount: cold (page cache dropped, a file not read before),
# warm (the same file again), 4 KiB random reads, ls -l of 1000 entries.
cold_run() { cat "$work/mnt/mount-$1.bin" >/dev/null; }
warm_run() { cat "$work/mnt/mount-1.bin" >/dev/null; }
cold=1 alternate get get_run cold cold_run
cat "$work/mnt/mount-1.bin" >/dev/null
measure warm warm_run
drop_caches
random_reads=$(python3 - "$work/mnt/mount-2.bin" <<'PY'
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
rnd = random.Random(1)
n, t0 = 0, time.monotonic()
while time.monotonic() - t0 < 5:
    os.pread(fd, 4096, rnd.randrange(0, size - 4096))
    n += 1
print(round(n / (time.monotonic() - t0)))
PY
)
mkdir -p "$work/mnt2"
"$bin" mount --endpoint "$endpoint" "$coffer" "$work/mnt2" --foreground 2>"$work/mount2.log" &
mount2_pid=$!
wait_mounted "$work/mnt2"
stat_of() { curl -s "$endpoint/-/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)['requests'].get('$1', 0))"; }
h0=$(stat_of HeadObject); l0=$(stat_of GetCoffer); t0=$(date +%s.%N)
ls -l "$work/mnt2/small-1" >/dev/null
t1=$(date +%s.%N); h1=$(stat_of HeadObject); l1=$(stat_of GetCoffer)
ls_time=$(echo "$t1 - $t0" | bc -l)
fusermount3 -u "$work/mnt2"; wait "$mount2_pid" || true
mount_hwm=$(awk '/VmHWM/ {print $2}' "/proc/$mount_pid/status")

# Metadata: tar -x of the small files with modes and times, counting requests
# at the server; and rsync -a of a tree twice (the second run transfers nothing).
requests() { curl -s "$endpoint/-/stats" | python3 -c 'import json,sys; print(sum(json.load(sys.stdin)["requests"].values()))'; }
tar -C "$work/small" -cf "$work/small.tar" .
r0=$(requests)
tar -C "$work/mnt" --one-top-level=tarx -xpf "$work/small.tar"
r1=$(requests)
tar_requests=$((r1 - r0))
mkdir -p "$work/tree"
for d in $(seq 20); do mkdir -p "$work/tree/d$d"; for f in $(seq 50); do head -c $((f * 97)) /dev/urandom >"$work/tree/d$d/f$f"; done; done
rsync_run() { rsync -a "$work/tree/" "$work/mnt/rsync-$1/"; }
measure rsync_first rsync_run
measure rsync_second rsync_run

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

# row LABEL VALUE [NOTE]: one line of the table, with the value an earlier
# run saved under LABEL (BENCH_BEFORE) and saving this one (BENCH_SAVE).
row() {
    local before=""
    if [ -n "${BENCH_BEFORE:-}" ] && [ -f "$BENCH_BEFORE" ]; then
        before=$(awk -F'\t' -v l="$1" '$1 == l {print $2}' "$BENCH_BEFORE")
    fi
    [ -n "${BENCH_SAVE:-}" ] && printf '%s\t%s\n' "$1" "$2" >>"$BENCH_SAVE"
    if [ -n "${BENCH_BEFORE:-}" ]; then
        printf '%-34s %-26s %-26s %s\n' "$1" "${before:--}" "$2" "${3:-}"
    else
        printf '%-34s %-26s %s\n' "$1" "$2" "${3:-}"
    fi
}
# MB/s of a timed row: median [slowest-fastest].
rate() { printf '%s [%s-%s]' "$(mbps "${med[$1]}")" "$(mbps "${slow[$1]}")" "$(mbps "${fast[$1]}")"; }
# Throughput of $1 over $2: the ratio of medians, and in brackets the lowest
# and highest ratio of runs made side by side (run i of each).
ratios() {
    local a=(${times[$1]}) b=(${times[$2]}) i rs=()
    for i in "${!a[@]}"; do rs+=("$(ratio "${a[$i]}" "${b[$i]}")"); done
    printf '%s x [%s-%s]' "$(ratio "${med[$1]}" "${med[$2]}")" \
        "$(printf '%s\n' "${rs[@]}" | sort -g | head -1)" "$(printf '%s\n' "${rs[@]}" | sort -g | tail -1)"
}
secs() { printf '%.2f s [%.2f-%.2f]' "${med[$1]}" "${slow[$1]}" "${fast[$1]}"; }
[ -n "${BENCH_SAVE:-}" ] && : >"$BENCH_SAVE"

printf '\n%s MiB file, %d x 4 KiB files, median [slowest-fastest] of %d runs, %s cores, load %s, one local cofferfs serve\n' \
    "$size_mib" "$small_files" "$runs" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "${BENCH_BEFORE:-}" ]; then
    printf '%-34s %-26s %-26s %s\n' "what" "before" "now" "target"
else
    printf '%-34s %-26s %s\n' "what" "now" "target"
fi
row "openssl md5 (CPU ceiling), MB/s" "$(rate md5)"
row "cp to local disk (+sync), MB/s" "$(rate cp)"
row "cofferfs put, MB/s" "$(rate put)" "baseline"
row "cp into the mount, MB/s" "$(rate mount)"
row "  ... / cofferfs put" "$(ratios mount put)" ">= 0.95"
row "cofferfs get (cold), MB/s" "$(rate get)" "baseline"
row "cold read through the mount, MB/s" "$(rate cold)"
row "  ... / cofferfs get" "$(ratios cold get)" ">= 0.95"
row "warm re-read through the mount" "$(rate warm)" ">= 1000"
row "4 KiB random reads (cold file)" "$random_reads/s"
row "ls -l of $small_files entries" "$(printf '%.2f s' "$ls_time")" "$((l1 - l0)) listing requests, $((h1 - h0)) HEAD"
row "$small_files x 4 KiB into the mount" \
    "$(printf '%s files/s [%s-%s]' "$(echo "$small_files / ${med[small]}" | bc -l | xargs printf '%.0f')" \
        "$(echo "$small_files / ${slow[small]}" | bc -l | xargs printf '%.0f')" \
        "$(echo "$small_files / ${fast[small]}" | bc -l | xargs printf '%.0f')")" ">= 1500"
row "tar -xp of $small_files files" "$tar_requests requests" \
    "$(echo "$tar_requests / $small_files" | bc -l | xargs printf '%.2f') per data upload (target <= 1.10)"
row "rsync -a 1000 files, first run" "$(secs rsync_first)"
row "rsync -a 1000 files, second run" "$(secs rsync_second)" "(nothing to transfer)"
row "peak RSS of cofferfs put" "$((peak / 1024)) MiB"
row "peak RSS of the mount daemon" "$((mount_hwm / 1024)) MiB" "(--upload-memory 64MiB, --cache-size 256MiB)"
