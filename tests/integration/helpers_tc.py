# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers for TC tests: what is attached at an interface's ingress/egress as
tools we did not write see it (``tc -j``, ``bpftool -j``, raw bpf() syscalls
for the tcx link's target), TC verdicts of BPF_PROG_TEST_RUN, foreign
attachments a test makes and always removes, and before/after snapshots
narrowed to one veth while other test processes run."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pathlib
import platform
import struct
import subprocess
import time
import uuid

import helpers_xdp as hx
from conftest import kernel_snapshot

TC_ACTIONS = {-1: "unspec", 0: "ok", 1: "reclassify", 2: "shot", 3: "pipe", 4: "stolen",
              5: "queued", 6: "repeat", 7: "redirect", 8: "trap", 30: "dispatcher_return"}
DIRECTIONS = ("ingress", "egress")
LINK_TYPE_TCX = 11
ATTACH_TCX = {"ingress": 46, "egress": 47}
OUR_FILTER_PREF = 1
OUR_FILTER_HANDLE = "0xbfd"
DISPATCHER_NAME = "bpfd_tc_disp"


def verdict_name(retval: int) -> str:
    """BPF_PROG_TEST_RUN reports a u32: TC_ACT_UNSPEC (-1) comes back as 4294967295."""
    signed = retval - (1 << 32) if retval >= 1 << 31 else retval
    return TC_ACTIONS.get(signed, str(signed))


def run_tc(prog_id: int, packet: bytes, repeat: int = 1) -> str:
    """BPF_PROG_TEST_RUN on a kernel program id; the verdict's name."""
    return verdict_name(hx.run_xdp(prog_id, packet, repeat))


# --- raw bpf(): a tcx link's target, without the code under test -------------------

_NR_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_LINK_GET_FD_BY_ID = 30
_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr) -> int:
    ret = _libc.syscall(_NR_BPF[platform.machine()], cmd, attr, len(attr))
    if ret < 0:
        raise OSError(ctypes.get_errno(), "bpf(%d) failed" % cmd)
    return ret


def link_target(link_id: int) -> dict:
    """struct bpf_link_info {type, id, prog_id, union (8-aligned) {tcx: {ifindex, attach_type}}}."""
    attr = ctypes.create_string_buffer(struct.pack("<III", link_id, 0, 0), 16)
    fd = _bpf(_BPF_LINK_GET_FD_BY_ID, attr)
    try:
        buf = ctypes.create_string_buffer(64)
        attr = ctypes.create_string_buffer(struct.pack("<IIQ", fd, len(buf), ctypes.addressof(buf)), 16)
        _bpf(_BPF_OBJ_GET_INFO_BY_FD, attr)
        link_type, got_id, prog_id = struct.unpack_from("<III", buf.raw)
        ifindex, attach_type = struct.unpack_from("<II", buf.raw, 16)
    finally:
        os.close(fd)
    return {"type": link_type, "id": got_id, "prog_id": prog_id, "ifindex": ifindex,
            "attach_type": attach_type}


def bpftool_links() -> list:
    """`bpftool -j link show`; bpftool 7.1 gives up (status 255) when a link of
    another test goes away while it walks the list: walk again."""
    for _attempt in range(5):
        links = hx.bpftool_json("link", "show", check=False)
        if links is not None:
            return links
        time.sleep(0.05)
    return hx.bpftool_json("link", "show") or []


def tcx_links(ifindex: int, direction: str) -> list:
    """[(link id, program id)] of the tcx links on this hook (bpftool link show + bpf())."""
    found = []
    for link in bpftool_links():
        if link.get("type") not in (LINK_TYPE_TCX, "tcx"):
            continue
        try:
            target = link_target(link["id"])
        except OSError:
            continue  # gone meanwhile
        if target["ifindex"] == ifindex and target["attach_type"] == ATTACH_TCX[direction]:
            found.append((link["id"], target["prog_id"]))
    return sorted(found)


def links_running(prog_id: int) -> list:
    return [link["id"] for link in bpftool_links() if link.get("prog_id") == prog_id]


# --- tc(8)'s view ------------------------------------------------------------------


