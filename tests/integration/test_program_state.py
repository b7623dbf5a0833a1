# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Programs with state (issue 3): global data, maps kept across in-place
updates, map sharing, whole chains in one task, network namespaces, objects
without BTF, bad names; and the host-side cost of an in-place update.

Everything is judged with tools we did not write: ping across a veth pair,
BPF_PROG_TEST_RUN on the dispatcher `bpftool net` shows attached, `bpftool -j`
map dumps / program and link lists, raw bpf() link info, bpffs pins. Setup is
through the Manager (fast); what a user sees (results, error messages) through
real ansible-playbook runs. Program names start with the test's own veth name,
so other test processes running at the same time never collide with ours; the
namespace tests keep their records in a tree of their own (`own_layout`), so no other
process's run reconciles them first.

The tests named test_bug_* come last and fail until the product bug each one
describes is fixed.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import threading
import time

import pytest

import helpers_tc as ht
import helpers_xdp as hx
from conftest import bpftool_json, manager, sh, unload_all_on
from test_xdp_program import _xdp_links_on, assert_clean_failure, assert_same_snapshot, snapshot

from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._manager import ProgramSpec
from ansible_collections.bpfd.core.plugins.module_utils._state import Layout

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

XDP = "bpfd.core.bpf_xdp_program"
TC = "bpfd.core.bpf_tc_program"
XDP_CHAIN = "bpfd.core.bpf_xdp_chain"
TC_CHAIN = "bpfd.core.bpf_tc_chain"
INFO = "bpfd.core.bpf_program_info"
MAP_INFO = "bpfd.core.bpf_map_info"
DROP_HEX, PASS_HEX = "01000000", "02000000"
LAYOUT = Layout()


# --- helpers -------------------------------------------------------------------------


def present(veth, suffix: str, path: str, priority: int, **extra) -> dict:
    """One program on the veth's host end through the Manager."""
    return manager().present(ProgramSpec(name="%s-%s" % (veth.name, suffix), kind="xdp", path=path,
                                         interface=veth.name, priority=priority, **extra))


def task(title: str, module: str, args: dict, check_mode: bool = False) -> dict:
    entry = {"name": title, module: args, "ignore_errors": True}
    if check_mode:
        entry["check_mode"] = True
    return entry


def hits_pinned(pin: str) -> int:
    """Slot 0 of a per-CPU `hits` map summed over CPUs, from bpftool's dump of the pin."""
    return hx.percpu_sum(bpftool_json("map", "dump", "pinned", pin), 0)


def map_id_pinned(pin: str) -> int:
    return bpftool_json("map", "show", "pinned", pin)["id"]


def udp(veth) -> bytes:
    return hx.ipv4_udp_packet(veth.peer_ip, veth.host_ip)


def verdict(veth, repeat: int = 1) -> int:
    """BPF_PROG_TEST_RUN on the one program `bpftool net` shows on the host end."""
    return hx.run_xdp(hx.dispatcher_id(veth.name), udp(veth), repeat)


def dispatchers_using(map_id: int, kind: str = "xdp") -> set:
    """Ids of the loaded bpfd_<kind>_disp programs that reference this map (bpftool prog
    show): every dispatcher built for a chain holding a member with that map, and no other
    test's. Members are inlined into the dispatcher, so their maps are the dispatcher's."""
    name = "bpfd_%s_disp" % kind
    return {p["id"] for p in hx.bpftool_json("prog", "show", check=False) or []
            if p.get("name") == name and map_id in p.get("map_ids", [])}


class LinkWatcher:
    """Polls one bpf_link's program id (raw bpf(), ~every 0.5 ms) while a play
    runs: the dispatchers the hook actually ran, in order."""

    def __init__(self, link_id: int) -> None:
        self.link_id = link_id
        self.seen: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                prog_id = ht.link_target(self.link_id)["prog_id"]
            except OSError:
                prog_id = None
            if not self.seen or self.seen[-1] != prog_id:
                self.seen.append(prog_id)
            time.sleep(0.0005)

    def __enter__(self) -> "LinkWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def recorded(layout: Layout = LAYOUT) -> dict:
    if not os.path.exists(layout.state_file):
        return {"programs": {}, "hooks": {}}
    return json.loads(pathlib.Path(layout.state_file).read_text())


def no_trace_of(names: list, prog_ids: set, hook_keys: list = (), layout: Layout = LAYOUT) -> None:
    """No pin, state entry or kernel program of these names / ids / hooks is left."""
    for name in names:
        for where in (layout.program_dir(name), layout.map_dir(name)):
            assert not os.path.exists(where), "left behind: %s" % where
    for key in hook_keys:
        assert not os.path.exists(layout.hook_dir(key)), "left behind: hook %s" % key
    state = recorded(layout)
    assert not set(names) & set(state["programs"]), sorted(set(names) & set(state["programs"]))
    assert not set(hook_keys) & set(state["hooks"])
    assert not set(names) & set(state.get("retained_maps", {}))
    for prog_id in prog_ids:
        assert hx.wait_gone(hx.prog_exists, prog_id), "program %d is still loaded" % prog_id


@pytest.fixture
def own_layout(monkeypatch, tmp_path):
    """A bpfd.core tree of this test's own (bpffs dir, state, lib), for the Manager and for
    the modules (the env reaches them through ansible-runner): no other test process's run
    reconciles our records before ours does."""
    from ansible_collections.bpfd.core.plugins.module_utils._state import remove_pin_tree
    from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager

    layout = Layout(bpffs="/sys/fs/bpf/bpfd-state-test-%s" % os.urandom(3).hex(),
                    run_dir=str(tmp_path / "run"), lib_dir=str(tmp_path / "lib"))
    monkeypatch.setenv("BPFD_BPFFS_DIR", layout.bpffs)
    monkeypatch.setenv("BPFD_RUN_DIR", layout.run_dir)
    monkeypatch.setenv("BPFD_LIB_DIR", layout.lib_dir)
    try:
        yield layout
    finally:
        mgr = Manager(layout)
        for prog in mgr.list()["programs"]:
            mgr.absent(name=prog["name"])
        mgr.absent(name="-")  # a mutating run: reconciles what vanished
        remove_pin_tree(layout.bpffs)


