#!/usr/bin/env bash
# Validates every Kubernetes manifest under conf/ (*.yaml, *.yml) offline:
#  1. against the Kubernetes OpenAPI schemas (strict: unknown fields are errors) of several
#     Kubernetes versions, with PyPI's `kubernetes-validate`, which bundles the schemas;
#  2. against the aws-node contract (operations.md §7) that a schema cannot express: host
#     network, capabilities, hostPath volumes, probes through grpc-health-probe on ipamd's
#     socket, RBAC wired to the DaemonSet's service account.
#
# Needs only PyPI (and Debian's archive when python3-venv is missing). The validator is
# installed, pinned, into a private virtualenv (not the system Python: Debian 12 marks it
# externally managed) and reused by later runs.
#
# Environment: CONF_DIR (default conf), VALIDATE_MANIFESTS_VENV (default
# /var/tmp/awscni-kubernetes-validate), K8S_VERSIONS (default "1.29.0 1.33.0 1.37.0").
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION=1.37.0
# The validator and its dependency closure, pinned so a new release cannot change the verdict.
REQUIREMENTS=(
    "kubernetes-validate==${KV_VERSION}"
    "jsonschema==4.26.0"
    "jsonschema-specifications==2025.9.1"
    "referencing==0.37.0"
    "rpds-py==2026.9.1"
    "attrs==26.1.0"
    "PyYAML==6.0.4"
    "packaging==26.4"
    "importlib_resources==7.1.0"
    "typing_extensions==4.16.0"
)
VENV="${VALIDATE_MANIFESTS_VENV:-/var/tmp/awscni-kubernetes-validate}"
read -r -a VERSIONS <<<"${K8S_VERSIONS:-1.29.0 1.33.0 1.37.0}"

log() { printf 'validate-manifests: %s\n' "$*" >&2; }

