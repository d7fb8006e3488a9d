#!/usr/bin/env bash
# Scale benchmark (issue 14): N objects in a backup-like tree
# `host-HH/NNN/MMM/file-K` (20 hosts, 100 leaves per NNN, 50 one-byte files per
# leaf) PUT straight into a local `cofferfs serve` (many parallel PUTs over
# keep-alive connections, no mount), then measured through a mount: time and
# requests (from the server's /-/stats) of a cold leaf `ls -l` (first, on the
# fresh mount), the first `ls /`, `find | wc -l` and `du -s`, the same again
# once --metadata-ttl has passed, and the daemon's RSS after the walk and
# after drop_caches; and, as the yardstick, `cofferfs ls` of every key.
# Usage: scripts/scale.sh N   (e.g. 10000, 100000, 1000000)
#   SCALE_BIN=FILE     measures that cofferfs binary instead of building this tree;
#   SCALE_TTL=SECS     the mount's --metadata-ttl (default 10);
#   SCALE_SETTLE=SECS  wait after drop_caches before reading RSS (default 60);
#   SCALE_THREADS=N    parallel PUTs (default 32);
#   SCALE_KEEP=DIR     keeps the populated coffer in DIR and reuses it on the
#                      next run of the same N (a 1M coffer takes minutes to fill).
# Not part of .ci/run: it takes minutes and drops the machine's page cache.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