_ARRAY_HITS_SOURCE = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* Same name as the counters' map, another definition (ARRAY of 4, not PERCPU_ARRAY of 1). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} hits SEC(".maps");

SEC("xdp")
int count_array(struct xdp_md *ctx)
{
    __u32 key = 0;
    __u64 *value = bpf_map_lookup_elem(&hits, &key);

    if (value)
        __sync_fetch_and_add(value, 1);
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="session")
def array_hits_object(bpf_objects, tmp_path_factory) -> str:
    """An XDP object whose `hits` map cannot share the counters' `hits`."""
    build = sys.modules["bpfd_fixture_build"]  # registered by the bpf_objects fixture
    out = tmp_path_factory.mktemp("array_hits") / "xdp_array_hits.o"
    src = out.with_suffix(".c")
    src.write_text(_ARRAY_HITS_SOURCE)
    sh(build.find_clang(), "-O2", "-g", "-target", "bpf", "-Wall", *build._include_flags(),
       "-c", str(src), "-o", str(out))
    return str(out)


@pytest.fixture
def other_veth():
    pair = hx.VethPair().create()
    try:
        yield pair
    finally:
        unload_all_on(pair.name)
        pair.destroy()


# =====================================================================================
# 1. Global data selects the verdict; a change is one atomic swap
# =====================================================================================


def test_global_data_selects_verdict_and_changes_by_one_swap(veth, bpf_objects, playbook):
    obj = bpf_objects["xdp_rodata_verdict"]
    name = veth.name + "-verdict"
    hx.pin_neighbour(veth)
    assert hx.ping(veth.name, veth.peer_ip, count=2), "no baseline connectivity"

    dropped = present(veth, "verdict", obj, 100, global_data={"verdict_value": DROP_HEX})
    assert dropped["changed"] and dropped["changes"] == ["loaded"]
    assert dropped["program"]["global_data"] == {"verdict_value": DROP_HEX}
    assert verdict(veth) == hx.XDP_DROP
    assert not hx.ping(veth.name, veth.peer_ip), "verdict_value=XDP_DROP let the echo reply in"
    old = dropped["program"]
    assert hx.xdp_links_running(old["dispatcher_id"]) == [old["link_id"]]

    args = {"name": name, "path": obj, "interface": veth.name, "priority": 100,
            "global_data": {"verdict_value": PASS_HEX}}
    respelled = dict(args, global_data={"verdict_value": "0x02 00 00 00"})  # same bytes, other spelling
    with LinkWatcher(old["link_id"]) as watch:
        results = playbook([task("to pass", XDP, args), task("again", XDP, args),
                            task("respelled", XDP, respelled)])
    res = results["to pass"]
    assert res["changed"] is True and res["changes"] == ["global_data"], res
    new = res["program"]
    assert new["global_data"] == {"verdict_value": PASS_HEX}
    assert new["id"] != old["id"] and hx.wait_gone(hx.prog_exists, old["id"])
    # One atomic swap: the same bpf_link now runs a new dispatcher; the old one is gone.
    assert new["link_id"] == old["link_id"] and new["dispatcher_id"] != old["dispatcher_id"]
    assert hx.xdp_links_running(new["dispatcher_id"]) == [old["link_id"]]
    assert hx.dispatcher_id(veth.name) == new["dispatcher_id"]
    assert hx.wait_gone(hx.prog_exists, old["dispatcher_id"])
    # What the link ran during the play: the old dispatcher, then the new one (exactly one
    # swap is test_bug_update_of_one_program_swaps_the_dispatcher_twice's business).
    assert watch.seen[0] == old["dispatcher_id"] and watch.seen[-1] == new["dispatcher_id"], watch.seen
    for again in ("again", "respelled"):
        assert results[again]["changed"] is False, results[again]
        assert results[again]["program"]["id"] == new["id"]
        assert results[again]["program"]["dispatcher_id"] == new["dispatcher_id"]
    assert verdict(veth) == hx.XDP_PASS
    assert hx.ping(veth.name, veth.peer_ip, count=2), "verdict_value=XDP_PASS still drops"

    # Bad global data, on the loaded program (an update) and on a new one: nothing moves.
    new_args = dict(args, name=veth.name + "-verdict2", priority=200)
    bad = {
        "unknown name": dict(args, global_data={"no_such_var": PASS_HEX}),
        "too short": dict(args, global_data={"verdict_value": "0200"}),
        "too long": dict(new_args, global_data={"verdict_value": "0200000000"}),
        "not hex": dict(args, global_data={"verdict_value": "zz000000"}),
        "odd digits": dict(new_args, global_data={"verdict_value": "0200000"}),
        "integer": dict(args, global_data={"verdict_value": 2}),
        # YAML 1.1 reads an unquoted 02000000 as octal: the module gets the int 524288.
        "unquoted yaml": dict(args, global_data={"verdict_value": 0o2000000}),
    }
    before = snapshot(veth)
    results = playbook([task(t, XDP, a) for t, a in bad.items()], expect_failure=True)
    assert_same_snapshot(before, snapshot(veth), veth)
    msgs = {t: results[t].get("msg", "") for t in bad}
    for t in bad:
        assert_clean_failure(results[t], "global_data")
    assert "no_such_var is not a global variable of %s (it has: verdict_value)" % obj in msgs["unknown name"]
    assert "verdict_value is 4 bytes" in msgs["too short"] and "has 2" in msgs["too short"]
    assert "verdict_value is 4 bytes" in msgs["too long"] and "has 5" in msgs["too long"]
    for t in ("not hex", "odd digits"):
        assert "is not hex bytes" in msgs[t], msgs[t]
    for t in ("integer", "unquoted yaml"):  # YAML numbers: say to quote the value
        assert "quoted hex string" in msgs[t], msgs[t]
    print("\nglobal_data errors:\n" + "\n".join("  %s: %s" % kv for kv in msgs.items()))
    assert verdict(veth) == hx.XDP_PASS and hx.ping(veth.name, veth.peer_ip)


