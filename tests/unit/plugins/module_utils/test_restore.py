# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Restore without a kernel: which Manager calls rebuild a declaration, in which
order (map owners before their users, one call per attach point where possible),
and how pending interfaces and failures are reported without stopping the rest."""

from __future__ import annotations

import hashlib

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _restore
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._restore import Hook, Step, execute, hook_of, plan, spec_for


def xdp(iface, priority, owner=None, netns=None, **extra):
    entry = {"kind": "xdp", "interface": iface, "direction": None, "netns": netns, "priority": priority,
             "proceed_on": ["pass", "dispatcher_return"], "map_owner": owner}
    entry.update(extra)
    return entry


def tc(iface, direction, priority, owner=None):
    return {"kind": "tc", "interface": iface, "direction": direction, "netns": None, "priority": priority,
            "proceed_on": ["pipe", "dispatcher_return"], "map_owner": owner}


def calls(steps):
    return [(s.hook.describe(), list(s.names)) for s in steps]


# --- grouping by hook ------------------------------------------------------------------------

def test_one_call_per_hook_programs_in_chain_order():
    declared = {
        "b": xdp("eth1", 20), "a": xdp("eth1", 20), "c": xdp("eth1", 5),
        "in": tc("eth1", "ingress", 1), "out": tc("eth1", "egress", 1),
        "other": xdp("eth2", 1),
    }
    steps, blocked = plan(declared)
    assert blocked == {}
    assert calls(steps) == [
        ("xdp eth1", ["c", "a", "b"]),  # (priority, name)
        ("xdp eth2", ["other"]),
        ("tc eth1 egress", ["out"]),
        ("tc eth1 ingress", ["in"]),
    ]


def test_hooks_are_keyed_by_namespace_too():
    declared = {"root": xdp("eth0", 1), "inside": xdp("eth0", 1, netns="/run/netns/blue")}
    steps = plan(declared)[0]
    assert calls(steps) == [("xdp eth0", ["root"]), ("xdp eth0 (netns /run/netns/blue)", ["inside"])]
    assert hook_of("inside", declared["inside"]) == Hook("xdp", "eth0", None, "/run/netns/blue")


def test_programs_without_a_dispatcher_are_one_call_each():
    declared = {"t2": {"kind": "tracepoint", "attach": {"tracepoint": "syscalls/sys_enter_openat"}},
                "t1": {"kind": "tracepoint", "attach": {"tracepoint": "syscalls/sys_enter_read"}},
                "x": xdp("eth0", 1)}
    steps = plan(declared)[0]
    assert calls(steps) == [("xdp eth0", ["x"]), ("tracepoint t1", ["t1"]), ("tracepoint t2", ["t2"])]


# --- map owners first -------------------------------------------------------------------------

def test_owner_on_another_hook_is_restored_first_without_splitting():
    declared = {"user": xdp("eth0", 1, owner="owner"), "mate": xdp("eth0", 2), "owner": tc("eth9", "ingress", 1)}
    steps, blocked = plan(declared)
    assert blocked == {}
    assert calls(steps) == [("tc eth9 ingress", ["owner"]), ("xdp eth0", ["user", "mate"])]


def test_owner_and_user_on_one_hook_take_two_calls():
    declared = {"owner": xdp("eth0", 10), "user": xdp("eth0", 5, owner="owner"), "plain": xdp("eth0", 20)}
    steps = plan(declared)[0]
    assert calls(steps) == [("xdp eth0", ["owner", "plain"]), ("xdp eth0", ["user"])]


def test_live_owner_needs_no_split():
    declared = {"owner": xdp("eth0", 10), "user": xdp("eth0", 5, owner="owner")}
    steps = plan(declared, live={"owner"})[0]
    assert calls(steps) == [("xdp eth0", ["user", "owner"])]


def test_crossed_owners_between_two_hooks():
    declared = {"o1": xdp("eth1", 1), "u2": xdp("eth1", 2, owner="o2"),
                "o2": xdp("eth2", 1), "u1": xdp("eth2", 2, owner="o1")}
    steps, blocked = plan(declared)
    assert blocked == {}
    names = [n for s in steps for n in s.names]
    assert sorted(names) == ["o1", "o2", "u1", "u2"]
    for user, owner in (("u1", "o1"), ("u2", "o2")):
        assert names.index(owner) < names.index(user)


def test_undeclared_owner_is_reported():
    declared = {"user": xdp("eth0", 1, owner="ghost"), "fine": xdp("eth0", 2)}
    steps, blocked = plan(declared)
    assert calls(steps) == [("xdp eth0", ["fine"])]
    assert blocked == {"user": "its map owner ghost is not declared"}


# --- specs from the declaration ------------------------------------------------------------------

def test_spec_loads_from_the_store_and_keeps_every_declared_field(tmp_path):
    obj = tmp_path / "abc.o"
    obj.write_bytes(b"\x7fELF-not-really")
    sha = hashlib.sha256(obj.read_bytes()).hexdigest()
    entry = xdp("eth0", 30, owner="owner", bpf_function_name="count", requested_mode="skb",
                metadata={"team": "net"}, global_data={"verdict": "01000000"}, path="/gone/original.o",
                sha256=sha, bytecode=str(obj))
    entry["proceed_on"] = ["drop"]
    spec = spec_for("user", entry)
    assert (spec.name, spec.kind, spec.interface, spec.priority) == ("user", "xdp", "eth0", 30)
    # loads the store's copy, records the declared path
    assert (spec.bytecode, spec.path) == (str(obj), "/gone/original.o")
    assert (spec.function, spec.mode, spec.map_owner, spec.proceed_on) == ("count", "skb", "owner", ["drop"])
    assert spec.metadata == {"team": "net"} and spec.global_data == {"verdict": "01000000"}


def test_spec_refuses_bytecode_that_is_not_the_declared_one(tmp_path):
    obj = tmp_path / "abc.o"
    obj.write_bytes(b"\x7fELF-changed")
    entry = xdp("eth0", 1, sha256="0" * 64, bytecode=str(obj), path=str(obj))
    with pytest.raises(BpfdError, match="neither in the store"):
        spec_for("p", entry)


def test_source_program_loads_its_compiled_object_and_keeps_the_source_identity(tmp_path):
    obj = tmp_path / "digest.o"
    obj.write_bytes(b"\x7fELF-compiled-by-bcc")
    source = tmp_path / "verdict.c"
    source.write_text("int verdict(struct xdp_md *ctx) { return XDP_PASS; }\n")
    facts = {"path": str(source), "cflags": ["-DX=1"], "object_sha256": hashlib.sha256(obj.read_bytes()).hexdigest()}
    entry = xdp("eth0", 5, sha256="d" * 64, bytecode=str(obj), path=str(source), source=facts)
    spec = spec_for("src", entry)
    # the object from the store is loaded; the identity stays the source's digest, not the file's
    assert (spec.bytecode, spec.path, spec.sha256, spec.source) == (str(obj), str(source), "d" * 64, facts)


def test_source_program_whose_compiled_object_changed_is_refused_not_recompiled(tmp_path):
    obj = tmp_path / "digest.o"
    obj.write_bytes(b"\x7fELF-tampered")
    source = tmp_path / "verdict.c"
    source.write_text("/* C */\n")
    entry = xdp("eth0", 5, sha256="d" * 64, bytecode=str(obj), path=str(source),
                source={"path": str(source), "cflags": [], "object_sha256": "0" * 64})
    with pytest.raises(BpfdError, match="neither in the store"):
        spec_for("src", entry)


def test_object_spec_has_no_source_identity(tmp_path):
    obj = tmp_path / "abc.o"
    obj.write_bytes(b"\x7fELF")
    entry = xdp("eth0", 1, sha256=hashlib.sha256(obj.read_bytes()).hexdigest(), bytecode=str(obj))
    spec = spec_for("p", entry)
    assert (spec.sha256, spec.source) == (None, None)


# --- execution: pending and failed never stop the rest -----------------------------------------

class FakeManager:
    def __init__(self, fail_on=()):
        self.calls = []
        self.fail_on = set(fail_on)

    def chain(self, kind, interface, specs, direction=None, netns=None):
        names = [s.name for s in specs]
        self.calls.append((kind, interface, direction, names))
        if self.fail_on & set(names):
            raise BpfdError("verifier says no")
        return {"changed": True, "changes": {n: ["loaded"] for n in names}, "reconciled": []}

    def converge(self, specs):
        self.calls.append((specs[0].kind, None, None, [s.name for s in specs]))
        return {"changed": False, "reconciled": []}


@pytest.fixture
def stored(tmp_path, monkeypatch):
    """Every declared program's bytecode is 'in the store'."""
    monkeypatch.setattr(_restore, "bytecode_of", lambda name, entry: str(tmp_path / (name + ".o")))


