# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""bpfd.core.bpf_tc_program on the real kernel, for both attach paths (a tcx
bpf_link, and a cls_bpf direct-action filter on clsact) and both directions.

Verdicts come from the kernel: real pings across the veth pair (echo requests
leave through the host end's egress hook, echo replies arrive through its
ingress hook), and BPF_PROG_TEST_RUN on the dispatcher that tc(8) or the tcx
link shows attached, with member hit counters read by `bpftool map dump`.
What is attached is read with tc -j, bpftool -j and raw bpf() (bpftool 7.1
prints no target for tcx links). Programs are managed through module_utils'
Manager (fast) and, for the module contract, through real ansible-playbook runs.

Counting tests quiet the pair first (`ht.quiet`: peer down, host end without
IPv6) so no stray packet runs a chain: counters then move only by the test
runs, and are exact.
"""

from __future__ import annotations

import pytest

import helpers_tc as ht
import helpers_xdp as hx

from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager, ProgramSpec

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

TC = "bpfd.core.bpf_tc_program"
INFO = "bpfd.core.bpf_program_info"
REPEAT = 20
ATTACH = ["tcx", "cls_bpf"]
DIRECTIONS = list(ht.DIRECTIONS)
ALL_TC = ["unspec", "ok", "reclassify", "shot", "pipe", "stolen", "queued", "repeat", "redirect",
          "trap", "dispatcher_return"]
NOTHING = {"tcx": [], "cls_bpf": []}


class TcChain:
    """TC programs on one veth through the Manager; unloads what it loaded."""

    def __init__(self, veth, objects: dict) -> None:
        self.veth = veth
        self.objects = objects
        self.mgr = Manager()
        self.names: list = []

    def name(self, suffix: str) -> str:
        return "%s-%s" % (self.veth.name, suffix)

    def add(self, suffix: str, fixture: str, priority: int, direction: str = "ingress",
            proceed_on: list | None = None, mode: str | None = None) -> dict:
        name = self.name(suffix)
        if name not in self.names:
            self.names.append(name)
        return self.mgr.present(ProgramSpec(
            name=name, kind="tc", path=self.objects[fixture], interface=self.veth.name, priority=priority,
            direction=direction, proceed_on=proceed_on, mode=mode))

    def add_xdp(self, suffix: str, fixture: str, priority: int) -> dict:
        name = self.name(suffix)
        self.names.append(name)
        return self.mgr.present(ProgramSpec(name=name, kind="xdp", path=self.objects[fixture],
                                            interface=self.veth.name, priority=priority))

    def remove(self, suffix: str) -> dict:
        return self.mgr.absent(name=self.name(suffix))

    def listed(self, **filters) -> list:
        return sorted(self.mgr.list(**filters)["programs"], key=lambda p: (p["direction"] or "", p["position"]))

    def cleanup(self) -> None:
        for name in self.names:
            self.mgr.absent(name=name)


@pytest.fixture
def tc(veth, bpf_objects):
    made = TcChain(veth, bpf_objects)
    try:
        yield made
    finally:
        made.cleanup()


def counters(result: dict) -> list:
    """The `hits` map id of every member of the result's chain (bpftool)."""
    return [hx.map_id_named(p["id"], "hits") for p in result["chain"]]


def run_and_count(veth, direction: str, maps: list, packet: bytes, repeat: int = REPEAT) -> tuple:
    """(verdict of the attached dispatcher, how many times each member ran)."""
    before = [hx.hits(m) for m in maps]
    verdict = ht.run_tc(ht.dispatcher_id(veth, direction), packet, repeat)
    return verdict, [hx.hits(m) - b for m, b in zip(maps, before)]


def blocked(veth, count: int = 1) -> bool:
    """A ping expected to fail: neighbours are pinned and a veth answers in
    microseconds, so 0.3 s without a reply is a drop (and keeps the file fast)."""
    return not hx.ping(veth.name, veth.peer_ip, count=count, timeout=0.3)


def other(direction: str) -> str:
    return "egress" if direction == "ingress" else "ingress"


def wake(veth) -> None:
    hx.sh("ip", "-n", veth.netns, "link", "set", veth.peer, "up")
    hx.pin_neighbour(veth)  # after `up`: taking a device down flushes even permanent entries


def assert_attached_as(veth, direction: str, attach: str, dispatcher: int, link_id: int | None = None) -> None:
    """Exactly our dispatcher at the hook, held the way `attach` says, as tc/bpftool see it."""
    seen = ht.attached(veth, direction)
    if attach == "tcx":
        assert seen["cls_bpf"] == [] and [p for _link, p in seen["tcx"]] == [dispatcher], seen
        if link_id is not None:
            assert seen["tcx"] == [(link_id, dispatcher)]
    else:
        assert seen["tcx"] == [], seen
        assert seen["cls_bpf"] == [{"kind": "bpf", "pref": ht.OUR_FILTER_PREF, "handle": ht.OUR_FILTER_HANDLE,
                                    "name": "bpfd_dispatcher_%d" % dispatcher, "prog_id": dispatcher,
                                    "da": True}], seen
    prog = hx.bpftool_json("prog", "show", "id", str(dispatcher))
    assert (prog["name"], prog["type"]) == (ht.DISPATCHER_NAME, "sched_cls")


