# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""XDP chains judged by what they do to packets, with tools we did not write.

Every verdict here comes from the kernel: a real ping across a veth pair (the
echo reply crosses the host end's XDP hook), or BPF_PROG_TEST_RUN on the
dispatcher that `bpftool net` shows attached, with member hit counters read by
`bpftool map dump`. Programs are managed through module_utils' Manager (fast)
and once through a real ansible-playbook run.

Counting tests take the veth peer down first (`quiet`) so that no stray packet
(IPv6 router solicitation, DAD, ARP) runs the chain: counters then move only
by the test runs, and the expected numbers are exact.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

import helpers_xdp as hx
from helpers_xdp import XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX

from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager, ProgramSpec

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

REPEAT = 25  # BPF_PROG_TEST_RUN repetitions per packet
ALL_XDP = ["aborted", "drop", "pass", "tx", "redirect", "dispatcher_return"]
XDP_FILTER = hx.XDP_TOOLS_DIR / "xdpfilt_alw_ip.o"
# Our fixtures that are not counters: each returns XDP_PASS alone (README.md).
OUR_ODD_MEMBERS = ["xdp_subprog", "xdp_loop", "xdp_frags", "xdp_pass_nobtf", "xdp_rodata_verdict"]


class _InProcess:
    def __init__(self) -> None:
        self.mgr = Manager()

    def __call__(self, op: str, **kwargs) -> dict:
        if op == "present":
            return self.mgr.present(ProgramSpec(**kwargs))
        return getattr(self.mgr, op)(**kwargs)


class Chain:
    """Programs on one interface through the Manager; unloads what it loaded.

    `fresh_process=True` runs every call in a new process, as module runs do,
    for tests that check kernel objects are freed (see
    test_manager_process_releases_replaced_dispatchers for why).
    """

    def __init__(self, iface, objects: dict, fresh_process: bool = False) -> None:
        self.iface = iface
        self.objects = objects
        self.call = hx.manager_in_fresh_process if fresh_process else _InProcess()
        self.names: list = []

    def name(self, suffix: str) -> str:
        return "%s-%s" % (self.iface.name, suffix)

    def add(self, suffix: str, fixture: str | None, priority: int, proceed_on: list | None = None,
            *, mode: str | None = None, path: str | None = None, function: str | None = None) -> dict:
        name = self.name(suffix)
        if name not in self.names:
            self.names.append(name)
        return self.call("present", name=name, kind="xdp", path=path or self.objects[fixture],
                         interface=self.iface.name, priority=priority, proceed_on=proceed_on,
                         function=function, mode=mode)

    def remove(self, suffix: str) -> dict:
        return self.call("absent", name=self.name(suffix))

    def list(self, **filters) -> dict:
        return self.call("list", **filters)

    def order(self) -> list:
        listed = self.list(interface=self.iface.name)["programs"]
        return [p["name"][len(self.iface.name) + 1:] for p in sorted(listed, key=lambda p: p["position"])]

    def cleanup(self) -> None:
        for name in self.names:
            self.call("absent", name=name)  # also reconciles when the interface is gone


@pytest.fixture
def chain(veth, bpf_objects):
    made = Chain(veth, bpf_objects)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def fresh_chain(veth, bpf_objects):
    made = Chain(veth, bpf_objects, fresh_process=True)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def second_veth(bpf_objects):
    pair = hx.VethPair().create()
    made = Chain(pair, bpf_objects, fresh_process=True)
    try:
        yield made
    finally:
        made.cleanup()
        pair.destroy()


@pytest.fixture
def xdp_filter_object():
    """xdp-tools' allow-IP filter object and its XDP function, found with llvm-objdump."""
    if not XDP_FILTER.exists():
        pytest.skip("xdp-tools objects not installed (%s)" % XDP_FILTER)
    if shutil.which("llvm-objdump") is None:
        pytest.skip("needs llvm-objdump to find the XDP function of %s" % XDP_FILTER)
    functions = hx.xdp_functions(str(XDP_FILTER))
    assert functions == ["xdpfilt_alw_ip"], functions
    return str(XDP_FILTER), functions[0]


def wake(veth) -> None:
    hx.sh("ip", "-n", veth.netns, "link", "set", veth.peer, "up")


def counters(chain_result: dict) -> list:
    """The `hits` map id of every member, by the member's kernel id (bpftool)."""
    return [hx.map_id_named(p["id"], "hits") for p in chain_result["chain"]]


def run_and_count(ifname: str, maps: list, packet: bytes, repeat: int = REPEAT) -> tuple:
    """(verdict of the attached dispatcher, how many times each member ran)."""
    before = [hx.hits(m) for m in maps]
    verdict = hx.run_xdp(hx.dispatcher_id(ifname), packet, repeat)
    return verdict, [hx.hits(m) - b for m, b in zip(maps, before)]


def udp_from_peer(veth) -> bytes:
    return hx.ipv4_udp_packet(veth.peer_ip, veth.host_ip)


def block_peer(map_dir: str, peer_ip: str, flag: int = 1) -> None:
    """xdp-filter: an entry for the peer's address, MAP_FLAG_SRC (per-CPU value)."""
    key = [str(int(octet)) for octet in peer_ip.split(".")]
    value = [str(b) for b in flag.to_bytes(8, "little")]
    hx.sh("bpftool", "map", "update", "pinned", os.path.join(map_dir, "filter_ipv4"),
          "key", *key, "value", *value)


def unblock_peer(map_dir: str, peer_ip: str) -> None:
    key = [str(int(octet)) for octet in peer_ip.split(".")]
    hx.sh("bpftool", "map", "delete", "pinned", os.path.join(map_dir, "filter_ipv4"), "key", *key)


def new_root_pins(before: set) -> set:
    """Pins that appeared directly under /sys/fs/bpf. libbpf pins a by-name map
    without pin_root_path at /sys/fs/bpf/<map>; directories there belong to
    whoever else uses this bpffs (other suites' scratch roots), not to us."""
    return {e for e in hx.bpffs_root_entries() - before if not (hx.BPFFS_ROOT / e).is_dir()}


# --- 1. a drop program stops real traffic ---------------------------------------


def test_drop_member_stops_ping_and_unloading_it_restores(chain, veth):
    hx.pin_neighbour(veth)
    assert hx.ping(veth.name, veth.peer_ip, count=2), "no baseline connectivity on the veth pair"
    chain.add("pass", "xdp_pass", 10)
    assert hx.ping(veth.name, veth.peer_ip)
    chain.add("drop", "xdp_drop", 20)
    assert chain.order() == ["pass", "drop"]
    assert not hx.ping(veth.name, veth.peer_ip), "a chain ending in xdp_drop let the echo reply in"
    chain.remove("drop")
    assert hx.ping(veth.name, veth.peer_ip, count=2), "ping did not come back after unloading the drop program"
    assert len(hx.attached_xdp(veth.name)) == 1


def test_drop_behind_pass_that_stops_on_pass(chain, veth):
    hx.pin_neighbour(veth)
    chain.add("drop", "xdp_drop", 10)
    chain.add("pass", "xdp_pass", 20)
    assert not hx.ping(veth.name, veth.peer_ip)
    result = chain.add("drop", "xdp_drop", 30)  # re-prioritised behind pass
    assert [p["name"] for p in result["chain"]] == [chain.name("pass"), chain.name("drop")]
    assert not hx.ping(veth.name, veth.peer_ip), \
        "pass proceeds on pass by default, so drop must still be reached"
    chain.add("pass", "xdp_pass", 20, ["dispatcher_return"])
    assert hx.ping(veth.name, veth.peer_ip, count=2), \
        "pass with proceed_on [dispatcher_return] must end the chain with its own pass verdict"
    assert hx.run_xdp(hx.dispatcher_id(veth.name), udp_from_peer(veth)) == XDP_PASS


def test_drop_chain_through_playbook(veth, bpf_objects, playbook, monkeypatch):
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    hx.pin_neighbour(veth)
    drop_name, pass_name = veth.name + "-pbdrop", veth.name + "-pbpass"

    def task(title: str, **args) -> dict:
        return {"name": title, "bpfd.core.bpf_xdp_program": args}

    first = playbook([
        task("drop first", name=drop_name, path=bpf_objects["xdp_drop"], interface=veth.name, priority=10),
        task("pass second", name=pass_name, path=bpf_objects["xdp_pass"], interface=veth.name, priority=20),
    ])
    assert first["drop first"]["changed"] and first["pass second"]["changed"]
    disp = hx.dispatcher_id(veth.name)
    assert disp == first["pass second"]["program"]["dispatcher_id"]
    assert hx.bpftool_json("prog", "show", "id", str(disp))["name"] == "bpfd_xdp_disp"
    assert not hx.ping(veth.name, veth.peer_ip)

    second = playbook([
        task("drop behind", name=drop_name, path=bpf_objects["xdp_drop"], interface=veth.name, priority=30),
        task("pass stops on pass", name=pass_name, path=bpf_objects["xdp_pass"], interface=veth.name,
             priority=20, proceed_on=["dispatcher_return"]),
    ])
    final_chain = second["pass stops on pass"]["chain"]
    assert [(p["name"], p["proceed_on"]) for p in final_chain] == [
        (pass_name, ["dispatcher_return"]), (drop_name, ["pass", "dispatcher_return"])]
    assert hx.ping(veth.name, veth.peer_ip, count=2)

    third = playbook([
        task("unload drop by id", id=first["drop first"]["program"]["id"], state="absent"),
        task("unload pass by name", name=pass_name, state="absent"),
    ])
    assert third["unload drop by id"]["changed"] and third["unload pass by name"]["changed"]
    assert hx.attached_xdp(veth.name) == []
    assert hx.ping(veth.name, veth.peer_ip)


# --- 2. proceed_on, counted (bpfd's test_proceed_on_xdp with our programs) ------------

PROCEED_ON_SCENARIOS = [
    pytest.param([("xdp_count_pass", None), ("xdp_count_drop", None), ("xdp_count_pass", None)],
                 XDP_DROP, [1, 1, 0], id="default-stops-after-drop"),
    pytest.param([("xdp_count_pass", None), ("xdp_count_drop", ["pass", "drop"]), ("xdp_count_pass", None)],
                 XDP_PASS, [1, 1, 1], id="drop-listed-continues"),
    pytest.param([("xdp_count_pass", None), ("xdp_count_tx", ["pass"]), ("xdp_count_pass", None)],
                 XDP_TX, [1, 1, 0], id="tx-with-pass-only-stops-with-tx"),
    pytest.param([("xdp_count_pass", None), ("xdp_count_drop", ["drop"])],
                 XDP_PASS, [1, 1], id="last-member-proceeds-falls-through-to-pass"),
    pytest.param([("xdp_count_pass", ["dispatcher_return"]), ("xdp_count_drop", None)],
                 XDP_PASS, [1, 0], id="pass-not-listed-stops-with-pass"),
    pytest.param([("xdp_count_aborted", ["aborted"]), ("xdp_count_redirect", None), ("xdp_count_pass", None)],
                 XDP_REDIRECT, [1, 1, 0], id="aborted-listed-then-redirect-stops"),
    pytest.param([("xdp_count_aborted", None), ("xdp_count_pass", None)],
                 XDP_ABORTED, [1, 0], id="aborted-default-stops"),
    pytest.param([(f, ALL_XDP) for f in ("xdp_count_aborted", "xdp_count_drop", "xdp_count_tx",
                                         "xdp_count_redirect", "xdp_count_pass")],
                 XDP_PASS, [1, 1, 1, 1, 1], id="everything-listed-runs-all"),
]


@pytest.mark.parametrize("members, verdict, ran", PROCEED_ON_SCENARIOS)
def test_proceed_on_counted(chain, veth, members, verdict, ran):
    hx.quiet(veth)
    for index, (fixture, proceed_on) in enumerate(members):
        result = chain.add("m%d" % index, fixture, 10 * (index + 1), proceed_on)
    maps = counters(result)
    disp = hx.dispatcher_id(veth.name)
    assert disp == result["program"]["dispatcher_id"]
    assert set(maps) <= set(hx.prog_map_ids(disp)), "the dispatcher must use the members' own maps"
    for packet in (udp_from_peer(veth), hx.non_ip_packet()):
        got, counts = run_and_count(veth.name, maps, packet)
        assert (hx.XDP_NAMES[got], counts) == (hx.XDP_NAMES[verdict], [REPEAT * r for r in ran])


# --- 3. unloading a middle program (bpfd's test_unload_xdp) ----------------------------


def test_unload_middle_program_keeps_masks_by_member(chain, veth):
    """a pass[pass] -> b drop[pass] -> c tx[tx] -> d redirect[pass].

    With b: b's drop ends the chain. Without b, c follows a and must get c's
    own mask [tx] (not the slot's old [pass]), so the chain reaches d; a mask
    left behind by slot would stop at c with tx.
    """
    hx.quiet(veth)
    chain.add("a", "xdp_count_pass", 10, ["pass"])
    b = chain.add("b", "xdp_count_drop", 20, ["pass"])
    chain.add("c", "xdp_count_tx", 30, ["tx"])
    result = chain.add("d", "xdp_count_redirect", 40, ["pass"])
    maps = dict(zip("abcd", counters(result)))
    packet = udp_from_peer(veth)
    old_disp = hx.dispatcher_id(veth.name)

    verdict, counts = run_and_count(veth.name, list(maps.values()), packet)
    assert (verdict, counts) == (XDP_DROP, [REPEAT, REPEAT, 0, 0])

    chain.remove("b")
    assert chain.order() == ["a", "c", "d"]
    assert hx.dispatcher_id(veth.name) != old_disp
    verdict, counts = run_and_count(veth.name, [maps[k] for k in "acd"], packet)
    assert (hx.XDP_NAMES[verdict], counts) == ("redirect", [REPEAT, REPEAT, REPEAT])
    assert hx.wait_gone(hx.prog_exists, b["program"]["id"]), "b's program outlived its unload"

    chain.remove("a")  # c is first now; its own [tx] still applies
    verdict, counts = run_and_count(veth.name, [maps[k] for k in "cd"], packet)
    assert (hx.XDP_NAMES[verdict], counts) == ("redirect", [REPEAT, REPEAT])

    chain.remove("d")  # c is last: tx proceeds, off the end is pass
    verdict, counts = run_and_count(veth.name, [maps["c"]], packet)
    assert (hx.XDP_NAMES[verdict], counts) == ("pass", [REPEAT])
    positions = [p["position"] for p in chain.list(interface=veth.name)["programs"]]
    assert positions == [0]


def test_manager_process_releases_replaced_dispatchers(chain, veth):
    """Several Manager calls in one process (tests do this; so would a host-side
    restore or CLI): a dispatcher swapped out must be released, and an unloaded
    member's maps must go with the last dispatcher that linked its code."""
    hx.quiet(veth)
    a = chain.add("a", "xdp_count_pass", 10)["program"]
    b = chain.add("b", "xdp_count_drop", 20)["program"]
    b_map = hx.map_id_named(b["id"], "hits")
    assert b["dispatcher_id"] != a["dispatcher_id"]
    chain.remove("b")
    now = hx.dispatcher_id(veth.name)
    for old in (a["dispatcher_id"], b["dispatcher_id"]):
        assert hx.wait_gone(hx.prog_exists, old), (
            "dispatcher %d stays loaded after being swapped out (attached now: %d); this process "
            "still holds program fds %s" % (old, now, hx.own_prog_fds()))
    assert hx.wait_gone(hx.map_exists, b_map), "unloaded member b's hits map %d leaked" % b_map


# --- 4. objects we did not build, as members ---------------------------------------------


def _verdicts(prog_id: int, packets: dict) -> dict:
    return {label: hx.XDP_NAMES[hx.run_xdp(prog_id, pkt)] for label, pkt in packets.items()}


def _test_packets(veth) -> dict:
    return {"ipv4-udp": udp_from_peer(veth), "non-ip": hx.non_ip_packet(),
            "truncated-ipv4": hx.truncated_ipv4_packet()}


@pytest.mark.parametrize("fixture", OUR_ODD_MEMBERS + ["xdpfilt_alw_ip"])
def test_member_behaves_as_alone(chain, veth, bpf_objects, fixture, request):
    root_before = hx.bpffs_root_entries()
    if fixture == "xdpfilt_alw_ip":
        path, function = request.getfixturevalue("xdp_filter_object")
        expected = {"ipv4-udp": "pass", "non-ip": "pass", "truncated-ipv4": "aborted"}
    else:
        path, function = bpf_objects[fixture], None
        expected = {"ipv4-udp": "pass", "non-ip": "pass", "truncated-ipv4": "pass"}
    first = chain.add("first", "xdp_count_pass", 10)
    member = chain.add("member", None, 20, path=path, function=function)["program"]
    disp = hx.dispatcher_id(veth.name)
    assert disp not in (member["id"], first["program"]["id"]), "expected a dispatcher in front of two members"
    packets = _test_packets(veth)
    alone = _verdicts(member["id"], packets)
    assert alone == expected, "the object itself does not behave as its documentation says"
    assert _verdicts(disp, packets) == alone
    assert hx.ping(veth.name, veth.peer_ip, count=2)
    assert new_root_pins(root_before) == set(), "something was pinned at the bpffs root"


def test_xdp_filter_maps_are_shared_by_member_and_alone(chain, veth, xdp_filter_object):
    """xdp-filter pins its maps by name: under our tree, and the dispatcher's
    copy of its code reads the same maps as the standalone program."""
    hx.pin_neighbour(veth)
    root_before = hx.bpffs_root_entries()
    path, function = xdp_filter_object
    chain.add("first", "xdp_pass", 10)
    member = chain.add("filter", None, 20, path=path, function=function)["program"]
    map_dir = member["map_pin_path"]
    assert pathlib.Path(map_dir).parent == hx.BPFD_BPFFS / "maps"
    assert sorted(os.listdir(map_dir)) == ["filter_ipv4", "filter_ipv6", "xdp_stats_map"]
    assert new_root_pins(root_before) == set()
    stats = hx.map_id_named(member["id"], "xdp_stats_map")
    disp = hx.dispatcher_id(veth.name)
    assert stats in hx.prog_map_ids(disp)

    packet = udp_from_peer(veth)
    block_peer(map_dir, veth.peer_ip)
    assert hx.run_xdp(member["id"], packet) == XDP_DROP
    drops_before = hx.percpu_sum(hx.bpftool_json("map", "dump", "id", str(stats)), XDP_DROP)
    assert hx.run_xdp(disp, packet, REPEAT) == XDP_DROP
    drops_after = hx.percpu_sum(hx.bpftool_json("map", "dump", "id", str(stats)), XDP_DROP)
    assert drops_after - drops_before >= REPEAT, "the dispatcher did not count in xdp-filter's own stats map"
    assert not hx.ping(veth.name, veth.peer_ip), "the filter entry must block the peer's echo replies"

    unblock_peer(map_dir, veth.peer_ip)
    assert hx.run_xdp(disp, packet) == XDP_PASS
    assert hx.ping(veth.name, veth.peer_ip, count=2)


def test_mixed_chain_of_odd_members(chain, veth, bpf_objects, xdp_filter_object):
    path, function = xdp_filter_object
    chain.add("first", "xdp_count_pass", 10)
    filter_prog = chain.add("filter", None, 20, path=path, function=function)["program"]
    for index, fixture in enumerate(OUR_ODD_MEMBERS):
        chain.add(fixture, fixture, 30 + index)
    result = chain.add("last", "xdp_count_pass", 100)
    assert len(result["chain"]) == 8
    assert [p["position"] for p in result["chain"]] == list(range(8))
    disp = hx.dispatcher_id(veth.name)
    assert hx.prog_map_ids(disp), "the dispatcher holds no map"
    first_map = hx.map_id_named(result["chain"][0]["id"], "hits")
    last_map = hx.map_id_named(result["chain"][-1]["id"], "hits")
    maps = [first_map, last_map]

    hx.quiet(veth)
    packets = _test_packets(veth)
    outcome = {label: run_and_count(veth.name, maps, pkt) for label, pkt in packets.items()}
    assert outcome == {
        "ipv4-udp": (XDP_PASS, [REPEAT, REPEAT]),
        "non-ip": (XDP_PASS, [REPEAT, REPEAT]),
        "truncated-ipv4": (XDP_ABORTED, [REPEAT, 0]),  # xdp-filter aborts; the chain stops there
    }
    block_peer(filter_prog["map_pin_path"], veth.peer_ip)
    assert run_and_count(veth.name, maps, packets["ipv4-udp"]) == (XDP_DROP, [REPEAT, 0])
    unblock_peer(filter_prog["map_pin_path"], veth.peer_ip)

    wake(veth)
    hx.pin_neighbour(veth)  # after `up`: taking a device down flushes even permanent entries
    assert hx.ping(veth.name, veth.peer_ip, count=2), "ping failed across the mixed chain"


# --- 5. modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode, bpftool_mode, ip_mode, reported", [
    (None, "driver", 1, "native"),
    ("native", "driver", 1, "native"),
    ("skb", "generic", 2, "skb"),
])
def test_xdp_mode_as_tools_see_it(chain, veth, mode, bpftool_mode, ip_mode, reported):
    chain.add("a", "xdp_pass", 10, mode=mode)
    result = chain.add("b", "xdp_count_pass", 20)  # no mode: joins the interface's
    assert [p["xdp_mode"] for p in result["chain"]] == [reported, reported]
    attached = hx.attached_xdp(veth.name)
    assert [(e["mode"], e["id"]) for e in attached] == [(bpftool_mode, result["program"]["dispatcher_id"])]
    seen = hx.ip_link_xdp(veth.name)
    assert (seen.get("mode"), seen.get("prog", {}).get("id")) == (ip_mode, attached[0]["id"])
    assert hx.ping(veth.name, veth.peer_ip, count=2)


