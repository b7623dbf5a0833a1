# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""bpfd.core.bpf_map_info on real maps, judged against bpftool.

Counter programs are chained on the `veth` pair through the Manager; real
packets cross them (a ping whose replies come in through the host end's XDP
hook, then BPF_PROG_TEST_RUN on the dispatcher `bpftool net` shows). One
ansible-playbook run then reads the maps through the module, and each answer
is compared with `bpftool -j map dump pinned PATH` (its "formatted" view for
maps with BTF, its bytes for maps without).

The last tests check who may read a pin: a throwaway member of group `bpfd`
and a throwaway non-member (both removed afterwards, with the group if the
test had to create it).
"""

from __future__ import annotations

import grp
import json
import os
import pathlib
import pwd
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import uuid

import pytest

import helpers_xdp as hx
from conftest import REPO, bpftool_json, manager, sh

from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager, ProgramSpec
from ansible_collections.bpfd.core.plugins.module_utils._state import Layout

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

MAP_INFO = "bpfd.core.bpf_map_info"
UDP_RUNS = 7
PINGS = 3


def _wire_u32(address: str) -> int:
    """An IPv4 address as the fixture stores it (wire order) read as a host __u32."""
    return struct.unpack("=I", socket.inet_aton(address))[0]


def _hex(raw: list) -> str:
    """bpftool's ["0x0a", "0x00"] as our "0a 00"."""
    return " ".join("%02x" % int(b, 16) for b in raw)


def _canon(entries: list) -> list:
    return sorted(json.dumps(e, sort_keys=True) for e in entries)


def _bpftool_view(path: str) -> list:
    """bpftool's dump in our entry shape: decoded when it has BTF, hex bytes otherwise."""
    out = []
    for entry in bpftool_json("map", "dump", "pinned", path):
        formatted = entry.get("formatted")
        if formatted is not None:
            item = {"key": formatted["key"]}
            if "values" in formatted:
                item["per_cpu"] = [v["value"] for v in sorted(formatted["values"], key=lambda v: v["cpu"])]
            else:
                item["value"] = formatted["value"]
        else:
            item = {"key": _hex(entry["key"])}
            if "values" in entry:
                item["per_cpu"] = [_hex(v["value"]) for v in sorted(entry["values"], key=lambda v: v["cpu"])]
            else:
                item["value"] = _hex(entry["value"])
        out.append(item)
    return out


def _ours(entries: list) -> list:
    """Our entries without the sum (bpftool has none), for the comparison."""
    return [{k: v for k, v in e.items() if not (k == "value" and "per_cpu" in e)} for e in entries]


def _load(veth, objects: dict, programs: list) -> dict:
    """(suffix, fixture, priority) -> {suffix: program name}, all on `veth`."""
    mgr = manager()
    names = {}
    for suffix, fixture, priority in programs:
        names[suffix] = "%s-%s" % (veth.name, suffix)
        mgr.present(ProgramSpec(name=names[suffix], kind="xdp", path=objects[fixture],
                                interface=veth.name, priority=priority))
    return names


def _pin(name: str, map_name: str) -> str:
    return os.path.join(Layout().map_dir(name), map_name)