# =====================================================================================
# 1. A drop program stops real traffic in its own direction
# =====================================================================================


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("attach", ATTACH)
def test_drop_stops_ping_in_its_direction(tc, veth, attach, direction):
    hx.pin_neighbour(veth)
    assert hx.ping(veth.name, veth.peer_ip, count=2), "no baseline connectivity on the veth pair"
    tc.add("pass", "tc_pass", 10, direction, mode=attach)
    joined = tc.add("drop", "tc_drop", 20, direction)  # no tc_attach: joins the hook's method
    assert joined["program"]["tc_attach"] == attach and joined["program"]["position"] == 1
    assert hx.ping(veth.name, veth.peer_ip), \
        "tc_pass returns TC_ACT_OK, not in the default proceed_on: the chain must end there, before drop"

    result = tc.add("pass", "tc_pass", 10, direction, ["ok"], mode=attach)
    assert result["changes"] == ["proceed_on"]
    assert_attached_as(veth, direction, attach, result["program"]["dispatcher_id"])
    assert ht.attached(veth, other(direction)) == NOTHING
    rx, tx = ht.peer_counters(veth)
    assert blocked(veth, count=2), "a chain ending in tc_drop let the ping through"
    rx_delta, tx_delta = [now - then for now, then in zip(ht.peer_counters(veth), (rx, tx))]
    if direction == "egress":
        assert rx_delta == 0, "%d packets left the host end through a dropping egress hook" % rx_delta
    else:
        assert rx_delta >= 2 and tx_delta >= 2, \
            "the peer must receive the requests and reply (the replies die at the host's ingress)"

    tc.remove("drop")
    assert hx.ping(veth.name, veth.peer_ip, count=2), "ping did not come back after unloading the drop program"
    assert_attached_as(veth, direction, attach, tc.listed(interface=veth.name)[0]["dispatcher_id"])


# =====================================================================================
# 2. proceed_on, counted (bpfd's test_proceed_on_tc with our programs)
# =====================================================================================

_SCENARIOS = [
    ("ok-not-default-stops", [("tc_count_ok", None), ("tc_count_shot", None)], "ok", [1, 0]),
    ("pipe-proceeds-shot-stops", [("tc_count_pipe", None), ("tc_count_shot", None), ("tc_count_ok", None)],
     "shot", [1, 1, 0]),
    ("off-the-end-is-ok", [("tc_count_ok", ["ok"]), ("tc_count_pipe", None)], "ok", [1, 1]),
    ("unspec-default-stops", [("tc_count_unspec", None), ("tc_count_ok", None)], "unspec", [1, 0]),
    ("unspec-listed-is-bit0", [("tc_count_unspec", ["unspec"]), ("tc_count_shot", None)], "shot", [1, 1]),
    ("ok-neighbours-listed-ok-stops", [("tc_count_ok", ["unspec", "reclassify"]), ("tc_count_shot", None)],
     "ok", [1, 0]),
    ("ok-listed-unspec-stops", [("tc_count_unspec", ["ok"]), ("tc_count_shot", None)], "unspec", [1, 0]),
    ("shot-not-listed-stops", [("tc_count_shot", ["ok", "pipe"]), ("tc_count_ok", None)], "shot", [1, 0]),
    ("pipe-not-listed-stops-with-pipe", [("tc_count_pipe", ["dispatcher_return"]), ("tc_count_ok", None)],
     "pipe", [1, 0]),
    ("each-listed-runs-all",
     [("tc_count_ok", ["ok"]), ("tc_count_shot", ["shot"]), ("tc_count_unspec", ["unspec"])], "ok", [1, 1, 1]),
    ("everything-listed-runs-all",
     [(f, ALL_TC) for f in ("tc_count_unspec", "tc_count_shot", "tc_count_pipe", "tc_count_ok")],
     "ok", [1, 1, 1, 1]),
    ("sole-member-proceeds-falls-through-to-ok", [("tc_count_shot", ["shot"])], "ok", [1]),
]
# Directions alternate over the scenarios, so each attach path sees both.
PROCEED_ON_SCENARIOS = [
    pytest.param(DIRECTIONS[i % 2], members, verdict, ran, id="%s-%s" % (DIRECTIONS[i % 2], label))
    for i, (label, members, verdict, ran) in enumerate(_SCENARIOS)
]


