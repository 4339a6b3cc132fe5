#!/usr/bin/env bash
# The demo (README command 1): the whole system on one machine, without AWS.
#
#   sudo scripts/demo.sh [--pods N] [--keep] [--no-podman]
#
# Builds what it needs, starts vpcsim with two m5.large nodes, runs our installer/entrypoint in
# each node (it installs aws-cni, starts ipamd, waits for its health check, writes the conflist),
# starts pods through the real aws-cni plugin driven by libcni (the library containerd and podman
# use), shows each pod's address, ENI and node, pings across nodes and to the "internet" host,
# prints max pods, and tears everything down (also on Ctrl-C or failure). Where podman is
# installed (the demo never installs it; --no-podman skips it), one container also runs through
# podman's CNI backend with our conflist, as a second real runtime.
#
# Everything happens in network namespaces named `awsdemo-*` that this script creates; the root
# namespace's routes, rules and iptables are never touched, and no packet leaves the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PODS=12
KEEP=0
PODMAN=1
while [ $# -gt 0 ]; do
    case "$1" in
        --pods) PODS="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --no-podman) PODMAN=0; shift ;;
        -h|--help) sed -n 2,15p "$0"; exit 0 ;;
        *) echo "demo: unknown argument $1" >&2; exit 2 ;;
    esac
done
# The connectivity checks use pod1 and pod3 (node1) and pod2 (node2).
if ! [[ "$PODS" =~ ^[0-9]+$ ]] || [ "$PODS" -lt 3 ]; then
    echo "demo: --pods must be a number >= 3, got '$PODS'" >&2
    exit 2
fi

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

# podman (section 6) state; podman_teardown is idempotent and also runs from cleanup, before the
# entrypoints stop, because the container's DEL needs ipamd alive.
PODMAN_DIR=""         # temp dir: containers.conf, storage, runroot, tmpdir, rootfs
PODMAN_NODE=""        # node the container runs on
PODMAN_CTR=awsdemo-podman
PODMAN_PROCS=()       # conmon and container pids, killed only if `podman rm` could not stop them
CRUN_ROOT_PREEXISTED=1
pm() { # podman inside the node, with our private config and storage only
    on "$PODMAN_NODE" env CONTAINERS_CONF="$PODMAN_DIR/containers.conf" \
        podman --root "$PODMAN_DIR/storage" --runroot "$PODMAN_DIR/runroot" --tmpdir "$PODMAN_DIR/tmp" \
        --storage-driver vfs --log-level error "$@"
}
podman_teardown() {
    [ -n "$PODMAN_DIR" ] || return 0
    pm rm --force --ignore --time 0 "$PODMAN_CTR" >/dev/null 2>&1 || true
    local pid comm
    for pid in "${PODMAN_PROCS[@]}"; do
        comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
        case "$comm" in conmon|sleep) kill -KILL "$pid" 2>/dev/null || true ;; esac
    done
    rm -rf "$PODMAN_DIR"
    # crun keeps per-container state under /run/crun; --runtime-flag root=... does not move it
    # for good (podman's exit/cleanup command carries no runtime flags; `podman rm` still made
    # /run/crun in a test), so remove the directory again if it was ours and is empty.
    [ "$CRUN_ROOT_PREEXISTED" -eq 1 ] || rmdir /run/crun 2>/dev/null || true
    PODMAN_DIR=""
}

