#!/usr/bin/env bash
# Throughput benchmark on this machine against one local `cofferfs serve`,
# medians of 3 runs:
#   writes: 1 GiB through the mount vs `cofferfs put` vs `cp` to local disk,
#           1000 x 4 KiB files through the mount;
#   reads:  `cofferfs get`; cold and warm reads through the mount, 4 KiB random
#           reads, ls -l of 1000 entries; `openssl md5` as the CPU ceiling;
#   memory: peak RSS (VmHWM) of `cofferfs put` and of the mount daemon.
# Usage: scripts/bench.sh [SIZE_MIB]   (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

size_mib=${1:-1024}
runs=3
small_files=1000
ensure_deps
cargo build --release --quiet
bin=$PWD/target/release/cofferfs
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

declare -A med
measure() {
    local i
    for i in $(seq $runs); do
        timeit "$@" "$i"
    done | median
}

put_run() { "$bin" --endpoint "$endpoint" put "$work/src.bin" "$coffer/put-$1"; }
get_run() { "$bin" --endpoint "$endpoint" get "$coffer/put-1" "$work/got-$1.bin" && rm -f "$work/got-$1.bin"; }
md5_run() { openssl md5 "$work/src.bin"; }
cp_run() { cp "$work/src.bin" "$work/cp-$1.bin" && sync "$work/cp-$1.bin" && rm -f "$work/cp-$1.bin"; }
mount_run() { cp "$work/src.bin" "$work/mnt/mount-$1.bin"; }
small_run() { cp -r "$work/small" "$work/mnt/small-$1"; }

med[md5]=$(measure md5_run)
med[cp]=$(measure cp_run)
# put and the mount alternate, so both meet the same page-cache and disk state.
put_times=() mount_times=()
for i in $(seq $runs); do
    put_times+=("$(timeit put_run "$i")")
    mount_times+=("$(timeit mount_run "$i")")
done
med[put]=$(printf '%s\n' "${put_times[@]}" | median)
med[mount]=$(printf '%s\n' "${mount_times[@]}" | median)
med[small]=$(measure small_run)
med[get]=$(measure get_run)

# Reads through the mount: cold (page cache dropped, a file not read before),
# warm (the same file again), 4 KiB random reads, ls -l of 1000 entries.
drop_caches() { sync; echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
cold_run() { drop_caches; cat "$work/mnt/mount-$1.bin" >/dev/null; }
warm_run() { cat "$work/mnt/mount-1.bin" >/dev/null; }
med[cold]=$(measure cold_run)
cat "$work/mnt/mount-1.bin" >/dev/null
med[warm]=$(measure warm_run)
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
med[rsync_first]=$(measure rsync_run)
med[rsync_second]=$(measure rsync_run)

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

printf '\n%s MiB file, %d x 4 KiB files, median of %d runs, %s cores, one local cofferfs serve\n' \
    "$size_mib" "$small_files" "$runs" "$(nproc)"
printf '%-34s %10s  %s\n' "what" "MB/s" "ratio"
printf '%-34s %10s  %s\n' "openssl md5 (CPU ceiling)" "$(mbps "${med[md5]}")" ""
printf '%-34s %10s  %s\n' "cp to local disk (+sync)" "$(mbps "${med[cp]}")" ""
printf '%-34s %10s  %s\n' "cofferfs put" "$(mbps "${med[put]}")" "1.00 (baseline)"
printf '%-34s %10s  %s\n' "cp into the mount" "$(mbps "${med[mount]}")" "$(ratio "${med[mount]}" "${med[put]}") x put (target >= 0.80)"
printf '%-34s %10s  %s\n' "cofferfs get" "$(mbps "${med[get]}")" ""
printf '%-34s %10s  %s\n' "cold read through the mount" "$(mbps "${med[cold]}")" "$(ratio "${med[cold]}" "${med[get]}") x get (target >= 0.80)"
printf '%-34s %10s  %s\n' "warm re-read through the mount" "$(mbps "${med[warm]}")" "(target >= 1000)"
printf '%-34s %10s  %s\n' "4 KiB random reads (cold file)" "$random_reads/s" ""
printf '%-34s %10s  %s\n' "ls -l of $small_files entries" "$(printf '%.2f s' "$ls_time")" "$((l1 - l0)) listing requests, $((h1 - h0)) HEAD"
printf '%-34s %10s  %s\n' "$small_files x 4 KiB into the mount" \
    "$(echo "$small_files / ${med[small]}" | bc -l | xargs printf '%.0f') files/s" ""
printf '%-34s %10s  %s\n' "tar -xp of $small_files files" "$tar_requests requests" \
    "$(echo "$tar_requests / $small_files" | bc -l | xargs printf '%.2f') per data upload (target <= 1.10)"
printf '%-34s %10s  %s\n' "rsync -a 1000 files, first run" "$(printf '%.2f s' "${med[rsync_first]}")" ""
printf '%-34s %10s  %s\n' "rsync -a 1000 files, second run" "$(printf '%.2f s' "${med[rsync_second]}")" "(nothing to transfer)"
printf 'peak RSS (VmHWM): cofferfs put %d MiB, mount daemon %d MiB (--upload-memory 64MiB)\n' \
    $((peak / 1024)) $((mount_hwm / 1024))
