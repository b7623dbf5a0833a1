# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers for XDP behaviour tests: packets built with struct, BPF_PROG_TEST_RUN
on a program by kernel id, and independent readings of the kernel (bpftool,
ip, ping) — never through the code under test's own view of itself."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import os
import socket
import struct
import subprocess
import sys
import time
import uuid

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 0, 1, 2, 3, 4
XDP_NAMES = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}

BPFFS_ROOT = pathlib.Path("/sys/fs/bpf")
BPFD_BPFFS = BPFFS_ROOT / "bpfd"
STATE_FILE = pathlib.Path("/run/bpfd/state.json")
XDP_TOOLS_DIR = pathlib.Path("/usr/lib/x86_64-linux-gnu/bpf")

HOST_MAC = bytes.fromhex("020000000001")
PEER_MAC = bytes.fromhex("020000000002")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def bpftool_json(*argv: str, check: bool = True):
    proc = sh("bpftool", "-j", *argv, check=check)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout or "null")


# --- packets -----------------------------------------------------------------


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total & 0xFFFF) + (total >> 16)
    total += total >> 16
    return ~total & 0xFFFF


def ipv4_udp_packet(src: str, dst: str, payload: bytes = b"bpfd.core-test-payload") -> bytes:
    """Ethernet + IPv4 (valid checksum) + UDP 40000 -> 5353."""
    udp = struct.pack("!HHHH", 40000, 5353, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0x4000, 64,
                     socket.IPPROTO_UDP, 0, socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return HOST_MAC + PEER_MAC + struct.pack("!H", 0x0800) + ip + udp


def non_ip_packet() -> bytes:
    """Ethertype 0x88B5 (IEEE local experimental), padded to 64 bytes."""
    frame = HOST_MAC + PEER_MAC + struct.pack("!H", 0x88B5) + b"not-ip"
    return frame + b"\0" * (64 - len(frame))


def truncated_ipv4_packet() -> bytes:
    """Ethertype IPv4 but only 6 bytes of IP header: parsers must bail out."""
    return HOST_MAC + PEER_MAC + struct.pack("!H", 0x0800) + b"\x45\x00\x00\x1c\x00\x00"


# --- programs and maps, by kernel id -----------------------------------------


def run_xdp(prog_id: int, packet: bytes, repeat: int = 1) -> int:
    """BPF_PROG_TEST_RUN on a kernel program id; the verdict."""
    from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
    fd = libbpf.prog_fd_by_id(prog_id)
    try:
        retval, _duration = libbpf.prog_test_run(fd, packet, repeat)
    finally:
        libbpf.close_fd(fd)
    return retval


def attached_xdp(ifname: str) -> list:
    """bpftool's view of the interface's XDP hook: [{id, mode, ...}]."""
    net = bpftool_json("net", "show", "dev", ifname) or [{}]
    return net[0].get("xdp", [])


def dispatcher_id(ifname: str) -> int:
    entries = attached_xdp(ifname)
    assert len(entries) == 1, "expected one XDP program on %s, bpftool shows %s" % (ifname, entries)
    return entries[0]["id"]


def ip_link_xdp(ifname: str) -> dict:
    """`ip -j link show` XDP view: {mode: 1 drv / 2 skb / 3 hw, prog id}."""
    link = json.loads(sh("ip", "-j", "link", "show", "dev", ifname).stdout)[0]
    return link.get("xdp", {})


def xdp_links_running(prog_id: int) -> list:
    """Ids of the xdp bpf_links that run this program (bpftool link show;
    bpftool 7.1 prints no ifindex for xdp links, so match by program)."""
    return [link["id"] for link in bpftool_json("link", "show") or []
            if link.get("type") == "xdp" and link.get("prog_id") == prog_id]


def prog_exists(prog_id: int) -> bool:
    return sh("bpftool", "prog", "show", "id", str(prog_id), check=False).returncode == 0


def map_exists(map_id: int) -> bool:
    return sh("bpftool", "map", "show", "id", str(map_id), check=False).returncode == 0


def wait_gone(exists, obj_id: int, timeout: float = 3.0) -> bool:
    """Kernel objects are freed after an RCU grace period: poll."""
    deadline = time.monotonic() + timeout
    while exists(obj_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def own_prog_fds() -> dict:
    """{fd: program id} for every BPF program fd this process holds open."""
    held = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + fd) != "anon_inode:bpf-prog":
                continue
            for line in pathlib.Path("/proc/self/fdinfo/" + fd).read_text().splitlines():
                if line.startswith("prog_id:"):
                    held[int(fd)] = int(line.split()[1])
        except OSError:
            continue
    return held


def prog_map_ids(prog_id: int) -> list:
    return (bpftool_json("prog", "show", "id", str(prog_id)) or {}).get("map_ids", [])


def map_id_named(prog_id: int, name: str) -> int:
    """The id of the program's map called `name` (bpftool prog/map show)."""
    for map_id in prog_map_ids(prog_id):
        info = bpftool_json("map", "show", "id", str(map_id))
        if info and info.get("name") == name:
            return map_id
    raise AssertionError("program %d has no map named %s" % (prog_id, name))


def _le_int(raw: list) -> int:
    return int.from_bytes(bytes(int(b, 16) for b in raw), "little")


def percpu_sum(dump: list, key: int, offset: int = 0, width: int = 8) -> int:
    """Sum over CPUs of a little-endian field in a per-CPU map's value (raw bytes)."""
    for entry in dump or []:
        if _le_int(entry["key"]) == key:
            return sum(_le_int(v["value"][offset:offset + width]) for v in entry["values"])
    return 0


def hits(map_id: int) -> int:
    """Slot 0 of a fixture's per-CPU `hits` map, summed over CPUs (bpftool map dump)."""
    return percpu_sum(bpftool_json("map", "dump", "id", str(map_id)), 0)


# --- objects we did not build ---------------------------------------------------


def xdp_functions(obj: str) -> list:
    """Function symbols in XDP sections of an ELF object, by llvm-objdump -t."""
    tool = shutil.which("llvm-objdump") or "llvm-objdump"
    out = sh(tool, "-t", obj).stdout
    # "0000000000000000 g     F xdp	0000000000000958 xdpfilt_alw_ip"
    return [m.group(2) for m in re.finditer(r"^\S+\s+g\s+F\s+(xdp\S*)\s+\S+\s+(\S+)$", out, re.M)]


# --- real packets -----------------------------------------------------------------


def ping(ifname: str, address: str, count: int = 1, timeout: float = 1.0,
         interval: float = 0.2) -> bool:
    proc = sh("ping", "-n", "-q", "-c", str(count), "-W", str(timeout), "-i", str(interval),
              "-I", ifname, address, check=False)
    return proc.returncode == 0


def ping_stats(output: str) -> tuple:
    """(transmitted, received) from ping's summary line."""
    found = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    assert found, "no ping summary in: %r" % output
    return int(found.group(1)), int(found.group(2))


class VethPair:
    """A second veth pair (host end in the root ns, peer in a scratch netns),
    on 10.252.x.0/24 so it never overlaps the `veth` fixture's subnet."""

    _counter = [0]

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        VethPair._counter[0] += 1
        index = VethPair._counter[0] % 250
        self.name = "bpfdt%s" % tag
        self.peer = "bpfdp%s" % tag
        self.netns = "bpfd-test-%s" % tag
        self.host_ip = "10.252.%d.1" % index
        self.peer_ip = "10.252.%d.2" % index

    def create(self) -> "VethPair":
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.name, "type", "veth", "peer", "name", self.peer)
        sh("ip", "link", "set", self.peer, "netns", self.netns)
        sh("ip", "addr", "add", self.host_ip + "/24", "dev", self.name)
        sh("ip", "link", "set", self.name, "up")
        sh("ip", "-n", self.netns, "addr", "add", self.peer_ip + "/24", "dev", self.peer)
        sh("ip", "-n", self.netns, "link", "set", self.peer, "up")
        return self

    def destroy(self) -> None:
        sh("ip", "link", "del", self.name, check=False)
        sh("ip", "netns", "del", self.netns, check=False)

    @property
    def ifindex(self) -> int:
        return int(pathlib.Path("/sys/class/net/%s/ifindex" % self.name).read_text())


