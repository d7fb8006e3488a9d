# Shared by the scripts (sourced, not run): dependencies and a local coffer server.

# Installs what the tests drive when missing (as root; otherwise says what to
# install): fuse3, rsync, and the tools the mount must work with.
ensure_deps() {
    local missing=() pair
    for pair in fusermount3:fuse3 rsync:rsync git:git sqlite3:sqlite3 7z:p7zip-full \
        zip:zip unzip:unzip vim:vim python3:python3 setfattr:attr \
        restic:restic borg:borgbackup; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ]; then
        echo "installing: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root" >&2
        return 1
    fi
}

# cofferfs_bin [FILE]: prints FILE's full path, or, without one, builds this
# tree's release binary and prints its path.
cofferfs_bin() {
    if [ -n "${1:-}" ]; then
        realpath "$1"
    else
        cargo build --release --quiet && echo "$PWD/target/release/cofferfs"
    fi
}

# start_server BIN ROOT COFFER [SERVE-ARGS...]: starts `cofferfs serve` in the background
# and sets $server_pid and $endpoint once it listens.
start_server() {
    local bin=$1 root=$2 coffer=$3 out
    shift 3
    out=$(mktemp)
    "$bin" serve --root "$root" --listen 127.0.0.1:0 --coffer "$coffer" "$@" >"$out" 2>"$out.err" &
    server_pid=$!
    for _ in $(seq 100); do
        grep -q '^listening on ' "$out" 2>/dev/null && break
        sleep 0.1
    done
    endpoint=$(sed -n 's/^listening on //p' "$out")
    [ -n "$endpoint" ] || { echo "the local coffer did not start:" >&2; cat "$out.err" >&2; return 1; }
}

# wait_mounted DIR: waits up to 30 s for DIR to become a mount point.
wait_mounted() {
    for _ in $(seq 300); do
        mountpoint -q "$1" && return 0
        sleep 0.1
    done
    echo "$1 did not become a mount point" >&2
    return 1
}
