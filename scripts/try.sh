#!/usr/bin/env bash
# Try cofferfs with no cloud account: builds it, starts a local coffer
# (`cofferfs serve`), puts a file into it, lists it, gets it back and compares.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
bin=target/release/cofferfs
work=$(mktemp -d)
coffer=demo-1250000000
cleanup() {
    [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

"$bin" serve --root "$work/coffer" --listen 127.0.0.1:0 --coffer "$coffer" >"$work/serve.out" &
server_pid=$!
for _ in $(seq 100); do
    grep -q '^listening on ' "$work/serve.out" 2>/dev/null && break
    sleep 0.1
done
endpoint=$(sed -n 's/^listening on //p' "$work/serve.out")
[ -n "$endpoint" ] || { echo "the local coffer did not start" >&2; exit 1; }
echo "local coffer $coffer at $endpoint"

head -c $((40 * 1024 * 1024 + 123)) /dev/urandom >"$work/sample.bin"
"$bin" --endpoint "$endpoint" put "$work/sample.bin" "$coffer/demo/sample.bin"
"$bin" --endpoint "$endpoint" ls "$coffer"
"$bin" --endpoint "$endpoint" stat "$coffer/demo/sample.bin"
"$bin" --endpoint "$endpoint" get "$coffer/demo/sample.bin" "$work/back.bin"
cmp "$work/sample.bin" "$work/back.bin" && echo "round trip OK: 40 MiB put and got back byte for byte"