# =====================================================================================
# 2. In-place updates keep the program's maps: a counter keeps counting
# =====================================================================================


def test_bytecode_update_keeps_counting_in_the_same_map(veth, bpf_objects, playbook, tmp_path):
    obj = tmp_path / "counter.o"  # our own copy: the test rewrites it in place
    original = pathlib.Path(bpf_objects["xdp_count_pass"]).read_bytes()
    obj.write_bytes(original)
    name = veth.name + "-counter"
    pin = os.path.join(LAYOUT.map_dir(name), "hits")
    hx.pin_neighbour(veth)

    first = present(veth, "counter", str(obj), 100)["program"]
    assert first["map_pin_path"] == LAYOUT.map_dir(name)
    map_id = map_id_pinned(pin)
    assert first["map_ids"] == [map_id]
    sent = hx.sh("ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-I", veth.name, veth.peer_ip, check=False)
    assert hx.ping_stats(sent.stdout) == (3, 3), sent.stdout
    counted = hits_pinned(pin)
    assert counted >= 3, "3 echo replies crossed the hook, the counter says %d" % counted

    # New content at the same path: a reload, the same map, the count goes on from there.
    obj.write_bytes(original + b"\0bpfd.core-v2\0")
    updated = present(veth, "counter", str(obj), 100)
    assert updated["changed"] is True and updated["changes"] == ["bytecode"], updated.get("changes")
    prog = updated["program"]
    assert prog["id"] != first["id"] and hx.wait_gone(hx.prog_exists, first["id"])
    assert prog["sha256"] != first["sha256"]
    assert prog["map_ids"] == [map_id] and map_id_pinned(pin) == map_id
    assert hx.prog_map_ids(prog["id"]) == [map_id]  # bpftool: the new program uses the old map
    assert prog["link_id"] == first["link_id"] and prog["dispatcher_id"] != first["dispatcher_id"]
    kept = hits_pinned(pin)
    assert kept >= counted, "the update reset the counter: %d -> %d" % (counted, kept)
    sent = hx.sh("ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-I", veth.name, veth.peer_ip, check=False)
    assert hx.ping_stats(sent.stdout) == (3, 3), sent.stdout
    after_ping = hits_pinned(pin)
    assert after_ping >= kept + 3, (kept, after_ping)

    # Exact from here on: the peer is down, only BPF_PROG_TEST_RUN moves the counter.
    hx.quiet(veth)
    start = hits_pinned(pin)
    assert verdict(veth, repeat=11) == hx.XDP_PASS
    assert hits_pinned(pin) == start + 11
    read = playbook([task("read", MAP_INFO, {"program": name}),
                     task("read key", MAP_INFO, {"program": name, "map": "hits", "keys": [0]})])
    for t in ("read", "read key"):
        assert not read[t]["_failed"], read[t].get("msg")
        assert read[t]["map"]["id"] == map_id and read[t]["map"]["pin_path"] == pin
        assert read[t]["entries"][0]["value"] == start + 11 == sum(read[t]["entries"][0]["per_cpu"])
    assert read["read key"]["entries"][0]["found"] is True

    # Same content again: nothing to do.
    again = present(veth, "counter", str(obj), 100)
    assert again["changed"] is False and again["program"]["id"] == prog["id"]


def test_new_function_of_a_multi_program_object_reloads(veth, bpf_objects):
    obj = bpf_objects["xdp_two_progs"]
    first = present(veth, "two", obj, 100, function="first")
    assert first["program"]["bpf_function_name"] == "first"
    assert verdict(veth) == hx.XDP_PASS
    second = present(veth, "two", obj, 100, function="second")
    assert second["changed"] is True
    prog = second["program"]
    assert prog["bpf_function_name"] == "second" and prog["kernel_name"] == "second"
    assert prog["id"] != first["program"]["id"] and hx.wait_gone(hx.prog_exists, first["program"]["id"])
    assert prog["link_id"] == first["program"]["link_id"]
    assert hx.bpftool_json("prog", "show", "id", str(prog["id"]))["name"] == "second"
    assert verdict(veth) == hx.XDP_DROP
    assert present(veth, "two", obj, 100, function="second")["changed"] is False


# =====================================================================================
# 3. map_owner: two programs, one map
# =====================================================================================