@pytest.mark.parametrize("attach", ATTACH)
@pytest.mark.parametrize("direction, members, verdict, ran", PROCEED_ON_SCENARIOS)
def test_proceed_on_counted(tc, veth, attach, direction, members, verdict, ran):
    ht.quiet(veth)
    for position, (fixture, proceed_on) in enumerate(members):
        result = tc.add("m%d" % position, fixture, 10 * (position + 1), direction, proceed_on,
                        mode=attach if position == 0 else None)
    maps = counters(result)
    disp = ht.dispatcher_id(veth, direction)
    assert disp == result["program"]["dispatcher_id"]
    assert_attached_as(veth, direction, attach, disp)
    assert ht.attached(veth, other(direction)) == NOTHING
    assert set(maps) <= set(hx.prog_map_ids(disp)), "the dispatcher must use the members' own maps"
    for packet in (hx.ipv4_udp_packet(veth.peer_ip, veth.host_ip), hx.non_ip_packet()):
        got, counts = run_and_count(veth, direction, maps, packet)
        assert (got, counts) == (verdict, [REPEAT * r for r in ran])


# =====================================================================================
# 3. Unloading a middle program (bpfd's test_unload_tc)
# =====================================================================================


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("attach", ATTACH)
def test_unload_middle_program_keeps_masks_by_member(tc, veth, attach, direction):
    """a ok[ok] -> b shot[ok] -> c unspec[unspec] -> d pipe[ok].

    With b: b's shot ends the chain. Without b, c follows a and must carry its
    own [unspec] (not b's [ok]) to reach d, whose pipe then ends the chain.
    """
    ht.quiet(veth)
    tc.add("a", "tc_count_ok", 10, direction, ["ok"], mode=attach)
    b = tc.add("b", "tc_count_shot", 20, direction, ["ok"])
    tc.add("c", "tc_count_unspec", 30, direction, ["unspec"])
    result = tc.add("d", "tc_count_pipe", 40, direction, ["ok"])
    maps = dict(zip("abcd", counters(result)))
    packet = hx.ipv4_udp_packet(veth.peer_ip, veth.host_ip)
    first_disp = ht.dispatcher_id(veth, direction)
    link = ht.attached(veth, direction)["tcx"]

    assert run_and_count(veth, direction, list(maps.values()), packet) == ("shot", [REPEAT, REPEAT, 0, 0])

    tc.remove("b")
    assert [p["name"][len(veth.name) + 1:] for p in tc.listed(interface=veth.name)] == ["a", "c", "d"]
    assert [p["position"] for p in tc.listed(interface=veth.name)] == [0, 1, 2]
    assert ht.dispatcher_id(veth, direction) != first_disp
    assert run_and_count(veth, direction, [maps[k] for k in "acd"], packet) == ("pipe", [REPEAT] * 3)
    assert hx.wait_gone(hx.prog_exists, b["program"]["id"]), "b's program outlived its unload"
    assert hx.wait_gone(hx.prog_exists, first_disp), "the swapped-out dispatcher stayed loaded"

    tc.remove("a")  # c first now; its own [unspec] still applies
    assert run_and_count(veth, direction, [maps[k] for k in "cd"], packet) == ("pipe", [REPEAT] * 2)

    tc.remove("d")  # c is last: unspec proceeds, off the end is ok
    assert run_and_count(veth, direction, [maps["c"]], packet) == ("ok", [REPEAT])
    assert [p["position"] for p in tc.listed(interface=veth.name)] == [0]
    now = ht.dispatcher_id(veth, direction)
    assert_attached_as(veth, direction, attach, now)
    if attach == "tcx":
        assert [lk for lk, _prog in ht.attached(veth, direction)["tcx"]] == [lk for lk, _prog in link], \
            "the tcx link must be updated in place, not replaced"


# =====================================================================================
# 4. Ten programs fill a hook; the eleventh is refused with the host unchanged
# =====================================================================================


@pytest.mark.parametrize("attach, direction", [("tcx", "egress"), ("cls_bpf", "ingress")])
def test_ten_fill_a_hook_and_the_eleventh_is_refused(tc, veth, playbook, bpf_objects, attach, direction):
    ht.quiet(veth)
    for i in range(10):
        result = tc.add("m%d" % i, "tc_count_ok", 100 + i, direction, ["ok"], mode=attach)
    assert [p["position"] for p in result["chain"]] == list(range(10))
    maps = counters(result)
    assert run_and_count(veth, direction, maps, hx.ipv4_udp_packet(veth.peer_ip, veth.host_ip)) == \
        ("ok", [REPEAT] * 10)
    wake(veth)
    assert hx.ping(veth.name, veth.peer_ip, count=2)

    before = ht.snapshot(veth)
    with pytest.raises(BpfdError, match="at most 10 programs"):
        tc.add("eleventh", "tc_pass", 1, direction)
    if attach == "cls_bpf":  # once through the real module: a clean failure
        failed = playbook([{"name": "eleventh", TC: {
            "name": tc.name("eleventh"), "path": bpf_objects["tc_pass"], "interface": veth.name,
            "direction": direction, "priority": 1}}], expect_failure=True)["eleventh"]
        assert failed["_failed"] and "at most 10 programs" in failed["msg"], failed
        assert "Traceback" not in str(failed) and "unexpected error" not in failed["msg"], failed
    ht.assert_same(before, ht.snapshot(veth))
    assert hx.ping(veth.name, veth.peer_ip, count=2)


