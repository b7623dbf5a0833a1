# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""bpfd.core.bpf_xdp_program + bpf_program_info through real ansible-playbook runs.

Every test works on its own veth pair (the ``veth`` fixture) and checks what the
modules say against independent views of the kernel: ``bpftool -j`` (programs,
links, net), ``ip -j link``, a direct BPF_OBJ_GET_INFO_BY_FD on the link (bpftool
7.1 does not print an XDP link's ifindex), bpffs pins and the state file
(``kernel_snapshot``), and pings across the pair.

Program names start with the veth's unique name: names are unique per host and
other tests may run at the same time.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import json
import os
import pathlib
import platform
import shutil
import struct
import subprocess
import sys

import pytest

from conftest import bpftool_json, kernel_snapshot, manager, sh

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

XDP = "bpfd.core.bpf_xdp_program"
INFO = "bpfd.core.bpf_program_info"
DEFAULT_PROCEED_ON = ["pass", "dispatcher_return"]
BPFD_PINS = pathlib.Path("/sys/fs/bpf/bpfd")
TOP_DIRS = sorted(str(BPFD_PINS / d) for d in ("hooks", "maps", "programs"))
BYTECODE_STORE = pathlib.Path("/var/lib/bpfd/bytecode")

# The "Bpfd State" + "Kernel State" fields of the tutorial's `bpfctl get`, by our names.
TUTORIAL_FIELDS = (
    "name", "path", "priority", "interface", "position", "proceed_on", "map_pin_path",
    "id", "tag", "loaded_at", "gpl_compatible", "map_ids", "btf_id", "size_translated_bytes",
    "jited", "size_jited_bytes", "kernel_allocated_memory_bytes", "verified_insns",
)


# A member the verifier accepts alone and refuses inside the dispatcher.
#
# big_stack (a 504-byte frame) does not do it: the linker inlines a member's main body
# into the dispatcher's entry function, which has no frame of its own, so the member
# runs with the same stack as alone. What does it is call depth in a member that must
# be *called* (not inlined): a tail call in its main body forces that (inlined, the
# tail call would end the whole dispatcher). Its main function + 7 nested subprograms is
# the verifier's maximum of 8 frames alone; the dispatcher's entry makes it 9.
DEEP_LEVELS = 7


def _deep_calls_source(levels: int) -> str:
    parts = ["#include <linux/bpf.h>", "#include <bpf/bpf_helpers.h>", "",
             "struct {\n\t__uint(type, BPF_MAP_TYPE_PROG_ARRAY);\n\t__uint(max_entries, 1);\n"
             "\t__type(key, __u32);\n\t__type(value, __u32);\n} jump SEC(\".maps\");\n",
             "static __attribute__((noinline)) int level%d(struct xdp_md *ctx)\n"
             "{\n\tvolatile int k = XDP_PASS;\n\treturn ctx ? k : XDP_DROP;\n}\n" % levels]
    for i in range(levels - 1, 0, -1):
        parts.append("static __attribute__((noinline)) int level%d(struct xdp_md *ctx)\n"
                     "{\n\tvolatile int k = 1;\n\treturn level%d(ctx) * k;\n}\n" % (i, i + 1))
    parts.append('SEC("xdp")\nint deep_calls(struct xdp_md *ctx)\n{\n'
                 '\tbpf_tail_call(ctx, &jump, 0);\n\treturn level1(ctx);\n}\n\n'
                 'char LICENSE[] SEC("license") = "GPL";\n')
    return "\n".join(parts)


@pytest.fixture(scope="session")
def deep_calls_object(bpf_objects, tmp_path_factory) -> str:
    """xdp_deep_calls.o (function deep_calls): 8 frames, checked to load alone."""
    build = sys.modules["bpfd_fixture_build"]  # registered by the bpf_objects fixture
    out = tmp_path_factory.mktemp("deep") / "xdp_deep_calls.o"
    src = out.with_suffix(".c")
    src.write_text(_deep_calls_source(DEEP_LEVELS))
    subprocess.run([build.find_clang(), "-O2", "-g", "-target", "bpf", "-Wall", *build._include_flags(),
                    "-c", str(src), "-o", str(out)], check=True, capture_output=True)
    pin = "/sys/fs/bpf/bpfd_test_deep_%d" % os.getpid()
    try:
        sh("bpftool", "prog", "load", str(out), pin)
        xlated = sh("bpftool", "prog", "dump", "xlated", "pinned", pin).stdout
        assert xlated.count("call pc") == DEEP_LEVELS, xlated
    finally:
        sh("rm", "-f", pin, check=False)
    return str(out)


# --- tasks ------------------------------------------------------------------------


def load(name: str, veth, path: str, priority: int, task: str | None = None, **extra) -> dict:
    args = {"name": name, "path": path, "interface": veth.name, "priority": priority}
    args.update(extra)
    return {"name": task or "load %s" % name, XDP: args}


def unload(task: str, **args) -> dict:
    return {"name": task, XDP: dict(args, state="absent")}


def info(task: str = "info", **args) -> dict:
    return {"name": task, INFO: args}


# --- independent views of the kernel ----------------------------------------------

_NR_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_LINK_GET_FD_BY_ID = 30
_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    ret = _libc.syscall(_NR_BPF[platform.machine()], cmd, attr, len(attr))
    if ret < 0:
        raise OSError(ctypes.get_errno(), "bpf(%d) failed" % cmd)
    return ret


def xdp_link_ifindex(link_id: int) -> int:
    """struct bpf_link_info {type, id, prog_id, union (8-aligned) {xdp: {ifindex}}}."""
    attr = ctypes.create_string_buffer(struct.pack("<III", link_id, 0, 0), 16)
    fd = _bpf(_BPF_LINK_GET_FD_BY_ID, attr)
    try:
        info_buf = ctypes.create_string_buffer(64)
        attr = ctypes.create_string_buffer(
            struct.pack("<IIQ", fd, len(info_buf), ctypes.addressof(info_buf)), 16)
        _bpf(_BPF_OBJ_GET_INFO_BY_FD, attr)
        link_type, got_id, _prog_id = struct.unpack_from("<III", info_buf.raw)
        assert got_id == link_id and link_type == 6, "link %d is not an XDP link" % link_id
        return struct.unpack_from("<I", info_buf.raw, 16)[0]
    finally:
        os.close(fd)


def ip_link_xdp(veth) -> dict | None:
    return json.loads(sh("ip", "-j", "link", "show", "dev", veth.name).stdout)[0].get("xdp")


def bpftool_prog(prog_id: int) -> dict:
    return bpftool_json("prog", "show", "id", str(prog_id))


def xdp_links_to(prog_id: int) -> list:
    return [lk for lk in bpftool_json("link", "show") or []
            if lk.get("type") == "xdp" and lk.get("prog_id") == prog_id]


def assert_one_dispatcher(veth, dispatcher_id: int, link_id: int) -> None:
    """Exactly one XDP program on the interface: our dispatcher, held by our bpf_link."""
    attached = veth.xdp_programs()
    assert [p["id"] for p in attached] == [dispatcher_id], attached
    assert bpftool_prog(dispatcher_id)["name"] == "bpfd_xdp_disp"
    ip_xdp = ip_link_xdp(veth)
    assert ip_xdp["prog"]["id"] == dispatcher_id and len(ip_xdp.get("attached", [1])) == 1, ip_xdp
    links = xdp_links_to(dispatcher_id)
    assert [lk["id"] for lk in links] == [link_id], links
    assert xdp_link_ifindex(link_id) == veth.ifindex


def assert_kernel_facts(prog: dict) -> None:
    """The "Kernel State" part of a result agrees with bpftool."""
    for field in TUTORIAL_FIELDS:
        assert field in prog, "missing %s in %s" % (field, sorted(prog))
        if field != "map_ids":
            assert prog[field] is not None, field
    kernel = bpftool_prog(prog["id"])
    assert kernel["type"] == "xdp"
    assert kernel["name"] == prog["kernel_name"] == prog["bpf_function_name"][:15]
    assert kernel["tag"] == prog["tag"]
    assert kernel["gpl_compatible"] == prog["gpl_compatible"]
    assert kernel.get("btf_id", 0) == prog["btf_id"]
    assert kernel.get("map_ids", []) == prog["map_ids"]
    assert kernel["bytes_xlated"] == prog["size_translated_bytes"]
    assert kernel["jited"] == prog["jited"]
    assert kernel.get("bytes_jited", 0) == prog["size_jited_bytes"]
    assert kernel["bytes_memlock"] == prog["kernel_allocated_memory_bytes"]
    assert prog["verified_insns"] > 0
    stamp = datetime.datetime.strptime(prog["loaded_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
    assert abs(stamp - kernel["loaded_at"]) <= 1, (prog["loaded_at"], kernel["loaded_at"])


def chain_view(programs: list) -> list:
    return [(p["name"], p["position"], p["priority"], p["id"]) for p in programs]


def assert_info_agrees(results: dict, veth, task: str = "info") -> list:
    """bpf_program_info (sorted by name) shows the chain the module returned."""
    listed = sorted(results[task]["programs"], key=lambda p: p["position"])
    last = [r for k, r in results.items() if k != task and "chain" in r][-1]
    assert chain_view(listed) == chain_view(last["chain"])
    for prog in listed:
        assert prog["interface"] == veth.name
        assert prog["dispatcher_id"] == last["program"]["dispatcher_id"]
        assert prog["link_id"] == last["program"]["link_id"]
    return listed


# --- snapshots ------------------------------------------------------------------------
#
# Before/after pictures must be identical: kernel_snapshot() byte for byte. Other test
# files (or a whole-suite run) may load and unload programs at the same time on their own
# veths; while another pytest process runs, the comparison is narrowed to everything that
# can be ours: state entries and pins that name our veth (program names start with it)
# or its hook, XDP links on our ifindex, the program attached there, and our programs'
# kernel ids. After our module process exits, a program of ours can only stay alive
# through a pin, a link or the attachment, so nothing of ours escapes that view.


def _other_pytest_running() -> bool:
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            argv = pathlib.Path("/proc", pid, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(os.path.basename(a) in (b"pytest", b"py.test") for a in argv[:2]) or (
                b"-m" in argv and b"pytest" in argv):
            return True
    return False


def _xdp_links_on(ifindex: int) -> list:
    found = []
    for link in bpftool_json("link", "show") or []:
        if link.get("type") != "xdp":
            continue
        try:
            if xdp_link_ifindex(link["id"]) == ifindex:
                found.append((link["id"], link["prog_id"]))
        except OSError:
            continue  # gone meanwhile
    return found


def snapshot(veth) -> dict:
    """kernel_snapshot(), plus the part of it that can be ours (see above)."""
    busy = _other_pytest_running()
    snap = kernel_snapshot()
    exists = os.path.exists("/sys/class/net/%s" % veth.name)
    ifindex = veth.ifindex if exists else None
    hook = "xdp_%s" % ifindex
    state = snap["state"] or {"programs": {}, "hooks": {}}
    mine_programs = {n: r for n, r in state["programs"].items()
                     if n.startswith(veth.name) or r.get("interface") == veth.name}
    mine_hooks = {k: h for k, h in state["hooks"].items() if k == hook or h.get("interface") == veth.name}
    attached = [p["id"] for p in veth.xdp_programs()] if exists else None
    ids = {r.get("prog_id") for r in mine_programs.values()} | {h.get("dispatcher_id") for h in mine_hooks.values()}
    ids = (ids | set(attached or [])) - {None}
    snap["attached"] = attached
    snap["_mine"] = {
        "programs": mine_programs, "hooks": mine_hooks, "attached": attached,
        "pins": [p for p in snap["pins"] if veth.name in p or "/hooks/%s" % hook in p],
        "links": _xdp_links_on(ifindex) if exists else [],
        "progs": sorted(ids & set(snap["progs"])),
        "ids": sorted(ids),
    }
    snap["_busy"] = busy or _other_pytest_running()
    return snap


def _strip(snap: dict) -> dict:
    return {k: v for k, v in snap.items() if not k.startswith("_")}


def assert_same_snapshot(before: dict, after: dict, veth) -> None:
    if not (before["_busy"] or after["_busy"]):
        assert _strip(after) == _strip(before)
        return
    then, now = before["_mine"], after["_mine"]
    # None of our programs came or went.
    ours = set(then["ids"]) | set(now["ids"])
    assert set(now["progs"]) & ours == set(then["progs"]) & ours
    assert {k: v for k, v in now.items() if k != "ids"} == {k: v for k, v in then.items() if k != "ids"}


def assert_nothing_left(start: dict, veth, names: list, our_ids: set) -> None:
    """No program, link, pin or state entry of ours beyond what existed at the start."""
    end = snapshot(veth)
    assert end["attached"] == []
    assert end["_mine"]["links"] == [] and end["_mine"]["pins"] == []
    assert end["_mine"]["programs"] == {} and end["_mine"]["hooks"] == {}
    for name in names:
        assert not any(name in p for p in end["pins"]), end["pins"]
    assert not our_ids & set(end["progs"])
    if not (start["_busy"] or end["_busy"]):
        assert end["progs"] == start["progs"]
        assert end["links"] == start["links"]
        assert [p for p in end["pins"] if p not in TOP_DIRS] == []
        state = end["state"] or {"programs": {}, "hooks": {}}
        assert state["programs"] == {} and state["hooks"] == {}


# --- failures must be clean -----------------------------------------------------------


def assert_clean_failure(result: dict, *phrases: str) -> None:
    assert result["_failed"], result
    msg = result.get("msg", "")
    for phrase in phrases:
        assert phrase.lower() in msg.lower(), (phrase, msg)
    for key in ("msg", "module_stderr", "module_stdout", "exception"):
        assert "Traceback" not in str(result.get(key, "")), (key, result.get(key))
    assert "unexpected error" not in msg, msg


# =====================================================================================
# 1. The tutorial, Privileged Mode steps 4-6
# =====================================================================================


def test_tutorial_priorities_positions_and_unload(veth, bpf_objects, playbook):
    obj = bpf_objects["xdp_pass"]
    name = {prio: "%s-pass%d" % (veth.name, prio) for prio in (50, 100, 150, 200)}
    seen_link = []

    def step(task: dict, expected: dict) -> dict:
        results = playbook([task, info(interface=veth.name)])
        res = results[task["name"]]
        prog = res["program"]
        assert res["changed"] is True and res["changes"] == ["loaded"]
        assert prog["position"] == expected[prog["priority"]]
        assert {p["priority"]: p["position"] for p in res["chain"]} == expected
        assert all(p["proceed_on"] == DEFAULT_PROCEED_ON for p in res["chain"])
        assert prog["xdp_mode"] == "native"
        assert_kernel_facts(prog)
        assert_one_dispatcher(veth, prog["dispatcher_id"], prog["link_id"])
        listed = assert_info_agrees(results, veth)
        assert {p["priority"]: p["position"] for p in listed} == expected
        for listed_prog in listed:
            assert_kernel_facts(listed_prog)
        seen_link.append(prog["link_id"])
        assert veth.ping()
        return res

    # Step 4: the first program, priority 100, position 0.
    first = step(load(name[100], veth, obj, 100), {100: 0})
    prog = first["program"]
    assert prog["name"] == name[100] and prog["path"] == obj and prog["interface"] == veth.name
    assert prog["bpf_function_name"] == "pass" and prog["kernel_name"] == "pass"
    assert prog["map_pin_path"] == str(BPFD_PINS / "maps" / name[100])
    assert prog["type"] == "xdp" and prog["proceed_on"] == DEFAULT_PROCEED_ON
    # Step 5: 50 goes in front, 200 at the end, 150 (explicit proceed_on) before 200.
    step(load(name[50], veth, obj, 50), {50: 0, 100: 1})
    step(load(name[200], veth, obj, 200), {50: 0, 100: 1, 200: 2})
    last = step(load(name[150], veth, obj, 150, proceed_on=["pass", "dispatcher_return"]),
                {50: 0, 100: 1, 150: 2, 200: 3})
    ids = {p["priority"]: p["id"] for p in last["chain"]}
    assert len(set(ids.values())) == 4
    # One bpf_link from the first load on: every change was a swap.
    assert len(set(seen_link)) == 1

    # Step 6: bpfctl unload <id of the priority-100 program>; the others re-order.
    results = playbook([unload("unload 100", id=ids[100]), info(interface=veth.name)])
    assert results["unload 100"]["changed"] is True
    assert results["unload 100"]["program"]["name"] == name[100]
    listed = sorted(results["info"]["programs"], key=lambda p: p["position"])
    assert [(p["priority"], p["position"], p["id"]) for p in listed] == [
        (50, 0, ids[50]), (150, 1, ids[150]), (200, 2, ids[200])]
    with pytest.raises(subprocess.CalledProcessError):
        sh("bpftool", "prog", "show", "id", str(ids[100]))
    assert_one_dispatcher(veth, listed[0]["dispatcher_id"], listed[0]["link_id"])
    assert listed[0]["link_id"] == seen_link[0]
    assert listed[0]["dispatcher_id"] != last["program"]["dispatcher_id"]
    for prog in listed:
        assert_kernel_facts(prog)
    assert veth.ping()


# =====================================================================================
# 2. Idempotency, check mode, diff mode
# =====================================================================================


def test_same_play_twice_changes_nothing(veth, bpf_objects, playbook):
    obj = bpf_objects["xdp_pass"]
    a, b = veth.name + "-a", veth.name + "-b"
    tasks = [load(a, veth, obj, 100, task="a"), load(b, veth, obj, 50, task="b")]

    first = playbook(tasks, diff=True)
    assert first["a"]["changed"] and first["b"]["changed"]
    # Diff mode: the chain before and after, one line per program.
    assert first["a"]["diff"]["before"] == ""
    assert "0: %s priority=100 proceed_on=pass,dispatcher_return" % a in first["a"]["diff"]["after"]
    assert first["b"]["diff"]["before"] == first["a"]["diff"]["after"]
    after_lines = first["b"]["diff"]["after"].splitlines()
    assert veth.name in after_lines[0] and "native" in after_lines[0]
    # each line: position, name, priority, proceed_on, then what the program runs
    assert [line.split(" sha256=")[0] for line in after_lines[1:]] == [
        "  0: %s priority=50 proceed_on=pass,dispatcher_return" % b,
        "  1: %s priority=100 proceed_on=pass,dispatcher_return" % a]
    assert all("function=pass" in line for line in after_lines[1:])
    ids = {r["program"]["name"]: r["program"]["id"] for r in first.values()}
    dispatcher = first["b"]["program"]["dispatcher_id"]

    before = snapshot(veth)
    second = playbook(tasks, diff=True)
    after = snapshot(veth)
    for task in ("a", "b"):
        assert second[task]["changed"] is False, second[task]
        assert "changes" not in second[task]
        assert second[task]["diff"]["before"] == second[task]["diff"]["after"]
        assert second[task]["program"]["id"] == ids[second[task]["program"]["name"]]
        assert second[task]["program"]["dispatcher_id"] == dispatcher
    assert_same_snapshot(before, after, veth)
    assert_one_dispatcher(veth, dispatcher, first["b"]["program"]["link_id"])

    # Check mode of the applied play: nothing to do, nothing touched.
    checked = playbook(tasks, check=True)
    assert not checked["a"]["changed"] and not checked["b"]["changed"]
    assert checked["a"]["program"]["position"] == 1 and checked["b"]["program"]["position"] == 0
    assert_same_snapshot(before, snapshot(veth), veth)

    # Check mode of a new member on the applied chain: predicted position, nothing touched.
    c = veth.name + "-c"
    predicted = playbook([load(c, veth, obj, 75, task="c")], check=True, diff=True)["c"]
    assert predicted["changed"] is True and predicted["changes"] == ["loaded"]
    assert predicted["program"]["position"] == 1 and predicted["program"]["id"] is None
    assert [(p["name"], p["position"]) for p in predicted["chain"]] == [(b, 0), (c, 1), (a, 2)]
    assert "1: %s priority=75" % c in predicted["diff"]["after"]
    assert "%s priority=75" % c not in predicted["diff"]["before"]
    assert_same_snapshot(before, snapshot(veth), veth)
    assert veth.ping()


def test_check_mode_on_fresh_interface_touches_nothing(veth, bpf_objects, playbook):
    obj = bpf_objects["xdp_pass"]
    a, b = veth.name + "-a", veth.name + "-b"
    before = snapshot(veth)
    results = playbook([load(a, veth, obj, 100, task="a"), load(b, veth, obj, 50, task="b"),
                        info(interface=veth.name)], check=True, diff=True)
    after = snapshot(veth)
    for task in ("a", "b"):
        res = results[task]
        assert res["changed"] is True and res["changes"] == ["loaded"]
        # Check mode applies nothing, so each task predicts against the empty interface.
        assert res["program"]["position"] == 0 and res["program"]["id"] is None
        assert res["diff"]["before"] == ""
        assert "0: %s" % res["program"]["name"] in res["diff"]["after"]
    assert results["info"]["programs"] == []
    assert_same_snapshot(before, after, veth)
    assert veth.xdp_programs() == [] and ip_link_xdp(veth) is None


# =====================================================================================
# 3. Equal priorities order by name
# =====================================================================================


@pytest.mark.parametrize("order", [("c", "a", "b"), ("b", "c", "a")], ids=["cab", "bca"])
def test_equal_priorities_order_by_name(veth, bpf_objects, playbook, order):
    obj = bpf_objects["xdp_pass"]
    tasks = [load("%s-%s" % (veth.name, s), veth, obj, 100, task=s) for s in order]
    results = playbook(tasks + [info(interface=veth.name)])
    expected = [("%s-%s" % (veth.name, s), i) for i, s in enumerate("abc")]
    final = results[order[-1]]["chain"]
    assert [(p["name"], p["position"]) for p in final] == expected
    listed = assert_info_agrees(results, veth)
    assert [(p["name"], p["position"]) for p in listed] == expected
    # Each task's own answer is sorted by name among what was loaded so far.
    for i, s in enumerate(order):
        so_far = sorted(order[:i + 1])
        assert results[s]["program"]["position"] == so_far.index(s)
    assert_one_dispatcher(veth, final[0]["dispatcher_id"], final[0]["link_id"])


# =====================================================================================
# 4. Re-order in place: priority / proceed_on change = one swap, same members, same link
# =====================================================================================


def test_priority_and_proceed_on_change_swap_in_place(veth, bpf_objects, playbook):
    obj = bpf_objects["xdp_pass"]
    a, b = veth.name + "-a", veth.name + "-b"
    first = playbook([load(a, veth, obj, 100, task="a"), load(b, veth, obj, 200, task="b")])
    ids = {p["name"]: p["id"] for p in first["b"]["chain"]}
    dispatcher, link = first["b"]["program"]["dispatcher_id"], first["b"]["program"]["link_id"]
    assert [p["name"] for p in first["b"]["chain"]] == [a, b]

    # a's priority 100 -> 300: a now runs after b.
    moved = playbook([load(a, veth, obj, 300, task="a")])["a"]
    assert moved["changed"] is True and moved["changes"] == ["priority"]
    assert [(p["name"], p["position"], p["id"]) for p in moved["chain"]] == [(b, 0, ids[b]), (a, 1, ids[a])]
    assert moved["program"]["dispatcher_id"] != dispatcher
    assert moved["program"]["link_id"] == link
    assert_one_dispatcher(veth, moved["program"]["dispatcher_id"], link)
    assert bpftool_prog(ids[a])["id"] == ids[a] and bpftool_prog(ids[b])["id"] == ids[b]
    with pytest.raises(subprocess.CalledProcessError):
        sh("bpftool", "prog", "show", "id", str(dispatcher))  # the old dispatcher is gone
    assert veth.ping()

    # b's proceed_on: same order, new dispatcher, same link, same members.
    dispatcher = moved["program"]["dispatcher_id"]
    changed = playbook([load(b, veth, obj, 200, task="b", proceed_on=["drop", "pass", "dispatcher_return"]),
                        info(interface=veth.name)])
    res = changed["b"]
    assert res["changed"] is True and res["changes"] == ["proceed_on"]
    assert res["program"]["proceed_on"] == ["drop", "pass", "dispatcher_return"]
    assert [(p["name"], p["position"], p["id"]) for p in res["chain"]] == [(b, 0, ids[b]), (a, 1, ids[a])]
    assert res["program"]["dispatcher_id"] != dispatcher
    assert res["program"]["link_id"] == link
    assert_one_dispatcher(veth, res["program"]["dispatcher_id"], link)
    listed = assert_info_agrees(changed, veth)
    assert [p["proceed_on"] for p in listed] == [["drop", "pass", "dispatcher_return"], DEFAULT_PROCEED_ON]
    assert veth.ping()


# =====================================================================================
# 5. Removing the last program detaches and leaves nothing
# =====================================================================================


def test_removing_last_program_detaches_and_cleans_up(veth, bpf_objects, playbook):
    start = snapshot(veth)
    obj = bpf_objects["xdp_count_pass"]  # has a map: its pins must go too
    a, b = veth.name + "-a", veth.name + "-b"
    loaded = playbook([load(a, veth, obj, 10, task="a"), load(b, veth, bpf_objects["xdp_pass"], 20, task="b")])
    assert (BPFD_PINS / "maps" / a / "hits").exists()
    assert any(BPFD_PINS.glob("hooks/*/link"))
    results = playbook([unload("rm b", name=b), unload("rm a", name=a), info(interface=veth.name)])
    assert results["rm b"]["changed"] and results["rm a"]["changed"]
    assert results["info"]["programs"] == []
    assert veth.xdp_programs() == []
    assert ip_link_xdp(veth) is None
    disp = loaded["b"]["program"]["dispatcher_id"]
    assert xdp_links_to(disp) == []
    ours = {p["id"] for p in loaded["b"]["chain"]} | {disp, loaded["a"]["program"]["dispatcher_id"]}
    assert_nothing_left(start, veth, [a, b], ours)
    assert veth.ping()


# =====================================================================================
# 6. Bad input: clean failure, nothing changed, traffic still flows
# =====================================================================================


def _bad(objs, veth, name):
    """(task args, phrases expected in msg) per case; `name` is a fresh program name."""
    pass_o = objs["xdp_pass"]
    return {
        "missing_path": (dict(path="/nonexistent/xdp.o"), "does not exist"),
        "not_bpf": (dict(path=objs["not_bpf"]), "not an ELF object"),
        "unknown_function": (dict(path=pass_o, bpf_function_name="nosuch"), "function nosuch not found"),
        "ambiguous_object": (dict(path=objs["xdp_two_progs"]), "set bpf_function_name"),
        "priority_1001": (dict(path=pass_o, priority=1001), "priority must be between 0 and 1000"),
        "priority_negative": (dict(path=pass_o, priority=-1), "priority must be between 0 and 1000"),
        "bad_proceed_on": (dict(path=pass_o, proceed_on=["pass", "bogus"]), ("proceed_on", "bogus")),
        "no_such_interface": (dict(path=pass_o, interface="bpfdnosuch0"), "interface bpfdnosuch0 does not exist"),
        "eleventh_program": (dict(path=pass_o), "at most 10 programs"),
        "verifier_refuses_member": (dict(path=objs["xdp_deep_calls"]),
                                    ("kernel refused the xdp dispatcher", "9 frames is too deep")),
        "mode_mismatch": (dict(path=pass_o, xdp_mode="skb"), "native mode"),
        "tc_program": (dict(path=objs["tc_pass"]), "holds no xdp program"),
        "tc_function": (dict(path=objs["tc_pass"], bpf_function_name="tc_pass"), "not xdp"),
        "name_with_slash": (dict(path=pass_o, name="%s/evil" % name), "is not valid"),
    }


BAD_CASES = ["missing_path", "not_bpf", "unknown_function", "ambiguous_object", "priority_1001",
             "priority_negative", "bad_proceed_on", "no_such_interface", "eleventh_program",
             "verifier_refuses_member", "mode_mismatch", "tc_program", "tc_function", "name_with_slash"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_cleanly_and_changes_nothing(veth, bpf_objects, deep_calls_object, playbook, case):
    from ansible_collections.bpfd.core.plugins.module_utils._manager import ProgramSpec

    # Setup straight through module_utils (fast): one managed program, ten for the 11th case.
    mgr = manager()
    for i in range(10 if case == "eleventh_program" else 1):
        mgr.present(ProgramSpec(name="%s-m%d" % (veth.name, i), kind="xdp", path=bpf_objects["xdp_pass"],
                                interface=veth.name, priority=100 + i))
    assert veth.ping()
    if case == "mode_mismatch":
        assert ip_link_xdp(veth)["mode"] == 1  # XDP_ATTACHED_DRV: the chain runs native
    objs = dict(bpf_objects, xdp_deep_calls=deep_calls_object)
    args, phrases = _bad(objs, veth, veth.name + "-new")[case]
    phrases = phrases if isinstance(phrases, tuple) else (phrases,)
    task_args = dict({"name": veth.name + "-new", "interface": veth.name, "priority": 500}, **args)

    before = snapshot(veth)
    results = playbook([{"name": "bad", XDP: task_args}], expect_failure=True)
    after = snapshot(veth)

    assert_clean_failure(results["bad"], *phrases)
    assert_same_snapshot(before, after, veth)
    assert veth.ping()


# =====================================================================================
# 7. A foreign XDP program already on the hook is never clobbered
# =====================================================================================


def test_foreign_program_on_hook_is_reported_and_kept(veth, bpf_objects, playbook):
    iproute_pins = [pathlib.Path("/sys/fs/bpf", d) for d in ("ip", "xdp", "tc")]
    existed = {p: os.path.lexists(p) for p in iproute_pins}
    try:
        sh("ip", "link", "set", "dev", veth.name, "xdpgeneric", "obj", bpf_objects["xdp_pass"], "sec", "xdp")
        foreign_id = ip_link_xdp(veth)["prog"]["id"]
        before = snapshot(veth)
        results = playbook([load(veth.name + "-x", veth, bpf_objects["xdp_pass"], 100, task="x")],
                           expect_failure=True)
        assert_clean_failure(results["x"], "id %d" % foreign_id)
        assert "did not attach" in results["x"]["msg"]
        assert_same_snapshot(before, snapshot(veth), veth)
        assert ip_link_xdp(veth)["prog"]["id"] == foreign_id
        assert [p["id"] for p in veth.xdp_programs()] == [foreign_id]
        assert veth.ping()
    finally:
        sh("ip", "link", "set", "dev", veth.name, "xdpgeneric", "off", check=False)
        for path in iproute_pins:
            if existed[path] or not os.path.lexists(path):
                continue
            if path.is_symlink() or not path.is_dir():
                path.unlink()
            else:
                shutil.rmtree(path)


# =====================================================================================
# 8. src: shipped from the controller into the bytecode store
# =====================================================================================


def test_src_is_shipped_into_bytecode_store(veth, bpf_objects, playbook, tmp_path):
    # A copy with a unique tail: its own sha256, so the store entry is this test's own.
    src = tmp_path / "xdp_pass_shipped.o"
    src.write_bytes(pathlib.Path(bpf_objects["xdp_pass"]).read_bytes() + os.urandom(16))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    kept = BYTECODE_STORE / ("%s.o" % digest)
    assert not kept.exists()
    name = veth.name + "-src"
    task = {"name": "ship", XDP: {"name": name, "src": str(src), "interface": veth.name, "priority": 100}}
    try:
        first = playbook([task])["ship"]
        assert first["changed"] is True
        assert first["program"]["path"] == str(kept)
        assert first["program"]["sha256"] == digest
        assert hashlib.sha256(kept.read_bytes()).hexdigest() == digest
        assert_one_dispatcher(veth, first["program"]["dispatcher_id"], first["program"]["link_id"])
        before = snapshot(veth)
        again = playbook([task])["ship"]
        assert again["changed"] is False
        assert again["program"]["id"] == first["program"]["id"]
        assert_same_snapshot(before, snapshot(veth), veth)
        assert veth.ping()
    finally:
        if kept.exists():
            kept.unlink()


# =====================================================================================
# 9. Unload by kernel id; absent of an unknown name
# =====================================================================================


def test_unload_by_id_and_absent_unknown_name(veth, bpf_objects, playbook):
    name = veth.name + "-byid"
    loaded = playbook([load(name, veth, bpf_objects["xdp_pass"], 100, task="load")])["load"]
    prog_id = loaded["program"]["id"]
    results = playbook([unload("by id", id=prog_id), unload("unknown", name=veth.name + "-never"),
                        info(interface=veth.name), info("by id info", id=prog_id)])
    assert results["by id"]["changed"] is True
    assert results["by id"]["program"]["name"] == name
    assert results["unknown"]["changed"] is False
    assert results["info"]["programs"] == [] and results["by id info"]["programs"] == []
    assert veth.xdp_programs() == []
    with pytest.raises(subprocess.CalledProcessError):
        sh("bpftool", "prog", "show", "id", str(prog_id))
    assert veth.ping()
