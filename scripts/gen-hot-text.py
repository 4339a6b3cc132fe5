#!/usr/bin/env python3
"""Writes ipamd/hot-text.ld, the release build's hot/cold code layout, from function coverage.

usage: gen-hot-text.py addrs MAP            (function addresses for fn-trace, on stdout)
       gen-hot-text.py check MAP LD          (how much of LD still matches the build of MAP)
       gen-hot-text.py MAP OUT.ld --steady HITS... --fill HITS...

MAP is the linker map of the release ipamd (LLD's `-Map`, see ipamd/build.rs): it names every
function section and its address in exactly the build that is traced, stripped or not (an
unstripped build would be another build: the profile's `strip` setting changes symbol hashes).
HITS are `fn-trace` logs (one hex link-time address per line, first hit first). `--steady` logs
come from ipamd processes that started from a full checkpoint and ran the steady state (what a
node runs for days); `--fill` logs from processes that filled a node (start-up, EC2 growth, the
ADD storm, the churn, the metrics and introspection scrapes).

Why: the kernel maps code in 64 KiB fault-around blocks, so RSS counts every block that holds one
executed function. Unordered, ipamd's ~3.3 MiB of executed code touches nearly every block of
its ~8 MiB `.text`. The script packs the executed functions into one output section, `.text.hot`,
placed before `.text` (`INSERT BEFORE`, so the linker's default layout stays as it is):

1. functions the steady-state processes ran, in first-hit order;
2. the rest of what the fill ran;
3. every other instance of a generic function from (1)/(2) (see below).

Patterns are input-section globs (`rustc` emits one `.text.<symbol>` section per function):
- a legacy-mangled name's `17h<16 hex>E` hash is replaced by `*` when the rest of the name is
  unique in the build. The hash changes with the toolchain, the crate graph and Cargo.lock, the path
  does not, so these survive most rebuilds;
- generic functions share that hash-free name across instances (`<&T as Debug>::fmt` has 900),
  so their executed instances are listed by exact name, and tier 3 catches all instances by the
  hash-free name: with the same toolchain tier 3 is never executed and stays cold; after a
  toolchain change the exact names miss, and the executed instances still land in the hot
  section instead of being scattered over the whole `.text`;
- v0-mangled names (the prebuilt standard library) get their crate disambiguators (`Cs…_`)
  globbed, and LTO's `.llvm.N` / `.N` suffixes a trailing `*`.
A stale pattern matches nothing and the linker ignores it: the layout degrades, the build never
fails. Regenerate with scripts/gen-hot-text.sh after changes to ipamd, a toolchain bump or a
Cargo.lock update; `check` says how much still matches (docs/ipamd.md, "Memory").
"""
import re
import sys

LEGACY_HASH = re.compile(r"17h[0-9a-f]{16}E$")
LTO_SUFFIX = re.compile(r"(\.llvm\.\d+|\.\d+)+$")
V0_CRATE = re.compile(r"Cs[0-9A-Za-z]+_")


def key(name):
    """The section name with everything build-specific removed."""
    # LLVM prefixes cold or start-up-only functions' sections (`.text.unlikely.<symbol>`).
    prefix = ""
    for p in ("unlikely.", "startup.", "exit.", "hot."):
        if name.startswith(p):
            prefix, name = p, name[len(p) :]
            break
    return prefix + symbol_key(name)


def symbol_key(name):
    n = LTO_SUFFIX.sub("", name)
    if n.startswith("_ZN"):
        return LEGACY_HASH.sub("17h", n)
    if n.startswith("_R"):
        return V0_CRATE.sub("Cs*_", n)
    return n


def glob_safe(name):
    # LLD and GNU ld treat * ? [ ] \ as glob syntax; mangled names never contain them, but a
    # C symbol from a dependency could in theory. Such a name is skipped rather than mis-matched.
    return not any(c in name for c in "*?[]\\") and " " not in name


# An LLD map line for an input section: VMA LMA size align, then `file:(section)`.
MAP_SECTION = re.compile(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s+.*:\(\.text\.([^)\s]+)\)$")


def read_map(path):
    """Function sections of the link: {address: (name, size)}."""
    funcs = {}
    with open(path) as fh:
        for line in fh:
            m = MAP_SECTION.match(line)
            if m and int(m.group(2), 16) > 0:
                funcs[int(m.group(1), 16)] = (m.group(3), int(m.group(2), 16))
    if not funcs:
        sys.exit(f"{path}: no .text.* input sections (not an LLD -Map file of ipamd?)")
    return funcs