# =====================================================================================
# 5 + 9. Through ansible-playbook: facts agree with tc/bpftool, idempotency, check, diff,
#        bpf_program_info lists TC programs with direction and position
# =====================================================================================


def task(title: str, **args) -> dict:
    return {"name": title, TC: args}


def info(title: str = "info", **args) -> dict:
    return {"name": title, INFO: args}


def diff_lines(text: str) -> list:
    """--diff text, each program line cut after its proceed_on (what follows says which
    bytecode runs: sha256, function, global data)."""
    return [line.split(" sha256=")[0].split(" image=")[0] for line in text.splitlines()]


def facts(programs: list) -> list:
    return [(p["name"], p["type"], p["direction"], p["position"], p["tc_attach"], p["dispatcher_id"],
             p["link_id"], p["id"]) for p in programs]


def test_playbook_facts_idempotency_check_and_diff(veth, bpf_objects, playbook):
    """Both attach paths in one play: egress without tc_attach (a new hook uses tcx on
    this kernel), ingress with tc_attach: cls_bpf. Three ansible-playbook runs."""
    hx.pin_neighbour(veth)
    p, d, a, b = (veth.name + s for s in ("-pass", "-drop", "-in-a", "-in-b"))
    tasks = [
        task("pass", name=p, path=bpf_objects["tc_pass"], interface=veth.name, direction="egress",
             priority=10, proceed_on=["ok"]),
        task("drop", name=d, path=bpf_objects["tc_drop"], interface=veth.name, direction="egress", priority=20),
        task("in-a", name=a, path=bpf_objects["tc_count_ok"], interface=veth.name, direction="ingress",
             priority=10, proceed_on=["ok"], tc_attach="cls_bpf"),
        task("in-b", name=b, path=bpf_objects["tc_pass"], interface=veth.name, direction="ingress",
             priority=20, tc_attach="cls_bpf"),
    ]
    first = playbook(tasks + [info(type="tc", interface=veth.name)], diff=True)
    assert all(first[t]["changed"] and first[t]["changes"] == ["loaded"] for t in ("pass", "drop", "in-a", "in-b"))
    out, inn = first["drop"]["program"], first["in-b"]["program"]
    disp = {"egress": ht.dispatcher_id(veth, "egress"), "ingress": ht.dispatcher_id(veth, "ingress")}
    assert (out["direction"], out["tc_attach"], out["position"], out["dispatcher_id"]) == \
        ("egress", "tcx", 1, disp["egress"])
    assert (inn["direction"], inn["tc_attach"], inn["position"], inn["dispatcher_id"]) == \
        ("ingress", "cls_bpf", 1, disp["ingress"])
    assert_attached_as(veth, "egress", "tcx", disp["egress"], out["link_id"])
    assert ht.link_target(out["link_id"])["ifindex"] == veth.ifindex
    assert_attached_as(veth, "ingress", "cls_bpf", disp["ingress"])
    assert inn["link_id"] is None and ht.qdiscs(veth.name) == ["clsact"], "clsact is for cls_bpf only"

    ids = {q["name"]: q["id"] for t in ("drop", "in-b") for q in first[t]["chain"]}
    expected = [(p, "tc", "egress", 0, "tcx", disp["egress"], out["link_id"], ids[p]),
                (d, "tc", "egress", 1, "tcx", disp["egress"], out["link_id"], ids[d]),
                (a, "tc", "ingress", 0, "cls_bpf", disp["ingress"], None, ids[a]),
                (b, "tc", "ingress", 1, "cls_bpf", disp["ingress"], None, ids[b])]
    assert facts(first["drop"]["chain"] + first["in-b"]["chain"]) == expected
    assert [hx.bpftool_json("prog", "show", "id", str(i))["type"] for i in ids.values()] == ["sched_cls"] * 4
    listed = sorted(first["info"]["programs"], key=lambda q: (q["direction"] != "egress", q["position"]))
    assert facts(listed) == expected, "bpf_program_info type=tc must list the four with direction and position"
    assert [q["proceed_on"] for q in listed] == [["ok"], ["pipe", "dispatcher_return"]] * 2
    hook = "tc_%d_egress (%s egress, tcx mode):" % (veth.ifindex, veth.name)
    assert diff_lines(first["drop"]["diff"]["before"]) == [hook, "  0: %s priority=10 proceed_on=ok" % p]
    assert diff_lines(first["drop"]["diff"]["after"]) == [
        hook, "  0: %s priority=10 proceed_on=ok" % p, "  1: %s priority=20 proceed_on=pipe,dispatcher_return" % d]
    assert diff_lines(first["in-a"]["diff"]["after"]) == [
        "tc_%d_ingress (%s ingress, cls_bpf mode):" % (veth.ifindex, veth.name),
        "  0: %s priority=10 proceed_on=ok" % a]
    assert blocked(veth), "pass [ok] -> drop on egress let the echo requests out"

    # One play: the same tasks again (nothing to do), then, in check mode, move drop to
    # ingress and unload pass. Predicted, not done.
    def checking(entry: dict) -> dict:
        return dict(entry, check_mode=True)

    before = ht.snapshot(veth)
    second = playbook(tasks + [
        checking(task("drop to ingress", name=d, path=bpf_objects["tc_drop"], interface=veth.name,
                      direction="ingress", priority=20)),
        checking(task("rm pass", name=p, state="absent")),
    ], diff=True)
    ht.assert_same(before, ht.snapshot(veth))
    for title in ("pass", "drop", "in-a", "in-b"):
        again = second[title]
        assert again["changed"] is False and "changes" not in again, again
        assert again["diff"]["before"] == again["diff"]["after"]
        assert again["program"]["id"] == ids[again["program"]["name"]]
        assert again["program"]["dispatcher_id"] == disp[again["program"]["direction"]]
    moved = second["drop to ingress"]
    assert moved["changed"] and moved["changes"] == ["direction"]
    # joins the ingress hook's cls_bpf; priority 20 ties with in-b, and "-drop" < "-in-b"
    assert [(q["name"], q["position"], q["tc_attach"]) for q in moved["chain"]] == \
        [(a, 0, "cls_bpf"), (d, 1, "cls_bpf"), (b, 2, "cls_bpf")]
    assert "%s priority=20" % d in moved["diff"]["after"].split("ingress")[-1]
    assert second["rm pass"]["changed"] and second["rm pass"]["program"]["name"] == p
    assert "%s priority=10" % p not in second["rm pass"]["diff"]["after"]
    assert blocked(veth), "check mode changed the chain"

    # Unload for real (one by kernel id): the hooks go, and with them what we created.
    third = playbook([task("rm pass", name=p, state="absent"), task("rm drop", id=ids[d], state="absent"),
                      task("rm a", name=a, state="absent"), task("rm b", name=b, state="absent"),
                      info(type="tc", interface=veth.name)])
    assert all(third[t]["changed"] for t in ("rm pass", "rm drop", "rm a", "rm b"))
    assert third["info"]["programs"] == []
    assert ht.nothing_attached(veth) and ht.qdiscs(veth.name) == []
    assert ht.snapshot(veth)["mine"]["pins"] == []
    assert hx.ping(veth.name, veth.peer_ip, count=2)