def test_sole_member_changes_mode_as_tools_see_it(chain, veth):
    """A sole member may change mode: the dispatcher is re-attached (a link
    cannot move between modes). Flipped 30 times, every flip must work and
    bpftool / ip must agree each time."""
    from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
    first = chain.add("a", "xdp_count_pass", 10, mode="skb")["program"]
    assert [e["mode"] for e in hx.attached_xdp(veth.name)] == ["generic"]
    failures = []
    previous_ok = True
    for flip in range(30):
        mode, tool_mode, ip_mode = ("native", "driver", 1) if flip % 2 == 0 else ("skb", "generic", 2)
        try:
            moved = chain.add("a", "xdp_count_pass", 10, mode=mode)
        except BpfdError as exc:
            failures.append("flip %d to %s: %s; attached after the failure: %s"
                            % (flip, mode, exc.msg, hx.attached_xdp(veth.name) or "nothing"))
            time.sleep(0.1)
            previous_ok = False
            continue
        assert moved["changed"] or not previous_ok  # after a failed flip it may already be there
        previous_ok = True
        assert moved["program"]["xdp_mode"] == mode
        assert moved["program"]["id"] == first["id"], "a mode change must not reload the program"
        attached = hx.attached_xdp(veth.name)
        assert [(e["mode"], e["id"]) for e in attached] == [(tool_mode, moved["program"]["dispatcher_id"])]
        assert hx.ip_link_xdp(veth.name).get("mode") == ip_mode
    assert not failures, "%d of 30 mode changes failed:\n%s" % (len(failures), "\n".join(failures))
    assert hx.ping(veth.name, veth.peer_ip, count=2)


