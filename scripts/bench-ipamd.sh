#!/usr/bin/env bash
# ipamd benchmarks on vpcsim with the real binaries (docs/benchmarks/ipamd.md).
# Root only (network namespaces). Extra arguments go to bench-ipamd (see --help), e.g.
#   scripts/bench-ipamd.sh --instance-type m5.large --attach-delay-ms 2000
# The numbers are measured on debug builds unless PROFILE=release.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/awscni-target}"
PROFILE="${PROFILE:-debug}"

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/bench-ipamd.sh: run as root (the benchmark creates network namespaces)" >&2
    exit 1
fi

if [ "$PROFILE" = release ]; then
    # ipamd on its own, as the image builds it (conf/Dockerfile): built together with other
    # packages, shared dependencies may get other features and ipamd/hot-text.ld would not match.
    cargo build --release -p ipamd --bin ipamd
    cargo build --release -p vpcsim -p aws-cni -p awscni-e2e --bins
else
    cargo build -p vpcsim -p ipamd -p aws-cni -p awscni-e2e --bins
fi
exec "$CARGO_TARGET_DIR/$PROFILE/bench-ipamd" "$@"