# =====================================================================================
# 6. Removing the last program leaves no filter, no link, no pin; clsact only if ours
# =====================================================================================


@pytest.mark.parametrize("setup", ["tcx", "cls_bpf-we-create-clsact", "cls_bpf-clsact-was-there"])
def test_removing_last_program_leaves_nothing_of_ours(tc, veth, setup):
    attach = setup.split("-")[0]
    precreated = setup == "cls_bpf-clsact-was-there"
    if precreated:
        hx.sh("tc", "qdisc", "add", "dev", veth.name, "clsact")
    start = ht.snapshot(veth)
    a = tc.add("a", "tc_count_ok", 10, "ingress", mode=attach)["program"]
    b = tc.add("b", "tc_pass", 20, "ingress")["program"]
    hook_dir = hx.BPFD_BPFFS / "hooks" / ("tc_%d_ingress" % veth.ifindex)
    assert (hx.BPFD_BPFFS / "maps" / a["name"] / "hits").exists()
    assert (hx.BPFD_BPFFS / "programs" / b["name"]).exists()
    assert (hook_dir / "link").exists() == (attach == "tcx")
    assert ht.qdiscs(veth.name) == ([] if attach == "tcx" else ["clsact"])
    assert_attached_as(veth, "ingress", attach, b["dispatcher_id"], b["link_id"])
    hits_map = hx.map_id_named(a["id"], "hits")

    assert tc.remove("b")["changed"] and tc.remove("a")["changed"]

    assert ht.nothing_attached(veth), {d: ht.attached(veth, d) for d in DIRECTIONS}
    assert ht.qdiscs(veth.name) == (["clsact"] if precreated else []), \
        "clsact must stay only when it was there before us"
    end = ht.snapshot(veth)
    assert end["mine"]["pins"] == [] and not hook_dir.exists()
    assert end["mine"]["programs"] == {} and end["mine"]["hooks"] == {}
    for prog_id in (a["id"], b["id"], a["dispatcher_id"], b["dispatcher_id"]):
        assert hx.wait_gone(hx.prog_exists, prog_id), "program %d outlived the unload" % prog_id
    assert hx.wait_gone(hx.map_exists, hits_map)
    if attach == "tcx":
        assert ht.links_running(b["dispatcher_id"]) == []
    assert end["mine"] == start["mine"]
    assert veth.ping()


