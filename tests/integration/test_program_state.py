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
so other test processes running at the same time never collide with ours.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import statistics
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


def live_dispatchers(kind: str = "xdp") -> set:
    """Ids of every loaded program the kernel calls bpfd_<kind>_disp (bpftool prog show)."""
    name = "bpfd_%s_disp" % kind
    return {p["id"] for p in hx.bpftool_json("prog", "show", check=False) or [] if p.get("name") == name}


def attached_anywhere(prog_id: int) -> bool:
    return any(link.get("prog_id") == prog_id for link in ht.bpftool_links())


def leaked(ids: set) -> set:
    """Of these dispatcher ids, the ones alive but attached nowhere (twice, 0.3 s
    apart: another test's dispatcher may be between its load and its attach)."""
    first = {i for i in ids if hx.prog_exists(i) and not attached_anywhere(i)}
    if first:
        time.sleep(0.3)
    return {i for i in first if hx.prog_exists(i) and not attached_anywhere(i)}


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


def no_trace_of(names: list, prog_ids: set, hook_keys: list = ()) -> None:
    """No pin, state entry or kernel program of these names / ids / hooks is left."""
    for top in ("programs", "maps"):
        for name in names:
            assert not (hx.BPFD_BPFFS / top / name).exists(), "left behind: %s" % (hx.BPFD_BPFFS / top / name)
    for key in hook_keys:
        assert not (hx.BPFD_BPFFS / "hooks" / key).exists(), "left behind: hook %s" % key
    state = hx.recorded_state()
    assert not set(names) & set(state["programs"]), sorted(set(names) & set(state["programs"]))
    assert not set(hook_keys) & set(state["hooks"])
    assert not set(names) & set(state.get("retained_maps", {}))
    for prog_id in prog_ids:
        assert hx.wait_gone(hx.prog_exists, prog_id), "program %d is still loaded" % prog_id


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
    assert watch.seen == [old["dispatcher_id"], new["dispatcher_id"]], (watch.seen, {t: (r.get("changed"), r.get("reconciled"), r["program"]["dispatcher_id"]) for t, r in results.items()})
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
    for t in ("not hex", "odd digits", "integer"):
        assert "is not hex bytes" in msgs[t], msgs[t]
    print("\nglobal_data errors:\n" + "\n".join("  %s: %s" % kv for kv in msgs.items()))
    assert verdict(veth) == hx.XDP_PASS and hx.ping(veth.name, veth.peer_ip)