def cls_filters(ifname: str, direction: str) -> list:
    """Real filters at clsact ingress/egress (tc -j prints a chain header without
    options before each): [{pref, handle, name, prog_id, da}]."""
    proc = hx.sh("tc", "-j", "filter", "show", "dev", ifname, direction, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    found = []
    for entry in json.loads(proc.stdout):
        options = entry.get("options")
        if options is None:
            continue
        found.append({"kind": entry.get("kind"), "pref": entry.get("pref"), "handle": options.get("handle"),
                      "name": options.get("bpf_name"), "prog_id": options.get("prog", {}).get("id"),
                      "da": options.get("direct-action", False)})
    return found


def qdiscs(ifname: str) -> list:
    """Kinds of the non-root qdiscs (clsact, ingress) of the interface."""
    entries = json.loads(hx.sh("tc", "-j", "qdisc", "show", "dev", ifname).stdout or "[]")
    return sorted(q["kind"] for q in entries if not q.get("root"))


def attached(veth, direction: str) -> dict:
    return {"tcx": tcx_links(veth.ifindex, direction), "cls_bpf": cls_filters(veth.name, direction)}


def dispatcher_id(veth, direction: str) -> int:
    """The one program the kernel runs at this hook, whichever way it is attached."""
    seen = attached(veth, direction)
    ids = [prog for _link, prog in seen["tcx"]] + [f["prog_id"] for f in seen["cls_bpf"]]
    assert len(ids) == 1, "expected one TC program at %s %s, found %s" % (veth.name, direction, seen)
    return ids[0]


def nothing_attached(veth) -> bool:
    return all(attached(veth, d) == {"tcx": [], "cls_bpf": []} for d in DIRECTIONS)


# --- real traffic ----------------------------------------------------------------------


def quiet(veth) -> None:
    """No packet but the test runs' may cross a hook of the host end: the peer goes
    down (nothing arrives) and the host end stops IPv6 (router solicitations, MLD and
    DAD still leave through the egress hook while the carrier is down)."""
    hx.sh("sysctl", "-q", "-w", "net.ipv6.conf.%s.disable_ipv6=1" % veth.name)
    hx.quiet(veth)


def peer_counters(veth) -> tuple:
    """(rx, tx) packets of the peer end, from `ip -s -j link` in its netns."""
    link = json.loads(hx.sh("ip", "-n", veth.netns, "-s", "-j", "link", "show", "dev", veth.peer).stdout)[0]
    stats = link["stats64"]
    return stats["rx"]["packets"], stats["tx"]["packets"]


# --- foreign attachments (the test's own, always removed) -------------------------------


@contextlib.contextmanager
def foreign_program(obj: str):
    """A sched_cls program loaded and pinned by bpftool (not by us): (pin, prog id)."""
    pin = "/sys/fs/bpf/bpfd_test_foreign_%s" % uuid.uuid4().hex[:8]
    hx.sh("bpftool", "prog", "load", obj, pin, "type", "classifier")
    try:
        yield pin, hx.bpftool_json("prog", "show", "pinned", pin)["id"]
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pin)


@contextlib.contextmanager
def foreign_cls_bpf(veth, obj: str, direction: str, pref: int = 5, make_clsact: bool = True):
    """A cls_bpf filter added with tc(8) from a pinned program: yields {prog_id, name, pin}."""
    with foreign_program(obj) as (pin, prog_id):
        if make_clsact:
            hx.sh("tc", "qdisc", "add", "dev", veth.name, "clsact")
        try:
            hx.sh("tc", "filter", "add", "dev", veth.name, direction, "prio", str(pref), "handle", "7",
                  "bpf", "da", "object-pinned", pin)
            (flt,) = [f for f in cls_filters(veth.name, direction) if f["pref"] == pref]
            yield {"prog_id": prog_id, "name": flt["name"], "pin": pin, "pref": pref}
        finally:
            hx.sh("tc", "filter", "del", "dev", veth.name, direction, "prio", str(pref), check=False)
            if make_clsact:
                hx.sh("tc", "qdisc", "del", "dev", veth.name, "clsact", check=False)