@pytest.mark.parametrize("first_removed", DIRECTIONS)
def test_clsact_we_created_goes_with_our_last_hook(tc, veth, first_removed):
    """Ingress creates clsact; egress then finds it there. Whichever hook goes
    last, clsact was ours and must go with it."""
    tc.add("in", "tc_pass", 10, "ingress", mode="cls_bpf")
    tc.add("out", "tc_pass", 10, "egress", mode="cls_bpf")
    assert ht.qdiscs(veth.name) == ["clsact"]
    tc.remove({"ingress": "in", "egress": "out"}[first_removed])
    assert ht.qdiscs(veth.name) == ["clsact"], "the other hook still needs clsact"
    tc.remove({"ingress": "out", "egress": "in"}[first_removed])
    assert ht.nothing_attached(veth)
    assert ht.qdiscs(veth.name) == [], (
        "bpfd.core created clsact (ingress hook first) and removed both of its hooks, "
        "but clsact stays: ownership is recorded only on the hook that created it")


# =====================================================================================
# 7. Never clobber what is not ours
# =====================================================================================


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_plain_ingress_qdisc_refused_on_cls_bpf(tc, veth, direction):
    hx.sh("tc", "qdisc", "add", "dev", veth.name, "ingress")
    try:
        before = ht.snapshot(veth)
        with pytest.raises(BpfdError) as err:
            tc.add("a", "tc_pass", 10, direction, mode="cls_bpf")
        assert "plain 'ingress' qdisc" in err.value.msg and "tc qdisc del dev" in err.value.msg, err.value.msg
        ht.assert_same(before, ht.snapshot(veth))
        assert ht.qdiscs(veth.name) == ["ingress"]
        assert veth.ping()
    finally:
        hx.sh("tc", "qdisc", "del", "dev", veth.name, "ingress", check=False)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_foreign_cls_bpf_filter_refused_and_kept(tc, veth, bpf_objects, direction):
    with ht.foreign_cls_bpf(veth, bpf_objects["tc_pass"], direction) as foreign:
        before = ht.snapshot(veth)
        with pytest.raises(BpfdError) as err:
            tc.add("a", "tc_pass", 10, direction, mode="cls_bpf")
        msg = err.value.msg
        assert foreign["name"] in msg and "pref %d" % foreign["pref"] in msg and "did not add" in msg, msg
        ht.assert_same(before, ht.snapshot(veth))
        assert [(f["name"], f["prog_id"]) for f in ht.cls_filters(veth.name, direction)] == \
            [(foreign["name"], foreign["prog_id"])]

        # The other direction is another parent: no conflict there, and clsact stays (not ours).
        ours = tc.add("b", "tc_pass", 10, other(direction), mode="cls_bpf")["program"]
        assert_attached_as(veth, other(direction), "cls_bpf", ours["dispatcher_id"])
        tc.remove("b")
        assert ht.qdiscs(veth.name) == ["clsact"]
        assert [f["prog_id"] for f in ht.cls_filters(veth.name, direction)] == [foreign["prog_id"]]
        assert veth.ping()