apt_install() {
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        log "need $*; install it (apt-get install $*) and re-run"
        exit 1
    fi
    log "installing $* from Debian's archive"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

ensure_validator() {
    if [ -x "$VENV/bin/kubernetes-validate" ] &&
        [ "$("$VENV/bin/kubernetes-validate" --version 2>/dev/null)" = "$KV_VERSION" ]; then
        return
    fi
    command -v python3 >/dev/null || apt_install python3 python3-venv
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        # Debian ships ensurepip separately.
        rm -rf "$VENV"
        apt_install python3-venv
        python3 -m venv "$VENV"
    fi
    log "installing kubernetes-validate ${KV_VERSION} into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q "${REQUIREMENTS[@]}" >&2
    [ "$("$VENV/bin/kubernetes-validate" --version)" = "$KV_VERSION" ]
}

CONF_DIR="${CONF_DIR:-conf}"
mapfile -t MANIFESTS < <(find "$CONF_DIR" -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
if [ "${#MANIFESTS[@]}" -eq 0 ]; then
    log "no manifests under $CONF_DIR"
    exit 1
fi

ensure_validator

failed=0
for v in "${VERSIONS[@]}"; do
    log "schema check against Kubernetes $v: ${MANIFESTS[*]}"
    if ! "$VENV/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$v" "${MANIFESTS[@]}" >&2; then
        failed=1
    fi
done

log "aws-node contract check"
if ! "$VENV/bin/python" - "${MANIFESTS[@]}" <<'PY'; then
import sys
import yaml

docs = []
for path in sys.argv[1:]:
    with open(path) as f:
        docs += [(path, d) for d in yaml.safe_load_all(f) if d]

errors = []


def need(cond, msg):
    if not cond:
        errors.append(msg)


def find(kind, name):
    return [d for _, d in docs if d.get("kind") == kind and d["metadata"].get("name") == name]


for ds in find("DaemonSet", "aws-node"):
    need(ds["metadata"].get("namespace") == "kube-system", "DaemonSet aws-node not in kube-system")
    spec = ds["spec"]["template"]["spec"]
    need(spec.get("hostNetwork") is True, "aws-node must use hostNetwork")
    need(spec.get("priorityClassName") == "system-node-critical", "priorityClassName")
    need({"operator": "Exists"} in spec.get("tolerations", []), "must tolerate everything")
    need(spec.get("initContainers"), "init container missing")
    volumes = {v["name"]: v.get("hostPath", {}) for v in spec.get("volumes", [])}
    want_paths = {
        "/opt/cni/bin": None,
        "/etc/cni/net.d": None,
        "/var/log/aws-routed-eni": "DirectoryOrCreate",
        "/var/run/aws-node": "DirectoryOrCreate",
        "/run/xtables.lock": "FileOrCreate",
    }
    by_path = {hp.get("path"): (name, hp.get("type")) for name, hp in volumes.items()}
    for path, typ in want_paths.items():
        need(path in by_path, f"hostPath volume {path} missing")
        if path in by_path and typ:
            need(by_path[path][1] == typ, f"hostPath {path} should be type {typ}")
    main = [c for c in spec["containers"] if c["name"] == "aws-node"]
    need(len(main) == 1, "container aws-node missing")
    for c in main:
        caps = c.get("securityContext", {}).get("capabilities", {}).get("add", [])
        need({"NET_ADMIN", "NET_RAW"} <= set(caps), "aws-node needs NET_ADMIN and NET_RAW")
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        for path in want_paths:
            if path in by_path:
                need(by_path[path][0] in mounts, f"volume for {path} not mounted in aws-node")
        need(mounts.get(by_path.get("/run/xtables.lock", ("",))[0]) == "/run/xtables.lock",
             "xtables lock must be mounted at /run/xtables.lock")
        for probe in ("livenessProbe", "readinessProbe"):
            cmd = c.get(probe, {}).get("exec", {}).get("command", [])
            need(cmd and cmd[0].endswith("grpc-health-probe"), f"{probe} must run grpc-health-probe")
            need("-addr=unix:///var/run/aws-node/ipamd.sock" in cmd,
                 f"{probe} must probe ipamd's socket")
        env = {e["name"]: e for e in c.get("env", [])}
        need(env.get("MY_NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
             == "spec.nodeName", "MY_NODE_NAME must come from spec.nodeName")
        need(env.get("AWS_VPC_K8S_PLUGIN_LOG_FILE", {}).get("value", "").lower() != "stdout",
             "plugin must not log to stdout")
        need(any(p.get("containerPort") == 61678 and p.get("name") == "metrics"
                 for p in c.get("ports", [])), "metrics port 61678")
    sa = spec.get("serviceAccountName")
    need(find("ServiceAccount", sa), f"ServiceAccount {sa} not shipped")
    bindings = [b for _, b in docs if b.get("kind") == "ClusterRoleBinding"
                and any(s.get("kind") == "ServiceAccount" and s.get("name") == sa
                        and s.get("namespace") == "kube-system" for s in b.get("subjects", []))]
    need(bindings, f"no ClusterRoleBinding for ServiceAccount {sa}")
    for b in bindings:
        roles = find("ClusterRole", b["roleRef"]["name"])
        need(roles, f"ClusterRole {b['roleRef']['name']} not shipped")
        granted = set()
        for r in roles:
            for rule in r.get("rules", []):
                for g in rule.get("apiGroups", []):
                    for res in rule.get("resources", []):
                        for verb in rule.get("verbs", []):
                            granted.add((g, res, verb))
        for g, res in [("", "nodes"), ("", "pods"), ("", "namespaces"),
                       ("crd.k8s.amazonaws.com", "eniconfigs")]:
            for verb in ("get", "list", "watch"):
                need((g, res, verb) in granted, f"RBAC: {verb} {res}.{g or 'core'} missing")

need(find("DaemonSet", "aws-node"), "no DaemonSet aws-node under conf/")
for e in errors:
    print(f"contract: {e}", file=sys.stderr)
print(f"contract: {len(docs)} objects checked, {len(errors)} problems", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
    failed=1
fi

if [ "$failed" -ne 0 ]; then
    log "FAILED"
    exit 1
fi
log "all manifests valid (${MANIFESTS[*]}; Kubernetes ${VERSIONS[*]})"
