#!/usr/bin/env bash
# The project's test command: installs what the tests need (as root), then
# format check, lints and every test. Used by .ci/run and by developers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_deps
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