def test_mode_change_while_someone_holds_the_link(chain, veth):
    """Any tool that inspects links (bpftool link show, a concurrent
    bpf_program_info run) holds a link fd for a moment. A mode change that
    detaches by unpinning the link only detaches when the last reference goes;
    it must detach for real, and the re-attach must not trip over our own
    dispatcher."""
    from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
    result = chain.add("a", "xdp_count_pass", 10, mode="skb")["program"]
    (link_id,) = hx.xdp_links_running(result["dispatcher_id"])
    held = libbpf.link_fd_by_id(link_id)  # what an inspecting tool does
    try:
        moved = chain.add("a", "xdp_count_pass", 10, mode="native")
        attached = hx.attached_xdp(veth.name)
        assert [(e["mode"], e["id"]) for e in attached] == [("driver", moved["program"]["dispatcher_id"])]
    finally:
        libbpf.close_fd(held)
    assert hx.ping(veth.name, veth.peer_ip, count=2)


def test_unload_last_program_while_someone_holds_the_link(chain, veth):
    """Same cause, worse effect: `state: absent` of the last program returns ok
    while its dispatcher (here: a drop) stays on the interface for as long as
    anyone else holds the link."""
    from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
    hx.pin_neighbour(veth)
    result = chain.add("drop", "xdp_drop", 10)["program"]
    (link_id,) = hx.xdp_links_running(result["dispatcher_id"])
    held = libbpf.link_fd_by_id(link_id)
    try:
        assert chain.remove("drop")["changed"]
        assert hx.attached_xdp(veth.name) == [], "the unloaded chain is still attached"
        assert hx.ping(veth.name, veth.peer_ip, count=2), "the unloaded drop program still drops"
    finally:
        libbpf.close_fd(held)


