# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Programs from C source (`source` + `cflags`), compiled on the host with bcc.

Everything runs through playbooks (ansible-runner) on this machine's kernel and is
checked with tools that are not ours: pings across a veth pair, bpftool (attached
programs, map dumps of pinned maps), and the kernel's own ids.

Proof that an unchanged source is not compiled: the re-run happens with
BCC_KERNEL_SOURCE pointing nowhere, where any compile fails; it succeeds.
A host without kernel headers is a private mount namespace with an empty
/lib/modules; a host without bcc is an interpreter whose `import bcc` fails.

bcc (python3-bpfcc) must be importable by the test interpreter, and bcc needs kernel
headers: the `kernel_headers` fixture links Debian's linux-headers tree as
/lib/modules/$(uname -r)/build when nothing is there, and removes what it created.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import uuid

import pytest

import helpers_xdp as hx
from conftest import kernel_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

XDP = "bpfd.core.bpf_xdp_program"
CHAIN = "bpfd.core.bpf_xdp_chain"
TRACEPOINT = "bpfd.core.bpf_tracepoint_program"
UPROBE = "bpfd.core.bpf_uprobe_program"
TC = "bpfd.core.bpf_tc_program"
INFO = "bpfd.core.bpf_program_info"
BYTECODE_STORE = pathlib.Path("/var/lib/bpfd/bytecode")
DECLARED = pathlib.Path("/var/lib/bpfd/declared.json")
MAPS = pathlib.Path("/sys/fs/bpf/bpfd/maps")

# The verdict comes from a host variable through a Jinja template; `seen` counts runs.
VERDICT_TEMPLATE = r"""// {{ ansible_managed | default('managed by Ansible') }}
#include <uapi/linux/bpf.h>

BPF_ARRAY(seen, u64, 1);

int verdict(struct xdp_md *ctx)
{
    int key = 0;
    u64 *count = seen.lookup(&key);

    if (count)
        __sync_fetch_and_add(count, 1);
    return {{ 'XDP_PASS' if xdp_verdict == 'pass' else 'XDP_DROP' }};
}
"""

OPENAT_SOURCE = r"""
BPF_ARRAY(counts, u64, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    int key = 0;
    u64 *count;

    if ((bpf_get_current_pid_tgid() >> 32) != TARGET_TGID)
        return 0;
    count = counts.lookup(&key);
    if (count)
        __sync_fetch_and_add(count, 1);
    return 0;
}
"""

SYNTAX_ERROR_SOURCE = r"""#include <uapi/linux/bpf.h>

int broken(struct xdp_md *ctx)
{
    int verdict = XDP_PASS
    return verdict;
}
"""

UPROBE_SOURCE = r"""
#include <uapi/linux/ptrace.h>

BPF_ARRAY(calls, u64, 1);

int count_getpid(struct pt_regs *ctx)
{
    int key = 0;
    u64 *count = calls.lookup(&key);

    if (count)
        __sync_fetch_and_add(count, 1);
    return 0;
}
"""

TC_DROP_SOURCE = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

int tc_verdict(struct __sk_buff *skb)
{
    return VERDICT;
}
"""

# A process that does exactly what it is told: "open N" (openat syscalls), "getpid N"
# (libc's getpid), answering "done" after each command.
ACTOR = r"""
import os, sys
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    command, count = line.split()
    for _ in range(int(count)):
        if command == "open":
            os.close(os.open("/etc/hostname", os.O_RDONLY))
        else:
            os.getpid()
    sys.stdout.write("done\n"); sys.stdout.flush()