def test_map_owner_shares_the_map_and_outlives_the_owner(veth, bpf_objects, playbook):
    obj = bpf_objects["xdp_count_pass"]
    owner, user = veth.name + "-owner", veth.name + "-user"
    owner_pin = os.path.join(LAYOUT.map_dir(owner), "hits")
    hx.quiet(veth)
    first = present(veth, "owner", obj, 10)["program"]
    shared = present(veth, "user", obj, 20, map_owner=owner)
    assert shared["changes"] == ["loaded"]
    map_id = map_id_pinned(owner_pin)
    facts = {p["name"]: p for p in shared["chain"]}
    assert facts[owner]["id"] == first["id"]
    # The same kernel map in both programs (facts and bpftool agree).
    for name in (owner, user):
        assert facts[name]["map_ids"] == [map_id], (name, facts[name]["map_ids"])
        assert hx.prog_map_ids(facts[name]["id"]) == [map_id]
        assert facts[name]["map_pin_path"] == LAYOUT.map_dir(owner)
        assert facts[name]["maps_used_by"] == sorted([first["id"], facts[user]["id"]])
    assert facts[user]["map_owner"] == owner and facts[user]["map_owner_id"] == first["id"]
    assert facts[owner]["map_owner"] is None and facts[owner]["map_owner_id"] is None
    assert not os.path.exists(os.path.join(LAYOUT.map_dir(user), "hits")), "the user pinned a map of its own"
    listed = {p["name"]: p for p in manager().list(interface=veth.name)["programs"]}
    assert listed[owner]["maps_used_by"] == facts[owner]["maps_used_by"]

    # Both run (pass proceeds), both count into the one map: N runs -> 2N.
    start = hits_pinned(owner_pin)
    assert verdict(veth, repeat=9) == hx.XDP_PASS
    assert hits_pinned(owner_pin) == start + 2 * 9

    # Removing the owner keeps the map for its user; the user still counts into it.
    gone = manager().absent(name=owner)
    assert gone["changed"] and gone["program"]["maps_used_by"] == [facts[user]["id"]]
    assert hx.wait_gone(hx.prog_exists, first["id"])
    assert os.path.exists(owner_pin) and map_id_pinned(owner_pin) == map_id
    user_facts = manager().list(name=user)["programs"][0]
    assert user_facts["map_pin_path"] == LAYOUT.map_dir(owner) and user_facts["map_ids"] == [map_id]
    assert user_facts["maps_used_by"] == [facts[user]["id"]]
    counted = hits_pinned(owner_pin)
    assert counted == start + 18
    assert verdict(veth, repeat=5) == hx.XDP_PASS
    assert hits_pinned(owner_pin) == counted + 5
    read = playbook([task("read", MAP_INFO, {"program": user})])["read"]
    assert not read["_failed"], read.get("msg")
    assert read["map"]["id"] == map_id and read["entries"][0]["value"] == counted + 5

    # Removing the last user removes the pins: the map is freed.
    manager().absent(name=user)
    assert not os.path.exists(LAYOUT.map_dir(owner)) and not os.path.exists(LAYOUT.map_dir(user))
    assert owner not in hx.recorded_state().get("retained_maps", {})
    assert hx.wait_gone(hx.map_exists, map_id)
    no_trace_of([owner, user], {first["id"], facts[user]["id"]})


def test_map_owner_errors_change_nothing(veth, bpf_objects, array_hits_object, playbook):
    obj = bpf_objects["xdp_count_pass"]
    owner, user = veth.name + "-owner", veth.name + "-user"
    present(veth, "owner", obj, 10)
    present(veth, "user", obj, 20, map_owner=owner)
    base = {"path": obj, "interface": veth.name, "priority": 30}
    bad = {
        "no such owner": (dict(base, name=veth.name + "-new", map_owner=veth.name + "-nobody"),
                          "map_owner %s-nobody names no program managed on this host" % veth.name),
        "owner is itself": (dict(base, name=veth.name + "-new", map_owner=veth.name + "-new"),
                            "map_owner of %s-new names the program itself" % veth.name),
        "owner is a user": (dict(base, name=veth.name + "-new", map_owner=user),
                            "map_owner %s itself uses the maps of %s" % (user, owner)),
        "incompatible map": (dict(base, name=veth.name + "-new", path=array_hits_object, map_owner=owner),
                             "map hits of %s cannot share the existing map at %s" % (
                                 array_hits_object, os.path.join(LAYOUT.map_dir(owner), "hits"))),
        "update to no owner": (dict(base, name=user, priority=20, map_owner=veth.name + "-nobody"),
                               "names no program managed"),
    }
    before = snapshot(veth)
    results = playbook([task(t, XDP, a) for t, (a, _phrase) in bad.items()], expect_failure=True)
    assert_same_snapshot(before, snapshot(veth), veth)
    print("\nmap_owner errors:")
    for t, (_args, phrase) in bad.items():
        print("  %s: %s" % (t, results[t].get("msg")))
        assert_clean_failure(results[t], phrase)


# =====================================================================================
# 4. bpf_xdp_chain / bpf_tc_chain: a whole hook in one task, one swap
# =====================================================================================

CHAIN_PRIORITIES = [50, 10, 90, 30, 70, 20, 100, 40, 80, 60]


def _chain_programs(veth, paths: dict, priorities: list) -> list:
    return [{"name": "%s-c%d" % (veth.name, i), "path": paths.get(i, paths["default"]), "priority": prio}
            for i, prio in enumerate(priorities)]


def _expected_order(programs: list) -> list:
    return [p["name"] for p in sorted(programs, key=lambda p: (p["priority"], p["name"]))]


def _order(chain: list) -> list:
    assert [p["position"] for p in chain] == list(range(len(chain)))
    return [p["name"] for p in chain]