def test_map_info_reads_real_counters_like_bpftool(veth, bpf_objects, playbook):
    names = _load(veth, bpf_objects, [("flows", "xdp_flows", 50), ("raw", "xdp_flows_nobtf", 60),
                                      ("count", "xdp_count_pass", 70)])
    hx.pin_neighbour(veth)
    ping = hx.sh("ping", "-n", "-q", "-c", str(PINGS), "-W", "1", "-i", "0.2", "-I", veth.name,
                 veth.peer_ip, check=False)
    _sent, received = hx.ping_stats(ping.stdout)
    assert received == PINGS, ping.stdout
    hx.quiet(veth)  # from here on only the test runs below move the counters
    packet = hx.ipv4_udp_packet(veth.host_ip, veth.peer_ip)
    assert hx.run_xdp(hx.dispatcher_id(veth.name), packet, repeat=UDP_RUNS) == hx.XDP_PASS

    udp_key = {"saddr": _wire_u32(veth.host_ip), "daddr": _wire_u32(veth.peer_ip),
               "sport": 40000, "dport": 5353, "proto": 17}
    icmp_key = {"saddr": _wire_u32(veth.peer_ip), "daddr": _wire_u32(veth.host_ip),
                "sport": 0, "dport": 0, "proto": 1}
    udp_raw = struct.pack("=IIHHB3x", udp_key["saddr"], udp_key["daddr"], 40000, 5353, 17)

    def read(task: str, program: str, **options) -> dict:
        return {"name": task, MAP_INFO: dict(program=program, **options), "ignore_errors": True}

    tasks = [
        read("flows", names["flows"], map="flows"),
        read("per_kind", names["flows"], map="per_kind"),
        read("label", names["flows"], map="label"),
        read("hits", names["count"]),  # its only map: `map` may be left out
        read("flow keys", names["flows"], map="flows",
             keys=[udp_key, "0x" + udp_raw.hex(), " ".join("%02x" % b for b in udp_raw),
                   {"saddr": udp_key["saddr"], "proto": 6}]),
        read("label key", names["flows"], map="label", keys=["0"]),
        read("truncated", names["flows"], map="flows", max_entries=1),
        read("raw flows", names["raw"], map="flows"),
        read("raw per_kind", names["raw"], map="per_kind", keys=[0, "0x01000000", 5]),
        read("raw label", names["raw"], map="label"),
        dict(read("check mode", names["flows"], map="label"), check_mode=True),
        {"name": "group defaults", "module_defaults": {"group/bpfd.core.bpf": {"program": names["flows"]}},
         "block": [{"name": "in group", MAP_INFO: {"map": "label"}}]},
        read("unknown program", "%s-nope" % veth.name),
        read("unknown map", names["flows"], map="nope"),
        read("several maps", names["flows"]),
        read("bad key", names["flows"], map="flows", keys=[{"port": 1}]),
        read("raw dict key", names["raw"], map="flows", keys=[{"proto": 1}]),
    ]
    results = playbook(tasks, expect_failure=True)
    failing = {"unknown program", "unknown map", "several maps", "bad key", "raw dict key"}
    for task, res in results.items():
        assert res["_failed"] is (task in failing), (task, res.get("msg"))
        assert res["changed"] is False

    # Decoded through BTF, as bpftool decodes them.
    for task in ("flows", "per_kind", "label"):
        res = results[task]
        pin = _pin(names["flows"], task)
        assert res["map"]["pin_path"] == pin and res["map"]["btf"] is True
        assert _canon(_ours(res["entries"])) == _canon(_bpftool_view(pin)), task
    flows = {json.dumps(e["key"], sort_keys=True): e["value"] for e in results["flows"]["entries"]}
    assert flows[json.dumps(udp_key, sort_keys=True)] == {"packets": UDP_RUNS, "bytes": UDP_RUNS * len(packet)}
    assert flows[json.dumps(icmp_key, sort_keys=True)]["packets"] == PINGS
    flows_map = results["flows"]["map"]
    assert (flows_map["type"], flows_map["key_type"], flows_map["value_type"]) == ("hash", "struct flow", "struct counters")
    assert (flows_map["key_size"], flows_map["value_size"], flows_map["max_entries"]) == (16, 16, 64)
    assert flows_map["id"] == hx.map_id_named(_prog_id(names["flows"]), "flows")
    assert flows_map["per_cpu"] is False and flows_map["possible_cpus"] is None

    # Per-CPU: listed per CPU and summed field by field; IPv4 packets = all flows' packets.
    per_kind = {e["key"]: e for e in results["per_kind"]["entries"]}
    assert results["per_kind"]["map"]["possible_cpus"] == len(per_kind[0]["per_cpu"]) == _possible_cpus()
    for entry in per_kind.values():
        assert entry["value"] == {f: sum(v[f] for v in entry["per_cpu"]) for f in ("packets", "bytes")}
    assert per_kind[0]["value"]["packets"] == sum(v["packets"] for v in flows.values())
    assert results["label"]["entries"] == [{"key": 0, "value": {"name": "bpfd-flows", "delta": -7,
                                                                "verdict": "VERDICT_PASS"}}]
    hits = results["hits"]
    assert (hits["map"]["name"], hits["map"]["key_type"], hits["map"]["value_type"]) == ("hits", "__u32", "__u64")
    assert hits["entries"][0]["value"] == hx.percpu_sum(bpftool_json("map", "dump", "pinned", hits["map"]["pin_path"]), 0)
    assert hits["entries"][0]["value"] >= PINGS + UDP_RUNS

    # Given keys: a dict, the same key as "0x..." and as "0a 00 ..." bytes, and one not there.
    given = results["flow keys"]["entries"]
    assert [e["found"] for e in given] == [True, True, True, False]
    assert all(e["key"] == udp_key and e["value"] == flows[json.dumps(udp_key, sort_keys=True)] for e in given[:3])
    assert given[3]["value"] is None and given[3]["key"]["proto"] == 6
    assert results["label key"]["entries"][0]["value"]["name"] == "bpfd-flows"

    truncated = results["truncated"]
    assert truncated["truncated"] is True and len(truncated["entries"]) == 1
    assert any("only the first 1 entries" in w for w in truncated.get("warnings", []))
    assert results["flows"]["truncated"] is False

    # No BTF: raw hex, byte for byte what bpftool dumps; int and hex keys still work.
    for task, map_name in (("raw flows", "flows"), ("raw label", "label")):
        res = results[task]
        assert res["map"]["btf"] is False and res["map"]["key_type"] is None
        assert _canon(res["entries"]) == _canon(_bpftool_view(_pin(names["raw"], map_name)))
    raw_udp = [e for e in results["raw flows"]["entries"] if e["key"] == " ".join("%02x" % b for b in udp_raw)]
    assert raw_udp and raw_udp[0]["value"] == (struct.pack("=QQ", UDP_RUNS, UDP_RUNS * len(packet))).hex(" ")
    raw_kind = results["raw per_kind"]["entries"]
    assert [(e["key"], e["found"]) for e in raw_kind] == [
        ("00 00 00 00", True), ("01 00 00 00", True), ("05 00 00 00", False)]
    assert raw_kind[0]["value"] is None  # no BTF: no claim about what the bytes are
    bpftool_kind = {e["key"]: e["per_cpu"] for e in _bpftool_view(_pin(names["raw"], "per_kind"))}
    assert raw_kind[0]["per_cpu"] == bpftool_kind["00 00 00 00"]
    assert results["raw label"]["entries"][0]["value"].startswith("62 70 66 64 2d 66 6c 6f 77 73 00")

    assert results["check mode"]["entries"] == results["label"]["entries"]
    assert results["in group"]["entries"] == results["label"]["entries"]

    # Errors a user can act on.
    msg = {task: results[task]["msg"] for task in failing}
    assert msg["unknown program"].startswith("no program named %s-nope is managed by bpfd.core on this host (managed: "
                                             % veth.name)
    assert names["flows"] in msg["unknown program"]
    assert msg["unknown map"] == "program %s has no map named nope (its maps: flows, label, per_kind)" % names["flows"]
    assert msg["several maps"] == "program %s has several maps (flows, label, per_kind): set map" % names["flows"]
    assert msg["bad key"].startswith("key {'port': 1} (keys[0]) does not fit the map's key type struct flow: "
                                     "struct flow has no field port")
    assert "the map has no BTF for its key: give it as hex bytes" in msg["raw dict key"]