def main():
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "addrs":
        for a in sorted(read_map(args[1])):
            print(f"{a:x}")
        return
    if len(args) == 3 and args[0] == "check":
        check(read_map(args[1]), args[2])
        return
    if len(args) < 4 or "--steady" not in args or "--fill" not in args:
        sys.exit(__doc__)
    mapfile, out = args[0], args[1]
    si, fi = args.index("--steady"), args.index("--fill")
    steady = args[si + 1 : fi] if si < fi else args[si + 1 :]
    fill = args[fi + 1 : si] if fi < si else args[fi + 1 :]

    funcs = read_map(mapfile)
    by_key = {}
    for name, _ in funcs.values():
        by_key.setdefault(key(name), set()).add(name)

    def read_hits(files):
        order, seen = [], set()
        for f in files:
            with open(f) as fh:
                for lineno, line in enumerate(fh, 1):
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        a = int(line, 16)
                    except ValueError:
                        sys.exit(f"{f}:{lineno}: not a hex address: {line!r}")
                    if a not in seen:
                        seen.add(a)
                        order.append(a)
        return order

    tier1 = read_hits(steady)
    in1 = set(tier1)
    tier2 = [a for a in read_hits(fill) if a not in in1]
    unknown = [a for a in tier1 + tier2 if a not in funcs]
    if unknown:
        sys.exit(f"{len(unknown)} hit addresses are not functions of {mapfile}: a map of another build?")

    tiers, emitted, generic_keys = ([], [], []), set(), []

    def emit(tier, p):
        if p not in emitted:
            emitted.add(p)
            tiers[tier].append(p)

    for tier, addrs in ((0, tier1), (1, tier2)):
        for a in addrs:
            n = funcs[a][0]
            if not glob_safe(n):
                continue
            k = key(n)
            if len(by_key[k]) == 1:
                emit(tier, f".text.{k}*")
            else:
                emit(tier, f".text.{n}*")
                generic_keys.append(k)
    for k in generic_keys:
        emit(2, f".text.{k}*")

    hot = sum(funcs[a][1] for a in tier1 + tier2)
    titles = (
        f"{len(tier1)} functions the steady state ran, first hit first",
        f"{len(tier2)} more the fill ran",
        "other instances of the generic functions above",
    )
    with open(out, "w") as f:
        f.write(
            "/* Generated by scripts/gen-hot-text.py from function coverage of ipamd; do not edit.\n"
            f"   {hot // 1024} KiB of executed code; see the script for the why and the how. */\n"
            "SECTIONS\n{\n  .text.hot :\n  {\n"
        )
        for title, pats in zip(titles, tiers):
            f.write(f"    /* {title} */\n")
            for p in pats:
                f.write(f"    *({p})\n")
        f.write("  }\n}\nINSERT BEFORE .text;\n")
    print(
        f"{out}: {len(tier1)} steady + {len(tier2)} fill functions ({hot // 1024} KiB), "
        f"{len(unknown)} unknown addresses; patterns {' + '.join(str(len(t)) for t in tiers)}"
    )


def check(funcs, ld):
    """Prints, per tier of LD, how many patterns match a function section of the build."""
    import bisect
    import fnmatch

    names = sorted(n for n, _ in funcs.values())
    tiers, current = [], None
    with open(ld) as fh:
        for line in fh:
            line = line.strip()
            if line.startswith("/* ") and line.endswith(" */"):
                current = [line[3:-3], 0, 0]
                tiers.append(current)
            elif line.startswith("*(.text.") and line.endswith(")") and current is not None:
                pat = line[len("*(.text.") : -1]
                prefix = pat.split("*", 1)[0]
                i = bisect.bisect_left(names, prefix)
                hit = False
                while i < len(names) and names[i].startswith(prefix):
                    if fnmatch.fnmatchcase(names[i], pat):
                        hit = True
                        break
                    i += 1
                current[1] += 1
                current[2] += hit
    for title, total, hit in tiers:
        print(f"{hit}/{total} patterns match ({100 * hit // max(total, 1)} %): {title}")
    if len(tiers) >= 2 and sum(t[2] for t in tiers[:2]) < 0.95 * sum(t[1] for t in tiers[:2]):
        print("more than 5 % of the executed functions' patterns no longer match: regenerate")


if __name__ == "__main__":
    main()
