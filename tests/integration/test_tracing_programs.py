# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Programs without a dispatcher on the real kernel: bpf_tracepoint_program,
bpf_uprobe_program, bpf_kprobe_program, bpf_fentry_program, bpf_fexit_program.

The programs are seen firing: every fixture (`*_count`, trace_count.bpf.c) adds 1 to
`hits[0]` per run, read with `bpftool -j map dump pinned`; its .rodata global
`target_tgid` limits counting to one process. Processes that fire them are a small C
program this file builds (`gcc -O0`, a `noinline` function) and drives over a pipe, so
counts are exact. Where a program is attached is read from the kernel's link info
(BPF_OBJ_GET_INFO_BY_FD on the perf_event link: tracepoint name, uprobe file), and
`bpftool -j link show` says which links exist.

Kernels without kprobes, or refusing BPF trampolines (fentry/fexit), cannot run those
programs: their tests probe the kernel themselves and skip with the reason, while the
modules' clean failure on such a kernel is asserted (with the host unchanged).

Program names start with a per-run tag: other tests may run at the same time.
"""

from __future__ import annotations

import ctypes
import json
import os
import pathlib
import platform
import re
import shutil
import struct
import subprocess
import uuid

import pytest

from conftest import bpftool_json, manager, sh

from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._manager import ProgramSpec

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

TRACEPOINT = "bpfd.core.bpf_tracepoint_program"
UPROBE = "bpfd.core.bpf_uprobe_program"
KPROBE = "bpfd.core.bpf_kprobe_program"
FENTRY = "bpfd.core.bpf_fentry_program"
FEXIT = "bpfd.core.bpf_fexit_program"
INFO = "bpfd.core.bpf_program_info"
PINS = pathlib.Path("/sys/fs/bpf/bpfd")
STATE = pathlib.Path("/run/bpfd/state.json")
TARGET_FUNCTION = "bpfd_probe_target"

TARGET_SOURCE = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What the uprobe tests attach to: called N times by "call N". */
__attribute__((noinline)) long bpfd_probe_target(long x)
{
    __asm__ volatile("" ::: "memory");
    return x + 1;
}

/* Commands on stdin, one per line: "call N", "open N" (open+close /dev/null),
 * "getpid N" (libc's getpid), "unlink N" (create + unlink a file in the cwd).
 * Prints "ready PID" first and "done" after each command. */
int main(void)
{
    char cmd[16];
    long n, i, acc;

    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready %d\n", (int)getpid());
    while (scanf("%15s %ld", cmd, &n) == 2) {
        for (i = 0, acc = 0; i < n; i++) {
            if (!strcmp(cmd, "call")) {
                acc += bpfd_probe_target(i);
            } else if (!strcmp(cmd, "open")) {
                int fd = open("/dev/null", O_RDONLY);
                if (fd >= 0)
                    close(fd);
            } else if (!strcmp(cmd, "getpid")) {
                acc += getpid();
            } else if (!strcmp(cmd, "unlink")) {
                int fd = open("bpfd-unlink-me", O_CREAT | O_WRONLY, 0600);
                if (fd >= 0)
                    close(fd);
                unlink("bpfd-unlink-me");
            }
        }
        printf("done %ld\n", acc);
    }
    return 0;
}
"""


# --- the process that fires the probes --------------------------------------------------


@pytest.fixture(scope="session")
def target_binary(tmp_path_factory) -> str:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("needs gcc to build the uprobe target binary")
    out = tmp_path_factory.mktemp("uprobe-target")
    src = out / "probe_target.c"
    src.write_text(TARGET_SOURCE)
    binary = out / "probe_target"
    sh(gcc, "-O0", "-g", "-o", str(binary), str(src))
    return str(binary)


class Target:
    """One running probe_target process."""

    def __init__(self, binary: str, cwd: str) -> None:
        self.proc = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd)
        line = self.proc.stdout.readline().split()
        assert line[:1] == ["ready"], line
        self.pid = int(line[1])

    def do(self, command: str, times: int) -> None:
        self.proc.stdin.write("%s %d\n" % (command, times))
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().startswith("done"), "%s did not answer" % command

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def targets(target_binary, tmp_path):
    """start() -> a new Target; all are stopped at the end."""
    started: list = []

    def start() -> Target:
        started.append(Target(target_binary, str(tmp_path)))
        return started[-1]

    yield start
    for each in started:
        each.stop()