def _possible_cpus() -> int:
    """Count of /sys/devices/system/cpu/possible ("0-3", "0,2-5")."""
    text = pathlib.Path("/sys/devices/system/cpu/possible").read_text().strip()
    total = 0
    for part in text.split(","):
        low, _dash, high = part.partition("-")
        total += int(high or low) - int(low) + 1
    return total


def _prog_id(name: str) -> int:
    return manager().list(name=name)["programs"][0]["id"]


# --- who may read a pin ---------------------------------------------------------


def _traverse_blockers(path: str, user: str) -> list:
    """The directories above `path` that `user` may not search (no x bit for them), described."""
    account = pwd.getpwnam(user)
    groups = {g.gr_gid for g in grp.getgrall() if user in g.gr_mem} | {account.pw_gid}
    directory = pathlib.Path(path).parent
    blockers = []
    for current in reversed([directory] + list(directory.parents)):
        st = current.stat()
        if st.st_uid == account.pw_uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            blockers.append("%s (%s:%s %04o)" % (current, pwd.getpwuid(st.st_uid).pw_name,
                                                 grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)))
    return blockers


class _Accounts:
    """A member of group bpfd and a non-member, created for one test and removed."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.member = "bpfdmem%s" % tag
        self.other = "bpfdoth%s" % tag
        self.created_group = False

    def __enter__(self) -> "_Accounts":
        try:
            grp.getgrnam("bpfd")
        except KeyError:
            sh("groupadd", "--system", "bpfd")
            self.created_group = True
        sh("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", "-G", "bpfd", self.member)
        sh("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", self.other)
        return self

    def __exit__(self, *exc) -> None:
        for user in (self.member, self.other):
            sh("userdel", user, check=False)
        if self.created_group:
            sh("groupdel", "bpfd", check=False)

    def run(self, user: str, *argv: str) -> subprocess.CompletedProcess:
        return sh("runuser", "-u", user, "--", *argv, check=False)


@pytest.fixture
def readable_collection():
    """The collection where an unprivileged user can import it (pytest's dirs are 0700)."""
    base = tempfile.mkdtemp(prefix="bpfd-map-info-")
    os.chmod(base, 0o755)
    link = pathlib.Path(base) / "ansible_collections" / "bpfd" / "core"
    link.parent.mkdir(parents=True)
    for part in (link.parent.parent, link.parent):
        os.chmod(part, 0o755)
    link.symlink_to(REPO, target_is_directory=True)
    try:
        yield base
    finally:
        link.unlink()
        shutil.rmtree(base, ignore_errors=True)


_READ_AS_USER = r"""
import json, sys
from ansible_collections.bpfd.core.plugins.module_utils._map_reader import read_pinned
print(json.dumps(read_pinned(sys.argv[1])))
"""


def test_group_bpfd_members_can_read_map_pins(veth, bpf_objects, readable_collection):
    with _Accounts() as users:
        # The group must exist when the maps are pinned: pins take its gid then.
        names = _load(veth, bpf_objects, [("flows", "xdp_flows", 50), ("raw", "xdp_flows_nobtf", 60)])
        packet = hx.ipv4_udp_packet(veth.host_ip, veth.peer_ip)
        hx.run_xdp(hx.dispatcher_id(veth.name), packet, repeat=3)
        btf_pin, raw_pin = _pin(names["flows"], "flows"), _pin(names["raw"], "flows")
        for pin in (btf_pin, raw_pin):
            st = os.stat(pin)
            assert (stat.S_IMODE(st.st_mode), grp.getgrgid(st.st_gid).gr_name) == (0o660, "bpfd"), pin

        blockers = _traverse_blockers(raw_pin, users.member)
        assert not blockers, "group bpfd cannot reach the map pins: %s" % ", ".join(blockers)
        as_member = users.run(users.member, "bpftool", "-j", "map", "dump", "pinned", raw_pin)
        assert as_member.returncode == 0, as_member.stderr + as_member.stdout
        assert json.loads(as_member.stdout) == bpftool_json("map", "dump", "pinned", raw_pin)
        shown = users.run(users.member, "bpftool", "-j", "map", "show", "pinned", btf_pin)
        assert shown.returncode == 0 and json.loads(shown.stdout)["name"] == "flows", shown.stderr
        # bpftool also fetches a map's BTF by id, which the kernel allows to CAP_SYS_ADMIN only
        # (BPF_BTF_GET_FD_BY_ID): opening the pin works, the dump of a BTF map stops there.
        dumped = users.run(users.member, "bpftool", "-j", "map", "dump", "pinned", btf_pin)
        assert dumped.returncode == 0 or "failed to get btf" in dumped.stdout + dumped.stderr, dumped
        # Our reader opens the pin read-only and falls back to bytes without the BTF.
        python = shutil.which("python3", path="/usr/bin:/bin")
        if python:
            env = ["env", "PYTHONPATH=%s" % readable_collection]
            read = users.run(users.member, *env, python, "-c", _READ_AS_USER, btf_pin)
            assert read.returncode == 0, read.stderr
            data = json.loads(read.stdout)
            assert data["entries"] == [{"key": " ".join("%02x" % b for b in struct.pack(
                "=IIHHB3x", _wire_u32(veth.host_ip), _wire_u32(veth.peer_ip), 40000, 5353, 17)),
                "value": struct.pack("=QQ", 3, 3 * len(packet)).hex(" ")}]
            assert any("CAP_SYS_ADMIN" in note for note in data["notes"])

        # Not in the group: refused on the way to the pin.
        refused = users.run(users.other, "bpftool", "map", "show", "pinned", raw_pin)
        assert refused.returncode != 0
        assert _traverse_blockers(raw_pin, users.other)
    assert not _user_exists(users.member) and not _user_exists(users.other)


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


def test_group_can_reach_pins_when_the_modules_create_the_tree(veth, bpf_objects, tmp_path):
    """A host where group bpfd exists but the tree was made by the modules, not the role."""
    bpffs = "/sys/fs/bpf/bpfd-map-info-%s" % uuid.uuid4().hex[:6]
    layout = Layout(bpffs=bpffs, run_dir=str(tmp_path / "run"), lib_dir=str(tmp_path / "lib"))
    mgr = Manager(layout)
    name = "%s-tree" % veth.name
    with _Accounts() as users:
        try:
            mgr.present(ProgramSpec(name=name, kind="xdp", path=bpf_objects["xdp_flows_nobtf"],
                                    interface=veth.name, priority=50))
            pin = os.path.join(layout.map_dir(name), "flows")
            blockers = _traverse_blockers(pin, users.member)
            assert not blockers, "group bpfd cannot reach %s: blocked by %s" % (pin, ", ".join(blockers))
        finally:
            mgr.absent(name=name)
            shutil.rmtree(bpffs, ignore_errors=True)