# --- 6. reconcile: attach points and pins that vanish -------------------------------------


def test_reconcile_deleted_interface(fresh_chain, veth, second_veth):
    chain = fresh_chain
    a = chain.add("a", "xdp_count_pass", 10)["program"]
    b = chain.add("b", "xdp_pass", 20)["program"]
    ifindex, gone = veth.ifindex, veth.name
    hx.sh("ip", "link", "del", gone)

    listed = chain.list()
    assert any(gone in note and a["name"] in note and b["name"] in note for note in listed["reconciled"]), \
        listed["reconciled"]
    assert not {a["name"], b["name"]} & {p["name"] for p in listed["programs"]}

    result = second_veth.add("other", "xdp_pass", 10)
    assert any(gone in note for note in result["reconciled"]), result["reconciled"]
    for name in (a["name"], b["name"]):
        assert not (hx.BPFD_BPFFS / "programs" / name).exists()
        assert not (hx.BPFD_BPFFS / "maps" / name).exists()
    assert not (hx.BPFD_BPFFS / "hooks" / ("xdp_%d" % ifindex)).exists()
    state = hx.recorded_state()
    assert "xdp_%d" % ifindex not in state["hooks"]
    assert not {a["name"], b["name"]} & set(state["programs"])
    for prog in (a, b):
        assert hx.wait_gone(hx.prog_exists, prog["id"]), "program %s leaked" % prog["name"]
    assert hx.wait_gone(hx.prog_exists, b["dispatcher_id"]), "the gone interface's dispatcher leaked"
    for disp in (a["dispatcher_id"], b["dispatcher_id"]):
        assert not hx.xdp_links_running(disp), "a link of the gone interface leaked"
    assert hx.ping(second_veth.iface.name, second_veth.iface.peer_ip, count=2)