def test_xdp_chain_ten_programs_one_dispatcher_one_swap(veth, other_veth, bpf_objects, playbook, tmp_path):
    changing = tmp_path / "c3.o"  # c3's object: its content changes later
    changing.write_bytes(pathlib.Path(bpf_objects["xdp_pass"]).read_bytes())
    paths = {"default": bpf_objects["xdp_pass"], 3: str(changing), 0: bpf_objects["xdp_count_pass"]}
    programs = _chain_programs(veth, paths, CHAIN_PRIORITIES)
    names = [p["name"] for p in programs]
    chain_args = {"interface": veth.name, "programs": programs}
    hx.pin_neighbour(veth)

    # Ten programs, one task: one link, one dispatcher, positions by priority; re-run changes nothing.
    results = playbook([task("chain", XDP_CHAIN, chain_args), task("again", XDP_CHAIN, chain_args)])
    res = results["chain"]
    assert res["changed"] is True and res["removed"] == []
    assert res["changes"] == {n: ["loaded"] for n in names}
    assert _order(res["chain"]) == _expected_order(programs)
    disp, link = res["chain"][0]["dispatcher_id"], res["chain"][0]["link_id"]
    assert all(p["dispatcher_id"] == disp and p["link_id"] == link for p in res["chain"])
    assert _xdp_links_on(veth.ifindex) == [(link, disp)]
    assert [p["id"] for p in hx.attached_xdp(veth.name)] == [disp]
    c0_map = map_id_pinned(os.path.join(LAYOUT.map_dir(names[0]), "hits"))
    assert dispatchers_using(c0_map) == {disp}, "dispatchers of this chain alive: %s" % dispatchers_using(c0_map)
    again = results["again"]
    assert again["changed"] is False and again["changes"] == {}
    assert [(p["name"], p["id"], p["dispatcher_id"]) for p in again["chain"]] == \
        [(p["name"], p["id"], p["dispatcher_id"]) for p in res["chain"]]
    ids = {p["name"]: p["id"] for p in res["chain"]}
    assert hx.ping(veth.name, veth.peer_ip, count=2)
    assert hits_pinned(os.path.join(LAYOUT.map_dir(names[0]), "hits")) >= 2  # c0 (priority 50) ran

    # Three priorities and one object change: the link stays, exactly one new dispatcher.
    moved = {1: 95, 6: 5, 8: 45}
    new_programs = [dict(p, priority=moved.get(i, p["priority"])) for i, p in enumerate(programs)]
    new_args = {"interface": veth.name, "programs": new_programs}
    changing.write_bytes(changing.read_bytes() + b"\0c3-v2\0")
    predicted_changes = {names[1]: ["priority"], names[6]: ["priority"], names[8]: ["priority"],
                         names[3]: ["bytecode"]}
    survivor = manager().present(ProgramSpec(name=other_veth.name + "-survivor", kind="xdp",
                                             path=bpf_objects["xdp_pass"], interface=other_veth.name,
                                             priority=10))["program"]

    # Check mode predicts all of it and touches nothing (the exclusive removal too).
    exclusive_args = {"interface": veth.name, "exclusive": True, "programs": [new_programs[0], new_programs[3]]}
    before = snapshot(veth)
    checked = playbook([dict(task("check", XDP_CHAIN, new_args, check_mode=True), diff=True),
                        dict(task("check exclusive", XDP_CHAIN, exclusive_args, check_mode=True), diff=True)])
    assert_same_snapshot(before, snapshot(veth), veth)
    assert checked["check"]["changed"] is True and checked["check"]["changes"] == predicted_changes
    assert _order(checked["check"]["chain"]) == _expected_order(new_programs)
    excl = checked["check exclusive"]
    assert excl["changed"] is True and excl["removed"] == sorted(set(names) - {names[0], names[3]})
    assert _order(excl["chain"]) == _expected_order(exclusive_args["programs"])
    for t in ("check", "check exclusive"):
        assert checked[t]["diff"]["before"] != checked[t]["diff"]["after"]
    assert "%s priority=5 " % names[6] in checked["check"]["diff"]["after"]
    assert "%s priority=100 " % names[6] in checked["check"]["diff"]["before"]

    with LinkWatcher(link) as watch:
        changed = playbook([dict(task("change", XDP_CHAIN, new_args), diff=True)])["change"]
    assert changed["changed"] is True and changed["changes"] == predicted_changes
    assert _order(changed["chain"]) == _expected_order(new_programs)
    new_disp = changed["chain"][0]["dispatcher_id"]
    assert changed["chain"][0]["link_id"] == link and new_disp != disp
    assert _xdp_links_on(veth.ifindex) == [(link, new_disp)]
    assert watch.seen == [disp, new_disp], "the hook ran %s during one chain task" % watch.seen
    assert hx.wait_gone(hx.prog_exists, disp)
    assert dispatchers_using(c0_map) == {new_disp}, "dispatchers of this chain alive: %s" % dispatchers_using(c0_map)
    for p in changed["chain"]:  # only c3 was reloaded
        assert (p["id"] == ids[p["name"]]) is (p["name"] != names[3]), p["name"]
    assert "%s priority=5 " % names[6] in changed["diff"]["after"]
    assert hx.ping(veth.name, veth.peer_ip, count=2)

    # exclusive: the unlisted programs of this interface go; the other veth's program and
    # this interface's TC programs (another hook) stay. TC through bpf_tc_chain (tcx, ingress).
    tc_programs = [{"name": veth.name + "-tc-count", "path": bpf_objects["tc_count_ok"], "priority": 10,
                    "proceed_on": ["ok", "pipe", "dispatcher_return"]},
                   {"name": veth.name + "-tc-pass", "path": bpf_objects["tc_pass"], "priority": 20}]
    final = playbook([task("tc", TC_CHAIN, {"interface": veth.name, "direction": "ingress", "tc_attach": "tcx",
                                            "programs": tc_programs}),
                      dict(task("exclusive", XDP_CHAIN, exclusive_args), diff=True),
                      task("info", INFO, {})])
    tc = final["tc"]
    assert tc["changed"] is True and _order(tc["chain"]) == [p["name"] for p in tc_programs]
    assert all(p["tc_attach"] == "tcx" and p["direction"] == "ingress" for p in tc["chain"])
    tc_disp = tc["chain"][0]["dispatcher_id"]
    assert ht.tcx_links(veth.ifindex, "ingress") == [(tc["chain"][0]["link_id"], tc_disp)]
    assert ht.tcx_links(veth.ifindex, "egress") == []
    count_pin = os.path.join(LAYOUT.map_dir(veth.name + "-tc-count"), "hits")
    start = hits_pinned(count_pin)
    assert ht.run_tc(tc_disp, udp(veth), repeat=4) == "ok"
    assert hits_pinned(count_pin) == start + 4
    excl = final["exclusive"]
    assert excl["changed"] is True and excl["removed"] == sorted(set(names) - {names[0], names[3]})
    assert _order(excl["chain"]) == _expected_order(exclusive_args["programs"])
    assert excl["chain"][0]["link_id"] == link
    for name in set(names) - {names[0], names[3]}:
        assert hx.wait_gone(hx.prog_exists, ids[name]), name
        assert not (hx.BPFD_BPFFS / "programs" / name).exists()
    listed = {p["name"] for p in final["info"]["programs"]}
    assert {other_veth.name + "-survivor", veth.name + "-tc-count", veth.name + "-tc-pass"} <= listed
    assert not listed & (set(names) - {names[0], names[3]})
    assert [p["id"] for p in hx.attached_xdp(other_veth.name)] == [survivor["dispatcher_id"]]
    assert ht.tcx_links(veth.ifindex, "ingress") == [(tc["chain"][0]["link_id"], tc_disp)]
    assert hx.ping(veth.name, veth.peer_ip, count=2)


