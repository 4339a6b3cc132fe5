#!/usr/bin/env bash
# The demo (README command 1): the whole system on one machine, without AWS.
#
#   sudo scripts/demo.sh [--pods N] [--keep]
#
# Builds what it needs, starts vpcsim with two m5.large nodes, runs our installer/entrypoint in
# each node (it installs aws-cni, starts ipamd, waits for its health check, writes the conflist),
# starts pods through the real aws-cni plugin driven by libcni (the library containerd and podman
# use), shows each pod's address, ENI and node, pings across nodes and to the "internet" host,
# prints max pods, and tears everything down (also on Ctrl-C or failure).
#
# Everything happens in network namespaces named `awsdemo-*` that this script creates; the root
# namespace's routes, rules and iptables are never touched, and no packet leaves the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PODS=12
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --pods) PODS="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n 2,12p "$0"; exit 0 ;;
        *) echo "demo: unknown argument $1" >&2; exit 2 ;;
    esac
done

PREFIX=awsdemo
STATE_DIR=/run/awscni-demo
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/awscni-target}"
BIN="$CARGO_TARGET_DIR/debug"
CNITOOL=/var/tmp/awscni-cnitool
LOGDIR=$(mktemp -d /tmp/awscni-demo.XXXXXX)

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "demo: run as root (it creates network namespaces)" >&2
    exit 1
fi

# ---- 1. what it needs -------------------------------------------------------------------------
say "checking packages"
pkgs=(iproute2 iptables nftables util-linux iputils-ping curl jq containernetworking-plugins golang-go golang-github-appc-cni-dev)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    info "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