def test_missing_interface_is_pending_and_its_users_wait(stored):
    declared = {"owner": xdp("gone0", 1), "user": tc("eth0", "ingress", 1, owner="owner"),
                "fine": tc("eth0", "egress", 1)}
    steps, blocked = plan(declared)
    manager = FakeManager()
    result = execute(steps, declared, manager, blocked,
                     missing=lambda hook: "interface gone0 does not exist" if hook.interface == "gone0" else None)
    assert [(p["name"], p["reason"]) for p in result["pending"]] == [
        ("owner", "interface gone0 does not exist"), ("user", "waits for its map owner owner (pending)")]
    assert result["restored"] == ["fine"] and result["failed"] == []
    assert manager.calls == [("tc", "eth0", "egress", ["fine"])]
    assert result["changed"] is True


def test_failed_hook_is_reported_and_the_others_go_on(stored):
    declared = {"bad": xdp("eth0", 1), "mate": xdp("eth0", 2), "other": xdp("eth1", 1),
                "trace": {"kind": "tracepoint", "attach": {"tracepoint": "x/y"}}}
    steps, blocked = plan(declared)
    result = execute(steps, declared, FakeManager(fail_on={"bad"}), blocked, missing=lambda hook: None)
    assert sorted(p["name"] for p in result["failed"]) == ["bad", "mate"]
    assert {p["reason"] for p in result["failed"]} == {"verifier says no"}
    assert result["restored"] == ["other"] and result["unchanged"] == ["trace"]
    assert [s["hook"] for s in result["steps"]] == ["xdp eth1", "tracepoint trace"]


