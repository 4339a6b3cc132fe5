#!/usr/bin/env python3
"""Tests of scripts/gen-hot-text.py on a synthetic LLD link map (run by scripts/test.sh).

The generator decides what the release ipamd keeps resident; a wrong pattern does not break the
build, it silently costs memory, so its rules are pinned here.
"""
import importlib.util
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "gen-hot-text.py")
spec = importlib.util.spec_from_file_location("gen_hot_text", SCRIPT)
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)

H1, H2, H3 = "17h0123456789abcdefE", "17hfedcba9876543210E", "17h00000000deadbeefE"
OBJ = "/t/release/deps/ipamd-1.ipamd.2-cgu.0.rcgu.o"
# (address, size, section name): one function per section, as rustc emits them.
SECTIONS = [
    (0x1000, 0x40, f"_ZN5ipamd6daemon3run{H1}"),  # unique: hash globbed
    (0x1040, 0x20, f"_ZN4core3fmt5Debug3fmt{H1}"),  # generic: three instances
    (0x1060, 0x20, f"_ZN4core3fmt5Debug3fmt{H2}"),
    (0x1080, 0x20, f"_ZN4core3fmt5Debug3fmt{H3}"),
    (0x10a0, 0x10, f"_ZN5ipamd4pool4plan{H2}.llvm.12345"),  # LTO suffix
    (0x10b0, 0x10, "_RNvNtCsjrHSEGnQ3l9_3std2rt10lang_start"),  # v0: crate hash globbed
    (0x10c0, 0x10, f"unlikely._ZN5ipamd4cold4path{H3}"),  # LLVM's cold-section prefix
    (0x10d0, 0x10, "aws_lc_0_1_CRYPTO_init"),  # C function
    (0x10e0, 0x00, "empty"),  # zero-size: not a function
]


def write_map(path, sections):
    with open(path, "w") as f:
        f.write("             VMA              LMA     Size Align Out     In      Symbol\n")
        f.write("            1000             1000      100    16 .text\n")
        for addr, size, name in sections:
            f.write(f"{addr:16x} {addr:16x} {size:8x}    16         {OBJ}:(.text.{name})\n")
            f.write(f"{addr:16x} {addr:16x} {size:8x}     1                 demangled\n")


class GenHotText(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.map = os.path.join(self.dir.name, "ipamd.map")
        write_map(self.map, SECTIONS)

    def tearDown(self):
        self.dir.cleanup()

    def run_script(self, *args):
        return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)

    def hits(self, name, addrs):
        path = os.path.join(self.dir.name, name)
        with open(path, "w") as f:
            f.write("".join(f"{a:x}\n" for a in addrs))
        return path

    def generate(self, steady, fill):
        out = os.path.join(self.dir.name, "hot.ld")
        r = self.run_script(self.map, out, "--steady", self.hits("s", steady), "--fill", self.hits("f", fill))
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as f:
            return f.read()

    def patterns(self, ld):
        return [l.strip()[2:-1] for l in ld.splitlines() if l.strip().startswith("*(")]

    def test_read_map_skips_empty_sections(self):
        funcs = gen.read_map(self.map)
        self.assertEqual(len(funcs), len(SECTIONS) - 1)
        self.assertEqual(funcs[0x1000], (f"_ZN5ipamd6daemon3run{H1}", 0x40))

    def test_addrs(self):
        r = self.run_script("addrs", self.map)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), [f"{a:x}" for a, s, _ in SECTIONS if s])

    def test_keys(self):
        self.assertEqual(gen.key(f"_ZN5ipamd4pool4plan{H2}.llvm.12345"), "_ZN5ipamd4pool4plan17h")
        self.assertEqual(gen.key(f"_ZN1a1b{H1}.7"), "_ZN1a1b17h")
        self.assertEqual(gen.key("_RNvCsjrHSEGnQ3l9_3std4main"), "_RNvCs*_3std4main")
        self.assertEqual(gen.key(f"unlikely._ZN1a1b{H3}"), "unlikely._ZN1a1b17h")
        self.assertEqual(gen.key("memcpy_impl"), "memcpy_impl")

    def test_tiers_and_patterns(self):
        ld = self.generate(
            steady=[0x1000, 0x1060, 0x10b0],
            fill=[0x1000, 0x10a0, 0x10c0, 0x10d0],
        )
        self.assertIn("INSERT BEFORE .text;", ld)
        self.assertEqual(
            self.patterns(ld),
            [
                # steady state, first hit first
                ".text._ZN5ipamd6daemon3run17h*",
                f".text._ZN4core3fmt5Debug3fmt{H2}*",
                ".text._RNvNtCs*_3std2rt10lang_start*",
                # fill only (0x1000 is not repeated)
                ".text._ZN5ipamd4pool4plan17h*",
                ".text.unlikely._ZN5ipamd4cold4path17h*",
                ".text.aws_lc_0_1_CRYPTO_init*",
                # the generic function's other instances, last
                ".text._ZN4core3fmt5Debug3fmt17h*",
            ],
        )

    def test_unknown_address_is_an_error(self):
        out = os.path.join(self.dir.name, "hot.ld")
        r = self.run_script(self.map, out, "--steady", self.hits("s", [0x1000, 0x1004]), "--fill", self.hits("f", []))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("not functions of", r.stderr)
        self.assertFalse(os.path.exists(out))

    def test_malformed_hit_names_the_line(self):
        out = os.path.join(self.dir.name, "hot.ld")
        bad = os.path.join(self.dir.name, "bad")
        with open(bad, "w") as f:
            f.write("1000\nxyz\n")
        r = self.run_script(self.map, out, "--steady", bad, "--fill", self.hits("f", []))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(f"{bad}:2", r.stderr)

    def test_check_reports_matches_and_staleness(self):
        ld_path = os.path.join(self.dir.name, "hot.ld")
        with open(ld_path, "w") as f:
            f.write(self.generate(steady=[0x1000, 0x1060], fill=[0x10a0]))
        r = self.run_script("check", self.map, ld_path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("2/2 patterns match (100 %)", r.stdout)
        self.assertNotIn("regenerate", r.stdout)
        # A rebuild where every hash changed: the unique names still match, the exact name of
        # the generic instance does not, and its catch-all does.
        rehashed = [(a, s, n.replace(H2, "17h1111111111111111E")) for a, s, n in SECTIONS]
        write_map(self.map, rehashed)
        r = self.run_script("check", self.map, ld_path)
        self.assertIn("1/2 patterns match (50 %)", r.stdout)
        self.assertIn("1/1 patterns match (100 %): other instances", r.stdout)
        self.assertIn("regenerate", r.stdout)


if __name__ == "__main__":
    unittest.main()