"""


class Actor:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ACTOR], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.pid = self.proc.pid

    def do(self, command: str, count: int) -> None:
        self.proc.stdin.write("%s %d\n" % (command, count))
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def tag():
    return "src%s" % uuid.uuid4().hex[:6]


@pytest.fixture
def cleanup_names():
    """Names a test loads; removed through our manager whatever happens."""
    names: list = []
    yield names
    from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager
    mgr = Manager()
    for name in names:
        if mgr.list(name=name)["programs"]:
            mgr.absent(name=name)


def task(module: str, title: str, environment: dict | None = None, **args) -> dict:
    entry = {"name": title, module: args, "register": "r"}
    if environment:
        entry["environment"] = environment
    return entry


def seen_value(pin: pathlib.Path) -> int:
    """Slot 0 of a pinned, non per-CPU u64 array, through bpftool."""
    dump = hx.bpftool_json("map", "dump", "pinned", str(pin))
    return int.from_bytes(bytes(int(b, 16) for b in dump[0]["value"]), "little")


def host_state() -> dict:
    """What must not change when a task fails: kernel objects, pins, state, declaration, store.
    Taken once two reads agree: programs an earlier test unloaded leave the kernel's list a
    moment after their last reference goes."""
    snap = kernel_snapshot()
    for _attempt in range(50):
        time.sleep(0.1)
        again = kernel_snapshot()
        if again == snap:
            break
        snap = again
    snap["declared"] = DECLARED.read_text() if DECLARED.exists() else None
    snap["store"] = sorted(p.name for p in BYTECODE_STORE.iterdir()) if BYTECODE_STORE.exists() else []
    return snap


# --- XDP: a templated verdict between two objects ---------------------------------------------


def test_templated_source_between_two_objects_swaps_once_and_is_not_recompiled(
        kernel_headers, veth, bpf_objects, playbook, tmp_path, tag, cleanup_names):
    template = tmp_path / "verdict.c.j2"
    template.write_text(VERDICT_TEMPLATE)
    source = tmp_path / "verdict.c"
    first, middle, last = "%s-first" % tag, "%s-verdict" % tag, "%s-last" % tag
    cleanup_names.extend([first, middle, last])
    hx.pin_neighbour(veth)

    def play(verdict: str, environment: dict | None = None) -> dict:
        return playbook([
            {"name": "source", "ansible.builtin.template": {"src": str(template), "dest": str(source)}},
            task(XDP, "first", name=first, path=bpf_objects["xdp_count_pass"], interface=veth.name, priority=10),
            task(XDP, "verdict", environment, name=middle, source=str(source), cflags=["-Wno-unused-value"],
                 interface=veth.name, priority=20),
            task(XDP, "last", name=last, path=bpf_objects["xdp_count_pass"], interface=veth.name, priority=30),
            task(INFO, "info", name=middle),
        ], extravars={"xdp_verdict": verdict}, diff=True)

    def counts() -> dict:
        return {"first": hx.hits(hx.map_id_named(ids[first], "hits")),
                "seen": seen_value(MAPS / middle / "seen"),
                "last": hx.hits(hx.map_id_named(ids[last], "hits"))}

    loaded = play("pass")
    program = loaded["verdict"]["program"]
    ids = {name: loaded[title]["program"]["id"] for title, name in
           (("first", first), ("verdict", middle), ("last", last))}
    assert loaded["verdict"]["changed"] and program["source"] == str(source)
    assert program["cflags"] == ["-Wno-unused-value"] and program["bpf_function_name"] == "verdict"
    assert [p["name"] for p in loaded["last"]["chain"]] == [first, middle, last]
    assert loaded["info"]["programs"][0]["sha256"] == program["sha256"]
    # One XDP program on the interface, our dispatcher, as bpftool sees it.
    assert [p["id"] for p in veth.xdp_programs()] == [loaded["last"]["program"]["dispatcher_id"]]
    # The compiled object is in the bytecode store under the source's digest.
    assert (BYTECODE_STORE / ("%s.o" % program["sha256"])).is_file()

    before = counts()
    assert veth.ping(count=3), "XDP_PASS from the source must let pings through"
    passed = counts()
    assert passed["first"] > before["first"] and passed["seen"] > before["seen"]
    assert passed["last"] > before["last"], "after XDP_PASS the chain goes on to the last program"

    seen_map = hx.bpftool_json("map", "show", "pinned", str(MAPS / middle / "seen"))["id"]
    dispatcher = veth.xdp_programs()[0]["id"]
    link_ids = hx.xdp_links_running(dispatcher)

    dropped = play("drop")
    assert dropped["verdict"]["changed"] and dropped["verdict"]["changes"] == ["bytecode"]
    assert not dropped["first"]["changed"] and not dropped["last"]["changed"]
    new_digest = dropped["verdict"]["program"]["sha256"]
    assert new_digest != program["sha256"]
    diff = dropped["verdict"]["diff"]
    assert program["sha256"][:12] in diff["before"] and new_digest[:12] in diff["after"]
    # One swap: the same bpf_link now runs a new dispatcher; the old one is gone.
    new_dispatcher = veth.xdp_programs()[0]["id"]
    assert new_dispatcher != dispatcher and hx.xdp_links_running(new_dispatcher) == link_ids
    assert hx.wait_gone(hx.prog_exists, dispatcher)
    # The map was compatible, so it is kept: same kernel map, count goes on.
    assert hx.bpftool_json("map", "show", "pinned", str(MAPS / middle / "seen"))["id"] == seen_map

    ids.update({middle: dropped["verdict"]["program"]["id"]})
    before = counts()
    assert not veth.ping(count=3, timeout=0.5), "XDP_DROP from the source must stop pings"
    stopped = counts()
    assert stopped["first"] > before["first"] and stopped["seen"] > before["seen"] >= passed["seen"]
    assert stopped["last"] == before["last"], "after XDP_DROP nothing behind the source runs"

    # Unchanged: a no-op that does not compile (a compile would fail with this environment).
    started = time.monotonic()
    again = play("drop", environment={"BCC_KERNEL_SOURCE": str(tmp_path / "no-headers-here")})
    elapsed = time.monotonic() - started
    assert not any(again[t]["changed"] for t in ("first", "verdict", "last")), again["verdict"]
    assert again["verdict"]["program"]["sha256"] == new_digest
    assert veth.xdp_programs()[0]["id"] == new_dispatcher
    print("\nno-op playbook (template + 3 programs + info): %.2f s" % elapsed)

    # ... while a changed source under the same environment must compile, and fails clearly.
    state = host_state()
    changed = playbook([task(XDP, "verdict", {"BCC_KERNEL_SOURCE": str(tmp_path / "no-headers-here")},
                             name=middle, source=str(source), cflags=["-DOTHER=1"], interface=veth.name,
                             priority=20)], expect_failure=True)
    assert changed["verdict"]["_failed"]
    assert "BCC_KERNEL_SOURCE=%s is not a directory" % (tmp_path / "no-headers-here") in changed["verdict"]["msg"]
    assert host_state() == state


def test_chain_module_takes_source_members(kernel_headers, veth, bpf_objects, playbook, tmp_path, tag,
                                           cleanup_names):
    source = tmp_path / "drop.c"
    source.write_text(VERDICT_TEMPLATE.replace("{{ ansible_managed | default('managed by Ansible') }}", "")
                      .replace("{{ 'XDP_PASS' if xdp_verdict == 'pass' else 'XDP_DROP' }}", "VERDICT"))
    names = ["%s-a" % tag, "%s-b" % tag]
    cleanup_names.extend(names)
    hx.pin_neighbour(veth)
    result = playbook([task(CHAIN, "chain", interface=veth.name, programs=[
        {"name": names[0], "path": bpf_objects["xdp_count_pass"], "priority": 1},
        {"name": names[1], "source": str(source), "cflags": ["-DVERDICT=XDP_DROP"], "priority": 2},
    ])])["chain"]
    assert result["changed"] and [p["name"] for p in result["chain"]] == names
    assert not veth.ping(count=2, timeout=0.5)
    again = playbook([task(CHAIN, "chain", interface=veth.name, programs=[
        {"name": names[0], "path": bpf_objects["xdp_count_pass"], "priority": 1},
        {"name": names[1], "source": str(source), "cflags": ["-DVERDICT=XDP_PASS"], "priority": 2},
    ])])["chain"]
    assert again["changed"] and again["changes"] == {names[1]: ["bytecode"]}
    assert veth.ping(count=2)


# --- tracepoint: count openat of one process into a pinned map -------------------------------


def test_tracepoint_from_source_counts_openat(kernel_headers, playbook, tmp_path, tag, cleanup_names):
    source = tmp_path / "openat.c"
    source.write_text(OPENAT_SOURCE)
    name = "%s-openat" % tag
    cleanup_names.append(name)
    opener = Actor()
    try:
        result = playbook([task(TRACEPOINT, "openat", name=name, source=str(source),
                                cflags=["-DTARGET_TGID=%d" % opener.pid],
                                tracepoint="syscalls/sys_enter_openat")])["openat"]
        assert result["changed"]
        prog = result["program"]
        assert prog["source"] == str(source) and prog["bpf_function_name"] == "tracepoint__syscalls__sys_enter_openat"
        pin = MAPS / name / "counts"
        assert pin.exists(), "the program's map is pinned in our tree"
        links = [link for link in hx.bpftool_json("link", "show") if link.get("prog_id") == prog["id"]]
        assert len(links) == 1 and links[0]["type"] == "perf_event"
        assert seen_value(pin) == 0
        opener.do("open", 25)
        assert seen_value(pin) == 25, "exactly the opener's 25 openat calls are counted"
    finally:
        opener.stop()
    removed = playbook([task(TRACEPOINT, "gone", name=name, state="absent")])["gone"]
    assert removed["changed"] and not (MAPS / name).exists()
    assert not [link for link in hx.bpftool_json("link", "show") if link.get("prog_id") == prog["id"]]


def test_uprobe_from_source_counts_libc_calls_of_one_process(kernel_headers, playbook, tmp_path, tag,
                                                             cleanup_names):
    source = tmp_path / "getpid.c"
    source.write_text(UPROBE_SOURCE)
    name = "%s-getpid" % tag
    cleanup_names.append(name)
    actor = Actor()
    try:
        result = playbook([task(UPROBE, "uprobe", name=name, source=str(source), target="libc", function="getpid",
                                pid=actor.pid)])["uprobe"]
        prog = result["program"]
        assert result["changed"] and prog["source"] == str(source) and prog["bpf_function_name"] == "count_getpid"
        links = [link for link in hx.bpftool_json("link", "show") if link.get("prog_id") == prog["id"]]
        assert len(links) == 1 and links[0]["type"] == "perf_event"
        actor.do("getpid", 7)
        assert seen_value(MAPS / name / "calls") == 7
    finally:
        actor.stop()


def test_tc_program_from_source_and_check_mode(kernel_headers, veth, playbook, tmp_path, tag, cleanup_names):
    source = tmp_path / "tc.c"
    source.write_text(TC_DROP_SOURCE)
    name = "%s-tc" % tag
    cleanup_names.append(name)
    hx.pin_neighbour(veth)

    def tc(verdict: str, check: bool = False) -> dict:
        return playbook([task(TC, "tc", name=name, source=str(source), cflags=["-DVERDICT=%s" % verdict],
                              interface=veth.name, direction="ingress", priority=5)], check=check, diff=True)["tc"]

    state = host_state()
    predicted = tc("TC_ACT_SHOT", check=True)
    assert predicted["changed"] and predicted["changes"] == ["loaded"]
    assert host_state() == state, "check mode compiles but changes nothing"
    assert tc("TC_ACT_SHOT")["changed"]
    assert not veth.ping(count=2, timeout=0.5), "TC_ACT_SHOT on ingress stops the replies"
    assert tc("TC_ACT_OK")["changed"]
    assert veth.ping(count=2)


# --- failures: the host stays as it was --------------------------------------------------------


def test_syntax_error_returns_the_compiler_message_and_changes_nothing(
        kernel_headers, veth, playbook, tmp_path, tag):
    source = tmp_path / "broken.c"
    source.write_text(SYNTAX_ERROR_SOURCE)
    state = host_state()
    result = playbook([task(XDP, "broken", name="%s-broken" % tag, source=str(source), interface=veth.name,
                            priority=5)], expect_failure=True)["broken"]
    assert result["_failed"]
    lines = result["msg"].splitlines()
    assert lines[0] == "bcc could not compile %s:" % source
    # the first error first, located in the operator's file (line 5: the missing ';')
    assert lines[1].startswith("%s:5:" % source) and "error: expected ';'" in lines[1], result["msg"]
    assert len(lines) <= 15
    assert host_state() == state
    assert veth.xdp_programs() == []


def test_verifier_refusal_names_the_source_and_changes_nothing(kernel_headers, veth, playbook, tmp_path, tag):
    """bcc compiles a global variable into an unresolved load; the verifier refuses it."""
    source = tmp_path / "global.c"
    source.write_text("int counter;\nint with_global(struct xdp_md *ctx) { counter++; return XDP_PASS; }\n")
    state = host_state()
    result = playbook([task(XDP, "global", name="%s-global" % tag, source=str(source), interface=veth.name,
                            priority=5)], expect_failure=True)["global"]
    assert result["_failed"] and result["msg"].startswith("the kernel refused with_global from %s (compiled by bcc)"
                                                          % source), result["msg"]
    assert "/tmp/bpfd-bcc-" not in result["msg"] and result["source"] == str(source)
    assert "owner" not in result, "no file attributes of a path in the failure"
    assert host_state() == state


def test_verifier_reason_survives_a_bcc_compile_in_the_same_process(kernel_headers, tmp_path):
    """libbcc shares libbpf.so.1 and installs its own message printer when it compiles:
    a refusal loaded after it in the same process still carries the verifier's reason."""
    from ansible_collections.bpfd.core.plugins.module_utils import _libbpf, _loader
    from ansible_collections.bpfd.core.plugins.module_utils._bcc import compiled_source
    from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
    from ansible_collections.bpfd.core.plugins.module_utils._state import Layout

    _libbpf.lib()  # libbpf set up before bcc, as in a process that loaded programs already
    source = tmp_path / "unbounded.c"
    source.write_text("int unbounded(struct xdp_md *ctx) { return *(int *)(long)ctx->data; }\n")
    layout = Layout(bpffs=str(tmp_path / "bpffs"), run_dir=str(tmp_path / "run"), lib_dir=str(tmp_path / "lib"))
    with compiled_source(str(source), [], kind="xdp", attach=None, function=None, layout=layout) as compiled:
        assert compiled.compiled
        with pytest.raises(BpfdError) as refused:
            _loader.load_program(compiled.object_path, function=None, prog_types=[_libbpf.PROG_TYPE_XDP],
                                 kind="xdp", map_pin_dir=str(tmp_path))
    assert "no verifier log" not in refused.value.msg
    assert "outside of the packet" in refused.value.msg, refused.value.msg


