#!/usr/bin/env bash
# POSIX conformance baseline: runs pjdfstest (https://github.com/pjd/pjdfstest) against a
# `cofferfs mount --local ... --allow-other` mount and prints, per test directory, the
# test files and the checks that passed and failed. Not part of CI (it needs the suite,
# which is not vendored here, and root). Every test file runs under a timeout, so a hang
# costs one file, not the run; the mount is always unmounted.
# Usage (as root): scripts/pjdfstest.sh [PJDFSTEST_DIR]   (default /work/pjdfstest)
#   PJD_TIMEOUT=120      seconds per test file
#   PJD_DIRS="chmod rename"   only these test directories (default: all of tests/*/)
#   PJD_KEEP=DIR         keep the TAP logs, failures.txt and the mount log in DIR
#                        (default: a fresh /tmp/cofferfs-pjd.XXXXXX, printed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

pjd=$(realpath "${1:-/work/pjdfstest}")
per_file=${PJD_TIMEOUT:-120}
[ "$(id -u)" = 0 ] || { echo "pjdfstest needs root (it switches uids and chowns)" >&2; exit 1; }
command -v prove >/dev/null || { echo "prove is missing: apt-get install perl" >&2; exit 1; }
[ -d "$pjd/tests" ] || { echo "$pjd/tests not found: check out github.com/pjd/pjdfstest there" >&2; exit 1; }
if [ ! -x "$pjd/pjdfstest" ]; then
    # The suite's C helper is built in place, once.
    echo "building $pjd/pjdfstest"
    (cd "$pjd" && autoreconf -ifs && ./configure && nice make pjdfstest) >"$pjd/build.log" 2>&1 ||
        { echo "building pjdfstest failed (needs autoconf automake libtool gcc); see $pjd/build.log" >&2; exit 1; }
fi
ensure_deps
nice cargo build --release --quiet
bin=$PWD/target/release/cofferfs

base=$(mktemp -d "${TMPDIR:-/tmp}/cofferfs-pjd.XXXXXX")
out=${PJD_KEEP:-$base/out}
mkdir -p "$out" "$base/mnt"
# The tests switch to other uids inside the mount; they must be able to reach it.
chmod 755 "$base"
cleanup() {
    cd /
    mountpoint -q "$base/mnt" 2>/dev/null && fusermount3 -u -z "$base/mnt"
    # The daemon writes its last journal checkpoint after the unmount: removing the
    # coffer under it would log a storage failure that is this script's, not cofferfs'.
    if [ -n "${daemon_pid:-}" ]; then
        for _ in $(seq 600); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$daemon_pid" 2>/dev/null; then
            echo "the mount daemon ($daemon_pid) is still running 60 s after the unmount; kept $base" >&2
            return
        fi
    fi
    # The coffer, the cache and the mountpoint go; the logs stay for reading.
    rm -rf "$base/coffer" "$base/cache"
    rmdir "$base/mnt" 2>/dev/null || true
    [ -z "${PJD_KEEP:-}" ] || rmdir "$base" 2>/dev/null || true
}
trap cleanup EXIT

"$bin" mount --local "$base/coffer" pjdfstest-1250000000 "$base/mnt" --allow-other \
    --cache-dir "$base/cache" --log-file "$out/mount.log"
wait_mounted "$base/mnt"
# The detached daemon's pid, found by its mountpoint (a fresh mktemp path, so only ours).
daemon_pid=$(pgrep -f -- " $base/mnt " | head -1 || true)
run=$base/mnt/pjdfstest-$(date +%Y%m%d-%H%M%S)
mkdir "$run"

if [ -n "${PJD_DIRS:-}" ]; then
    read -r -a dirs <<<"$PJD_DIRS"
else
    dirs=()
    for d in "$pjd"/tests/*/; do dirs+=("$(basename "$d")"); done
fi

: >"$out/failures.txt"
rows=()
total_files=0 total_ok=0 total_fail=0 total_bad=0
for name in "${dirs[@]}"; do
    if ! mountpoint -q "$base/mnt"; then
        echo "the mount is gone (see $out/mount.log); stopping before $name" >&2
        break
    fi
    files=$(find "$pjd/tests/$name" -name '*.t' | wc -l)
    echo "running $name ($files files)" >&2
    mkdir "$run/$name"
    # Each file runs in its own `timeout`, killed 10 s after the TERM if it ignores it.
    (cd "$run/$name" && nice prove --merge -v --exec "timeout -k 10 $per_file sh" -r "$pjd/tests/$name") \
        >"$out/$name.tap" 2>&1 || true
    # prove -v prints "PATH .. " before each file's TAP lines: name failures by file.
    # A TODO "not ok" is pjdfstest's known failure on some other OS: not counted.
    read -r ok fail <<<"$(awk -v tag="$name" -v failures="$out/failures.txt" '
        / \.\. *$/ && /\.t / { file = $1; sub(".*/" tag "/", tag "/", file) }
        /^ok [0-9]/ { ok++ }
        /^not ok/ && !/# TODO/ { fail++; print file ": " $0 >> failures }
        END { print ok + 0, fail + 0 }' "$out/$name.tap")"
    # Files that timed out or ended before their plan: prove's summary lists them.
    bad=$(awk '/\(Wstat: / { f = $1; if ($3 != "0") bad[f] = 1 }
        /^ +Parse errors:/ { bad[f] = 1 }
        END { print length(bad) }' "$out/$name.tap")
    rows+=("$(printf '%-16s %6s %8s %8s %10s' "$name" "$files" "$ok" "$fail" "$bad")")
    total_files=$((total_files + files)) total_ok=$((total_ok + ok))
    total_fail=$((total_fail + fail)) total_bad=$((total_bad + bad))
done

echo
printf '%-16s %6s %8s %8s %10s\n' directory files passed failed "bad exits"
printf '%s\n' "${rows[@]}"
printf '%-16s %6s %8s %8s %10s\n' total "$total_files" "$total_ok" "$total_fail" "$total_bad"
if [ -s "$out/failures.txt" ]; then
    # Where to look first: the calls that failed most, by what they returned. Many are
    # knock-on failures of an earlier create in the same test file (see failures.txt).
    echo
    echo "most frequent failing calls (call: got instead of expected):"
    sed -nE "s/.*tried '(-[ugU] [^ ]+ )*(-- )?([a-z_]+) .*, got ([A-Z0-9a-z,_]+)\$/\3: \4/p" "$out/failures.txt" |
        sed -E 's/: [0-9].*/: a value/' | sort | uniq -c | sort -rn | head -12
fi
echo
echo "TAP logs: $out/DIR.tap; failing checks: $out/failures.txt; mount log: $out/mount.log"
echo "(bad exits: files that timed out or exited early, named in prove's summary)"