@pytest.fixture
def names():
    """name(suffix) -> a unique program name; every one is unloaded at the end."""
    tag = "bpfdtr%s" % uuid.uuid4().hex[:6]
    made: list = []

    def name(suffix: str) -> str:
        made.append("%s-%s" % (tag, suffix))
        return made[-1]

    yield name
    mgr = manager()
    for each in made:
        mgr.absent(name=each)
    for each in made:
        assert not (PINS / "programs" / each).exists() and not (PINS / "maps" / each).exists(), each


def tgid(pid: int) -> str:
    """global_data value of target_tgid (a little-endian __u32)."""
    return struct.pack("<I", pid).hex()


# --- independent views of the kernel ----------------------------------------------------


def hits(name: str) -> int:
    """hits[0] of a program's pinned map."""
    dump = bpftool_json("map", "dump", "pinned", str(PINS / "maps" / name / "hits"))
    return int.from_bytes(bytes(int(b, 16) for b in dump[0]["value"]), "little")


def links() -> dict:
    """link id -> {type, prog_id} for every bpf_link of the kernel."""
    return {link["id"]: link for link in bpftool_json("link", "show") or []}


def prog_ids_named(kernel_name: str) -> set:
    return {p["id"] for p in bpftool_json("prog", "show") or [] if p.get("name") == kernel_name}


_NR_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_LINK_GET_FD_BY_ID = 30
_libc = ctypes.CDLL(None, use_errno=True)
PERF_EVENT_TYPES = {1: "uprobe", 2: "uretprobe", 3: "kprobe", 4: "kretprobe", 5: "tracepoint", 6: "event"}


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    ret = _libc.syscall(_NR_BPF[platform.machine()], cmd, attr, len(attr))
    if ret < 0:
        raise OSError(ctypes.get_errno(), "bpf(%d) failed" % cmd)
    return ret


def link_attach_point(link_id: int) -> dict:
    """What a perf_event link is attached to, from struct bpf_link_info (Linux 6.6+):
    {type, prog_id, event (tracepoint, uprobe, ...), name (tracepoint or file), offset}."""
    fd = _bpf(_BPF_LINK_GET_FD_BY_ID, ctypes.create_string_buffer(struct.pack("<III", link_id, 0, 0), 16))
    try:
        name = ctypes.create_string_buffer(4096)
        info = ctypes.create_string_buffer(struct.pack("<IIII", 0, 0, 0, 0) + struct.pack(
            "<IIQI", 0, 0, ctypes.addressof(name), len(name)), 128)
        _bpf(_BPF_OBJ_GET_INFO_BY_FD, ctypes.create_string_buffer(
            struct.pack("<IIQ", fd, len(info), ctypes.addressof(info)), 16))
        link_type, got_id, prog_id = struct.unpack_from("<III", info.raw)
        assert got_id == link_id
        event, = struct.unpack_from("<I", info.raw, 16)
        offset, = struct.unpack_from("<I", info.raw, 36)
        return {"type": link_type, "prog_id": prog_id, "event": PERF_EVENT_TYPES.get(event, event),
                "name": name.value.decode(), "offset": offset}
    finally:
        os.close(fd)


def recorded(name: str) -> dict | None:
    return json.loads(STATE.read_text())["programs"].get(name) if STATE.exists() else None


def our_view(name: str) -> dict:
    """What the host holds for one program: pins, record, its kernel ids."""
    record = recorded(name)
    pins = sorted(str(p) for p in (PINS / "programs" / name).glob("*")) + \
        sorted(str(p) for p in (PINS / "maps" / name).glob("*"))
    return {"pins": pins, "record": record,
            "prog": (record or {}).get("prog_id"), "link": (record or {}).get("link_id")}


def task(module: str, title: str, **args) -> dict:
    return {"name": title, module: args}


def failing(module: str, title: str, **args) -> dict:
    return dict(task(module, title, **args), ignore_errors=True)


def assert_clean_failure(result: dict, message: str) -> None:
    assert result["_failed"], result
    assert message in result["msg"], result["msg"]
    assert "Traceback" not in str(result) and "unexpected error" not in result["msg"], result


# --- tracepoints ------------------------------------------------------------------------


