# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Programs survive a reboot: `bpfctl restore` rebuilds what the declaration records.

A reboot is simulated without rebooting: every link of ours is detached with
bpftool, our bpffs tree is removed and the run-time directory emptied — what a
reboot takes away — while /var/lib/bpfd (declaration + bytecode store) stays.
The restore then runs as the boot unit runs it (`bpfctl restore`, a process of
its own), and the host is compared with what it ran before through tools that
are not ours: bpftool, tc, BPF_PROG_TEST_RUN verdicts and hit counters (order
and proceed-on masks by behaviour), and the map pins on bpffs.

Everything runs in a private layout (BPFD_BPFFS_DIR=/sys/fs/bpf/bpfd-test-<rand>,
BPFD_RUN_DIR / BPFD_LIB_DIR / BPFD_CONFIG_DIR in a temporary directory) on veth
pairs of its own, so the host's real /var/lib/bpfd and other tests' programs are
never touched.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

import helpers_tc as htc
import helpers_xdp as hx
from conftest import REPO, Veth, kernel_ready

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

BPFCTL = REPO / "files" / "bpfctl"
SYSTEM_PYTHON = "/usr/bin/python3"
XDP_TX = 3


class Host:
    """A private layout, its collection path for bpfctl, and two veth pairs."""

    def __init__(self, monkeypatch) -> None:
        self.tag = uuid.uuid4().hex[:6]
        # World-traversable (0755), so that the non-root runs below can read what they may.
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="bpfd-restore-", dir="/tmp"))
        self.root.chmod(0o755)
        core = self.root / "coll" / "ansible_collections" / "bpfd" / "core"
        core.parent.mkdir(parents=True)
        core.symlink_to(REPO, target_is_directory=True)
        self.env = {
            "BPFD_BPFFS_DIR": "/sys/fs/bpf/bpfd-test-%s" % self.tag,
            "BPFD_RUN_DIR": str(self.root / "run"),
            "BPFD_LIB_DIR": str(self.root / "lib"),
            "BPFD_CONFIG_DIR": str(self.root / "etc"),
            "BPFD_CORE_LIB": str(self.root / "coll"),
        }
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        from ansible_collections.bpfd.core.plugins.module_utils._state import Layout
        self.layout = Layout()
        self.veths: list = []

    def veth(self) -> Veth:
        pair = Veth(200 + len(self.veths))
        pair.create()
        self.veths.append(pair)
        return pair

    def bpfctl(self, *argv: str, check: bool = True, python: str = sys.executable, **kwargs):
        proc = subprocess.run([python, str(BPFCTL), *argv], capture_output=True, text=True, check=False,
                              env=dict(os.environ, **self.env), timeout=120, **kwargs)
        if check:
            assert proc.returncode == 0, "bpfctl %s: rc %d\n%s%s" % (argv, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def bpfctl_json(self, *argv: str):
        return json.loads(self.bpfctl("--json", *argv).stdout)

    def declared(self) -> dict:
        path = pathlib.Path(self.layout.lib_dir) / "declared.json"
        return json.loads(path.read_text())["programs"] if path.exists() else {}

    def cleanup(self) -> None:
        from ansible_collections.bpfd.core.plugins.module_utils import _restore
        with contextlib.suppress(Exception):
            _restore.unload_all(self.layout)
        detach_and_unpin(self.layout)
        for pair in self.veths:
            pair.destroy()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def host(monkeypatch):
    kernel_ready()
    made = Host(monkeypatch)
    try:
        yield made
    finally:
        made.cleanup()


def manager():
    from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager
    return Manager()


def spec(**kwargs):
    from ansible_collections.bpfd.core.plugins.module_utils._manager import ProgramSpec
    return ProgramSpec(**kwargs)


def detach_and_unpin(layout) -> None:
    """What a reboot takes away, done with bpftool and rm, not with bpfd.core."""
    tree = pathlib.Path(layout.bpffs)
    if tree.exists():
        for pin in sorted(tree.rglob("*")):
            if pin.is_file() and (pin.name == "link" or pin.name.startswith("link_")):
                hx.sh("bpftool", "link", "detach", "pinned", str(pin), check=False)
        hx.sh("rm", "-rf", str(tree))
    shutil.rmtree(layout.run_dir, ignore_errors=True)


# --- what the host runs, seen from outside --------------------------------------------------------

CHAIN_FACTS = ("type", "interface", "direction", "netns", "priority", "position", "proceed_on", "map_pin_path",
               "global_data", "metadata", "path", "sha256", "xdp_mode", "tc_attach", "map_owner", "attach",
               "bpf_function_name")


class Declared:
    """The 'original playbook': 3 XDP programs (a counter whose map is pinned, a .rodata
    verdict set with global_data, a map_owner user of the counter's map) and 2 TC
    programs on veth A; one XDP program on veth B; a tracepoint program (no dispatcher)."""

    def __init__(self, host: Host, objs: dict, a: Veth, b: Veth) -> None:
        t = host.tag
        self.a, self.b = a, b
        self.count, self.verdict, self.user = "%s-count" % t, "%s-verdict" % t, "%s-user" % t
        self.tc_ok, self.tc_drop, self.late = "%s-tcok" % t, "%s-tcdrop" % t, "%s-late" % t
        self.xdp = [
            spec(name=self.count, kind="xdp", path=objs["xdp_count_pass"], interface=a.name, priority=10,
                 metadata={"role": "counter"}),
            # returns XDP_DROP through .rodata; proceed-on [drop] lets the chain go on after it
            spec(name=self.verdict, kind="xdp", path=objs["xdp_rodata_verdict"], interface=a.name,
                 priority=20, proceed_on=["drop"], global_data={"verdict_value": "01000000"}),
        ]
        # counts into the counter's map, returns XDP_TX: the chain's verdict
        self.xdp_user = spec(name=self.user, kind="xdp", path=objs["xdp_count_tx"], interface=a.name,
                             priority=30, map_owner=self.count)
        self.tc = [
            spec(name=self.tc_ok, kind="tc", path=objs["tc_count_ok"], interface=a.name, direction="ingress",
                 priority=10, proceed_on=["ok", "dispatcher_return"]),
            spec(name=self.tc_drop, kind="tc", path=objs["tc_drop"], interface=a.name, direction="ingress",
                 priority=20),
        ]
        self.on_b = spec(name=self.late, kind="xdp", path=objs["xdp_pass"], interface=b.name, priority=50)
        self.trace = "%s-openat" % t
        self.tracepoint = spec(name=self.trace, kind="tracepoint", path=objs["tracepoint_openat"], interface=None,
                               priority=None, attach={"tracepoint": "syscalls/sys_enter_openat"})
        self.names_a = [self.count, self.verdict, self.user, self.tc_ok, self.tc_drop, self.trace]

    def apply(self) -> list:
        mgr = manager()
        return [mgr.chain("xdp", self.a.name, self.xdp)["changed"], mgr.present(self.xdp_user)["changed"],
                mgr.chain("tc", self.a.name, self.tc, direction="ingress")["changed"],
                mgr.present(self.on_b)["changed"], mgr.present(self.tracepoint)["changed"]]


def observe(host: Host, d: Declared) -> dict:
    """Chains (facts, bpftool, tc), behaviour (test runs), and map pins."""
    facts = {p["name"]: p for p in manager().list()["programs"]}
    xdp_disp = hx.dispatcher_id(d.a.name)
    tc_disp = htc.dispatcher_id(d.a, "ingress")
    packet = hx.ipv4_udp_packet(d.a.host_ip, d.a.peer_ip)
    hits_pin = os.path.join(host.layout.map_dir(d.count), "hits")
    hits_id = hx.bpftool_json("map", "show", "pinned", hits_pin)["id"]
    before = hx.hits(hits_id)
    verdict = hx.run_xdp(xdp_disp, packet)
    counted = hx.hits(hits_id) - before
    maps = pathlib.Path(host.layout.maps_dir)
    openat_pin = os.path.join(host.layout.map_dir(d.trace), "hits")
    seen = array_slot0(openat_pin)
    with open(__file__, "rb"):
        pass
    return {
        "openat_counted": array_slot0(openat_pin) > seen,
        "tracepoint_links": [link["id"] for link in htc.bpftool_links()
                             if link.get("prog_id") == facts[d.trace]["id"]],
        "chains": {n: {k: f.get(k) for k in CHAIN_FACTS} for n, f in facts.items() if n in d.names_a},
        "kernel_names": {n: f.get("kernel_name") for n, f in facts.items() if n in d.names_a},
        "xdp_verdict": verdict, "counted": counted, "tc_verdict": htc.run_tc(tc_disp, packet),
        "map_pins": sorted(str(p.relative_to(maps)) for p in maps.rglob("*") if p.is_file()),
        "xdp_dispatcher": xdp_disp, "tc_dispatcher": tc_disp,
        "ids": {n: f["id"] for n, f in facts.items()},
    }


def array_slot0(pin: str) -> int:
    """Slot 0 of a pinned (non per-CPU) __u32 -> __u64 array, by bpftool."""
    dump = hx.bpftool_json("map", "dump", "pinned", pin)
    return int.from_bytes(bytes(int(b, 16) for b in dump[0]["value"]), "little") if dump else 0


def wait_gone(ids) -> None:
    for prog_id in ids:
        assert hx.wait_gone(hx.prog_exists, prog_id), "program %d still loaded" % prog_id


def test_restore_after_a_simulated_reboot(host, bpf_objects):
    a, b = host.veth(), host.veth()
    hx.quiet(a)
    d = Declared(host, bpf_objects, a, b)
    assert d.apply() == [True] * 5
    declared = host.declared()
    assert sorted(declared) == sorted(d.names_a + [d.late])
    before = observe(host, d)
    # The chain's behaviour: counter (+1), verdict DROP goes on (proceed-on [drop]), the user
    # counts into the counter's map (+1) and returns TX. TC: ok goes on, then shot.
    assert (before["xdp_verdict"], before["counted"], before["tc_verdict"]) == (XDP_TX, 2, "shot")
    assert ("%s/hits" % d.count) in before["map_pins"] and ("%s/hits" % d.trace) in before["map_pins"]
    assert before["openat_counted"] and len(before["tracepoint_links"]) == 1

    detach_and_unpin(host.layout)
    b.destroy()  # an interface that is not there (yet) at boot
    wait_gone(before["ids"].values())
    assert hx.attached_xdp(a.name) == [] and htc.nothing_attached(a)

    started = time.monotonic()
    first = host.bpfctl_json("restore")
    print("\nrestore of %d programs on 3 attach points: %.2f s (bpfctl process: %.2f s)"
          % (len(first["restored"]), first["seconds"], time.monotonic() - started))
    assert sorted(first["restored"]) == sorted(d.names_a) and first["failed"] == []
    assert [(p["name"], p["interface"]) for p in first["pending"]] == [(d.late, b.name)]
    assert "does not exist" in first["pending"][0]["reason"]
    assert host.declared() == declared, "a restore must not change the declaration (pending included)"

    after = observe(host, d)
    for key in ("chains", "kernel_names", "xdp_verdict", "counted", "tc_verdict", "map_pins", "openat_counted"):
        assert after[key] == before[key], key
    assert after["xdp_dispatcher"] != before["xdp_dispatcher"] and len(after["tracepoint_links"]) == 1
    assert hx.attached_xdp(a.name)[0]["id"] == after["xdp_dispatcher"]
    assert htc.attached(a, "ingress")["tcx"] and not htc.attached(a, "egress")["tcx"]

    # Again: nothing to do, nothing swapped.
    again = host.bpfctl_json("restore")
    assert (again["changed"], again["restored"], sorted(again["unchanged"])) == (False, [], sorted(d.names_a))
    assert [p["name"] for p in again["pending"]] == [d.late]
    assert hx.dispatcher_id(a.name) == after["xdp_dispatcher"]
    assert htc.dispatcher_id(a, "ingress") == after["tc_dispatcher"]

    # The interface appears: the next run picks its program up.
    b.create()
    late = host.bpfctl_json("restore")
    assert (late["changed"], late["restored"], late["pending"]) == (True, [d.late], [])
    assert len(hx.attached_xdp(b.name)) == 1

    # The original declaration, applied again, finds nothing to change.
    assert d.apply() == [False] * 5
    assert host.declared() == declared


def test_restore_splits_a_hook_whose_map_owner_is_on_it(host, bpf_objects):
    """Owner and user on one hook, restored from nothing: the user's maps are the owner's."""
    a = host.veth()
    hx.quiet(a)
    owner, user = "%s-owner" % host.tag, "%s-user" % host.tag
    mgr = manager()
    mgr.present(spec(name=owner, kind="xdp", path=bpf_objects["xdp_count_pass"], interface=a.name, priority=20))
    mgr.present(spec(name=user, kind="xdp", path=bpf_objects["xdp_count_drop"], interface=a.name, priority=10,
                     map_owner=owner))
    detach_and_unpin(host.layout)

    result = host.bpfctl_json("restore")
    assert sorted(result["restored"]) == [owner, user]
    assert [s["programs"] for s in result["steps"]] == [[owner], [user]]
    facts = {p["name"]: p for p in manager().list()["programs"]}
    assert facts[user]["map_owner_id"] == facts[owner]["id"]
    assert facts[user]["map_pin_path"] == facts[owner]["map_pin_path"] == host.layout.map_dir(owner)
    assert [facts[user]["position"], facts[owner]["position"]] == [0, 1]
    hits_id = hx.bpftool_json("map", "show", "pinned", os.path.join(host.layout.map_dir(owner), "hits"))["id"]
    assert hits_id in hx.prog_map_ids(facts[user]["id"])  # one map, two programs
    assert hx.run_xdp(hx.dispatcher_id(a.name), hx.ipv4_udp_packet(a.host_ip, a.peer_ip)) == hx.XDP_DROP


# --- the CLI, as root and as a member of the group ----------------------------------------------

LIST_ROW = re.compile(r"^ (\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(.+?)\s+(\S+)$")


def parse_list(text: str) -> dict:
    lines = text.splitlines()
    assert re.match(r"^ Program ID\s+Name\s+Type\s+Load Time\s+Attach Point\s+Position$", lines[0]), lines[0]
    rows = {}
    for line in lines[1:]:
        prog_id, name, kind, loaded, where, position = LIST_ROW.match(line).groups()
        rows[name] = {"id": prog_id, "type": kind, "loaded_at": loaded, "attach": where, "position": position}
    return rows


def stamp(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()


def parse_get(text: str) -> dict:
    """{"bpfd": {label: [values]}, "kernel": {...}}, checking the tutorial's layout on the way."""
    blocks, current, label = {}, None, None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line in (" Bpfd State", " Kernel State"):
            current = blocks.setdefault("bpfd" if "Bpfd" in line else "kernel", {})
            assert lines[i + 1] == "-" * (15 if "Bpfd" in line else 34)
            width = 1 + (15 if "Bpfd" in line else 34)
            continue
        if not line or set(line) == {"-"} or line.startswith(" ("):
            continue
        if line[:width].strip():
            label = line[:width].strip().rstrip(":")
            current[label] = [line[width:]]
        else:  # a further value of a list
            current[label].append(line[width:])
    return blocks


def test_cli_list_and_get_match_the_facts(host, bpf_objects):
    """The bpfd tutorial's four programs (xdp_pass at priorities 100, 50, 200, 150)."""
    a = host.veth()
    mgr = manager()
    names = []
    for priority in (100, 50, 200, 150):
        names.append("pass-%d-%s" % (priority, host.tag))
        mgr.present(spec(name=names[-1], kind="xdp", path=bpf_objects["xdp_pass"], interface=a.name,
                         priority=priority, metadata={"tutorial": "step5"}))
    facts = {p["name"]: p for p in mgr.list()["programs"]}

    listing = host.bpfctl("list")
    print("\n$ bpfctl list\n" + listing.stdout)
    rows = parse_list(listing.stdout)
    assert sorted(rows) == sorted(names)
    for name, row in rows.items():
        f = facts[name]
        expected = (str(f["id"]), "xdp", a.name, str(f["position"]))
        assert (row["id"], row["type"], row["attach"], row["position"]) == expected
        assert abs(stamp(row["loaded_at"]) - stamp(f["loaded_at"])) <= 1  # boot-time arithmetic
    assert [rows[n]["position"] for n in names] == ["1", "0", "3", "2"]

    as_json = host.bpfctl_json("list")["programs"]

    def same(facts_of_one: dict) -> str:  # but the load time (boot-time arithmetic)
        return json.dumps({k: v for k, v in facts_of_one.items() if k != "loaded_at"}, sort_keys=True)
    assert sorted(map(same, as_json)) == sorted(map(same, json.loads(json.dumps(list(facts.values())))))

    first = facts[names[0]]
    by_id = host.bpfctl("get", str(first["id"])).stdout
    print("$ bpfctl get %d\n%s" % (first["id"], by_id))
    got = parse_get(by_id)
    by_name = parse_get(host.bpfctl("get", names[0]).stdout)
    assert by_name["bpfd"] == got["bpfd"] and by_name["kernel"]["ID"] == got["kernel"]["ID"]
    assert got["bpfd"]["Name"] == [names[0]] and got["bpfd"]["Path"] == [bpf_objects["xdp_pass"]]
    assert got["bpfd"]["Priority"] == ["100"] and got["bpfd"]["Position"] == ["1"]
    assert got["bpfd"]["Iface"] == [a.name] and got["bpfd"]["Proceed On"] == ["pass, dispatcher_return"]
    assert got["bpfd"]["Metadata"] == ["tutorial=step5"] and got["bpfd"]["Global"] == ["None"]
    assert got["bpfd"]["Map Pin Path"] == [first["map_pin_path"]] and got["bpfd"]["Map Owner ID"] == ["None"]
    kernel = hx.bpftool_json("prog", "show", "id", str(first["id"]))
    assert got["kernel"]["ID"] == [str(kernel["id"])] and got["kernel"]["Tag"] == [kernel["tag"]]
    assert got["kernel"]["Name"] == [kernel["name"]] and got["kernel"]["Type"] == [kernel["type"]]
    assert got["kernel"]["GPL Compatible"] == [str(kernel["gpl_compatible"]).lower()]
    assert got["kernel"]["Size Translated (bytes)"] == [str(kernel["bytes_xlated"])]
    assert got["kernel"]["Size JITed (bytes)"] == [str(kernel["bytes_jited"])]
    assert got["kernel"]["Verified Instruction Count"] == [str(first["verified_insns"])]
    assert got["kernel"]["Map IDs"] == [str(kernel.get("map_ids", []))]
    assert host.bpfctl_json("get", names[0])["id"] == first["id"]

    missing = host.bpfctl("get", "no-such-program", check=False)
    assert missing.returncode == 1 and "no program with id or name no-such-program" in missing.stderr

    # unload by id: the others close ranks
    host.bpfctl("unload", str(facts[names[1]]["id"]))
    rows = parse_list(host.bpfctl("list").stdout)
    assert sorted(rows) == sorted(names[:1] + names[2:])
    assert [rows[n]["position"] for n in (names[0], names[3], names[2])] == ["0", "1", "2"]
    assert names[1] not in host.declared()


def test_cli_as_a_member_of_the_group(host, bpf_objects):
    """A non-root user in the state's group lists and gets; one outside it cannot; and
    nobody but root changes anything. The group is a temporary one of this test."""
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("needs %s (the venv's interpreter lives under /root)" % SYSTEM_PYTHON)
    group = "bpfdt%s" % host.tag
    hx.sh("groupadd", "--system", group)
    try:
        import grp
        gid = grp.getgrnam(group).gr_gid
        pathlib.Path(host.env["BPFD_CONFIG_DIR"]).mkdir()
        pathlib.Path(host.env["BPFD_CONFIG_DIR"], "bpfctl.json").write_text(json.dumps({"group": group}))
        a = host.veth()
        name = "member-%s" % host.tag
        manager().present(spec(name=name, kind="xdp", path=bpf_objects["xdp_pass"], interface=a.name,
                               priority=10, metadata={"owner": "ops"}))
        root_view = host.bpfctl("get", name).stdout
        # root's bpfctl shared the state with the group
        run_dir = os.stat(host.layout.run_dir)
        state = os.stat(host.layout.state_file)
        assert (run_dir.st_gid, run_dir.st_mode & 0o777) == (gid, 0o750)
        assert (state.st_gid, state.st_mode & 0o777) == (gid, 0o640)

        member = dict(user=65534, group=65534, extra_groups=[gid], python=SYSTEM_PYTHON, check=False)
        listing = host.bpfctl("list", **member)
        assert listing.returncode == 0, listing.stderr
        row = parse_list(listing.stdout)[name]
        assert row["position"] == "0" and row["attach"] == a.name
        got = host.bpfctl("get", name, **member)
        assert got.returncode == 0, got.stderr
        assert parse_get(got.stdout)["bpfd"] == parse_get(root_view)["bpfd"]
        assert json.loads(host.bpfctl("--json", "get", name, **member).stdout)["name"] == name

        refused = host.bpfctl("restore", **member)
        assert refused.returncode == 77 and "run it as root" in refused.stderr
        outsider = host.bpfctl("list", user=65534, group=65534, extra_groups=[], python=SYSTEM_PYTHON, check=False)
        assert outsider.returncode == 77 and "Permission denied" in outsider.stderr
    finally:
        hx.sh("groupdel", group, check=False)


# --- unload-all ---------------------------------------------------------------------------------

def test_unload_all_takes_ours_and_nothing_else(host, bpf_objects):
    a = host.veth()
    d = Declared(host, bpf_objects, a, host.veth())
    d.apply()
    ids = [p["id"] for p in manager().list()["programs"]]
    foreign_pin = "/sys/fs/bpf/bpfd_test_foreign_%s" % host.tag
    hx.sh("bpftool", "prog", "load", bpf_objects["xdp_pass"], foreign_pin)
    try:
        foreign_id = hx.bpftool_json("prog", "show", "pinned", foreign_pin)["id"]
        check = host.bpfctl_json("unload-all", "--check")
        assert check["changed"] and len(check["unloaded"]) == len(ids)
        assert [p["id"] for p in manager().list()["programs"]] == ids  # check mode changed nothing

        # keep the declaration: like a reboot, restore brings everything back
        kept = host.bpfctl_json("unload-all", "--keep-declaration")
        assert sorted(p["name"] for p in kept["unloaded"]) == sorted(d.names_a + [d.late]) and kept["forgotten"] == []
        wait_gone(ids)
        assert sorted(host.declared()) == sorted(d.names_a + [d.late])
        assert sorted(host.bpfctl_json("restore")["restored"]) == sorted(d.names_a + [d.late])

        ids = [p["id"] for p in manager().list()["programs"]]
        gone = host.bpfctl_json("unload-all")
        assert len(gone["unloaded"]) == len(ids) and sorted(gone["forgotten"]) == sorted(d.names_a + [d.late])
        wait_gone(ids)
        assert hx.attached_xdp(a.name) == [] and htc.nothing_attached(a)
        pins = [p for p in pathlib.Path(host.layout.bpffs).rglob("*") if p.is_file()]
        assert pins == [] and host.declared() == {}
        assert hx.prog_exists(foreign_id)
        assert host.bpfctl_json("unload-all")["changed"] is False
    finally:
        os.unlink(foreign_pin)


# --- time of a restore of 10 XDP + 10 TC programs (issue #7 closing note) ---------------------

def test_restore_time_of_ten_xdp_and_ten_tc_programs(host, bpf_objects):
    a = host.veth()
    mgr = manager()
    mgr.chain("xdp", a.name, [spec(name="x%d-%s" % (i, host.tag), kind="xdp", path=bpf_objects["xdp_count_pass"],
                                   interface=a.name, priority=i) for i in range(10)])
    for direction in ("ingress", "egress"):
        mgr.chain("tc", a.name, [spec(name="t%s%d-%s" % (direction[0], i, host.tag), kind="tc",
                                      path=bpf_objects["tc_count_pipe"], interface=a.name, direction=direction,
                                      priority=i) for i in range(5)], direction=direction)
    detach_and_unpin(host.layout)
    started = time.monotonic()
    result = host.bpfctl_json("restore")
    wall = time.monotonic() - started
    print("\nrestore of 10 XDP + 10 TC programs: %.2f s in restore(), %.2f s for the bpfctl process"
          % (result["seconds"], wall))
    assert len(result["restored"]) == 20 and result["failed"] == [] and result["pending"] == []
    assert len(hx.attached_xdp(a.name)) == 1
    assert all(len(htc.attached(a, d)["tcx"]) == 1 for d in ("ingress", "egress"))


# --- product bugs this file found: each test fails until its bug is fixed ----------------------

def test_a_module_run_while_an_interface_is_pending_keeps_its_programs_declared(host, bpf_objects):
    """Manager writes declared.json from the run-time state after every run
    (`_declared.write(layout, store.programs)` in Manager._session), and deletes the bytecode
    nobody is left to declare. While an interface is pending after a reboot, its programs are
    declared but not in the state, so any playbook run meanwhile drops them, bytecode and all,
    and the next `bpfctl restore` cannot bring them back. Fix: a run changes the declaration only
    for the programs it names (present/absent/exclusive removal); the others stay as declared."""
    a, b = host.veth(), host.veth()
    mine, pending = "%s-a" % host.tag, "%s-b" % host.tag
    manager().present(spec(name=mine, kind="xdp", path=bpf_objects["xdp_pass"], interface=a.name, priority=1))
    manager().present(spec(name=pending, kind="xdp", path=bpf_objects["xdp_drop"], interface=b.name, priority=1))
    detach_and_unpin(host.layout)
    b.destroy()
    assert [p["name"] for p in host.bpfctl_json("restore")["pending"]] == [pending]
    # any playbook run on this host meanwhile
    manager().present(spec(name="%s-c" % host.tag, kind="xdp", path=bpf_objects["xdp_count_pass"],
                           interface=a.name, priority=2))
    b.create()
    assert pending in host.declared(), "the declaration of %s was lost" % pending
    assert host.bpfctl_json("restore")["restored"] == [pending]


def test_a_chain_with_a_map_owner_and_its_user_loads_on_a_fresh_host(host, bpf_objects):
    """The README's bpf_xdp_chain example (`counter` with `map_owner: filter` in the same task)
    fails the first time: Manager._check_map_owner looks for the owner in the state as it was
    before the call ("map_owner ... names no program managed on this host"). `bpfctl restore`
    works around it with two calls on such a hook. Fix: accept an owner listed in the same call
    (and load it, and pin its maps, before its users)."""
    a = host.veth()
    owner, user = "%s-owner" % host.tag, "%s-user" % host.tag
    result = manager().chain("xdp", a.name, [
        spec(name=owner, kind="xdp", path=bpf_objects["xdp_count_pass"], interface=a.name, priority=20),
        spec(name=user, kind="xdp", path=bpf_objects["xdp_count_drop"], interface=a.name, priority=10,
             map_owner=owner)])
    facts = {p["name"]: p for p in result["chain"]}
    assert facts[user]["map_owner_id"] == facts[owner]["id"]


def test_members_of_bpfd_can_read_the_state_after_a_module_run(host, bpf_objects):
    """`bpfctl` (root) shares /run/bpfd/state.json with the group bpfd (0640 root:bpfd), but
    _state.write_json_atomic writes every new state file 0600 root:root, so after any module
    run members of bpfd cannot `bpfctl list` until root runs bpfctl again. Fix: write the
    state file 0640 with group bpfd when the group exists (as ensure_bpffs does for the tree),
    and create the run directory 0750 root:bpfd."""
    import grp
    try:
        gid = grp.getgrnam("bpfd").gr_gid
    except KeyError:
        pytest.skip("group bpfd does not exist (run the role bpfd.core.bpfd_host)")
    a = host.veth()
    manager().present(spec(name="%s-x" % host.tag, kind="xdp", path=bpf_objects["xdp_pass"], interface=a.name,
                           priority=1))
    st = os.stat(host.layout.state_file)
    assert (st.st_gid, st.st_mode & 0o777) == (gid, 0o640)