# =====================================================================================
# 5. netns: a program on the peer, inside its namespace; a vanished namespace
# =====================================================================================


def _peer_xdp(veth) -> list:
    """bpftool's view of the peer's XDP hook, from inside its namespace."""
    proc = sh("ip", "netns", "exec", veth.netns, "bpftool", "-j", "net", "show", "dev", veth.peer, check=False)
    assert proc.returncode == 0, proc.stderr
    return (json.loads(proc.stdout or "null") or [{}])[0].get("xdp", [])


def _peer_ifindex(veth) -> int:
    return json.loads(sh("ip", "-n", veth.netns, "-j", "link", "show", "dev", veth.peer).stdout)[0]["ifindex"]


def test_netns_program_on_the_peer_and_a_vanished_namespace(veth, bpf_objects, playbook, own_layout):
    netns = "/run/netns/%s" % veth.netns
    name = veth.name + "-inns"
    hx.pin_neighbour(veth)
    assert hx.ping(veth.name, veth.peer_ip, count=2)
    peer_ifindex = _peer_ifindex(veth)
    args = {"name": name, "path": bpf_objects["xdp_drop"], "interface": veth.peer, "netns": netns,
            "priority": 100}
    results = playbook([task("load", XDP, args), task("info", INFO, {"interface": veth.peer}),
                        task("info by name", INFO, {"name": name})])
    res = results["load"]
    assert not res["_failed"], res.get("msg")
    prog = res["program"]
    assert res["changed"] is True and prog["netns"] == netns and prog["interface"] == veth.peer
    # Inside the namespace: our dispatcher on the peer, our link on the peer's ifindex.
    assert [p["id"] for p in _peer_xdp(veth)] == [prog["dispatcher_id"]]
    assert hx.bpftool_json("prog", "show", "id", str(prog["dispatcher_id"]))["name"] == "bpfd_xdp_disp"
    assert ht.link_target(prog["link_id"])["prog_id"] == prog["dispatcher_id"]
    assert ht.link_target(prog["link_id"])["ifindex"] == peer_ifindex
    assert hx.attached_xdp(veth.name) == []  # nothing on the root end
    for t in ("info", "info by name"):
        listed = results[t]["programs"]
        assert [(p["name"], p["netns"], p["id"]) for p in listed] == [(name, netns, prog["id"])], t
    # The echo request is dropped where it arrives, at the peer.
    assert not hx.ping(veth.name, veth.peer_ip), "the drop program in the namespace let the echo request in"
    hook_key = next(k for k, h in recorded(own_layout)["hooks"].items() if h.get("netns") == netns)
    assert hook_key == "xdp_ns%d_%d" % (os.stat(netns).st_ino, peer_ifindex)

    removed = manager().absent(name=name)
    assert removed["changed"] and removed["program"]["netns"] == netns
    assert _peer_xdp(veth) == []
    assert hx.ping(veth.name, veth.peer_ip, count=2), "ping did not come back after the unload"
    no_trace_of([name], {prog["id"], prog["dispatcher_id"]}, [hook_key], own_layout)

    # Loaded again, then the namespace goes away: the next run reconciles it, nothing leaks.
    again = manager().present(ProgramSpec(name=name, kind="xdp", path=bpf_objects["xdp_drop"],
                                          interface=veth.peer, netns=netns, priority=100))["program"]
    hook_key = next(k for k, h in recorded(own_layout)["hooks"].items() if h.get("netns") == netns)
    link_id = again["link_id"]
    sh("ip", "netns", "del", veth.netns)
    deadline = time.monotonic() + 5
    while os.path.exists("/sys/class/net/%s" % veth.name) and time.monotonic() < deadline:
        time.sleep(0.05)  # the namespace's cleanup takes the veth pair with it
    results = playbook([task("info", INFO, {"name": name}),
                        task("next change", XDP, {"name": veth.name + "-never", "state": "absent"})])
    for t in ("info", "next change"):
        notes = results[t]["reconciled"]
        assert any("network namespace %s is gone" % netns in n and name in n for n in notes), (t, notes)
    assert results["info"]["programs"] == []
    no_trace_of([name], {again["id"], again["dispatcher_id"]}, [hook_key], own_layout)
    assert hx.wait_gone(lambda i: any(lk["id"] == i for lk in ht.bpftool_links()), link_id)


# =====================================================================================
# 6. An object without BTF chains with BTF programs
# =====================================================================================