def test_foreign_filter_is_named_once(tc, veth, bpf_objects):
    """tc lists a chain-header entry (kind, pref, no options) before each filter; it is
    not a filter of its own. Counting it names phantom foreign filters: one extra per
    real one here, and our own filter's header after a lost record."""
    with ht.foreign_cls_bpf(veth, bpf_objects["tc_pass"], "ingress") as foreign:
        with pytest.raises(BpfdError) as err:
            tc.add("a", "tc_pass", 10, "ingress", mode="cls_bpf")
        listed = err.value.msg.split("did not add: ")[1].split("; remove them")[0]
        assert listed.count("pref %d" % foreign["pref"]) == 1, \
            "one foreign filter, reported as: %s" % listed


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_foreign_tcx_program_refused_and_kept(tc, veth, bpf_objects, direction):
    with ht.foreign_tcx(veth, bpf_objects["tc_pass"], direction) as foreign:
        before = ht.snapshot(veth)
        with pytest.raises(BpfdError) as err:
            tc.add("a", "tc_pass", 10, direction, mode="tcx")
        msg = err.value.msg
        assert "link_id %d" % foreign["link_id"] in msg and "prog_id %d" % foreign["prog_id"] in msg, msg
        assert "did not attach" in msg, msg
        ht.assert_same(before, ht.snapshot(veth))
        assert ht.attached(veth, direction)["tcx"] == [(foreign["link_id"], foreign["prog_id"])]
        assert veth.ping()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_tcx_refuses_hook_with_foreign_cls_bpf_filter(tc, veth, bpf_objects, direction):
    """The documented contract: programs of other owners on the same hook make the
    task fail. tcx runs before clsact, and our dispatcher's TC_ACT_OK ends TC
    processing there, so a foreign filter silently stops seeing packets."""
    hx.pin_neighbour(veth)
    with ht.foreign_cls_bpf(veth, bpf_objects["tc_count_ok"], direction) as foreign:
        foreign_hits = hx.map_id_named(foreign["prog_id"], "hits")
        seen_before = hx.hits(foreign_hits)
        assert hx.ping(veth.name, veth.peer_ip, count=3)
        assert hx.hits(foreign_hits) - seen_before >= 3, "the foreign filter does not see the pings to begin with"
        before = ht.snapshot(veth)
        try:
            tc.add("a", "tc_pass", 10, direction, mode="tcx")
        except BpfdError as exc:
            assert foreign["name"] in exc.msg, exc.msg
            ht.assert_same(before, ht.snapshot(veth))
            return
        seen_before = hx.hits(foreign_hits)
        assert hx.ping(veth.name, veth.peer_ip, count=3)
        seen = hx.hits(foreign_hits) - seen_before
        pytest.fail("tc_attach: tcx was accepted on %s %s where cls_bpf filter %s (pref %d, prog %d) runs; "
                    "it saw %d packets of a 3-ping exchange afterwards: our dispatcher's TC_ACT_OK "
                    "ends TC processing before clsact" % (veth.name, direction, foreign["name"],
                                                          foreign["pref"], foreign["prog_id"], seen))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_cls_bpf_refuses_hook_with_foreign_tcx(tc, veth, bpf_objects, direction):
    """The mirror case: a foreign tcx program returning TC_ACT_OK ends TC processing
    before clsact, so our cls_bpf chain (here a drop) would never run."""
    hx.pin_neighbour(veth)
    with ht.foreign_tcx(veth, bpf_objects["tc_pass"], direction) as foreign:
        before = ht.snapshot(veth)
        try:
            tc.add("a", "tc_drop", 10, direction, mode="cls_bpf")
        except BpfdError as exc:
            assert "link_id %d" % foreign["link_id"] in exc.msg, exc.msg
            ht.assert_same(before, ht.snapshot(veth))
            return
        pinged = not blocked(veth, count=2)
        pytest.fail("tc_attach: cls_bpf was accepted on %s %s where tcx link %d (prog %d) runs first; "
                    "our drop chain %s" % (veth.name, direction, foreign["link_id"], foreign["prog_id"],
                                           "never ran: ping still works" if pinged else "dropped the ping"))


# =====================================================================================
# 8. XDP and TC (ingress + egress) on one interface, each removable on its own
# =====================================================================================


@pytest.mark.parametrize("attach", ATTACH)
def test_xdp_and_tc_chains_together(tc, veth, attach):
    hx.pin_neighbour(veth)
    xdp = tc.add_xdp("xdp", "xdp_count_pass", 10)["program"]
    ing = tc.add("in", "tc_count_ok", 10, "ingress", mode=attach)["program"]
    out = tc.add("out", "tc_count_ok", 10, "egress", mode=attach)["program"]
    maps = {k: hx.map_id_named(p["id"], "hits") for k, p in (("xdp", xdp), ("in", ing), ("out", out))}
    disp = {"xdp": hx.dispatcher_id(veth.name), "in": ht.dispatcher_id(veth, "ingress"),
            "out": ht.dispatcher_id(veth, "egress")}
    assert disp == {"xdp": xdp["dispatcher_id"], "in": ing["dispatcher_id"], "out": out["dispatcher_id"]}
    assert_attached_as(veth, "ingress", attach, disp["in"])
    assert_attached_as(veth, "egress", attach, disp["out"])

    listed = tc.listed(kind="tc", interface=veth.name)
    assert [(p["name"], p["type"], p["direction"], p["position"], p["tc_attach"]) for p in listed] == [
        (tc.name("out"), "tc", "egress", 0, attach), (tc.name("in"), "tc", "ingress", 0, attach)]
    assert [p["name"] for p in tc.listed(kind="xdp", interface=veth.name)] == [tc.name("xdp")]

    def ping_counts() -> dict:
        """Which chains run on a real ping."""
        before = {k: hx.hits(m) for k, m in maps.items()}
        assert hx.ping(veth.name, veth.peer_ip, count=2)
        return {k: hx.hits(m) - before[k] >= 2 for k, m in maps.items()}

    def gone(key: str) -> None:
        """An unloaded program's own map goes with it (and cannot count any more)."""
        assert hx.wait_gone(hx.map_exists, maps.pop(key)), "%s's hits map outlived its unload" % key

    assert ping_counts() == {"xdp": True, "in": True, "out": True}

    tc.remove("in")
    gone("in")
    assert ht.attached(veth, "ingress") == NOTHING
    assert (hx.dispatcher_id(veth.name), ht.dispatcher_id(veth, "egress")) == (disp["xdp"], disp["out"])
    assert ping_counts() == {"xdp": True, "out": True}

    tc.remove("xdp")
    gone("xdp")
    assert hx.attached_xdp(veth.name) == []
    assert ht.dispatcher_id(veth, "egress") == disp["out"]
    assert ping_counts() == {"out": True}

    again = tc.add("in", "tc_count_ok", 10, "ingress", mode=attach)["program"]  # a new hook beside egress
    tc.remove("out")
    gone("out")
    assert ht.attached(veth, "egress") == NOTHING
    assert_attached_as(veth, "ingress", attach, again["dispatcher_id"])
    tc.remove("in")
    assert ht.nothing_attached(veth) and hx.attached_xdp(veth.name) == []
    assert veth.ping()


