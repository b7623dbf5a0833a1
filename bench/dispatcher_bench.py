# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmarks for the linked dispatcher and the host-side cost of a run.

Only ratios inside one run mean anything on shared VMs, so every figure is
printed next to its baseline from the same run:

1. BPF_PROG_TEST_RUN ns/packet (64-byte packet, minimum over rounds):
   xdp_pass attached directly vs. through our dispatcher with 1, 5, 10 members.
2. Host-side time through module_utils (no Ansible overhead): one load of a
   new program, and a no-op re-run of the same declaration.
3. Wall time of one ansible-playbook run loading 10 programs (and its no-op re-run).

Run as root: python bench/dispatcher_bench.py [--rounds 7] [--repeat 2000000] [--quick]
Everything it creates (a veth pair in a scratch netns, programs) is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parents[1]


def _collection_path() -> pathlib.Path:
    root = pathlib.Path(tempfile.mkdtemp(prefix="bpfd-bench-"))
    (root / "ansible_collections" / "bpfd").mkdir(parents=True)
    (root / "ansible_collections" / "bpfd" / "core").symlink_to(REPO)
    sys.path.insert(0, str(root))
    return root


COLLECTIONS = _collection_path()

from ansible_collections.bpfd.core.plugins.module_utils import _dispatcher  # noqa: E402
from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf  # noqa: E402
from ansible_collections.bpfd.core.plugins.module_utils import _loader, _proceed_on  # noqa: E402
from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager, ProgramSpec  # noqa: E402


def build_objects(outdir: pathlib.Path) -> dict:
    spec = importlib.util.spec_from_file_location("bpfd_fixture_build", REPO / "tests/fixtures/bpf/build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bpfd_fixture_build"] = module
    spec.loader.exec_module(module)
    return {name: str(path) for name, path in module.build_fixtures(outdir, ["xdp_pass", "tc_pass"]).items()}


def ns_per_packet(fd: int, rounds: int, repeat: int) -> float:
    packet = bytes(64)
    return min(libbpf.prog_test_run(fd, packet, repeat)[1] for _round in range(rounds))


def bench_dispatcher(kind: str, obj: str, rounds: int, repeat: int) -> dict:
    """A pass program alone vs. through the dispatcher, members proceeding on its verdict."""
    prog_type = libbpf.PROG_TYPE_XDP if kind == "xdp" else libbpf.PROG_TYPE_SCHED_CLS
    direct = _loader.load_program(obj, function=None, prog_types=(prog_type,),
                                  kind=kind, map_pin_dir=tempfile.mkdtemp(prefix="bpfd-bench-maps-"))
    mask = _proceed_on.mask(kind, ["pass", "dispatcher_return"] if kind == "xdp" else ["ok", "dispatcher_return"])
    figures = {"direct": ns_per_packet(direct.fd, rounds, repeat)}
    try:
        for members in (1, 5, 10):
            fd = _dispatcher.load(kind, [direct.insns] * members, [mask] * members)
            try:
                figures["dispatcher_%d" % members] = ns_per_packet(fd, rounds, repeat)
            finally:
                libbpf.close_fd(fd)
    finally:
        direct.close()
    return figures


@contextlib.contextmanager
def scratch_veth():
    tag = uuid.uuid4().hex[:6]
    name, peer, netns = "bpfdb%s" % tag, "bpfdq%s" % tag, "bpfd-bench-%s" % tag

    def run(*argv: str) -> None:
        subprocess.run(list(argv), check=True, capture_output=True)

    run("ip", "netns", "add", netns)
    try:
        run("ip", "link", "add", name, "type", "veth", "peer", "name", peer)
        run("ip", "link", "set", peer, "netns", netns)
        run("ip", "link", "set", name, "up")
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def bench_host_side(obj: str, rounds: int) -> dict:
    manager = Manager()
    loads, noops = [], []
    with scratch_veth() as iface:
        try:
            for i in range(rounds):
                spec = ProgramSpec(name="bench-%d" % i, kind="xdp", path=obj, interface=iface, priority=i)
                loads.append(timed(lambda: manager.present(spec)))
                noops.append(timed(lambda: manager.present(spec)))
        finally:
            for prog in manager.list(interface=iface)["programs"]:
                manager.absent(name=prog["name"])
    return {"load_ms_median": statistics.median(loads), "noop_ms_median": statistics.median(noops),
            "noop_ms_max": max(noops)}


def bench_playbook(obj: str) -> dict:
    tasks = [{"name": "load %d" % i, "bpfd.core.bpf_xdp_program": {
        "name": "bench-pb-%d" % i, "path": obj, "interface": "{{ iface }}", "priority": i * 10}}
        for i in range(10)]
    cleanup = [{"name": "unload %d" % i, "bpfd.core.bpf_xdp_program": {
        "name": "bench-pb-%d" % i, "state": "absent"}} for i in range(10)]
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_NOCOLOR="1")
    with tempfile.TemporaryDirectory() as tmp, scratch_veth() as iface:
        def play(task_list):
            path = pathlib.Path(tmp) / "play.yml"
            path.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": task_list}]))
            cmd = [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
                   "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable,
                   "-e", "iface=%s" % iface, str(path)]
            return lambda: subprocess.run(cmd, check=True, capture_output=True, env=env)
        try:
            first = timed(play(tasks))
            again = timed(play(tasks))
        finally:
            play(cleanup)()
    return {"playbook_10_programs_s": first / 1000, "playbook_10_programs_noop_s": again / 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=2_000_000)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "dispatcher.json"))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.repeat = 3, 100_000
    with tempfile.TemporaryDirectory() as tmp:
        objects = build_objects(pathlib.Path(tmp))
        disp = {kind: bench_dispatcher(kind, objects["%s_pass" % kind], args.rounds, args.repeat)
                for kind in ("xdp", "tc")}
        host = bench_host_side(objects["xdp_pass"], args.rounds)
        pb = bench_playbook(objects["xdp_pass"])
    per_member = {}
    for kind, figures in disp.items():
        base = figures["direct"]
        print("%s: BPF_PROG_TEST_RUN, 64-byte packet, min of %d rounds x %d:" % (kind.upper(), args.rounds, args.repeat))
        for key, value in figures.items():
            print("  %-14s %5.1f ns/packet  (%+5.1f ns vs direct, x%.2f)" % (key, value, value - base, value / base))
        per_member[kind] = (figures["dispatcher_10"] - figures["dispatcher_1"]) / 9
        print("  each further member: %.2f ns" % per_member[kind])
    print("host side through module_utils: load %.1f ms, no-op re-run %.1f ms (max %.1f ms)"
          % (host["load_ms_median"], host["noop_ms_median"], host["noop_ms_max"]))
    print("ansible-playbook, 10 programs: %.2f s; no-op re-run %.2f s"
          % (pb["playbook_10_programs_s"], pb["playbook_10_programs_noop_s"]))
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dispatcher_ns": disp, "per_member_ns": per_member, "host": host,
                               "playbook": pb, "rounds": args.rounds, "repeat": args.repeat}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