def test_program_without_btf_chains_with_btf_programs(veth, bpf_objects):
    hx.pin_neighbour(veth)
    present(veth, "count1", bpf_objects["xdp_count_pass"], 10)
    nobtf = present(veth, "nobtf", bpf_objects["xdp_pass_nobtf"], 20)["program"]
    last = present(veth, "count2", bpf_objects["xdp_count_pass"], 30)
    assert [p["name"][len(veth.name) + 1:] for p in last["chain"]] == ["count1", "nobtf", "count2"]
    assert nobtf["btf_id"] == 0 and "btf_id" not in hx.bpftool_json("prog", "show", "id", str(nobtf["id"]))
    assert all(p["btf_id"] > 0 for p in last["chain"] if p["id"] != nobtf["id"])
    pins = [os.path.join(LAYOUT.map_dir("%s-%s" % (veth.name, c)), "hits") for c in ("count1", "count2")]
    assert hx.ping(veth.name, veth.peer_ip, count=3), "a chain with a BTF-less member stopped traffic"
    hx.quiet(veth)
    start = [hits_pinned(p) for p in pins]
    assert verdict(veth, repeat=6) == hx.XDP_PASS
    # The member behind the BTF-less one ran every time: the BTF-less one passed.
    assert [hits_pinned(p) - s for p, s in zip(pins, start)] == [6, 6]


# =====================================================================================
# 7. Names that could escape our directories; a name taken by another program type
# =====================================================================================


def test_bad_names_fail_cleanly_and_change_nothing(veth, bpf_objects, playbook):
    obj = bpf_objects["xdp_pass"]
    tc_name, xdp_name = veth.name + "-tcname", veth.name + "-xdpname"
    manager().present(ProgramSpec(name=tc_name, kind="tc", path=bpf_objects["tc_pass"], interface=veth.name,
                                  priority=10, direction="ingress"))
    present(veth, "xdpname", obj, 10)
    base = {"path": obj, "interface": veth.name, "priority": 100}
    bad_names = {"dot dot": "../x", "slash": "a/b", "empty": "", "dot": ".",
                 "64 characters": veth.name + "-" + "x" * (63 - len(veth.name)),
                 "newline": veth.name + "-a\nb", "escape": veth.name + "-\x1b[31m", "nul": veth.name + "-\x00x"}
    assert len(bad_names["64 characters"]) == 64
    tasks = [task(t, XDP, dict(base, name=n)) for t, n in bad_names.items()]
    tasks += [task("chain ../x", XDP_CHAIN, {"interface": veth.name,
                                             "programs": [{"name": "../x", "path": obj, "priority": 1}]}),
              task("tc name to xdp", XDP, dict(base, name=tc_name)),
              task("tc name in xdp chain", XDP_CHAIN, {"interface": veth.name,
                                                       "programs": [{"name": tc_name, "path": obj, "priority": 1}]}),
              task("xdp name to tc", TC, {"name": xdp_name, "path": bpf_objects["tc_pass"], "interface": veth.name,
                                          "priority": 100, "direction": "ingress"})]
    boundary = veth.name + "-" + "y" * (62 - len(veth.name))  # 63 characters: the longest valid name
    tasks.append(task("63 characters", XDP, dict(base, name=boundary), check_mode=True))
    before = snapshot(veth)
    results = playbook(tasks, expect_failure=True)
    assert_same_snapshot(before, snapshot(veth), veth)
    assert not results["63 characters"]["_failed"] and results["63 characters"]["changed"] is True
    print("\nname errors:")
    for t in list(bad_names) + ["chain ../x"]:
        print("  %s: %s" % (t, results[t].get("msg")))
        assert_clean_failure(results[t], "is not valid", "1-63 letters, digits")
    for t, phrase in (("tc name to xdp", "a tc program named %s already exists" % tc_name),
                      ("tc name in xdp chain", "a tc program named %s already exists" % tc_name),
                      ("xdp name to tc", "xdp program named %s already exists" % xdp_name)):
        print("  %s: %s" % (t, results[t].get("msg")))
        assert_clean_failure(results[t], phrase)
    assert not any(p.startswith("/sys/fs/bpf/x") or "/../" in p for p in snapshot(veth)["pins"])


# =====================================================================================
# 8. Host-side cost of an in-place update vs a fresh load (reported, not asserted)
# =====================================================================================

TIMING_ROUNDS = 10


def test_time_in_place_update_vs_fresh_load(veth, bpf_objects, record_property):
    obj = bpf_objects["xdp_rodata_verdict"]
    mgr = manager()

    def spec(name: str, value: str) -> ProgramSpec:
        return ProgramSpec(name=name, kind="xdp", path=obj, interface=veth.name, priority=100,
                           global_data={"verdict_value": value})

    fresh, update = [], []
    name = veth.name + "-timed"
    for _round in range(TIMING_ROUNDS):  # load on an empty interface (link created), then unload (not timed)
        started = time.perf_counter()
        result = mgr.present(spec(name, PASS_HEX))
        fresh.append(time.perf_counter() - started)
        assert result["changes"] == ["loaded"]
        mgr.absent(name=name)
    mgr.present(spec(name, PASS_HEX))
    for i in range(TIMING_ROUNDS):  # reload with other global data + swap on the same link
        started = time.perf_counter()
        result = mgr.present(spec(name, DROP_HEX if i % 2 == 0 else PASS_HEX))
        update.append(time.perf_counter() - started)
        assert result["changes"] == ["global_data"]
    fresh_ms, update_ms = statistics.median(fresh) * 1e3, statistics.median(update) * 1e3
    record_property("fresh_load_median_ms", round(fresh_ms, 2))
    record_property("in_place_update_median_ms", round(update_ms, 2))
    print("\nhost side, Manager, median of %d: fresh load %.1f ms (min %.1f, max %.1f); in-place update "
          "(global_data, reload + swap) %.1f ms (min %.1f, max %.1f)"
          % (TIMING_ROUNDS, fresh_ms, min(fresh) * 1e3, max(fresh) * 1e3,
             update_ms, min(update) * 1e3, max(update) * 1e3))


