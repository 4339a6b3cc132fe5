#!/usr/bin/env bash
# The test command (README): lint, build every binary, run every test.
# Must run as root: the integration and end-to-end tests create network namespaces (only their
# own, prefixed, and removed afterwards; the root namespace is never changed).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/awscni-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: run as root (the tests create network namespaces)" >&2
    exit 1
fi

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

# The generator of the release ipamd's code layout (ipamd/hot-text.ld): a wrong pattern would
# not fail any build, it would only cost memory.
step "scripts/gen-hot-text.py tests"
python3 scripts/test_gen_hot_text.py

step "cargo build (all binaries; end-to-end tests spawn them)"
cargo build --workspace --bins

# The README demo must run to completion in CI (issue 6). It runs before `cargo test` so that
# cargo's summary stays the closing lines of the output.
step "README demo (scripts/demo.sh)"
bash scripts/demo.sh

step "cargo test"
cargo test --workspace --no-fail-fast