def test_host_without_kernel_headers_fails_clearly_and_changes_nothing(kernel_headers, veth, collections_path,
                                                                       tmp_path, tag):
    """The playbook runs in a private mount namespace whose /lib/modules is empty."""
    source = tmp_path / "pass.c"
    source.write_text("int pass(struct xdp_md *ctx) { return XDP_PASS; }\n")
    out = tmp_path / "result.json"
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        dict(task(XDP, "load", name="%s-nohdr" % tag, source=str(source), interface=veth.name, priority=5),
             ignore_errors=True),
        {"name": "keep", "ansible.builtin.copy": {"content": "{{ r | to_json }}", "dest": str(out)}},
    ]}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    (tmp_path / "hosts").write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n"
                                    % sys.executable)
    state = host_state()
    script = "mount -t tmpfs bpfd-no-headers /lib/modules && exec %s -i %s %s" % (
        os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), tmp_path / "hosts", tmp_path / "play.yml")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections_path), ANSIBLE_NOCOLOR="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failed"]
    build = "/lib/modules/%s/build" % os.uname().release
    assert "bcc needs the headers of the running kernel" in result["msg"]
    assert "it looked in %s, which does not exist" % build in result["msg"], result["msg"]
    assert "bpfd_host_bcc" in result["msg"]
    assert host_state() == state
    assert pathlib.Path(kernel_headers).exists(), "the namespace's empty /lib/modules stayed private"