say "building (cargo build --workspace --bins; the first build takes several minutes)"
cargo build --workspace --bins >&2
say "building the libcni driver (tests/cnitool, Go, offline GOPATH mode)"
gopath=$(mktemp -d)
(cd tests/cnitool && GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" go build -o "$CNITOOL" .)
rm -rf "$gopath"

VPCSIM=("$BIN/vpcsim")
vs() { "${VPCSIM[@]}" "$@" --prefix "$PREFIX" --state-dir "$STATE_DIR"; }
on() { local node=$1; shift; "${VPCSIM[@]}" exec --prefix "$PREFIX" --state-dir "$STATE_DIR" "$node" -- "$@"; }

ENTRY_PIDS=()
cleanup() {
    local rc=$?
    if [ "$KEEP" -eq 1 ] && [ "$rc" -eq 0 ]; then
        say "--keep: leaving the fabric up; remove it with: $BIN/vpcsim down --prefix $PREFIX --state-dir $STATE_DIR"
        return
    fi
    say "tearing down"
    for pid in "${ENTRY_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${ENTRY_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    vs down >/dev/null 2>&1 || true
    info "removed every $PREFIX-* namespace and process; logs kept in $LOGDIR"
    [ "$rc" -eq 0 ] || echo "demo: FAILED (exit $rc); logs in $LOGDIR" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 2. the VPC -------------------------------------------------------------------------------
say "starting vpcsim: a VPC with two m5.large nodes"
vs down >/dev/null 2>&1 || true # a crashed earlier demo
vs up --nodes 2 --instance-type m5.large >"$LOGDIR/vpcsim.json"
EXT=$(jq -r .external.address "$LOGDIR/vpcsim.json")
EC2_IN_NODE=$(jq -r .ec2_endpoint_in_node "$LOGDIR/vpcsim.json")
mapfile -t NODES < <(jq -r '.nodes[].name' "$LOGDIR/vpcsim.json")
for n in "${NODES[@]}"; do
    info "$n: $(jq -r --arg n "$n" '.nodes[] | select(.name==$n) | "\(.instance_id) primary ENI \(.primary_eni_id) \(.primary_ip) namespace \(.namespace)"' "$LOGDIR/vpcsim.json")"
done
info "EC2 API on loopback: $(jq -r .ec2_endpoint "$LOGDIR/vpcsim.json"); external host: $EXT"

node_ip() { jq -r --arg n "$1" '.nodes[] | select(.name==$n) | .primary_ip' "$LOGDIR/vpcsim.json"; }
node_dir() { jq -r --arg n "$1" --arg d "$2" '.nodes[] | select(.name==$n) | .dirs[] | select(.[0]==$d) | .[1]' "$LOGDIR/vpcsim.json"; }

# ---- 3. the node agent ------------------------------------------------------------------------
say "starting the aws-node entrypoint in each node (install plugin, start ipamd, wait healthy, write conflist)"
for n in "${NODES[@]}"; do
    on "$n" env \
        MY_NODE_NAME="$n" \
        ENABLE_IPv4=true \
        AWS_ENDPOINT_URL_EC2="$EC2_IN_NODE" \
        AWS_VPC_CNI_PLUGIN_SRC="$BIN/aws-cni" \
        AWS_VPC_CNI_IPAMD_BIN="$BIN/ipamd" \
        AWS_VPC_CNI_STD_PLUGINS_DIR=/usr/lib/cni \
        HOST_CNI_BIN_PATH=/opt/cni/bin \
        HOST_CNI_CONFDIR_PATH=/etc/cni/net.d \
        AWS_VPC_K8S_CNI_LOG_FILE=/var/log/aws-routed-eni/ipamd.log \
        AWS_VPC_K8S_CNI_LOGLEVEL=info \
        AWS_VPC_K8S_PLUGIN_LOG_FILE=/var/log/aws-routed-eni/plugin.log \
        "$BIN/aws-vpc-cni" >"$LOGDIR/entrypoint-$n.log" 2>&1 &
    ENTRY_PIDS+=($!)
done
for n in "${NODES[@]}"; do
    conf="$(node_dir "$n" /etc/cni/net.d)/10-aws.conflist"
    for _ in $(seq 1 600); do
        [ -s "$conf" ] && break
        for pid in "${ENTRY_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || { echo "demo: an entrypoint exited; see $LOGDIR/entrypoint-*.log" >&2; tail -5 "$LOGDIR"/entrypoint-*.log >&2; exit 1; }
        done
        sleep 0.1
    done
    [ -s "$conf" ] || { echo "demo: $n never became ready; see $LOGDIR/entrypoint-$n.log" >&2; exit 1; }
    info "$n ready: ipamd healthy, $(basename "$conf") written, max pods $(cat "$(node_dir "$n" /run/aws-node)/max-pods" 2>/dev/null || echo '?')"
done

# ---- 4. pods ----------------------------------------------------------------------------------
say "starting $PODS pods through libcni -> aws-cni (+ portmap), spread over the nodes"
declare -A POD_NODE POD_IP
for i in $(seq 1 "$PODS"); do
    n=${NODES[$(( (i - 1) % ${#NODES[@]} ))]}
    pod="pod$i"
    on "$n" ip netns add "$pod"
    out=$(on "$n" env CNI_PATH=/opt/cni/bin:/usr/lib/cni CNI_CACHE_DIR=/var/lib/cni \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$pod;K8S_POD_INFRA_CONTAINER_ID=sandbox-$pod" \
        "$CNITOOL" add /etc/cni/net.d/10-aws.conflist "/run/netns/$pod" "sandbox-$pod")
    ip=$(jq -r '.ips[0].address' <<<"$out" | cut -d/ -f1)
    POD_NODE[$pod]=$n
    POD_IP[$pod]=$ip
done

say "pods: address, ENI and node (from ipamd's introspection API in each node)"
printf '    %-7s %-6s %-15s %-24s %s\n' POD NODE ADDRESS ENI "DEVICE/TABLE" >&2
for i in $(seq 1 "$PODS"); do
    pod="pod$i"; n=${POD_NODE[$pod]}; ip=${POD_IP[$pod]}
    row=$(on "$n" curl -s -m 2 http://127.0.0.1:61679/v1/pods |
        jq -r --arg ip "$ip" '[.[] | select(.IP == $ip)][0] | "\(.ENI) \(.DeviceNumber)/\(.RouteTableID)"')
    printf '    %-7s %-6s %-15s %s\n' "$pod" "$n" "$ip" "$row" >&2
done
for n in "${NODES[@]}"; do
    enis=$(on "$n" ip -o link show | grep -c ': eth[0-9]*@' || true)
    info "$n: $enis ENI links; ipamd pool: $(on "$n" curl -s -m 2 http://127.0.0.1:61679/v1/pool | jq -c '{Total, Assigned, Free, Cooling, ENIs, MaxPods}')"
done

say "ipamd status on ${NODES[0]} (the operator CLI over the introspection API)"
on "${NODES[0]}" "$BIN/ipamd" status | sed 's/^/    /' >&2

# ---- 5. traffic -------------------------------------------------------------------------------
say "connectivity"
fail=0
check() { # description, node, pod, command...
    local what=$1 n=$2 pod=$3; shift 3
    if on "$n" ip netns exec "$pod" "$@" >/dev/null 2>&1; then
        info "ok    $what"
    else
        info "FAIL  $what"; fail=1
    fi
}
p1=pod1; p2=pod2; p3=pod3
check "$p1 (${POD_NODE[$p1]}) -> $p3 (${POD_NODE[$p3]}, same node) ${POD_IP[$p3]}" "${POD_NODE[$p1]}" $p1 ping -c1 -W2 "${POD_IP[$p3]}"
check "$p1 (${POD_NODE[$p1]}) -> $p2 (${POD_NODE[$p2]}, other node) ${POD_IP[$p2]}" "${POD_NODE[$p1]}" $p1 ping -c1 -W2 "${POD_IP[$p2]}"
check "$p2 (${POD_NODE[$p2]}) -> its node $(node_ip "${POD_NODE[$p2]}")" "${POD_NODE[$p2]}" $p2 ping -c1 -W2 "$(node_ip "${POD_NODE[$p2]}")"
check "$p2 (${POD_NODE[$p2]}) -> node ${NODES[0]} $(node_ip "${NODES[0]}")" "${POD_NODE[$p2]}" $p2 ping -c1 -W2 "$(node_ip "${NODES[0]}")"
check "$p1 -> external host $EXT" "${POD_NODE[$p1]}" $p1 ping -c1 -W2 "$EXT"
seen=$(on "${POD_NODE[$p1]}" ip netns exec $p1 curl -s -m 3 "http://$EXT/" || true)
if [ "$seen" = "$(node_ip "${POD_NODE[$p1]}")" ]; then
    info "ok    SNAT: the external host saw $p1 (${POD_IP[$p1]}) as $seen, the node's primary IP"
else
    info "FAIL  SNAT: the external host saw '$seen', expected $(node_ip "${POD_NODE[$p1]}")"; fail=1
fi

# ---- 6. podman (optional) ---------------------------------------------------------------------
if command -v podman >/dev/null 2>&1; then
    say "podman is installed: it could run a container with our conflist (not exercised by this demo yet)"
else
    info "podman not installed: skipping the podman container step"
fi

# ---- 7. max pods ------------------------------------------------------------------------------
say "max pods"
info "max-pods --instance-type m5.large                          -> $("$BIN/max-pods" --instance-type m5.large --cni-version 1.23.1)"
info "max-pods --instance-type m5.large --cni-prefix-delegation-enabled -> $("$BIN/max-pods" --instance-type m5.large --cni-version 1.23.1 --cni-prefix-delegation-enabled)"
for n in "${NODES[@]}"; do
    info "$n ipamd's own limit (/var/run/aws-node/max-pods): $(cat "$(node_dir "$n" /run/aws-node)/max-pods" 2>/dev/null || echo '?')"
done

# ---- 8. delete pods ---------------------------------------------------------------------------
say "deleting the pods through libcni (DEL)"
for i in $(seq 1 "$PODS"); do
    pod="pod$i"; n=${POD_NODE[$pod]}
    on "$n" env CNI_PATH=/opt/cni/bin:/usr/lib/cni CNI_CACHE_DIR=/var/lib/cni \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$pod;K8S_POD_INFRA_CONTAINER_ID=sandbox-$pod" \
        "$CNITOOL" del /etc/cni/net.d/10-aws.conflist "/run/netns/$pod" "sandbox-$pod"
    on "$n" ip netns del "$pod"
done
for n in "${NODES[@]}"; do
    # Like upstream, DEL removes routes and rules and leaves the veth to die with the pod's
    # namespace; the kernel destroys a deleted namespace's links asynchronously, so allow it a
    # moment before calling a veth "left behind".
    for _ in $(seq 1 30); do
        left=$(on "$n" ip -o link show | grep -o ' eni[0-9a-f]*@' | tr -d ' @' | tr '\n' ' ' || true)
        [ -z "$left" ] && break
        sleep 0.1
    done
    rules=$(on "$n" ip rule | grep -cE '^(512|1536):' || true)
    if [ -z "$left" ] && [ "$rules" -eq 0 ]; then
        info "$n: no pod veth, route or rule left"
    else
        info "$n: LEFT BEHIND: veths [$left], $rules pod rules"; fail=1
    fi
done

if [ "$fail" -ne 0 ]; then
    say "demo finished with failures"
    exit 1
fi
say "demo finished: every check passed"