def quiet(veth) -> None:
    """Take the peer down so no stray packet (IPv6 RS/DAD, ARP) crosses the
    host end's hook: hit counters then count only BPF_PROG_TEST_RUN runs."""
    sh("ip", "-n", veth.netns, "link", "set", veth.peer, "down")


def _mac(netns, ifname: str) -> str:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return json.loads(sh(*prefix, "-j", "link", "show", "dev", ifname).stdout)[0]["address"]


def pin_neighbour(veth) -> None:
    """Permanent ARP entries on both ends: ping then needs no ARP exchange.

    ARP requests from the peer come in through the host end's XDP hook, so a
    drop period leaves neighbour entries INCOMPLETE (next probe ~1 s later)
    and a ping right after it fails for a reason that is not the chain's.
    """
    sh("ip", "neigh", "replace", veth.peer_ip, "lladdr", _mac(veth.netns, veth.peer),
       "dev", veth.name, "nud", "permanent")
    sh("ip", "-n", veth.netns, "neigh", "replace", veth.host_ip, "lladdr", _mac(None, veth.name),
       "dev", veth.peer, "nud", "permanent")


def bpffs_root_entries() -> set:
    return set(p.name for p in BPFFS_ROOT.iterdir())


def recorded_state() -> dict:
    return json.loads(STATE_FILE.read_text()) if STATE_FILE.exists() else {"programs": {}, "hooks": {}}


# --- the Manager in a process of its own ---------------------------------------------

_RUNNER = r"""
import json, sys
from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager, ProgramSpec
op, kwargs = json.loads(sys.argv[1])
manager = Manager()
if op == "present":
    result = manager.present(ProgramSpec(**kwargs))
elif op == "absent":
    result = manager.absent(**kwargs)
else:
    result = manager.list(**kwargs)
print(json.dumps(result))
"""


def manager_in_fresh_process(op: str, **kwargs) -> dict:
    """One Manager call in a new Python process, as one module run is: whatever
    file descriptors the call leaves open are closed when it exits."""
    root = next(p for p in sys.path if p and (pathlib.Path(p) / "ansible_collections" / "bpfd" / "core").exists())
    env = dict(os.environ, PYTHONPATH=root)
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps([op, kwargs])],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, "Manager.%s(%s) failed:\n%s" % (op, kwargs, proc.stderr[-3000:])
    return json.loads(proc.stdout)