cleanup() {
    local rc=$?
    if [ "$KEEP" -eq 1 ] && [ "$rc" -eq 0 ]; then
        say "--keep: leaving the fabric up; remove it with: $BIN/vpcsim down --prefix $PREFIX --state-dir $STATE_DIR"
        return
    fi
    say "tearing down"
    podman_teardown
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
# podman 4.x's CNI backend loads our 10-aws.conflist by name (`--network aws-cni`) and calls
# aws-cni + portmap through libcni, like any CNI runtime but without K8S_POD_NAMESPACE. It runs
# inside the node (its netns files land in the node's /run/netns, iptables rules in the node's
# namespace), with a containers.conf and storage of its own in a temp dir, so the host's podman
# configuration, storage and images are neither used nor changed.
podman_section() {
    PODMAN_NODE=${NODES[0]}
    PODMAN_DIR=$(mktemp -d /tmp/awscni-demo-podman.XXXXXX)
    [ -e /run/crun ] || CRUN_ROOT_PREEXISTED=0
    cat >"$PODMAN_DIR/containers.conf" <<EOF
[containers]
# With --cgroups disabled below the container gets no cgroup (it needs none, and the host's
# cgroup tree stays untouched), so there is no cgroup namespace to make either.
cgroupns = "host"
[engine]
# No systemd/D-Bus or journald needed.
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "cni"
cni_plugin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
network_config_dir = "/etc/cni/net.d"
EOF
    # The image: no registry is reachable, so the root filesystem is built from the host's own
    # ping, ip and sleep plus the shared libraries they load, and given to podman with --rootfs
    # (an imported image would make podman write a blob-info cache to /var/lib/containers).
    local rootfs="$PODMAN_DIR/rootfs" b lib
    mkdir -p "$rootfs/bin"
    for b in ping ip sleep; do
        b=$(command -v "$b")
        cp -L "$b" "$rootfs/bin/"
        for lib in $(ldd "$b" | grep -oE '/[^ ]+'); do
            mkdir -p "$rootfs$(dirname "$lib")"
            cp -L "$lib" "$rootfs$lib"
        done
    done
    info "podman $(podman --version | awk '{print $3}') on $PODMAN_NODE, CNI backend, network aws-cni; image: $(du -sh "$rootfs" | cut -f1) rootfs with ping, ip, sleep"

    # crun refuses to run anything on a hybrid cgroup host whose cgroup2 hierarchy has
    # controllers ("cgroups in hybrid mode not supported"), even with cgroups disabled. Such a
    # host (e.g. a v1 machine with hugetlb left on v2) gets an empty read-only tmpfs over
    # /sys/fs/cgroup/unified inside this node's private mount namespace only (it never
    # propagates to the host and goes away with the node); crun then sees plain cgroup v1.
    if on "$PODMAN_NODE" sh -c '[ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ] &&
            [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ] &&
            grep -q . /sys/fs/cgroup/unified/cgroup.controllers'; then
        on "$PODMAN_NODE" mount -t tmpfs -o ro,size=4k,mode=0555 awsdemo-nocgroup2 /sys/fs/cgroup/unified
        info "hybrid cgroups with controllers on cgroup2: hid /sys/fs/cgroup/unified in $PODMAN_NODE for crun"
    fi

    # Rootful podman asks for 1048576 open files and processes by default, which fails where
    # root lacks CAP_SYS_RESOURCE (containers in containers, sandboxes): ask for modest limits.
    # (RLIMIT_NPROC is not enforced for uid 0 anyway.)
    local cid ip
    if ! cid=$(pm run --detach --name "$PODMAN_CTR" --network aws-cni --cgroups disabled \
        --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
        --rootfs "$rootfs" /bin/sleep 600 2>"$LOGDIR/podman-run.err"); then
        info "FAIL  podman run --network aws-cni: $(tr '\n' ' ' <"$LOGDIR/podman-run.err")"; fail=1
        podman_teardown
        return 0
    fi
    read -ra PODMAN_PROCS < <(pm inspect --format '{{.State.ConmonPid}} {{.State.Pid}}' "$PODMAN_CTR" 2>/dev/null || true)
    ip=$(pm inspect --format '{{with index .NetworkSettings.Networks "aws-cni"}}{{.IPAddress}}{{end}}' "$PODMAN_CTR")
    info "container $PODMAN_CTR (${cid:0:12}) on $PODMAN_NODE: podman reports $ip on network aws-cni"
    pm exec "$PODMAN_CTR" /bin/ip -4 -o addr show dev eth0 | awk '{print "    in the container: eth0 " $4}' >&2 ||
        { info "FAIL  podman exec ip addr"; fail=1; }
    pm exec "$PODMAN_CTR" /bin/ip route | sed 's/^/    in the container: route /' >&2 ||
        { info "FAIL  podman exec ip route"; fail=1; }

    local row
    row=$(on "$PODMAN_NODE" curl -s -m 2 http://127.0.0.1:61679/v1/pods |
        jq -r --arg cid "$cid" '[.[] | select(.ContainerID == $cid)][0] // empty | "\(.IP) \(.ENI) \(.DeviceNumber)/\(.RouteTableID) pod \(.PodNamespace)/\(.PodName)"')
    if [ -n "$row" ] && [ "${row%% *}" = "$ip" ]; then
        info "ok    ipamd assigned it: $row"
    else
        info "FAIL  ipamd has no entry for container ${cid:0:12} with $ip (got '$row')"; fail=1
    fi

    local target="" i
    for i in $(seq 1 "$PODS"); do
        if [ "${POD_NODE[pod$i]}" = "${NODES[1]}" ]; then target=pod$i; break; fi
    done
    pcheck() { # description, command...
        local what=$1; shift
        if pm exec "$PODMAN_CTR" "$@" >/dev/null 2>&1; then info "ok    $what"; else info "FAIL  $what"; fail=1; fi
    }
    pcheck "$PODMAN_CTR ($PODMAN_NODE) -> $target (${NODES[1]}, other node) ${POD_IP[$target]}" /bin/ping -c1 -W2 "${POD_IP[$target]}"
    pcheck "$PODMAN_CTR ($PODMAN_NODE) -> external host $EXT" /bin/ping -c1 -W2 "$EXT"

    # podman rm stops the container and runs CNI DEL (aws-cni, then portmap) for it.
    pm rm --force --time 0 "$PODMAN_CTR" >/dev/null
    local still dels
    still=$(on "$PODMAN_NODE" curl -s -m 2 http://127.0.0.1:61679/v1/pods | jq -r --arg cid "$cid" '[.[] | select(.ContainerID == $cid)] | length')
    dels=$(on "$PODMAN_NODE" grep -c "DEL net=aws-cni cid=$cid .*\] ok\$" /var/log/aws-routed-eni/plugin.log || true)
    if [ "$still" = 0 ] && [ "$dels" -ge 1 ]; then
        info "ok    podman rm ran our DEL: $ip released, no ipamd entry left"
    else
        info "FAIL  podman rm: DEL ok lines in plugin.log: $dels, ipamd entries left: $still"; fail=1
    fi
    podman_teardown
    info "podman storage, config and image removed"
}
if [ "$PODMAN" -eq 0 ]; then
    info "--no-podman: skipping the podman container step"
elif command -v podman >/dev/null 2>&1; then
    say "podman: one container through podman's CNI backend with our conflist"
    podman_section
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
