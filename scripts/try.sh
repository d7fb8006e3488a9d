#!/usr/bin/env bash
# Try cofferfs with no cloud account: builds it, mounts a local coffer
# (`cofferfs mount --local`, the embedded server) and uses it with cp, ls, cat,
# tar -x and cmp. The mount stays up for you to explore; the last line says how
# to unmount it. Usage: scripts/try.sh [MOUNTPOINT]  (default /tmp/cofferfs-try/mnt)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_deps
bin=$(cofferfs_bin)
base=/tmp/cofferfs-try
mnt=${1:-$base/mnt}
coffer=demo-1250000000
mkdir -p "$base" "$mnt"
if mountpoint -q "$mnt"; then fusermount3 -u "$mnt"; fi

"$bin" mount --local "$base/coffer" "$coffer" "$mnt" --log-file "$base/mount.log"
echo "mounted local coffer $coffer at $mnt (data in $base/coffer, log in $base/mount.log)"

run() { echo "\$ $*"; "$@"; }
stamp=$(date +%Y%m%d-%H%M%S)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c $((40 * 1024 * 1024 + 123)) /dev/urandom >"$work/sample.bin"
mkdir -p "$work/tree/docs" "$work/tree/src"
for i in $(seq 20); do echo "file $i of the demo tree" >"$work/tree/docs/note-$i.txt"; done
cp README.md "$work/tree/src/"

run mkdir "$mnt/$stamp"
run cp "$work/sample.bin" "$mnt/$stamp/sample.bin"
run cmp "$work/sample.bin" "$mnt/$stamp/sample.bin"
run tar -C "$work/tree" -cf "$work/tree.tar" .
run tar -C "$mnt/$stamp" -xf "$work/tree.tar"
run diff -r "$work/tree" "$mnt/$stamp" --exclude sample.bin
run ls -l "$mnt/$stamp"
run cat "$mnt/$stamp/docs/note-1.txt"
echo
echo "all good: 40 MiB and a 21-file tree are on the local coffer, byte for byte."
echo "explore $mnt, then unmount with: fusermount3 -u $mnt"