# =====================================================================================
# Moving a program between directions and attach methods
# =====================================================================================


def test_move_between_directions_and_attach_methods(tc, veth):
    hx.pin_neighbour(veth)
    first = tc.add("a", "tc_drop", 10, "ingress", mode="tcx")["program"]
    assert blocked(veth)
    steps = [("egress", "tcx"), ("egress", "cls_bpf"), ("ingress", "cls_bpf"), ("ingress", "tcx")]
    for direction, attach in steps:
        moved = tc.add("a", "tc_drop", 10, direction, mode=attach)
        prog = moved["program"]
        assert moved["changed"] and not {"loaded", "bytecode"} & set(moved["changes"]), moved["changes"]
        assert (prog["direction"], prog["tc_attach"], prog["id"]) == (direction, attach, first["id"]), \
            "a move must not reload the program"
        assert_attached_as(veth, direction, attach, prog["dispatcher_id"], prog["link_id"])
        assert ht.attached(veth, other(direction)) == NOTHING
        if attach == "cls_bpf":
            assert ht.qdiscs(veth.name) == ["clsact"]
        rx = ht.peer_counters(veth)[0]
        assert blocked(veth)
        assert (ht.peer_counters(veth)[0] == rx) == (direction == "egress")
    with pytest.raises(BpfdError, match="use tc_attach: tcx or omit it"):
        tc.add("b", "tc_pass", 20, "ingress", mode="cls_bpf")
    tc.remove("a")
    assert ht.nothing_attached(veth)
    assert veth.ping()
    assert ht.qdiscs(veth.name) == [], (
        "clsact, created by bpfd.core when the program moved to cls_bpf, outlived the program: it moved "
        "egress -> ingress, and the ingress hook found clsact present, so nobody owns it any more")


# =====================================================================================
# Reconcile: our attachment removed behind our back is restored by the next run
# =====================================================================================


@pytest.mark.parametrize("attach", ATTACH)
def test_attachment_removed_by_hand_is_restored(tc, veth, attach):
    hx.pin_neighbour(veth)
    first = tc.add("drop", "tc_drop", 10, "ingress", mode=attach)["program"]
    assert blocked(veth)
    if attach == "tcx":
        hx.sh("bpftool", "link", "detach", "id", str(first["link_id"]))
    else:
        hx.sh("tc", "filter", "del", "dev", veth.name, "ingress", "pref", str(ht.OUR_FILTER_PREF))
    assert ht.attached(veth, "ingress") == NOTHING
    assert hx.ping(veth.name, veth.peer_ip, count=2)

    again = tc.add("drop", "tc_drop", 10, "ingress", mode=attach)  # the same declaration
    notes = "\n".join(again["reconciled"])
    assert "tc_%d_ingress" % veth.ifindex in notes and "rebuilt" in notes, notes
    prog = again["program"]
    assert prog["id"] == first["id"], "the member itself was fine: no reload"
    assert_attached_as(veth, "ingress", attach, prog["dispatcher_id"], prog["link_id"])
    assert blocked(veth), "the restored chain does not drop"
    settled = tc.add("drop", "tc_drop", 10, "ingress", mode=attach)
    assert settled["reconciled"] == [] and not settled["changed"], settled["reconciled"]
    tc.remove("drop")
    assert ht.nothing_attached(veth) and ht.qdiscs(veth.name) == []