def test_tracepoint_counts_moves_and_unloads(playbook, bpf_objects, names, targets):
    name = names("tp")
    obj = bpf_objects["tracepoint_count"]
    load = task(TRACEPOINT, "load", name=name, path=obj, tracepoint="syscalls/sys_enter_openat",
                metadata={"suite": "tracing"})
    first = playbook([load, task(INFO, "info", type="tracepoint", metadata={"suite": "tracing"})])
    prog = first["load"]["program"]
    assert first["load"]["changed"] and first["load"]["changes"] == ["loaded"]
    assert (prog["type"], prog["tracepoint"], prog["bpf_function_name"]) == \
        ("tracepoint", "syscalls/sys_enter_openat", "count_tracepoint")
    assert prog["prog_type"] == "tracepoint" and prog["id"] and prog["link_id"]
    listed = [p for p in first["info"]["programs"] if p["name"] == name]
    assert [(p["id"], p["link_id"], p["tracepoint"]) for p in listed] == \
        [(prog["id"], prog["link_id"], "syscalls/sys_enter_openat")]

    # The kernel: one perf_event link on our program, at the tracepoint, pinned beside it.
    kernel_links = links()
    assert kernel_links[prog["link_id"]]["prog_id"] == prog["id"]
    assert kernel_links[prog["link_id"]]["type"] == "perf_event"
    assert link_attach_point(prog["link_id"])["name"] == "sys_enter_openat"
    assert sorted(os.listdir(PINS / "programs" / name)) == ["link_%d" % prog["id"], "prog_%d" % prog["id"]]

    # It fires: the count rises when this test opens files.
    before = hits(name)
    for _each in range(25):
        with open("/dev/null"):
            pass
    assert hits(name) - before >= 25

    # The same task again changes nothing; check mode (another tracepoint) neither.
    view = our_view(name)
    second = playbook([load, dict(task(TRACEPOINT, "check move", name=name, path=obj, metadata={"suite": "tracing"},
                                       tracepoint="syscalls/sys_enter_close"), check_mode=True),
                       dict(task(TRACEPOINT, "check rm", name=name, state="absent"), check_mode=True)], diff=True)
    assert second["load"]["changed"] is False and "changes" not in second["load"]
    assert second["load"]["program"]["id"] == prog["id"]
    assert second["load"]["diff"]["before"] == second["load"]["diff"]["after"]
    checked = second["check move"]
    assert checked["changed"] and checked["changes"] == ["attach"], checked
    assert "syscalls/sys_enter_openat" in checked["diff"]["before"]
    assert "syscalls/sys_enter_close" in checked["diff"]["after"]
    assert second["check rm"]["changed"] and second["check rm"]["program"]["id"] == prog["id"]
    assert "syscalls/sys_enter_openat" in second["check rm"]["diff"]["before"]
    assert second["check rm"]["diff"]["after"] == ""
    assert our_view(name) == view and link_attach_point(prog["link_id"])["name"] == "sys_enter_openat"

    # Global data changes what is counted: only the target process now.
    target = targets()
    mgr = manager()
    spec = ProgramSpec(name=name, kind="tracepoint", path=obj, interface=None, priority=None,
                       global_data={"target_tgid": tgid(target.pid)}, metadata={"suite": "tracing"},
                       attach={"tracepoint": "syscalls/sys_enter_openat"})
    result = mgr.present(spec)
    assert result["changes"] == ["global_data"]
    filtered = result["program"]
    assert filtered["id"] != prog["id"] and prog["link_id"] not in links()
    before = hits(name)
    for _each in range(25):
        with open("/dev/null"):
            pass
    target.do("open", 7)
    assert hits(name) - before == 7  # the map was kept; this process's opens are not counted

    # Moving to another tracepoint: the new link fires there, nothing stays at the old one.
    moved = playbook([task(TRACEPOINT, "move", name=name, path=obj, tracepoint="syscalls/sys_enter_close",
                           global_data={"target_tgid": tgid(target.pid)}, metadata={"suite": "tracing"})],
                     diff=True)["move"]
    assert moved["changed"] and moved["changes"] == ["attach"]
    assert "sys_enter_openat" in moved["diff"]["before"] and "sys_enter_close" in moved["diff"]["after"]
    new = moved["program"]
    kernel_links = links()
    assert filtered["link_id"] not in kernel_links and not prog_ids_named("count_tracepoin") & {filtered["id"]}
    ours = [i for i, link in kernel_links.items() if link["prog_id"] in (prog["id"], filtered["id"], new["id"])]
    assert ours == [new["link_id"]]
    assert link_attach_point(new["link_id"])["name"] == "sys_enter_close"
    before = hits(name)
    target.do("open", 5)  # 5 opens (no longer counted) and 5 closes
    assert hits(name) - before == 5
    assert sorted(os.listdir(PINS / "programs" / name)) == ["link_%d" % new["id"], "prog_%d" % new["id"]]

    # Removal leaves no link, program or pin; a second one has nothing to do.
    gone = playbook([task(TRACEPOINT, "rm", name=name, state="absent")])["rm"]
    assert gone["changed"] and gone["program"]["id"] == new["id"]
    assert mgr.absent(name=name)["changed"] is False
    assert new["link_id"] not in links() and new["id"] not in prog_ids_named("count_tracepoin")
    assert our_view(name) == {"pins": [], "record": None, "prog": None, "link": None}