# =====================================================================================
# Known bugs (each test fails until the product is fixed; kept last so that -x runs
# everything above first)
# =====================================================================================


def test_update_of_one_program_swaps_the_dispatcher_once(veth, bpf_objects, monkeypatch):
    """converge() lists a program's hook twice in `affected` when the program already
    exists on it (`affected += [k for k in (key, old["hook"]) if k not in affected]` tests
    membership before extending), so bpf_xdp_program's in-place updates (priority,
    proceed_on, bytecode, global_data, ...) build and swap in two dispatchers."""
    from ansible_collections.bpfd.core.plugins.module_utils import _dispatcher

    first = present(veth, "a", bpf_objects["xdp_pass"], 100)["program"]
    present(veth, "b", bpf_objects["xdp_pass"], 200)
    key = "xdp_%d" % veth.ifindex
    revision = recorded()["hooks"][key]["revision"]
    builds = []
    real_load = _dispatcher.load

    def counting_load(*args, **kwargs):
        builds.append(kwargs.get("member_names"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(_dispatcher, "load", counting_load)
    with LinkWatcher(first["link_id"]) as watch:
        moved = present(veth, "a", bpf_objects["xdp_pass"], 300)
    assert moved["changes"] == ["priority"]
    assert len(builds) == 1 and recorded()["hooks"][key]["revision"] == revision + 1, (
        "one priority change built %d dispatchers (%s), the hook's revision went %d -> %d, "
        "the link ran %s" % (len(builds), builds, revision, recorded()["hooks"][key]["revision"], watch.seen))


def test_function_change_is_reported_and_shown_in_the_diff(veth, bpf_objects, playbook):
    """A new bpf_function_name reloads (right) but `changes` says bytecode, which did not
    change; and --diff of any reload (bytecode, global_data, function) shows before == after."""
    obj = bpf_objects["xdp_two_progs"]
    name = veth.name + "-two"
    present(veth, "two", obj, 100, function="first")
    args = {"name": name, "path": obj, "interface": veth.name, "priority": 100, "bpf_function_name": "second"}
    res = playbook([dict(task("second", XDP, args), diff=True)])["second"]
    assert res["changed"] is True and res["program"]["bpf_function_name"] == "second"
    assert res["changes"] == ["bpf_function_name"], "changes says %s for a new function" % res["changes"]
    assert res["diff"]["before"] != res["diff"]["after"], "changed, but the diff shows no change:\n%s" % res["diff"]


def test_map_owner_without_a_common_map_is_refused(veth, bpf_objects):
    """map_owner whose object shares no map name with the owner's would share nothing while
    its facts point at the owner's directory: refused, host unchanged."""
    owner = veth.name + "-owner"
    present(veth, "owner", bpf_objects["xdp_count_pass"], 10)
    before = snapshot(veth)
    with pytest.raises(BpfdError, match="shares no map with its map_owner"):
        present(veth, "flows", bpf_objects["xdp_flows"], 20, map_owner=owner)
    assert_same_snapshot(before, snapshot(veth), veth)


def test_reused_owner_name_keeps_its_map_pins_when_the_old_users_go(veth, bpf_objects):
    """Owner removed while a user keeps its maps (retained_maps), then a new program takes
    the owner's name: it adopts the retained directory. Removing the last user of the old
    owner then unpins that directory: the live new program's maps vanish from bpffs."""
    obj = bpf_objects["xdp_count_pass"]
    owner = veth.name + "-owner"
    present(veth, "owner", obj, 10)
    present(veth, "user", obj, 20, map_owner=owner)
    manager().absent(name=owner)
    reborn = present(veth, "owner", obj, 10)["program"]
    manager().absent(name=veth.name + "-user")
    pin = os.path.join(LAYOUT.map_dir(owner), "hits")
    listed = manager().list(name=owner)["programs"][0]
    assert listed["map_pin_path"] == LAYOUT.map_dir(owner)
    assert os.path.exists(pin), "program %s (id %d) is loaded, its map %s is no longer pinned at %s" % (
        owner, reborn["id"], reborn["map_ids"], pin)


def test_recreated_namespace_does_not_get_the_old_program(veth, bpf_objects, own_layout):
    """The namespace a program ran in is deleted, and one with the same path is created
    again (a restarted pod/netns) holding an interface with the same ifindex. The next
    run does not reconcile the old programs away: the record is trusted by path, the
    interface found by ifindex, and the dispatcher is "rebuilt" into the new namespace
    (the hook key's namespace inode is not compared, and inodes are reused anyway)."""
    netns = "/run/netns/%s" % veth.netns
    name = veth.name + "-inns"
    peer_ifindex = _peer_ifindex(veth)
    manager().present(ProgramSpec(name=name, kind="xdp", path=bpf_objects["xdp_drop"], interface=veth.peer,
                                  netns=netns, priority=100))
    sh("ip", "netns", "del", veth.netns)
    deadline = time.monotonic() + 5
    while os.path.exists("/sys/class/net/%s" % veth.name) and time.monotonic() < deadline:
        time.sleep(0.05)
    sh("ip", "netns", "add", veth.netns)
    sh("ip", "-n", veth.netns, "link", "add", veth.peer, "index", str(peer_ifindex), "type", "veth",
       "peer", "name", "bpfdq" + veth.peer[5:])
    sh("ip", "-n", veth.netns, "link", "set", veth.peer, "up")
    notes = manager().absent(name="-")["reconciled"]  # the next mutating run
    assert _peer_xdp(veth) == [], "the new namespace's %s runs a program of the deleted one (notes: %s)" % (
        veth.peer, notes)
    assert manager().list(name=name)["programs"] == [], notes