def test_without_bcc_only_source_fails(kernel_headers, veth, bpf_objects, playbook, tmp_path, tag,
                                       cleanup_names):
    """An interpreter whose `import bcc` fails: path programs load, source names the packages."""
    shadow = tmp_path / "shadow" / "bcc"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named bcc (shadowed by the test)')\n")
    env = {"PYTHONPATH": str(shadow.parent)}
    source = tmp_path / "pass.c"
    source.write_text("int pass(struct xdp_md *ctx) { return XDP_PASS; }\n")
    name = "%s-nobcc" % tag
    cleanup_names.append(name)
    state = host_state()
    failed = playbook([task(XDP, "source", env, name=name, source=str(source), interface=veth.name, priority=5)],
                      expect_failure=True)["source"]
    assert failed["_failed"] and "python3-bpfcc" in failed["msg"] and "bcc" in failed["msg"], failed["msg"]
    assert host_state() == state
    loaded = playbook([task(XDP, "path", env, name=name, path=bpf_objects["xdp_pass"], interface=veth.name,
                            priority=5)])["path"]
    assert loaded["changed"] and veth.ping(count=1)


# --- restore: no compile at boot ----------------------------------------------------------------


def test_restore_rebuilds_a_source_program_without_compiling(kernel_headers, bpf_objects, tmp_path, monkeypatch):
    """The simulated reboot of test_host_restore, with a program from source; the restore runs
    where no compile could succeed."""
    from test_host_restore import Host, detach_and_unpin
    from ansible_collections.bpfd.core.plugins.module_utils._bcc import compiled_source
    from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager, ProgramSpec

    host = Host(monkeypatch)
    try:
        a = host.veth()
        hx.pin_neighbour(a)
        source = tmp_path / "drop.c"
        source.write_text("BPF_ARRAY(seen, u64, 1);\nint drop(struct xdp_md *ctx) {\n"
                          "    int k = 0; u64 *c = seen.lookup(&k); if (c) __sync_fetch_and_add(c, 1);\n"
                          "    return XDP_DROP;\n}\n")
        name = "%s-drop" % host.tag
        with compiled_source(str(source), [], kind="xdp", attach=None, function=None,
                             layout=host.layout) as compiled:
            assert compiled.compiled
            Manager().present(ProgramSpec(name=name, kind="xdp", path=str(source), bytecode=compiled.object_path,
                                          sha256=compiled.sha256, source=compiled.facts, interface=a.name,
                                          priority=1))
        assert not a.ping(count=1, timeout=0.5)
        old_ids = [p["id"] for p in Manager().list()["programs"]]
        detach_and_unpin(host.layout)
        for prog_id in old_ids:
            assert hx.wait_gone(hx.prog_exists, prog_id)
        assert a.ping(count=1), "nothing attached after the simulated reboot"

        # From here on, any compile fails.
        monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path / "nowhere"))
        restored = host.bpfctl_json("restore")
        assert restored["restored"] == [name] and restored["failed"] == []
        assert not a.ping(count=1, timeout=0.5), "the restored source program drops again"
        assert (pathlib.Path(host.layout.map_dir(name)) / "seen").exists()
        # Still a program from source, with the same identity, and a no-op when declared again.
        with compiled_source(str(source), [], kind="xdp", attach=None, function=None,
                             layout=host.layout) as compiled:
            assert not compiled.compiled, "found in the bytecode store, not compiled"
            again = Manager().present(ProgramSpec(
                name=name, kind="xdp", path=str(source), bytecode=compiled.object_path, sha256=compiled.sha256,
                source=compiled.facts, interface=a.name, priority=1))
        assert not again["changed"]
        assert again["program"]["source"] == str(source)
    finally:
        host.cleanup()


def test_source_option_is_documented_like_path(collections_path):
    """ansible-doc shows the new origin on every program module (docs are part of the feature)."""
    for module in ("bpf_xdp_program", "bpf_tc_program", "bpf_tracepoint_program", "bpf_uprobe_program",
                   "bpf_kprobe_program", "bpf_fentry_program", "bpf_fexit_program"):
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-doc"), "--json",
                               "bpfd.core.%s" % module], capture_output=True, text=True, check=True,
                              env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections_path)))
        options = json.loads(proc.stdout)["bpfd.core.%s" % module]["doc"]["options"]
        assert options["source"]["type"] == "path" and options["cflags"]["elements"] == "str", module