n=${1:?usage: scripts/scale.sh N}
ttl=${SCALE_TTL:-10}
settle=${SCALE_SETTLE:-60}
threads=${SCALE_THREADS:-32}
ensure_deps
bin=$(cofferfs_bin "${SCALE_BIN:-}")
work=$(mktemp -d "${TMPDIR:-/tmp}/cofferfs-scale.XXXXXX")
coffer=scale-1250000000
cleanup() {
    mountpoint -q "$work/mnt" 2>/dev/null && fusermount3 -u -z "$work/mnt"
    [ -n "${mount_pid:-}" ] && kill "$mount_pid" 2>/dev/null && wait "$mount_pid" 2>/dev/null
    [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
# With SCALE_KEEP the freshly populated coffer is kept as DIR/N and each run
# works on a copy of it (the mount writes journal batches into its coffer).
root=$work/coffer
keep=${SCALE_KEEP:+$SCALE_KEEP/$n}
reused=
if [ -n "$keep" ] && [ -e "$keep/populated" ]; then
    cp -a "$keep/root" "$root"
    reused=1
fi
mkdir -p "$root"
start_server "$bin" "$root" "$coffer" --test-api

# The tree: leaf j (0-based) of host h is host-h/(j / 100)/(j % 100).
t0=$(date +%s.%N)
[ -n "$reused" ] || python3 - "$endpoint" "$coffer" "$n" "$threads" <<'EOF'
import http.client, multiprocessing, sys, threading
from urllib.parse import urlparse
endpoint, coffer, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
u = urlparse(endpoint)
hosts = 20 if n >= 1000 else 1
procs = 4

def key(i):
    leaf, k = divmod(i, 50)
    h, j = leaf % hosts, leaf // hosts
    return f"host-{h:02}/{j // 100:03}/{j % 100:03}/file-{k}"

def thread(first, step):
    c = http.client.HTTPConnection(u.hostname, u.port)
    for i in range(first, n, step):
        c.request("PUT", f"/{coffer}/{key(i)}", body=b"x")
        r = c.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"PUT {key(i)}: HTTP {r.status}")

def proc(p):
    # Threads of several processes: one Python process cannot keep the server busy.
    per = max(1, threads // procs)
    ts = [threading.Thread(target=thread, args=(p * per + t, procs * per)) for t in range(per)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()

ps = [multiprocessing.Process(target=proc, args=(p,)) for p in range(procs)]
for p in ps:
    p.start()
for p in ps:
    p.join()
    if p.exitcode != 0:
        sys.exit("a PUT failed")
EOF
t1=$(date +%s.%N)
if [ -n "$keep" ] && [ ! -e "$keep/populated" ]; then
    # Copied once the server is idle (its small puts commit within 50 ms).
    sleep 1
    rm -rf "$keep" && mkdir -p "$keep" && cp -a "$root" "$keep/root" && touch "$keep/populated"
fi
populate=$(echo "$t1 - $t0" | bc -l)

mkdir -p "$work/mnt"
"$bin" mount --endpoint "$endpoint" "$coffer" "$work/mnt" --foreground \
    --metadata-ttl "${ttl}s" 2>"$work/mount.log" &
mount_pid=$!
wait_mounted "$work/mnt"

stats() { curl -s "$endpoint/-/stats"; }
# count JSON OP: requests of OP ("*": all) in a /-/stats answer.
count() {
    python3 -c 'import json,sys
r = json.loads(sys.argv[1])["requests"]
print(sum(r.values()) if sys.argv[2] == "*" else r.get(sys.argv[2], 0))' "$1" "$2"
}
rss_mib() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$mount_pid/status"; }
hwm_mib() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$mount_pid/status"; }

rows=()
# step NAME CMD...: runs CMD (output discarded), adds a row.
step() {
    local name=$1 s0 s1 a b
    shift
    s0=$(stats)
    a=$(date +%s.%N)
    "$@" >"$work/out"
    b=$(date +%s.%N)
    s1=$(stats)
    last_total=$(($(count "$s1" '*') - $(count "$s0" '*')))
    rows+=("$(printf '| %s | %.2f s | %d | %d | %d |' "$name" "$(echo "$b - $a" | bc -l)" \
        $(($(count "$s1" GetCoffer) - $(count "$s0" GetCoffer))) \
        $(($(count "$s1" HeadObject) - $(count "$s0" HeadObject))) \
        $(($(count "$s1" '*') - $(count "$s0" '*'))))")
}
walk_find() { find "$work/mnt" | wc -l; }
walk_du() { du -s "$work/mnt"; }

# A leaf no step before it visits (the last host's last leaf).
hosts=20
[ "$n" -ge 1000 ] || hosts=1
last=$(( (n / 50 - 1) / hosts ))
leaf="$work/mnt/host-$(printf %02d $((hosts - 1)))/$(printf %03d $((last / 100)))/$(printf %03d $((last % 100)))"
[ "$n" -ge 50 ] || leaf="$work/mnt"

# The yardstick: every key listed once, without a mount.
list_all() { "$bin" --endpoint "$endpoint" ls "$coffer" | wc -l; }
step "every key once (cofferfs ls, no mount)" list_all
step "cold leaf ls -l (nothing listed yet)" ls -l "$leaf"
step "first ls /" ls "$work/mnt"
step "find (wc -l)" walk_find
found=$(cat "$work/out")
step "du -s" walk_du
rss_walk=$(rss_mib)
hwm_walk=$(hwm_mib)
sleep $((ttl + 1))
step "ls / after the TTL" ls "$work/mnt"
step "leaf ls -l after the TTL" ls -l "$leaf"
step "find after the TTL" walk_find
step "du -s after the TTL" walk_du
# 20,000 metadata ops spread over leaves (a fifth each: mkdir, creating an
# empty file, chmod of a stored file, mv of the new file, ln -s), from one
# process, leaves visited in turn so most listings have passed the TTL.
meta_ops() {
    python3 - "$work/mnt" "$hosts" "$last" <<'PY'
import os, sys
mnt, hosts, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
leaves = [f"{mnt}/host-{h:02}/{j // 100:03}/{j % 100:03}"
          for j in range(0, last + 1, max(1, last // 20)) for h in range(hosts)][:400]
for i in range(4000):
    d = leaves[i % len(leaves)]
    os.mkdir(f"{d}/dir-{i}")
    open(f"{d}/new-{i}", "w").close()
    os.chmod(f"{d}/file-{i % 50}", 0o640)
    os.rename(f"{d}/new-{i}", f"{d}/moved-{i}")
    os.symlink(f"file-{i % 50}", f"{d}/link-{i}")
print(5 * 4000)
PY
}
step "20,000 metadata ops" meta_ops
ops_requests=$last_total
sync
echo 2 >/proc/sys/vm/drop_caches
sleep "$settle"
rss_drop=$(rss_mib)

echo
echo "scripts/scale.sh $n: $(nproc) cores, $(git rev-parse --short HEAD 2>/dev/null || echo '?'), --metadata-ttl ${ttl}s"
if [ -n "$reused" ]; then
    printf 'reused the %d objects in %s; find shows %d entries\n' "$n" "$keep" "$found"
else
    printf 'populated %d objects in %.0f s (%.0f PUT/s); find shows %d entries\n' \
        "$n" "$populate" "$(echo "$n / $populate" | bc -l)" "$found"
fi
echo
echo "| step | time | LIST | HEAD | all requests |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
printf '\n20,000 metadata ops: %.2f requests per op\n' "$(echo "$ops_requests / 20000" | bc -l)"
echo
echo "| daemon memory | MiB |"
echo "|---|---|"
echo "| RSS after the walk | $rss_walk |"
echo "| peak RSS (VmHWM) after the walk | $hwm_walk |"
echo "| RSS ${settle} s after drop_caches | $rss_drop |"