def spec(kind: str, name: str, path: str, **attach) -> ProgramSpec:
    return ProgramSpec(name=name, kind=kind, path=path, interface=None, priority=None, attach=attach)


def uprobe_attach(target: str, function: str | None = TARGET_FUNCTION, **extra) -> dict:
    return dict({"target": target, "function": function, "offset": 0, "pid": 0, "retprobe": False}, **extra)


def test_bad_input_is_refused_and_leaves_nothing(playbook, bpf_objects, names, target_binary):
    tp, up, uret = bpf_objects["tracepoint_count"], bpf_objects["uprobe_count"], bpf_objects["uretprobe_count"]
    cases = [
        ("tracepoint", tp, {"tracepoint": "sys_enter_openat"}, "exactly one '/'"),
        ("tracepoint", tp, {"tracepoint": "syscalls/sys_enter/openat"}, "exactly one '/'"),
        ("tracepoint", tp, {"tracepoint": "syscalls/sys_enter_bpfd_nope"},
         "tracepoint syscalls/sys_enter_bpfd_nope does not exist on this kernel"),
        ("tracepoint", up, {"tracepoint": "syscalls/sys_enter_openat"}, "holds no tracepoint program"),
        ("uprobe", uret, uprobe_attach(target_binary), "section uretprobe makes it a uretprobe: set retprobe: true"),
        ("uprobe", up, uprobe_attach(target_binary, retprobe=True),
         "section uprobe makes it a uprobe, not a uretprobe: set retprobe: false"),
        ("uprobe", up, uprobe_attach("/nonexistent/bpfd/app"), "uprobe target /nonexistent/bpfd/app does not exist"),
        ("uprobe", up, uprobe_attach("libbpfd_nope"), "uprobe target libbpfd_nope was not found"),
        ("uprobe", up, uprobe_attach(target_binary, "bpfd_no_such_function"),
         "function bpfd_no_such_function is not a function symbol of"),
        ("uprobe", up, uprobe_attach(target_binary, None), "needs function, offset or both"),
    ]
    kernel_names = ("count_tracepoin", "count_uprobe", "count_uretprobe")
    before = {n: prog_ids_named(n) for n in kernel_names}
    mgr = manager()
    for i, (kind, path, attach, message) in enumerate(cases):
        name = names("bad%d" % i)
        with pytest.raises(BpfdError) as refused:
            mgr.present(spec(kind, name, path, **attach))
        assert message in refused.value.msg, (attach, refused.value.msg)
        assert our_view(name) == {"pins": [], "record": None, "prog": None, "link": None}, attach

    # The modules fail cleanly with the same sentences.
    module_cases = {
        "no slash": (failing(TRACEPOINT, "no slash", name=names("noslash"), path=tp, tracepoint="sys_enter_openat"),
                     "exactly one '/'"),
        "retprobe mismatch": (failing(UPROBE, "retprobe mismatch", name=names("noret"), path=uret,
                                      target=target_binary, function=TARGET_FUNCTION),
                              "section uretprobe makes it a uretprobe: set retprobe: true"),
        "missing target": (failing(UPROBE, "missing target", name=names("nofile"), path=up,
                                   target="/nonexistent/bpfd/app", function="main"),
                           "uprobe target /nonexistent/bpfd/app does not exist"),
    }
    results = playbook([entry for entry, _message in module_cases.values()], expect_failure=True)
    for title, (entry, message) in module_cases.items():
        assert_clean_failure(results[title], message)
        name = next(v for k, v in entry.items() if k.startswith("bpfd.core."))["name"]
        assert our_view(name) == {"pins": [], "record": None, "prog": None, "link": None}, title
    # Nothing loaded on the way stayed loaded (the retprobe mismatches are found after the load).
    assert {n: prog_ids_named(n) - before[n] for n in kernel_names} == {n: set() for n in kernel_names}


# --- uprobes ----------------------------------------------------------------------------