def test_reconcile_member_pin_removed_by_hand(fresh_chain, veth):
    chain = fresh_chain
    hx.quiet(veth)
    chain.add("a", "xdp_count_pass", 10)
    b = chain.add("b", "xdp_count_pass", 20)["program"]
    result = chain.add("c", "xdp_count_pass", 30)
    maps = dict(zip("abc", counters(result)))
    old_disp = hx.dispatcher_id(veth.name)

    os.unlink(os.path.join(hx.BPFD_BPFFS, "programs", b["name"], "prog_%d" % b["id"]))
    rerun = chain.add("a", "xdp_count_pass", 10)  # same declaration: only the reconcile acts
    notes = "\n".join(rerun["reconciled"])
    assert b["name"] in notes and "vanished" in notes, notes
    assert [p["name"] for p in rerun["chain"]] == [chain.name("a"), chain.name("c")]
    new_disp = hx.dispatcher_id(veth.name)
    assert new_disp != old_disp, "the chain was not rebuilt without the vanished member"
    assert rerun["program"]["dispatcher_id"] == new_disp
    verdict, counts = run_and_count(veth.name, [maps["a"], maps["c"]], udp_from_peer(veth))
    assert (verdict, counts) == (XDP_PASS, [REPEAT, REPEAT])

    state = hx.recorded_state()
    assert b["name"] not in state["programs"]
    assert state["hooks"]["xdp_%d" % veth.ifindex]["members"] == [chain.name("a"), chain.name("c")]
    assert not (hx.BPFD_BPFFS / "programs" / b["name"]).exists()
    assert not (hx.BPFD_BPFFS / "maps" / b["name"]).exists()
    assert hx.wait_gone(hx.prog_exists, b["id"]), "the unpinned member's program leaked"
    assert hx.wait_gone(hx.map_exists, maps["b"]), "the unpinned member's map leaked"
    assert hx.wait_gone(hx.prog_exists, old_disp), "the old dispatcher leaked"
    again = chain.add("a", "xdp_count_pass", 10)
    assert again["reconciled"] == [] and not again["changed"], "not converged: %s" % again["reconciled"]