@contextlib.contextmanager
def foreign_tcx(veth, obj: str, direction: str):
    """A tcx link of someone else, made with bpf_link_create and pinned outside bpfd's
    bpffs tree: yields {link_id, prog_id}; detached and unpinned afterwards."""
    from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
    with foreign_program(obj) as (prog_pin, prog_id):
        link_pin = prog_pin + "_link"
        prog_fd = libbpf.obj_get(prog_pin)
        try:
            attach_type = {"ingress": libbpf.ATTACH_TCX_INGRESS, "egress": libbpf.ATTACH_TCX_EGRESS}[direction]
            link_fd = libbpf.link_create(prog_fd, veth.ifindex, attach_type)
        finally:
            libbpf.close_fd(prog_fd)
        try:
            libbpf.obj_pin(link_fd, link_pin)
            link_id = libbpf.link_info(link_fd)["id"]
        finally:
            libbpf.close_fd(link_fd)
        try:
            yield {"link_id": link_id, "prog_id": prog_id, "pin": link_pin}
        finally:
            with contextlib.suppress(Exception):
                with libbpf.owned_fd(libbpf.obj_get(link_pin)) as fd:
                    libbpf.link_detach(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link_pin)


# --- snapshots -----------------------------------------------------------------------------
#
# kernel_snapshot() must be identical before and after a refused change. While anything
# else may load BPF programs (other suites, playbooks, benchmarks), the comparison narrows to what can be
# ours: state entries, pins and hooks naming our veth or its ifindex, what tc and bpftool
# show at our interface, and the kernel ids of our programs.


_BPF_TOOLS = {b"pytest", b"py.test", b"ansible", b"ansible-playbook", b"ansible-runner", b"bpftool"}


def _descends_from(pid: str, ancestor: int) -> bool:
    for _depth in range(64):
        if int(pid) == ancestor:
            return True
        try:
            pid = pathlib.Path("/proc", pid, "stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            return False
        if pid in ("0", "1"):
            return False
    return False


def other_bpf_activity() -> bool:
    """Anything else that may load BPF programs right now: other test suites, playbooks,
    benchmarks run with the project's venv, bpftool. Our own children do not count."""
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or _descends_from(pid, me):
            continue
        try:
            argv = pathlib.Path("/proc", pid, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        names = {os.path.basename(a) for a in argv[:3]}
        if names & _BPF_TOOLS or b"bpfd-venv" in argv[0] or (b"-m" in argv and b"pytest" in argv):
            return True
    return False


def snapshot(veth) -> dict:
    busy = other_bpf_activity()
    for attempt in range(5):  # bpftool 7.1 fails when another test's link goes away meanwhile
        try:
            snap = kernel_snapshot()
            break
        except subprocess.CalledProcessError:
            if attempt == 4:
                raise
            time.sleep(0.05)
    ifindex = veth.ifindex
    state = snap["state"] or {"programs": {}, "hooks": {}}
    programs = {n: r for n, r in state["programs"].items()
                if n.startswith(veth.name) or r.get("interface") == veth.name}
    hooks = {k: h for k, h in state["hooks"].items() if h.get("ifindex") == ifindex}
    ids = {r.get("prog_id") for r in programs.values()} | {h.get("dispatcher_id") for h in hooks.values()}
    at_hooks = {d: attached(veth, d) for d in DIRECTIONS}
    for seen in at_hooks.values():
        ids |= {p for _link, p in seen["tcx"]} | {f["prog_id"] for f in seen["cls_bpf"]}
    ids -= {None}
    mine = {
        "programs": programs, "hooks": hooks, "attached": at_hooks, "qdiscs": qdiscs(veth.name),
        "xdp": [p["id"] for p in hx.attached_xdp(veth.name)],
        "pins": [p for p in snap["pins"] if veth.name in p or "/tc_%d_" % ifindex in p
                 or "/xdp_%d/" % ifindex in p + "/"],
        "progs": sorted(ids & set(snap["progs"])),
    }
    snap["mine"] = mine
    snap["busy"] = busy or other_bpf_activity()
    return snap


def _differences(before: dict, after: dict) -> dict:
    return {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}


def assert_same(before: dict, after: dict) -> None:
    assert after["mine"] == before["mine"], "changed (before, after): %r" % _differences(before["mine"], after["mine"])
    if not (before["busy"] or after["busy"]):
        def strip(snap: dict) -> dict:
            return {k: v for k, v in snap.items() if k not in ("mine", "busy")}
        assert strip(after) == strip(before), "changed (before, after): %r" % _differences(strip(before), strip(after))
