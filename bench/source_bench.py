# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a program from C source costs, against a program from a .o, in the same run.

Host side, through module_utils (what a module does after Ansible started it), per round
on a scratch veth pair, an XDP program with one map:
1. from source, not in the bytecode store: bcc compile + object written + load + attach
   (and the compile alone, for the split);
2. from .o: the very object round 1 produced, copied elsewhere, loaded under another name;
3. no-op: the same source declared again (found in the store, not compiled).
Each round uses a different -DROUND=N, so every first declaration compiles.

Then one ansible-playbook run each: a source task (compiles), its no-op re-run, and a path
task, for the cost as an operator sees it.

Run as root: python bench/source_bench.py [--rounds 7]
Needs bcc (python3-bpfcc) importable and kernel headers for bcc. Everything it creates is
removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import dispatcher_bench as base  # noqa: E402  (puts the collection on sys.path)

from ansible_collections.bpfd.core.plugins.module_utils import _bcc  # noqa: E402
from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager, ProgramSpec  # noqa: E402

SOURCE = r"""
#include <uapi/linux/bpf.h>
BPF_ARRAY(seen, u64, 4);
int verdict(struct xdp_md *ctx)
{
    int key = ROUND % 4;
    u64 *count = seen.lookup(&key);
    if (count)
        __sync_fetch_and_add(count, 1);
    return XDP_PASS;
}
"""


def declare(manager: Manager, name: str, iface: str, source: str, cflags: list) -> tuple:
    """(ms, compiled?) of one declaration from source, as the module runs it."""
    start = time.perf_counter()
    with _bcc.compiled_source(source, cflags, kind="xdp", attach=None, function=None) as compiled:
        manager.present(ProgramSpec(name=name, kind="xdp", path=source, bytecode=compiled.object_path,
                                    sha256=compiled.sha256, source=compiled.facts, interface=iface, priority=10))
        was_compiled = compiled.compiled
    return (time.perf_counter() - start) * 1000, was_compiled


def bench_host_side(rounds: int, tmp: pathlib.Path) -> dict:
    manager = Manager()
    source = tmp / "verdict.c"
    source.write_text(SOURCE)
    figures: dict = {"source_ms": [], "compile_only_ms": [], "object_ms": [], "noop_ms": []}
    with base.scratch_veth() as iface:
        try:
            for i in range(rounds):
                cflags = ["-DROUND=%d" % i]
                ms, compiled = declare(manager, "src-bench-%d" % i, iface, str(source), cflags)
                assert compiled, "round %d found its object in the store" % i
                figures["source_ms"].append(ms)
                ms, compiled = declare(manager, "src-bench-%d" % i, iface, str(source), cflags)
                assert not compiled
                figures["noop_ms"].append(ms)
                copy = tmp / ("round-%d.o" % i)
                stored = manager.list(name="src-bench-%d" % i)["programs"][0]["sha256"]
                shutil.copyfile(os.path.join(manager.layout.bytecode_dir, "%s.o" % stored), copy)
                spec = ProgramSpec(name="obj-bench-%d" % i, kind="xdp", path=str(copy), interface=iface, priority=20)
                figures["object_ms"].append(base.timed(lambda: manager.present(spec)))
                figures["compile_only_ms"].append(base.timed(lambda: _bcc.compile_object(
                    source.read_bytes(), cflags, source_path=str(source), function=None, section="xdp",
                    out_path=str(tmp / "compile-only.o"))))
                for name in ("src-bench-%d" % i, "obj-bench-%d" % i):
                    manager.absent(name=name)
        finally:
            for prog in manager.list(interface=iface)["programs"]:
                manager.absent(name=prog["name"])
    return {key: statistics.median(values) for key, values in figures.items()}


def bench_playbook(tmp: pathlib.Path, obj: str) -> dict:
    source = tmp / "pb.c"
    source.write_text(SOURCE)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(base.COLLECTIONS), ANSIBLE_NOCOLOR="1")
    with base.scratch_veth() as iface:
        def play(args: dict) -> float:
            path = tmp / "play.yml"
            path.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
                {"name": "program", "bpfd.core.bpf_xdp_program": dict(args, interface=iface, priority=10)}]}]))
            cmd = [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                   "-e", "ansible_python_interpreter=%s" % sys.executable, str(path)]
            return base.timed(lambda: subprocess.run(cmd, check=True, capture_output=True, env=env)) / 1000
        try:
            figures = {
                "playbook_source_s": play({"name": "pb-src", "source": str(source), "cflags": ["-DROUND=99"]}),
                "playbook_source_noop_s": play({"name": "pb-src", "source": str(source), "cflags": ["-DROUND=99"]}),
                "playbook_object_s": play({"name": "pb-obj", "path": obj}),
                "playbook_object_noop_s": play({"name": "pb-obj", "path": obj}),
            }
        finally:
            play({"name": "pb-src", "state": "absent"})
            play({"name": "pb-obj", "state": "absent"})
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    try:
        _bcc.import_bcc()
    except _bcc.BccMissing as exc:
        print(exc.msg, file=sys.stderr)
        return 2
    problem = _bcc.headers_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bpfd-source-bench-") as tmp_dir:
        tmp = pathlib.Path(tmp_dir)
        host = bench_host_side(args.rounds, tmp)
        stored = tmp / "object.o"
        _bcc.compile_object(SOURCE.encode(), ["-DROUND=1"], source_path=str(tmp / "x.c"), function=None,
                            section="xdp", out_path=str(stored))
        playbook = bench_playbook(tmp, str(stored))
    print("host side, median of %d rounds (module_utils, one XDP program with one map):" % args.rounds)
    source_ms, object_ms, noop_ms = host["source_ms"], host["object_ms"], host["noop_ms"]
    print("  from source, compiled:   %7.1f ms  (bcc compile alone %.1f ms)" % (source_ms, host["compile_only_ms"]))
    print("  from .o (same object):   %7.1f ms  -> source/.o = %.1fx" % (object_ms, source_ms / object_ms))
    print("  no-op (source unchanged): %6.1f ms  -> no-op/.o = %.2fx" % (noop_ms, noop_ms / object_ms))
    print("ansible-playbook, one task (wall, Ansible included):")
    print("  source: %.2f s, re-run %.2f s; .o: %.2f s, re-run %.2f s" % (
        playbook["playbook_source_s"], playbook["playbook_source_noop_s"], playbook["playbook_object_s"],
        playbook["playbook_object_noop_s"]))
    print(json.dumps(dict(host, **playbook)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