def test_reconcile_removes_unrecorded_pins(fresh_chain, veth, bpf_objects):
    chain = fresh_chain
    a = chain.add("a", "xdp_pass", 10)["program"]
    stray_dir = hx.BPFD_BPFFS / "programs" / (veth.name + "-stray")
    stray_maps = hx.BPFD_BPFFS / "maps" / (veth.name + "-stray")
    leftover = hx.BPFD_BPFFS / "programs" / a["name"] / "prog_999999"
    stray_dir.mkdir()
    stray_maps.mkdir()
    try:
        hx.sh("bpftool", "prog", "load", bpf_objects["xdp_pass"], str(stray_dir / "prog_1"))
        hx.sh("bpftool", "prog", "load", bpf_objects["xdp_drop"], str(leftover))
        hx.sh("bpftool", "map", "create", str(stray_maps / "hits"), "type", "array", "key", "4",
              "value", "8", "entries", "1", "name", "bpfd_stray")
        stray_prog = hx.bpftool_json("prog", "show", "pinned", str(stray_dir / "prog_1"))["id"]
        leftover_prog = hx.bpftool_json("prog", "show", "pinned", str(leftover))["id"]
        stray_map = hx.bpftool_json("map", "show", "pinned", str(stray_maps / "hits"))["id"]

        result = chain.add("b", "xdp_pass", 20)
        notes = "\n".join(result["reconciled"])
        for path in (stray_dir, stray_maps, leftover):
            assert str(path) in notes, notes
            assert not path.exists()
        assert (hx.BPFD_BPFFS / "programs" / a["name"] / ("prog_%d" % a["id"])).exists()
        assert hx.wait_gone(hx.prog_exists, stray_prog)
        assert hx.wait_gone(hx.prog_exists, leftover_prog)
        assert hx.wait_gone(hx.map_exists, stray_map)
        assert hx.ping(veth.name, veth.peer_ip, count=2)
    finally:
        for path in (leftover, stray_dir / "prog_1", stray_maps / "hits"):
            if path.exists():
                path.unlink()
        for path in (stray_dir, stray_maps):
            if path.exists():
                path.rmdir()