def test_uprobe_and_uretprobe_count_calls_and_pid_filtering_holds(
        playbook, bpf_objects, names, targets, target_binary):
    first, second = targets(), targets()
    entry, ret = names("entry"), names("return")
    results = playbook([
        task(UPROBE, "entry", name=entry, path=bpf_objects["uprobe_count"], target=target_binary,
             function=TARGET_FUNCTION, pid=first.pid),
        task(UPROBE, "return", name=ret, path=bpf_objects["uretprobe_count"], target=target_binary,
             fn_name=TARGET_FUNCTION, retprobe=True),
        task(INFO, "info", type="uprobe"),
    ])
    for title, name, event in (("entry", entry, "uprobe"), ("return", ret, "uretprobe")):
        prog = results[title]["program"]
        assert prog["type"] == "uprobe" and prog["prog_type"] == "kprobe" and prog["target"] == target_binary
        point = link_attach_point(prog["link_id"])
        assert (point["event"], point["name"], point["prog_id"]) == (event, target_binary, prog["id"])
        assert [p["link_id"] for p in results["info"]["programs"] if p["name"] == name] == [prog["link_id"]]
    assert results["entry"]["program"]["pid"] == first.pid and results["return"]["program"]["pid"] == 0

    first.do("call", 5)
    second.do("call", 7)
    assert hits(entry) == 5  # only the first process
    assert hits(ret) == 12  # every process, on return

    # The same again through the Manager: nothing changes.
    mgr = manager()
    again = mgr.present(ProgramSpec(
        name=entry, kind="uprobe", path=bpf_objects["uprobe_count"], interface=None, priority=None,
        attach={"target": target_binary, "function": TARGET_FUNCTION, "offset": 0, "pid": first.pid,
                "retprobe": False}))
    assert again["changed"] is False and again["program"]["id"] == results["entry"]["program"]["id"]


def test_uprobe_on_a_library_by_name(bpf_objects, names, targets):
    """target: libc, resolved through the dynamic linker's cache; pid keeps the count exact."""
    target = targets()
    name = names("libc")
    mgr = manager()
    result = mgr.present(ProgramSpec(
        name=name, kind="uprobe", path=bpf_objects["uprobe_count"], interface=None, priority=None,
        attach={"target": "libc", "function": "getpid", "offset": 0, "pid": target.pid, "retprobe": False}))
    prog = result["program"]
    assert prog["target"] == "libc"
    point = link_attach_point(prog["link_id"])
    assert point["event"] == "uprobe" and os.path.basename(point["name"]).startswith("libc.so")
    target.do("getpid", 9)
    assert hits(name) == 9
    removed = mgr.absent(name=name)
    assert removed["changed"] and prog["link_id"] not in links()


# --- kprobes and trampolines: probe the kernel, skip when it cannot ---------------------


