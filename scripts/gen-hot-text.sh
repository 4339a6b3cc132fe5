#!/usr/bin/env bash
# Regenerates ipamd/hot-text.ld, the release ipamd's hot/cold code layout (see ipamd/build.rs and
# scripts/gen-hot-text.py for why), from complete function coverage of the ipamd benchmark:
#   1. the release ipamd and its link map (which names the functions);
#   2. bench-ipamd on m5.large and m5.24xlarge (fill, restarts from the checkpoint, steady state)
#      with ipamd under fn-trace, a one-shot-breakpoint tracer that logs each function's first call;
#   3. gen-hot-text.py turns the logs into linker-script patterns.
# Root only (the benchmark creates network namespaces), ~25 minutes. Then rebuild the release
# ipamd and re-run scripts/bench-ipamd.sh to see the effect.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/awscni-target}"

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/gen-hot-text.sh: run as root (the benchmark creates network namespaces)" >&2
    exit 1
fi
for tool in python3; do
    command -v "$tool" >/dev/null || { echo "scripts/gen-hot-text.sh: needs $tool" >&2; exit 1; }
done

work=$(mktemp -d /var/tmp/awscni-hot-text.XXXXXX)
echo "work dir: $work" >&2

# The shipped release build, plus its link map (AWSCNI_LINK_MAP, see ipamd/build.rs): the map
# names each function's section and address. A build with symbols kept would not do: the
# profile's `strip` setting changes the crates' symbol hashes.
AWSCNI_LINK_MAP="$work/ipamd.map" cargo build --release -p ipamd --bin ipamd
cp "$CARGO_TARGET_DIR/release/ipamd" "$work/ipamd"
cargo build -p vpcsim -p aws-cni -p awscni-e2e --bins
cp "$CARGO_TARGET_DIR/debug/fn-trace" "$work/fn-trace"

python3 scripts/gen-hot-text.py addrs "$work/ipamd.map" >"$work/addrs"
echo "$(wc -l <"$work/addrs") function sections in ipamd" >&2

# bench-ipamd starts this in place of ipamd: the first start of a run fills the node, every
# later one restarts from the checkpoint and runs the steady state.
cat >"$work/ipamd-traced" <<EOF
#!/bin/sh
n=\$(( \$(cat "$work/starts" 2>/dev/null || echo 0) + 1 ))
echo \$n >"$work/starts"
kind=steady; [ \$n -eq 1 ] && kind=fill
exec env FN_TRACE_ADDRS="$work/addrs" FN_TRACE_OUT="$work/hits.\$(cat "$work/label").\$kind" \\
    "$work/fn-trace" "$work/ipamd" "\$@"
EOF
chmod +x "$work/ipamd-traced"

# The steady state lasts 240 s: some code runs only on timers, e.g. ipamd's iptables re-check
# (~60 s) and the HTTP clients dropping idle connections (90 s) and what follows; with a 10 s
# window that code was missing, and an hour-equivalent run ended ~1 MiB higher. A function that
# runs in production but missed the list costs a whole 64 KiB block.
for t in m5.large m5.24xlarge; do
    echo "$t" >"$work/label"
    rm -f "$work/starts"
    "$CARGO_TARGET_DIR/debug/bench-ipamd" --ipamd "$work/ipamd-traced" --instance-type "$t" \
        --steady-secs 240 --restarts 2 >"$work/bench-$t.out" 2>"$work/bench-$t.err" || {
        echo "bench-ipamd failed for $t; see $work/bench-$t.err" >&2
        exit 1
    }
done

python3 scripts/gen-hot-text.py "$work/ipamd.map" "$root/ipamd/hot-text.ld" \
    --steady "$work"/hits.*.steady.* --fill "$work"/hits.*.fill.*
rm -rf "$work"
