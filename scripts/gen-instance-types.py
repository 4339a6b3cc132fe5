#!/usr/bin/env python3
"""Generate ipamd/limits/data/instance-types.json, the one instance-type table used by the
`max-pods` CLI, ipamd and the vpcsim EC2 emulator.

Sources (exactly one):

  --moto-json PATH       EC2 DescribeInstanceTypes data bundled in the moto package on PyPI
                         (moto/ec2/resources/instance_types.json[.gz], a dict keyed by type name,
                         entries in DescribeInstanceTypes' PascalCase shape). Offline:
                             pip download --no-deps moto==X -d /tmp/moto
                             unzip -o /tmp/moto/moto-X-*.whl 'moto/ec2/resources/instance_types.json*' -d /tmp/moto
                         The moto version is read from the wheel's file name when --moto-wheel is
                         given (or pass --source-version).
  --moto-wheel PATH      the moto wheel itself; the JSON is read from inside it (no unzip needed).
  --endpoint-url URL     a live DescribeInstanceTypes endpoint (real AWS: pass the regional
                         endpoint or "aws"; vpcsim: its loopback URL). Needs boto3.

Output is deterministic: types sorted by name, cards sorted by index, one type per line, no
timestamps, so re-running on the same input gives a byte-identical file (diffs stay reviewable).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import sys
import zipfile

MOTO_MEMBER = "moto/ec2/resources/instance_types.json"
DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "ipamd", "limits", "data", "instance-types.json"
)
FORMAT_VERSION = 1


class SourceError(Exception):
    """Malformed source data; the message names the type and the field."""


def _req(obj: dict, key: str, where: str):
    if key not in obj:
        raise SourceError(f"{where}: missing field {key!r}")
    return obj[key]


def _uint(obj: dict, key: str, where: str) -> int:
    v = _req(obj, key, where)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise SourceError(f"{where}: field {key!r} is {v!r}, expected a non-negative integer")
    return v


def normalize(raw: dict) -> dict:
    """One DescribeInstanceTypes entry (PascalCase, as boto3 and moto both return it) -> our row.

    Only the fields max pods, ipamd and the emulator's DescribeInstanceTypes answer need are kept.
    """
    name = _req(raw, "InstanceType", "entry")
    where = f"instance type {name!r}"
    net = _req(raw, "NetworkInfo", where)
    vcpu = _req(raw, "VCpuInfo", where)
    hypervisor = raw.get("Hypervisor")  # absent on bare metal (there is no hypervisor)
    if hypervisor not in (None, "nitro", "xen"):
        raise SourceError(f"{where}: unknown Hypervisor {hypervisor!r}")
    cards = []
    for card in _req(net, "NetworkCards", where):
        cards.append(
            {
                "index": _uint(card, "NetworkCardIndex", where),
                "max_enis": _uint(card, "MaximumNetworkInterfaces", where),
                "network_performance": card.get("NetworkPerformance", ""),
            }
        )
    cards.sort(key=lambda c: c["index"])
    if not cards:
        raise SourceError(f"{where}: NetworkCards is empty")
    default_card = _uint(net, "DefaultNetworkCardIndex", where)
    if default_card not in [c["index"] for c in cards]:
        raise SourceError(f"{where}: DefaultNetworkCardIndex {default_card} names no card")
    max_enis = _uint(net, "MaximumNetworkInterfaces", where)
    if max_enis != sum(c["max_enis"] for c in cards):
        # Not fatal for the formula (it uses the default card), but worth knowing.
        print(f"warning: {where}: instance-wide ENIs != sum over cards", file=sys.stderr)
    return {
        "name": name,
        "hypervisor": hypervisor,
        "bare_metal": bool(raw.get("BareMetal", False)),
        "current_generation": bool(raw.get("CurrentGeneration", False)),
        "default_vcpus": _uint(vcpu, "DefaultVCpus", where),
        "default_cores": vcpu.get("DefaultCores", 0),
        "default_threads_per_core": vcpu.get("DefaultThreadsPerCore", 0),
        # Optional: emulators (vpcsim) may omit MemoryInfo; nothing here computes with it.
        "memory_mib": _uint(raw["MemoryInfo"], "SizeInMiB", where) if "MemoryInfo" in raw else 0,
        "architectures": sorted(raw.get("ProcessorInfo", {}).get("SupportedArchitectures", [])),
        "max_enis": max_enis,
        "max_network_cards": _uint(net, "MaximumNetworkCards", where),
        "default_network_card_index": default_card,
        "ipv4_per_eni": _uint(net, "Ipv4AddressesPerInterface", where),
        "ipv6_per_eni": _uint(net, "Ipv6AddressesPerInterface", where),
        "ipv6_supported": bool(net.get("Ipv6Supported", False)),
        "ena_support": net.get("EnaSupport", "unsupported"),
        "efa_supported": bool(net.get("EfaSupported", False)),
        "network_performance": net.get("NetworkPerformance", ""),
        "network_cards": cards,
    }


def load_moto_json(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return _moto_entries(json.load(f), path)


def load_moto_wheel(path: str) -> tuple[list[dict], str]:
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        if MOTO_MEMBER + ".gz" in names:
            data = gzip.decompress(z.read(MOTO_MEMBER + ".gz"))
        elif MOTO_MEMBER in names:
            data = z.read(MOTO_MEMBER)
        else:
            raise SourceError(f"{path}: no {MOTO_MEMBER}[.gz] inside the wheel")
    m = re.match(r"moto-([^-]+)-", os.path.basename(path))
    return _moto_entries(json.load(io.BytesIO(data)), path), (m.group(1) if m else "")


def _moto_entries(doc, path: str) -> list[dict]:
    if isinstance(doc, dict):
        return list(doc.values())
    if isinstance(doc, list):
        return doc
    raise SourceError(f"{path}: expected a JSON object keyed by instance type")


def load_endpoint(url: str, region: str) -> list[dict]:
    try:
        import boto3  # type: ignore
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise SourceError("--endpoint-url needs boto3 (pip install boto3)") from e
    kwargs = {"region_name": region}
    if url != "aws":
        kwargs["endpoint_url"] = url
    ec2 = boto3.client("ec2", **kwargs)
    out = []
    for page in ec2.get_paginator("describe_instance_types").paginate():
        out.extend(page.get("InstanceTypes", []))
    return out


def render(rows: list[dict], meta: dict) -> str:
    """Compact JSON, one type per line; stable key order and sorting."""
    rows = sorted(rows, key=lambda r: r["name"])
    for a, b in zip(rows, rows[1:]):
        if a["name"] == b["name"]:
            raise SourceError(f"duplicate instance type {a['name']!r}")
    lines = ["{"]
    for k in sorted(meta):
        lines.append(f"{json.dumps(k)}:{json.dumps(meta[k], sort_keys=True)},")
    lines.append(f'"count":{len(rows)},')
    lines.append('"types":[')
    body = [json.dumps(r, separators=(",", ":")) for r in rows]
    lines.append(",\n".join(body))
    lines.append("]}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("source (exactly one)")
    src.add_argument("--moto-json", help="moto's instance_types.json or .json.gz")
    src.add_argument("--moto-wheel", help="a moto wheel (.whl) downloaded with pip download")
    src.add_argument("--endpoint-url", help="live DescribeInstanceTypes endpoint ('aws' = default AWS endpoint)")
    p.add_argument("--region", default=os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")))
    p.add_argument("--source-version", default="", help="version of the source (e.g. the moto version) to record")
    p.add_argument("-o", "--output", default=DEFAULT_OUT, help="output file ('-' = stdout)")
    args = p.parse_args(argv)

    chosen = [x for x in (args.moto_json, args.moto_wheel, args.endpoint_url) if x]
    if len(chosen) != 1:
        p.error("give exactly one of --moto-json, --moto-wheel, --endpoint-url")

    try:
        version = args.source_version
        if args.moto_json:
            entries, kind, ident = load_moto_json(args.moto_json), "moto", os.path.basename(args.moto_json)
            with open(args.moto_json, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        elif args.moto_wheel:
            entries, wheel_version = load_moto_wheel(args.moto_wheel)
            version = version or wheel_version
            kind, ident = "moto", os.path.basename(args.moto_wheel)
            with open(args.moto_wheel, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        else:
            entries = load_endpoint(args.endpoint_url, args.region)
            kind, ident, digest = "DescribeInstanceTypes", f"{args.endpoint_url} ({args.region})", ""
        rows = [normalize(e) for e in entries]
        if not rows:
            raise SourceError("the source returned no instance types")
        meta = {
            "_comment": "GENERATED by scripts/gen-instance-types.py; do not edit by hand. "
            "See docs/max-pods.md.",
            "format_version": FORMAT_VERSION,
            "source": {"kind": kind, "name": ident, "version": version, "sha256": digest},
        }
        text = render(rows, meta)
    except (SourceError, OSError, ValueError, zipfile.BadZipFile) as e:
        print(f"gen-instance-types: error: {e}", file=sys.stderr)
        return 1

    if args.output == "-":
        sys.stdout.write(text)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        tmp = args.output + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.output)
        print(f"wrote {len(rows)} instance types to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