def kernel_has_kprobes() -> str | None:
    """None, or why this kernel cannot attach kprobes."""
    if os.path.isdir("/sys/bus/event_source/devices/kprobe") or any(
            os.path.exists(os.path.join(root, "kprobe_events"))
            for root in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")):
        return None
    return "this kernel has no kprobes (no kprobe PMU, no kprobe_events: CONFIG_KPROBES is not set)"


def kernel_refuses_trampolines(obj: str) -> str | None:
    """None, or the kernel's refusal to load an fentry/fexit object (bpftool prog load)."""
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "this kernel has no BTF (/sys/kernel/btf/vmlinux)"
    pin = pathlib.Path("/sys/fs/bpf/bpfd_trampoline_probe_%s" % uuid.uuid4().hex[:8])
    proc = sh("bpftool", "prog", "load", obj, str(pin), check=False)
    if pin.exists():
        pin.unlink()
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    why = [line for line in lines if "load failed" in line] or lines[-1:] or ["exit %d" % proc.returncode]
    return "this kernel refuses BPF trampolines (fentry/fexit): bpftool prog load: %s" % why[0]


def kernel_has_symbol(symbol: str) -> bool:
    with open("/proc/kallsyms") as handle:
        return any(line.split()[2:3] == [symbol] for line in handle)


@pytest.mark.parametrize("retprobe", [False, True], ids=["kprobe", "kretprobe"])
def test_kprobe_counts(retprobe, playbook, bpf_objects, names, targets):
    reason = kernel_has_kprobes()
    if reason:
        print("\n%s: skipped: %s" % ("kretprobe" if retprobe else "kprobe", reason))
        pytest.skip(reason)
    function = "do_sys_openat2"
    if not kernel_has_symbol(function):
        pytest.skip("this kernel has no %s to probe" % function)
    target = targets()
    name = names("kret" if retprobe else "k")
    obj = bpf_objects["kretprobe_count" if retprobe else "kprobe_count"]
    result = playbook([task(KPROBE, "load", name=name, path=obj, function=function, retprobe=retprobe,
                            global_data={"target_tgid": tgid(target.pid)})])["load"]
    prog = result["program"]
    assert (prog["function"], prog["retprobe"], prog["prog_type"]) == (function, retprobe, "kprobe")
    point = link_attach_point(prog["link_id"])
    assert point["event"] == ("kretprobe" if retprobe else "kprobe") and point["name"] == function
    target.do("open", 6)
    assert hits(name) == 6
    mismatch = playbook([failing(KPROBE, "mismatch", name=names("mismatch"), path=obj, function=function,
                                 retprobe=not retprobe)], expect_failure=True)["mismatch"]
    assert_clean_failure(mismatch, "set retprobe: %s" % ("true" if retprobe else "false"))


@pytest.mark.parametrize("kind", ["fentry", "fexit"])
def test_trampoline_counts(kind, playbook, bpf_objects, names, targets):
    reason = kernel_refuses_trampolines(bpf_objects["%s_count" % kind])
    if reason:
        print("\n%s: skipped: %s" % (kind, reason))
        pytest.skip(reason)
    target = targets()
    name = names(kind)
    result = playbook([task(FENTRY if kind == "fentry" else FEXIT, "load", name=name,
                            path=bpf_objects["%s_count" % kind], function="do_unlinkat",
                            global_data={"target_tgid": tgid(target.pid)})])["load"]
    assert result["program"]["prog_type"] == "tracing" and result["program"]["function"] == "do_unlinkat"
    assert links()[result["program"]["link_id"]]["prog_id"] == result["program"]["id"]
    target.do("unlink", 4)
    assert hits(name) == 4


def test_unsupported_kinds_fail_cleanly_and_change_nothing(playbook, bpf_objects, names):
    """On a kernel without kprobes or trampolines, the modules say so before loading anything."""
    kprobe_message = "this kernel cannot attach kprobes (CONFIG_KPROBES is not set)"
    trampoline_message = "this kernel refuses BPF trampolines (fentry/fexit)"
    cases = []  # (kind, module, fixture, attach, message)
    if kernel_has_kprobes() is not None:
        for title, retprobe in (("kprobe", False), ("kretprobe", True)):
            cases.append((title, KPROBE, "%s_count" % title,
                          {"function": "do_sys_openat2", "offset": 0, "retprobe": retprobe}, kprobe_message))
    for kind, module in (("fentry", FENTRY), ("fexit", FEXIT)):
        if kernel_refuses_trampolines(bpf_objects["%s_count" % kind]) is not None:
            cases.append((kind, module, "%s_count" % kind, {"function": "do_unlinkat"}, trampoline_message))
    if not cases:
        pytest.skip("this kernel attaches kprobes and fentry/fexit: nothing is unsupported")
    kernel_names = ("count_kprobe", "count_kretprobe", "count_fentry", "count_fexit", "bpfd_probe")
    before = {n: prog_ids_named(n) for n in kernel_names}
    links_before = set(links())
    made = {case[0]: names(case[0]) for case in cases}
    # kprobe and fentry through the modules, kretprobe and fexit through the Manager (faster).
    through_module = [c for c in cases if c[0] in ("kprobe", "fentry")]
    results = playbook([failing(module, title, name=made[title], path=bpf_objects[fixture], **attach)
                        for title, module, fixture, attach, _message in through_module], expect_failure=True) \
        if through_module else {}
    mgr = manager()
    for title, _module, fixture, attach, message in cases:
        if title in results:
            assert_clean_failure(results[title], message)
        else:
            kind = "kprobe" if title == "kretprobe" else title
            with pytest.raises(BpfdError, match=re.escape(message)):
                mgr.present(spec(kind, made[title], bpf_objects[fixture], **attach))
        assert our_view(made[title]) == {"pins": [], "record": None, "prog": None, "link": None}, title
    assert {n: prog_ids_named(n) - before[n] for n in kernel_names} == {n: set() for n in kernel_names}
    ours = [link for i, link in links().items() if i not in links_before
            and link["prog_id"] in {p for n in kernel_names for p in prog_ids_named(n)}]
    assert ours == []