# --- 7. no packet lost while the chain changes ---------------------------------------------


def test_no_ping_lost_across_twenty_swaps(chain, veth):
    hx.pin_neighbour(veth)
    base = chain.add("base", "xdp_count_pass", 500)
    base_hits = hx.map_id_named(base["program"]["id"], "hits")
    assert hx.ping(veth.name, veth.peer_ip, count=2)  # neighbour resolved before the count
    links_before = hx.xdp_links_running(hx.dispatcher_id(veth.name))
    assert len(links_before) == 1
    hits_before = hx.hits(base_hits)
    dispatchers = {hx.dispatcher_id(veth.name)}

    count = 300
    pinger = subprocess.Popen(
        ["ping", "-n", "-q", "-i", "0.01", "-c", str(count), "-W", "1", "-I", veth.name, veth.peer_ip],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    steps = [
        ("p1", "xdp_pass", 100, None), ("p2", "xdp_count_pass", 200, None),
        ("p3", "xdp_pass_nobtf", 300, None), ("p1", "xdp_pass", 350, None),
        ("p2", "xdp_count_pass", 50, None), ("p3", "xdp_pass_nobtf", 300, ["pass"]),
        ("-p1",), ("p4", "xdp_subprog", 150, None), ("p4", "xdp_subprog", 450, None),
        ("-p2",), ("p1", "xdp_loop", 100, None), ("p1", "xdp_loop", 100, ["pass", "drop"]),
        ("p3", "xdp_pass_nobtf", 10, None), ("-p4",), ("p5", "xdp_rodata_verdict", 250, None),
        ("p5", "xdp_rodata_verdict", 5, ALL_XDP), ("-p3",), ("-p5",), ("p2", "xdp_pass", 600, None),
        ("-p1",),
    ]
    assert len(steps) == 20
    timings = []
    try:
        time.sleep(0.3)
        for step in steps:
            started = time.monotonic()
            if step[0].startswith("-"):
                result = chain.remove(step[0][1:])
            else:
                result = chain.add(*step)
            timings.append(time.monotonic() - started)
            assert result["changed"], step
            dispatchers.add(hx.dispatcher_id(veth.name))
            time.sleep(0.05)
        assert pinger.poll() is None, "ping ended before the swaps did: the test proves nothing"
        output, _stderr = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    transmitted, received = hx.ping_stats(output)
    print("\nzero-loss: %d/%d replies across %d swaps (%d dispatchers); change time "
          "min %.0f / median %.0f / max %.0f ms" % (
              received, transmitted, len(steps), len(dispatchers), 1000 * min(timings),
              1000 * sorted(timings)[len(timings) // 2], 1000 * max(timings)))
    assert (transmitted, received) == (count, count), output
    assert chain.order() == ["base", "p2"]
    assert len(dispatchers) == 21
    assert hx.xdp_links_running(hx.dispatcher_id(veth.name)) == links_before, \
        "the bpf_link was replaced instead of updated"
    assert hx.hits(base_hits) - hits_before >= count, "echo replies did not all run the chain"