def test_a_program_without_its_bytecode_fails_alone(monkeypatch):
    def bytecode_of(name, entry):
        if name == "lost":
            raise BpfdError("program lost: its bytecode is gone")
        return "/store/%s.o" % name
    monkeypatch.setattr(_restore, "bytecode_of", bytecode_of)
    declared = {"lost": xdp("eth0", 1), "kept": xdp("eth0", 2)}
    steps, blocked = plan(declared)
    manager = FakeManager()
    result = execute(steps, declared, manager, blocked, missing=lambda hook: None)
    assert [p["name"] for p in result["failed"]] == ["lost"]
    assert manager.calls == [("xdp", "eth0", None, ["kept"])]


def test_step_is_a_value():
    assert Step(Hook("xdp", "eth0"), ("a",)) == Step(Hook("xdp", "eth0"), ("a",))


def test_restore_waits_for_pending_interfaces_then_reports_the_union(tmp_path, monkeypatch):
    from ansible_collections.bpfd.core.plugins.module_utils._state import Layout, write_json_atomic
    layout = Layout(bpffs=str(tmp_path / "bpffs"), run_dir=str(tmp_path / "run"), lib_dir=str(tmp_path / "lib"))
    write_json_atomic(str(tmp_path / "lib" / "declared.json"),
                      {"version": 1, "programs": {"a": xdp("eth0", 1), "b": xdp("late0", 1)}})
    runs = iter([
        {"changed": True, "restored": ["a"], "unchanged": [], "failed": [], "steps": [],
         "pending": [{"name": "b", "reason": "interface late0 does not exist"}]},
        {"changed": False, "restored": [], "unchanged": ["a"], "failed": [], "steps": [],
         "pending": [{"name": "b", "reason": "interface late0 does not exist"}]},
        {"changed": True, "restored": ["b"], "unchanged": ["a"], "failed": [], "steps": [], "pending": []},
    ])
    monkeypatch.setattr(_restore, "execute", lambda *args, **kwargs: next(runs))
    result = _restore.restore(layout, wait=5, poll=0.01)
    assert (result["restored"], result["unchanged"], result["pending"]) == (["a", "b"], [], [])
    assert result["changed"] is True and result["declared"] == 2


def test_restore_without_wait_reports_pending_at_once(tmp_path, monkeypatch):
    from ansible_collections.bpfd.core.plugins.module_utils._state import Layout
    layout = Layout(bpffs=str(tmp_path / "bpffs"), run_dir=str(tmp_path / "run"), lib_dir=str(tmp_path / "lib"))
    calls = []

    def execute(*args, **kwargs):
        calls.append(1)
        return {"changed": False, "restored": [], "unchanged": [], "failed": [], "steps": [],
                "pending": [{"name": "b", "reason": "missing"}]}
    monkeypatch.setattr(_restore, "execute", execute)
    assert _restore.restore(layout)["pending"] == [{"name": "b", "reason": "missing"}] and calls == [1]
