# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The six reliability figures of issue 9, as functions shared by the pytest
suite (tests/reliability/test_reliability.py, small sizes) and the script that
prints the figures (bench/reliability.py, the issue's sizes).

Every scenario works in a private bpfd.core layout (its own bpffs directory,
run dir and lib dir, passed to module runs by BPFD_BPFFS_DIR / BPFD_RUN_DIR /
BPFD_LIB_DIR) on veth pairs into scratch network namespaces of its own
(10.253.x.0/24), so other suites running at the same time are neither disturbed
nor able to disturb the figures. Module runs are Manager calls in processes of
their own (_runner.py), as Ansible runs modules.

What is ours in the kernel is told apart from other users' objects by name:
the objects here are compiled per session with unique function and map names
(rc_<tag>, rp_<tag>, rt_<tag>, map rh_<tag>), and a dispatcher is ours when it
uses one of our maps. Every judgment comes from tools the code under test does
not own: bpftool, ip, tc, ping, UDP sockets, /proc.

Each scenario returns a Figure: the numbers, the problems found (empty when the
guarantee holds) and its run time.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUNNER = HERE / "_runner.py"
BUILD_PY = REPO / "tests" / "fixtures" / "bpf" / "build.py"
PY = sys.executable

SIZES = {
    "small": {"changes": 20, "kills": 20, "concurrent": 4, "cycles": 100},
    "full": {"changes": 100, "kills": 50, "concurrent": 10, "cycles": 1000},
}
SCALE_ENV = "BPFD_RELIABILITY_SCALE"
CRASH_POINTS = ("after_load", "before_swap", "after_swap", "after_save", "after_cleanup", "remove_after_swap")


def sizes(scale: str | None = None) -> dict:
    """small | full | 'changes=50,kills=5,...' (on top of small), from the argument or the env."""
    scale = scale or os.environ.get(SCALE_ENV) or "small"
    if scale in SIZES:
        return dict(SIZES[scale])
    chosen = dict(SIZES["small"])
    for part in filter(None, scale.split(",")):
        key, _sep, value = part.partition("=")
        if key.strip() not in chosen:
            raise ValueError("%s: unknown size %r (known: %s)" % (SCALE_ENV, key, ", ".join(chosen)))
        chosen[key.strip()] = int(value)
    return chosen


@dataclass
class Figure:
    name: str
    numbers: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    seconds: float = 0.0
    details: list = field(default_factory=list)  # what a reader may want to see (messages, notes)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def text(self) -> str:
        verdict = "OK" if not self.problems else "%d PROBLEM(S)" % len(self.problems)
        lines = ["%s (%.1f s): %s" % (self.name, self.seconds, verdict)]
        for key, value in self.numbers.items():
            lines.append("    %-28s %s" % (key, value))
        for problem in self.problems:
            lines.append("  ! %s" % problem)
        return "\n".join(lines)


# =====================================================================================
# The collection on sys.path, commands, kernel views
# =====================================================================================


def collection_root() -> str:
    """A directory holding ansible_collections/bpfd/core (-> this repository), on sys.path."""
    for entry in sys.path:
        if entry and (pathlib.Path(entry) / "ansible_collections" / "bpfd" / "core").exists():
            return entry
    root = pathlib.Path(tempfile.mkdtemp(prefix="bpfd-reliability-collections-"))
    link = root / "ansible_collections" / "bpfd" / "core"
    link.parent.mkdir(parents=True)
    link.symlink_to(REPO)

    def cleanup() -> None:
        link.unlink(missing_ok=True)  # the link first: never walk into the repository
        shutil.rmtree(root, ignore_errors=True)
    atexit.register(cleanup)
    sys.path.insert(0, str(root))
    return str(root)


def sh(*argv: str, check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess:
    argv = (("ip", "netns", "exec", netns) if netns else ()) + argv
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), proc.returncode, proc.stderr.strip()))
    return proc


def bpftool(*argv: str, netns: str | None = None):
    proc = sh("bpftool", "-j", *argv, check=False, netns=netns)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout or "null")


def kernel_objects() -> dict:
    """Every program, map and link the kernel holds (bpftool -j ... show)."""
    return {"progs": bpftool("prog", "show") or [], "maps": bpftool("map", "show") or [],
            "links": bpftool("link", "show") or []}


def net_view(dev: str, netns: str | None = None) -> dict:
    """bpftool net for one device: {xdp: [...], tc: [...], tcx: [...]} (ids, names, modes)."""
    found = bpftool("net", "show", "dev", dev, netns=netns)
    if not found:
        return {}
    entry = found[0]
    return {k: sorted(json.dumps(x, sort_keys=True) for x in entry.get(k, [])) for k in sorted(entry)}


def attached_xdp(dev: str, netns: str | None = None) -> list:
    found = bpftool("net", "show", "dev", dev, netns=netns) or [{}]
    return [p["id"] for p in found[0].get("xdp", [])]


def cls_bpf_attached(dev: str, netns: str | None = None) -> dict:
    """{direction: [program ids]} of the cls_bpf filters on a device's clsact (bpftool net)."""
    found = bpftool("net", "show", "dev", dev, netns=netns) or [{}]
    attached: dict = {}
    for entry in found[0].get("tc", []):
        direction = entry.get("kind", "").split("/")[-1]
        attached.setdefault(direction, []).append(entry["id"])
    return attached


def wait_until(predicate, timeout: float = 3.0, interval: float = 0.05) -> bool:
    """Kernel objects are freed after an RCU grace period: poll."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def percpu_sum(dump: list, key: int = 0) -> int:
    def le(raw):
        return int.from_bytes(bytes(int(b, 16) for b in raw), "little")
    for entry in dump or []:
        if le(entry["key"]) == key:
            return sum(le(v["value"][:8]) for v in entry["values"])
    return 0


def hits_pinned(pin: str) -> int:
    return percpu_sum(bpftool("map", "dump", "pinned", pin))


def own_fds() -> dict:
    """{fd: what it points at} for this process (anon_inode:bpf-prog, a socket, ...)."""
    held = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held[int(fd)] = os.readlink("/proc/self/fd/" + fd)
    return held


def rss_kib() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def prog_test_run(prog_id: int, packet: bytes) -> int:
    """BPF_PROG_TEST_RUN once on a program by id: its verdict."""
    from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
    fd = libbpf.prog_fd_by_id(prog_id)
    try:
        return libbpf.prog_test_run(fd, packet, 1)[0]
    finally:
        libbpf.close_fd(fd)


def udp_packet(src: str, dst: str) -> bytes:
    payload = b"bpfd.core-reliability"
    udp = struct.pack("!HHHH", 40000, 5353, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return bytes.fromhex("020000000001020000000002") + b"\x08\x00" + ip + udp


# =====================================================================================
# BPF objects: fixtures, plus objects with names unique to this session
# =====================================================================================

_OURS = {
    # XDP: counts every run in its own per-CPU map, passes.
    "count": """
        struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 1);
                 __type(key, __u32); __type(value, __u64); } rh_TAG SEC(".maps");
        SEC("xdp") int rc_TAG(struct xdp_md *ctx)
        { __u32 k = 0; __u64 *v = bpf_map_lookup_elem(&rh_TAG, &k); if (v) *v += 1; return XDP_PASS; }
    """,
    # XDP: the same map name as `count`, another map type (map_owner cannot share it).
    "array": """
        struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
                 __type(key, __u32); __type(value, __u64); } rh_TAG SEC(".maps");
        SEC("xdp") int ra_TAG(struct xdp_md *ctx)
        { __u32 k = 0; __u64 *v = bpf_map_lookup_elem(&rh_TAG, &k); if (v) __sync_fetch_and_add(v, 1);
          return XDP_PASS; }
    """,
    # XDP: passes, no map.
    "pass": """
        SEC("xdp") int rp_TAG(struct xdp_md *ctx) { return XDP_PASS; }
    """,
    # TC: counts, returns TC_ACT_OK.
    "tc_count": """
        struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 1);
                 __type(key, __u32); __type(value, __u64); } rh_TAG SEC(".maps");
        SEC("tc") int rt_TAG(struct __sk_buff *skb)
        { __u32 k = 0; __u64 *v = bpf_map_lookup_elem(&rh_TAG, &k); if (v) *v += 1; return 0; }
    """,
    # XDP: reads packet data without a bounds check: the verifier refuses it alone.
    "unsafe": """
        SEC("xdp") int ru_TAG(struct xdp_md *ctx) { return *(int *)(long)ctx->data; }
    """,
}
# The verifier accepts it alone and refuses it inside the dispatcher: a tail call forces
# the member to be called, not inlined, and 1 + 7 nested subprograms is the verifier's
# maximum of 8 frames alone (test_xdp_program.py's deep_calls, with our names).
_DEEP_LEVELS = 7


def _deep_source() -> str:
    parts = ["struct { __uint(type, BPF_MAP_TYPE_PROG_ARRAY); __uint(max_entries, 1);"
             " __type(key, __u32); __type(value, __u32); } rj_TAG SEC(\".maps\");",
             "static __attribute__((noinline)) int level%d(struct xdp_md *ctx)"
             " { volatile int k = XDP_PASS; return ctx ? k : XDP_DROP; }" % _DEEP_LEVELS]
    for i in range(_DEEP_LEVELS - 1, 0, -1):
        parts.append("static __attribute__((noinline)) int level%d(struct xdp_md *ctx)"
                     " { volatile int k = 1; return level%d(ctx) * k; }" % (i, i + 1))
    parts.append('SEC("xdp") int rd_TAG(struct xdp_md *ctx) { bpf_tail_call(ctx, &rj_TAG, 0); return level1(ctx); }')
    return "\n".join(parts)


FIXTURES = ["xdp_pass", "xdp_count_pass", "xdp_subprog", "xdp_loop", "xdp_pass_nobtf", "xdp_rodata_verdict",
            "xdp_two_progs", "tc_pass", "not_bpf", "tracepoint_openat"]


@dataclass
class Objects:
    tag: str
    paths: dict  # name -> object path

    def __getitem__(self, name: str) -> str:
        return self.paths[name]

    @property
    def prog_names(self) -> set:
        return {"%s_%s" % (p, self.tag) for p in ("rc", "ra", "rp", "rt", "ru", "rd")}

    @property
    def map_name(self) -> str:
        return "rh_" + self.tag


def build_objects(outdir: pathlib.Path) -> Objects:
    """The fixtures of tests/fixtures/bpf, and ours compiled with this session's tag."""
    spec = importlib.util.spec_from_file_location("bpfd_fixture_build", BUILD_PY)
    build = sys.modules.get("bpfd_fixture_build")
    if build is None:
        build = importlib.util.module_from_spec(spec)
        sys.modules["bpfd_fixture_build"] = build
        spec.loader.exec_module(build)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {name: str(path) for name, path in build.build_fixtures(outdir, FIXTURES).items()}
    tag = os.urandom(3).hex()
    clang = build.find_clang()
    sources = dict(_OURS, deep=_deep_source())
    for name, body in sources.items():
        src = outdir / ("rel_%s.bpf.c" % name)
        src.write_text("#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
                       + textwrap.dedent(body).replace("TAG", tag)
                       + '\nchar LICENSE[] SEC("license") = "GPL";\n')
        out = outdir / ("rel_%s_%s.o" % (name, tag))
        subprocess.run([clang, "-O2", "-g", "-target", "bpf", "-Wall", *build._include_flags(),
                        "-c", str(src), "-o", str(out)], check=True, capture_output=True)
        paths[name] = str(out)
    return Objects(tag, paths)


def variant(path: str, workdir: pathlib.Path) -> str:
    """A copy of an object with bytes appended: the same program, another sha256 (a bytecode update)."""
    data = pathlib.Path(path).read_bytes() + os.urandom(16)
    out = workdir / ("v-%s-%s" % (uuid.uuid4().hex[:8], os.path.basename(path)))
    out.write_bytes(data)
    return str(out)


# =====================================================================================
# A private bpfd.core host: layout, module runs in processes of their own
# =====================================================================================


class Host:
    """A bpfd.core tree of its own. With `private_bpffs`, its bpffs is a bpf
    filesystem mounted for it alone (it can be unmounted and remounted)."""

    def __init__(self, workdir: pathlib.Path, private_bpffs: bool = False) -> None:
        from ansible_collections.bpfd.core.plugins.module_utils._state import Layout
        self.tag = os.urandom(3).hex()
        self.workdir = workdir
        self.mount = None
        if private_bpffs:
            self.mount = "/tmp/bpfd-rel-bpffs-%s" % self.tag
            os.makedirs(self.mount)
            sh("mount", "-t", "bpf", "bpf", self.mount)
            bpffs = os.path.join(self.mount, "bpfd")
        else:
            bpffs = "/sys/fs/bpf/bpfd-rel-%s" % self.tag
        self.layout = Layout(bpffs=bpffs, run_dir=str(workdir / ("run-" + self.tag)),
                             lib_dir=str(workdir / ("lib-" + self.tag)))
        self.env = dict(os.environ, BPFD_BPFFS_DIR=self.layout.bpffs, BPFD_RUN_DIR=self.layout.run_dir,
                        BPFD_LIB_DIR=self.layout.lib_dir, PYTHONPATH=collection_root())
        self.env.pop("BPFD_CRASH_AT", None)

    # --- module runs ---------------------------------------------------------------

    def start(self, op: str, crash_at: str | None = None, go: str | None = None,
              check_mode: bool = False, **kwargs) -> subprocess.Popen:
        env = dict(self.env, **({"BPFD_CRASH_AT": crash_at} if crash_at else {}))
        request = {"op": op, "kwargs": kwargs, "go": go, "check_mode": check_mode}
        return subprocess.Popen([PY, str(RUNNER), json.dumps(request)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    @staticmethod
    def outcome(proc: subprocess.Popen, timeout: float = 120) -> dict:
        """The run's result; {"killed": signal} when it died; {"crashed": stderr} on no result."""
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode < 0:
            return {"killed": -proc.returncode, "stderr": err}
        try:
            result = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"crashed": True, "failed": True, "rc": proc.returncode, "stderr": err, "stdout": out,
                    "msg": "no result: %s" % err.strip()[-500:]}
        result["stderr"] = err
        return result

    def run(self, op: str, crash_at: str | None = None, **kwargs) -> dict:
        return self.outcome(self.start(op, crash_at=crash_at, **kwargs))

    def manager(self):
        from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager
        return Manager(self.layout)

    # --- what it recorded ----------------------------------------------------------

    def state(self) -> dict:
        try:
            return json.loads(pathlib.Path(self.layout.state_file).read_text())
        except FileNotFoundError:
            return {"version": 1, "programs": {}, "hooks": {}}

    def declared(self) -> dict:
        """declared.json's programs (what a restore at boot brings back)."""
        try:
            return json.loads(pathlib.Path(self.layout.lib_dir, "declared.json").read_text()).get("programs", {})
        except (FileNotFoundError, ValueError):
            return {}

    def pins(self) -> list:
        """Every file (pin) below the bpffs directory, relative."""
        found = []
        for root, _dirs, files in os.walk(self.layout.bpffs):
            found += [os.path.relpath(os.path.join(root, f), self.layout.bpffs) for f in files]
        return sorted(found)

    def pin_tree(self) -> list:
        """(path, kind, mode, uid, gid, inode) of everything below the bpffs dir: a
        re-pinned object has another inode, so equal trees hold the same objects."""
        found = []
        for root, dirs, files in os.walk(self.layout.bpffs):
            for name in dirs + files:
                path = os.path.join(root, name)
                st = os.lstat(path)
                found.append((os.path.relpath(path, self.layout.bpffs), "d" if name in dirs else "f",
                              oct(st.st_mode), st.st_uid, st.st_gid, st.st_ino))
        return sorted(found)

    def files(self) -> dict:
        """sha256 of every file in the run and lib dirs (state.json, declared.json, bytecode)."""
        found = {}
        for top in (self.layout.run_dir, self.layout.lib_dir):
            for root, _dirs, files in os.walk(top):
                for name in files:
                    path = os.path.join(root, name)
                    found[os.path.relpath(path, self.workdir)] = hashlib.sha256(
                        pathlib.Path(path).read_bytes()).hexdigest()
        return found

    # --- the end -------------------------------------------------------------------

    def cleanup(self) -> None:
        """Unload everything it manages; leave no pin, mount or directory."""
        from ansible_collections.bpfd.core.plugins.module_utils._state import remove_pin_tree
        with contextlib.suppress(Exception):
            mgr = self.manager()
            for prog in mgr.list()["programs"]:
                with contextlib.suppress(Exception):
                    mgr.absent(name=prog["name"])
            mgr.absent(name="-")  # a mutating run: reconciles what vanished
        with contextlib.suppress(Exception):
            remove_pin_tree(self.layout.bpffs)
        if self.mount:
            sh("umount", self.mount, check=False)
            with contextlib.suppress(OSError):
                os.rmdir(self.mount)
        for top in (self.layout.run_dir, self.layout.lib_dir):
            shutil.rmtree(top, ignore_errors=True)


def spec(name: str, path: str, iface: str, priority: int, kind: str = "xdp", **extra) -> dict:
    return dict(name=name, kind=kind, path=path, interface=iface, priority=priority, **extra)


# =====================================================================================
# veth pairs into scratch namespaces, traffic
# =====================================================================================


def _free_subnet() -> int:
    used = set(re.findall(r"10\.253\.(\d+)\.", sh("ip", "-o", "addr", "show").stdout))
    for _attempt in range(500):
        candidate = random.randint(1, 254)
        if str(candidate) not in used:
            return candidate
    raise RuntimeError("no free 10.253.x.0/24")


class Veth:
    """host end `name` (10.253.x.1) in the root namespace, `peer` (10.253.x.2) in
    netns `netns`; IPv6 off and permanent neighbours: the only packets crossing
    the host end's hooks are the ones a scenario sends."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name, self.peer, self.netns = "brlt" + tag, "brlp" + tag, "bpfd-rel-" + tag
        self.netns_path = "/run/netns/" + self.netns
        x = _free_subnet()
        self.host_ip, self.peer_ip = "10.253.%d.1" % x, "10.253.%d.2" % x

    def create(self) -> "Veth":
        sh("ip", "netns", "add", self.netns)
        try:
            sh("ip", "link", "add", self.name, "type", "veth", "peer", "name", self.peer)
            sh("ip", "link", "set", self.peer, "netns", self.netns)
            sh("sysctl", "-q", "-w", "net.ipv6.conf.%s.disable_ipv6=1" % self.name)
            sh("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", netns=self.netns)
            sh("ip", "addr", "add", self.host_ip + "/24", "dev", self.name)
            sh("ip", "link", "set", self.name, "up")
            sh("ip", "-n", self.netns, "addr", "add", self.peer_ip + "/24", "dev", self.peer)
            sh("ip", "-n", self.netns, "link", "set", self.peer, "up")
            sh("ip", "-n", self.netns, "link", "set", "lo", "up")
            host_mac = json.loads(sh("ip", "-j", "link", "show", "dev", self.name).stdout)[0]["address"]
            peer_mac = json.loads(sh("ip", "-n", self.netns, "-j", "link", "show", "dev", self.peer).stdout)[0]["address"]
            sh("ip", "neigh", "replace", self.peer_ip, "lladdr", peer_mac, "dev", self.name, "nud", "permanent")
            sh("ip", "-n", self.netns, "neigh", "replace", self.host_ip, "lladdr", host_mac, "dev", self.peer,
               "nud", "permanent")
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        sh("ip", "link", "del", self.name, check=False)
        sh("ip", "netns", "del", self.netns, check=False)

    @property
    def ifindex(self) -> int:
        return int(pathlib.Path("/sys/class/net/%s/ifindex" % self.name).read_text())

    def exists(self) -> bool:
        return os.path.exists("/sys/class/net/%s" % self.name)

    def ping(self, count: int = 2) -> bool:
        return sh("ping", "-n", "-q", "-c", str(count), "-W", "1", "-i", "0.05", "-I", self.name, self.peer_ip,
                  check=False).returncode == 0

    def start_ping(self, interval: float = 0.01) -> subprocess.Popen:
        """A ping that runs until stopped (stop_ping): echo replies cross the host end's hooks."""
        return subprocess.Popen(["ping", "-n", "-q", "-i", str(interval), "-W", "1", "-I", self.name,
                                 self.peer_ip], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_ping(proc: subprocess.Popen) -> tuple:
    """(transmitted, received) of a ping started with start_ping."""
    time.sleep(1.0)  # replies of the last requests are on their way
    proc.send_signal(signal.SIGINT)
    out, _err = proc.communicate(timeout=10)
    found = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


_SENDER = r"""
import json, signal, socket, struct, sys, time
dst, port, limit, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.connect((dst, port))
sent = errors = 0
print("ready", flush=True)
start = time.monotonic()
while sent < limit and not stop:
    due = start + sent / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    try:
        sock.send(struct.pack("!Q", sent) + b"r" * 56)
        sent += 1
    except OSError:
        errors += 1
print(json.dumps({"sent": sent, "send_errors": errors, "seconds": round(time.monotonic() - start, 3)}), flush=True)
"""

_RECEIVER = r"""
import json, signal, socket, struct, sys
addr, port, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: no drop at the socket
sock.bind((addr, port))
sock.settimeout(0.1)
seen = bytearray(limit)
received = duplicates = 0
print("ready", flush=True)
while True:
    try:
        data = sock.recv(2048)
    except socket.timeout:
        if stop:
            break
        continue
    seq = struct.unpack("!Q", data[:8])[0]
    if seq < limit:
        if seen[seq]:
            duplicates += 1
        seen[seq] = 1
    received += 1
drops = None
with open("/proc/net/udp") as udp:
    for line in udp.readlines()[1:]:
        cols = line.split()
        if int(cols[1].split(":")[1], 16) == port:
            drops = int(cols[-1])
print(json.dumps({"received": received, "duplicates": duplicates, "socket_drops": drops,
                  "seen": seen[:limit].hex()}), flush=True)
"""


class UdpFlood:
    """A paced UDP stream from the peer (inside its namespace) to the host end:
    every datagram crosses the host end's XDP hook; both sides count, by sequence number."""

    def __init__(self, veth: Veth, rate: float, limit: int) -> None:
        self.veth, self.rate, self.limit = veth, rate, limit
        self.port = random.randint(20000, 60000)

    def __enter__(self) -> "UdpFlood":
        self.receiver = subprocess.Popen([PY, "-c", _RECEIVER, self.veth.host_ip, str(self.port), str(self.limit)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.receiver.stdout.readline().strip() == "ready", self.receiver.stderr.read()
        self.sender = subprocess.Popen(["ip", "netns", "exec", self.veth.netns, PY, "-c", _SENDER, self.veth.host_ip,
                                        str(self.port), str(self.limit), str(self.rate)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.sender.stdout.readline().strip() == "ready", self.sender.stderr.read()
        return self

    def running(self) -> bool:
        return self.sender.poll() is None

    def stop(self) -> dict:
        if self.sender.poll() is None:
            self.sender.send_signal(signal.SIGTERM)
        sent = json.loads(self.sender.communicate(timeout=30)[0].strip().splitlines()[-1])
        time.sleep(0.5)
        self.receiver.send_signal(signal.SIGTERM)
        got = json.loads(self.receiver.communicate(timeout=30)[0].strip().splitlines()[-1])
        seen = bytes.fromhex(got.pop("seen"))
        missing = [i for i in range(sent["sent"]) if not seen[i]]
        return dict(sent, **got, lost=sent["sent"] - (got["received"] - got["duplicates"]),
                    missing=_ranges(missing))

    def __exit__(self, *exc) -> None:
        for proc in (self.sender, self.receiver):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _ranges(numbers: list) -> str:
    out: list = []
    runs: list = []  # [first, last] of each run of consecutive numbers
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    out = ["%d-%d" % (a, b) if a != b else str(a) for a, b in runs]
    return ",".join(out[:20]) + (" ..." if len(out) > 20 else "")


def veth_drops(veth: Veth) -> dict:
    """rx/tx drop counters of both ends (ip -s -j link): losses that are not the chain's."""
    def stats(argv):
        link = json.loads(sh(*argv).stdout)[0]["stats64"]
        return {"rx_dropped": link["rx"]["dropped"], "tx_dropped": link["tx"]["dropped"]}
    return {"host": stats(["ip", "-s", "-j", "link", "show", "dev", veth.name]),
            "peer": stats(["ip", "-n", veth.netns, "-s", "-j", "link", "show", "dev", veth.peer])}


# =====================================================================================
# Consistency: what the kernel and bpffs hold vs what the state records
# =====================================================================================


def ours_in_kernel(objects: Objects) -> dict:
    """Our programs, maps, dispatchers and links, found by name in bpftool's lists."""
    everything = kernel_objects()
    maps = {m["id"] for m in everything["maps"] if m.get("name") == objects.map_name}
    members = {p["id"] for p in everything["progs"] if p.get("name") in objects.prog_names}
    dispatchers = {p["id"] for p in everything["progs"]
                   if p.get("name") in ("bpfd_xdp_disp", "bpfd_tc_disp") and set(p.get("map_ids", [])) & maps}
    links = {lk["id"] for lk in everything["links"] if lk.get("prog_id") in dispatchers}
    return {"members": members, "maps": maps, "dispatchers": dispatchers, "links": links}


def recorded_objects(state: dict, objects: Objects) -> dict:
    """What the state says must be alive, in the same shape as ours_in_kernel."""
    members, maps, hooks = set(), set(), set()
    for record in state["programs"].values():
        if record.get("prog_id") and record.get("bpf_function_name") in objects.prog_names:
            members.add(record["prog_id"])
        for name, info in (record.get("maps") or {}).items():
            if name == objects.map_name:
                maps.add(info["id"])
                hooks.add(record["hook"])  # its dispatcher uses our map: we can tell it is ours
    ours = [h for k, h in state["hooks"].items() if k in hooks]
    dispatchers = {h["dispatcher_id"] for h in ours if h.get("dispatcher_id")}
    links = {h["link_id"] for h in ours if h.get("link_id")}
    return {"members": members, "maps": maps, "dispatchers": dispatchers, "links": links}


def expected_pins(state: dict, map_name: str | None = None) -> set:
    """The pins the state implies: programs/<n>/prog_<id>, maps/<owner>/<map>, hooks/<k>/link."""
    pins = set()
    for name, record in state["programs"].items():
        for pin in (record.get("prog_pin"), record.get("link_pin")):
            if pin:
                pins.add("programs/%s/%s" % (name, os.path.basename(pin)))
        owner = record.get("map_owner") or name
        for mname, info in (record.get("maps") or {}).items():
            if not info.get("internal"):
                pins.add("maps/%s/%s" % (owner, mname))
    for owner, path in (state.get("retained_maps") or {}).items():
        pins.add("maps/%s/%s" % (owner, map_name or "*"))
    for key, hook in state["hooks"].items():
        if hook.get("link_pin"):
            pins.add("hooks/%s/link" % key)
    return pins


def consistency(host: Host, objects: Objects, veths: list, wait: float = 3.0) -> list:
    """Problems: the state does not parse, or the kernel / bpffs hold something of
    ours the state does not record (or miss what it records)."""
    problems = []
    for path in (host.layout.state_file, os.path.join(host.layout.lib_dir, "declared.json")):
        if os.path.exists(path):
            try:
                json.loads(pathlib.Path(path).read_text())
            except ValueError as exc:
                problems.append("%s does not parse: %s" % (path, exc))
    state = host.state()
    # The declaration (for restore at boot) holds every program that runs; it may hold more
    # (programs whose interface vanished stay declared).
    declared = host.declared()
    undeclared = sorted(n for n, r in state["programs"].items() if (declared.get(n) or {}).get("sha256") != r["sha256"])
    if undeclared:
        problems.append("running but not declared as they run (declared.json): %s" % undeclared)
    want = recorded_objects(state, objects)
    have = {}

    def settled() -> bool:
        have.update(ours_in_kernel(objects))
        return all(have[k] == want[k] for k in want)
    wait_until(settled, timeout=wait)  # freed objects go after an RCU grace period
    for kind in ("members", "maps", "dispatchers", "links"):
        extra, missing = have[kind] - want[kind], want[kind] - have[kind]
        if extra:
            problems.append("kernel %s of ours the state does not record: %s" % (kind, sorted(extra)))
        if missing:
            problems.append("recorded %s missing in the kernel: %s" % (kind, sorted(missing)))
    pins = set(host.pins())
    expected = expected_pins(state, objects.map_name)
    expected_exact = {p for p in expected if not p.endswith("/*")}
    wildcard = {p[:-1] for p in expected if p.endswith("/*")}
    extra = {p for p in pins - expected_exact if not any(p.startswith(w) for w in wildcard)}
    if extra:
        problems.append("pins the state does not record: %s" % sorted(extra))
    if expected_exact - pins:
        problems.append("pins the state records that do not exist: %s" % sorted(expected_exact - pins))
    # every pin holds the object the state names
    for name, record in state["programs"].items():
        pin = record.get("prog_pin")
        if pin and os.path.exists(pin):
            info = bpftool("prog", "show", "pinned", pin) or {}
            if info.get("id") != record["prog_id"]:
                problems.append("%s holds program %s, the state says %s" % (pin, info.get("id"), record["prog_id"]))
        owner = record.get("map_owner") or name
        for mname, minfo in (record.get("maps") or {}).items():
            mpin = os.path.join(host.layout.map_dir(owner), mname)
            if not minfo.get("internal") and os.path.exists(mpin):
                info = bpftool("map", "show", "pinned", mpin) or {}
                if info.get("id") != minfo["id"]:
                    problems.append("%s holds map %s, program %s uses map %s" % (mpin, info.get("id"), name, minfo["id"]))
    # every hook runs the recorded dispatcher with the recorded members, in order
    devices = {(v.name, None): v for v in veths}
    for key, hook in state["hooks"].items():
        members = sorted((r for r in state["programs"].values() if r["hook"] == key),
                         key=lambda r: (r["priority"], r["name"]))
        if hook["members"] != [r["name"] for r in members]:
            problems.append("hook %s records members %s, the programs say %s"
                            % (key, hook["members"], [r["name"] for r in members]))
        if hook.get("link_pin") and os.path.exists(hook["link_pin"]):
            info = bpftool("link", "show", "pinned", hook["link_pin"]) or {}
            if (info.get("id"), info.get("prog_id")) != (hook.get("link_id"), hook.get("dispatcher_id")):
                problems.append("hook %s: link pin holds link %s -> prog %s, the state says %s -> %s"
                                % (key, info.get("id"), info.get("prog_id"), hook.get("link_id"),
                                   hook.get("dispatcher_id")))
        if hook["kind"] == "xdp" and (hook["interface"], hook.get("netns")) in devices:
            attached = attached_xdp(hook["interface"])
            if attached != [hook["dispatcher_id"]]:
                problems.append("%s runs XDP programs %s, the state says dispatcher %s"
                                % (hook["interface"], attached, hook["dispatcher_id"]))
        if hook["mode"] == "cls_bpf" and (hook["interface"], hook.get("netns")) in devices:
            attached = cls_bpf_attached(hook["interface"]).get(hook["direction"], [])
            if attached != [hook["dispatcher_id"]]:
                problems.append("%s %s runs cls_bpf programs %s, the state says dispatcher %s"
                                % (hook["interface"], hook["direction"], attached, hook["dispatcher_id"]))
    for veth in veths:
        if not veth.exists():
            continue
        for direction, attached in cls_bpf_attached(veth.name).items():
            if attached and not any(h["interface"] == veth.name and h.get("mode") == "cls_bpf"
                                    and h["direction"] == direction for h in state["hooks"].values()):
                problems.append("%s %s runs cls_bpf programs %s the state does not record"
                                % (veth.name, direction, attached))
        if veth.exists() and not any(h["kind"] == "xdp" and h["interface"] == veth.name and not h.get("netns")
                                     for h in state["hooks"].values()):
            attached = attached_xdp(veth.name)
            if attached:
                problems.append("%s runs XDP programs %s the state does not record" % (veth.name, attached))
    return problems


def host_snapshot(host: Host, objects: Objects, devices: list) -> dict:
    """What a failed run must leave byte-identical: bpftool net of our devices, our
    programs / maps / dispatchers / links, tc qdiscs, the pin tree, the state files."""
    snap = {"kernel": {k: sorted(v) for k, v in ours_in_kernel(objects).items()},
            "pins": host.pin_tree(), "files": host.files(), "net": {}, "qdiscs": {}, "filters": {}}
    for dev, netns in devices:
        snap["net"][dev] = net_view(dev, netns)
        snap["qdiscs"][dev] = sh("tc", "qdisc", "show", "dev", dev, check=False, netns=netns).stdout
        snap["filters"][dev] = [sh("tc", "filter", "show", "dev", dev, d, check=False, netns=netns).stdout
                                for d in ("ingress", "egress")]
    return snap


def snapshot_diff(before: dict, after: dict) -> list:
    diffs = []
    for key in before:
        if before[key] != after[key]:
            if isinstance(before[key], dict):
                for sub in sorted(set(before[key]) | set(after[key])):
                    if before[key].get(sub) != after[key].get(sub):
                        diffs.append("%s/%s: %s -> %s" % (key, sub, before[key].get(sub), after[key].get(sub)))
            else:
                b, a = set(map(str, before[key])), set(map(str, after[key]))
                diffs.append("%s: gone %s, new %s" % (key, sorted(b - a), sorted(a - b)))
    return diffs


def clean_failure(result: dict, phrases: tuple) -> list:
    problems = []
    if not result.get("failed"):
        return ["did not fail: %s" % json.dumps({k: v for k, v in result.items() if k != "stderr"})[:300]]
    msg = result.get("msg", "")
    for phrase in phrases:
        if phrase.lower() not in msg.lower():
            problems.append("message lacks %r: %s" % (phrase, msg))
    if "Traceback" in json.dumps(result) or "unexpected error" in msg:
        problems.append("not a clean failure: %s" % (result.get("exception") or msg)[-800:])
    return problems


def clean_run(result: dict, what: str) -> list:
    """A module run that must succeed: no failure, no traceback."""
    if result.get("killed"):
        return ["%s: killed by signal %d" % (what, result["killed"])]
    if result.get("failed"):
        return ["%s failed: %s" % (what, (result.get("exception") or result.get("msg", ""))[-800:])]
    if "Traceback" in result.get("stderr", ""):
        return ["%s: traceback on stderr: %s" % (what, result["stderr"][-800:])]
    return []


def _median(values: list) -> float:
    return sorted(values)[len(values) // 2] if values else 0.0


# =====================================================================================
# 1. No packet lost across swaps; a counter keeps counting across in-place updates
# =====================================================================================

# Members that pass alone; every proceed_on below contains "pass", so every packet
# runs every member (the counting base member too, wherever it sits).
_PASSING = ["xdp_pass", "xdp_count_pass", "xdp_subprog", "xdp_loop", "xdp_pass_nobtf", "xdp_rodata_verdict",
            "pass", "count"]
_PROCEED_ON = [None, ["pass"], ["pass", "drop"], ["aborted", "drop", "pass", "tx", "redirect", "dispatcher_return"]]


def _change_plan(count: int, rng: random.Random) -> list:
    """add / reprioritise / update bytecode / remove in a mix (at most 10 members; the
    counting base member is updated in place too, never removed)."""
    pattern = ["add", "reprioritise", "update", "add", "update_base", "remove", "reprioritise", "remove"]
    return [pattern[i % len(pattern)] for i in range(count)]


def zero_loss(objects: Objects, changes: int, workdir: pathlib.Path, rate: float = 1000.0,
              seed: int = 9) -> Figure:
    """Paced UDP from the peer across the host end's XDP hook while `changes` module
    runs change the chain; sender and receiver count by sequence number."""
    fig = Figure("1. zero loss across swaps")
    started = time.monotonic()
    rng = random.Random(seed)
    veth, host = Veth().create(), Host(workdir)
    try:
        base = veth.name + "-base"
        first = host.run("present", **spec(base, objects["count"], veth.name, 500))
        fig.problems += clean_run(first, "loading the base member")
        if fig.problems:
            return fig
        hits_pin = os.path.join(host.layout.map_dir(base), objects.map_name)
        map_id = bpftool("map", "show", "pinned", hits_pin)["id"]
        link_id = first["program"]["link_id"]
        members = {base: {"path": objects["count"], "priority": 500, "proceed_on": None}}
        serial, counts, timings, dispatchers = 0, {}, [], {first["program"]["dispatcher_id"]}
        hits_before = hits_pinned(hits_pin)
        with UdpFlood(veth, rate, limit=int(rate * (changes * 2.0 + 30))) as flood:
            time.sleep(0.3)
            for op in _change_plan(changes, rng):
                others = sorted(n for n in members if n != base)
                if op == "add" and len(members) >= 10:
                    op = "reprioritise"
                if op == "remove" and not others:
                    op = "add"
                if op == "update" and not others:
                    op = "update_base"
                if op == "add":
                    serial += 1
                    name = "%s-m%d" % (veth.name, serial)
                    members[name] = {"path": objects[rng.choice(_PASSING)], "priority": rng.randint(0, 1000),
                                     "proceed_on": rng.choice(_PROCEED_ON)}
                elif op == "reprioritise":
                    name = rng.choice(sorted(members))
                    members[name].update(priority=rng.randint(0, 1000), proceed_on=rng.choice(_PROCEED_ON))
                elif op in ("update", "update_base"):
                    name = base if op == "update_base" else rng.choice(others)
                    members[name]["path"] = variant(members[name]["path"], workdir)
                else:
                    name = rng.choice(others)
                    del members[name]
                t0 = time.monotonic()
                if op == "remove":
                    result = host.run("absent", name=name)
                else:
                    m = members[name]
                    result = host.run("present", **spec(name, m["path"], veth.name, m["priority"],
                                                        proceed_on=m["proceed_on"]))
                timings.append(time.monotonic() - t0)
                counts[op] = counts.get(op, 0) + 1
                fig.problems += clean_run(result, "%s %s" % (op, name))
                if not result.get("changed"):
                    fig.problem("%s %s changed nothing" % (op, name))
                dispatchers.update(attached_xdp(veth.name))
            still_sending = flood.running()
            time.sleep(0.3)
            traffic = flood.stop()
        if not still_sending:
            fig.problem("the sender stopped before the changes did: the figure proves nothing")
        hits = hits_pinned(hits_pin) - hits_before
        map_after = (bpftool("map", "show", "pinned", hits_pin) or {}).get("id")
        state = host.state()
        hook = next(iter(state["hooks"].values()))
        fig.numbers.update({
            "changes (module runs)": "%d: %s" % (len(timings), ", ".join("%s %d" % kv for kv in sorted(counts.items()))),
            "datagrams sent": traffic["sent"],
            "datagrams received": traffic["received"],
            "lost": traffic["lost"],
            "duplicates": traffic["duplicates"],
            "missing sequence numbers": traffic["missing"] or "none",
            "send errors / socket drops": "%d / %s" % (traffic["send_errors"], traffic["socket_drops"]),
            "base member counted": "%d packets (map id %d -> %s, %d in-place updates of it)"
                                   % (hits, map_id, map_after, counts.get("update_base", 0)),
            "dispatchers swapped in": len(dispatchers),
            "bpf_link": "kept (id %d)" % link_id if hook.get("link_id") == link_id else
                        "REPLACED %s -> %s" % (link_id, hook.get("link_id")),
            "change time ms min/median/max": "%.0f / %.0f / %.0f" % (
                1000 * min(timings), 1000 * _median(timings), 1000 * max(timings)),
            "traffic seconds / rate": "%.1f s / %.0f pps" % (traffic["seconds"], rate),
        })
        if traffic["lost"]:
            fig.problem("%d of %d datagrams lost (missing %s); veth drops %s"
                        % (traffic["lost"], traffic["sent"], traffic["missing"], veth_drops(veth)))
        if hits != traffic["sent"]:
            fig.problem("the base member counted %d packets, %d were sent: its counter %s"
                        % (hits, traffic["sent"], "was reset" if hits < traffic["sent"] else "saw extra packets"))
        if map_after != map_id:
            fig.problem("the base member's map was replaced (%s -> %s) by in-place updates" % (map_id, map_after))
        if hook.get("link_id") != link_id:
            fig.problem("the bpf_link was replaced instead of updated")
        fig.problems += consistency(host, objects, [veth])
        return fig
    finally:
        host.cleanup()
        veth.destroy()
        fig.seconds = time.monotonic() - started


# =====================================================================================
# 2. Crash consistency: SIGKILL at named points, then the next run converges
# =====================================================================================

# On the chained hook of the first veth (an anchor member always there).
_CHAIN_COMBOS = (
    [("add", p) for p in ("after_load", "before_swap", "after_swap", "after_save", "after_cleanup")]
    + [("update", p) for p in ("after_load", "before_swap", "after_swap", "after_save", "after_cleanup")]
    + [("reprioritise", p) for p in ("before_swap", "after_swap", "after_save")]
    + [("remove", p) for p in ("before_swap", "remove_after_swap")]
)
# On the second veth: a hook's first program (attach) and its last (detach), per attach method.
_TOGGLE_KINDS = ("xdp", "tcx", "cls_bpf")
_FIRST_POINTS = ("after_swap", "before_swap", "after_save", "after_cleanup")


def _crash_schedule(kills: int, rng: random.Random) -> list:
    chain = []
    schedule = []
    toggles = 0
    for i in range(kills):
        if i % 4 == 3:
            schedule.append(("toggle", _TOGGLE_KINDS[toggles % len(_TOGGLE_KINDS)]))
            toggles += 1
            continue
        if not chain:
            chain = list(_CHAIN_COMBOS)
            rng.shuffle(chain)
        schedule.append(chain.pop())
    return schedule


def crash_consistency(objects: Objects, kills: int, workdir: pathlib.Path, seed: int = 9) -> Figure:
    """`kills` module runs killed with SIGKILL at a crash point (BPFD_CRASH_AT); after
    each, the same task runs again and must converge; then nothing of ours exists
    that the state does not record, and a ping across both veths never stops."""
    from ansible_collections.bpfd.core.plugins.module_utils._manager import ProgramSpec
    fig = Figure("2. crash consistency")
    started = time.monotonic()
    rng = random.Random(seed)
    # veth: a chain (an anchor always there); veth2: first/last program of XDP and tcx hooks;
    # veth3: first/last cls_bpf program, which creates / deletes the clsact qdisc.
    veth, veth2, veth3, host = Veth().create(), Veth().create(), Veth().create(), Host(workdir)
    pingers = []
    try:
        anchor = veth.name + "-anchor"
        declared = {anchor: spec(anchor, objects["count"], veth.name, 500)}
        fig.problems += clean_run(host.run("present", **declared[anchor]), "loading the anchor")
        anchor_pin = os.path.join(host.layout.map_dir(anchor), objects.map_name)
        pingers = [v.start_ping() for v in (veth, veth2, veth3)]
        anchor_map = bpftool("map", "show", "pinned", anchor_pin)["id"]
        serial, toggle_points, killed_at, notes, not_killed, converged, reported = 0, {}, {}, 0, [], 0, set()
        states_seen = {"old dispatcher": 0, "new dispatcher": 0}
        for i, (op, point) in enumerate(_crash_schedule(kills, rng)):
            if op == "toggle":
                kind = point
                dev = veth3 if kind == "cls_bpf" else veth2
                name = "%s-%s" % (dev.name, kind)
                if name in declared:
                    op, point = "remove", "remove_after_swap"
                else:
                    op = "add"
                    point = _FIRST_POINTS[toggle_points.get(kind, 0) % len(_FIRST_POINTS)]
                    toggle_points[kind] = toggle_points.get(kind, 0) + 1
                    if kind == "xdp":
                        declared[name] = spec(name, objects["count"], dev.name, 100)
                    else:
                        declared[name] = spec(name, objects["tc_count"], dev.name, 100, kind="tc",
                                              direction="ingress", mode=kind)
                label = "%s first/last %s" % (kind, op)
            else:
                others = sorted(n for n in declared if n.startswith(veth.name) and n != anchor)
                if op in ("update", "reprioritise", "remove") and not others:
                    op = "add"
                if op == "add" and len(others) >= 9:
                    op = "remove"
                label = op
                if op == "add":
                    serial += 1
                    name = "%s-k%d" % (veth.name, serial)
                    declared[name] = spec(name, objects["count"], veth.name, rng.randint(0, 1000))
                else:
                    name = rng.choice(others + [anchor] if op != "remove" else others)
                    if op == "update":
                        declared[name] = dict(declared[name], path=variant(declared[name]["path"], workdir))
                    elif op == "reprioritise":
                        declared[name] = dict(declared[name], priority=rng.randint(0, 1000))
            removing = op == "remove"
            if removing:
                declared.pop(name)
            where = "kill %d (%s %s at %s)" % (i + 1, label, name, point)
            before_disp = attached_xdp(veth.name)
            request = {"name": name} if removing else declared[name]
            result = host.run("absent" if removing else "present", crash_at=point, **request)
            found = []
            if result.get("killed") != signal.SIGKILL:
                not_killed.append("%s: %s" % (where, "ran to the end" if "killed" not in result else result))
            else:
                killed_at[point] = killed_at.get(point, 0) + 1
            # What traffic meets right after the kill: one whole dispatcher, with the anchor, that passes.
            now = attached_xdp(veth.name)
            if len(now) != 1:
                found.append("%s runs %s XDP programs right after the kill" % (veth.name, now))
            else:
                states_seen["old dispatcher" if now == before_disp else "new dispatcher"] += 1
                maps = (bpftool("prog", "show", "id", str(now[0])) or {}).get("map_ids", [])
                verdict = prog_test_run(now[0], udp_packet(veth.peer_ip, veth.host_ip))
                if verdict != 2 or anchor_map not in maps:
                    found.append("the attached dispatcher %d returned %d, uses maps %s (anchor's: %d)"
                                 % (now[0], verdict, maps, anchor_map))
            # The next run (the task again, as a retry would) converges.
            again = host.run("absent" if removing else "present", **request)
            found += clean_run(again, "the next run")
            notes += len(again.get("reconciled", []))
            found += _declared_problems(host, declared)
            found += consistency(host, objects, [veth, veth2, veth3])
            # ... and stays converged: the same task once more changes nothing, finds nothing.
            try:
                mgr = host.manager()
                stable = mgr.absent(name=name) if removing else mgr.present(ProgramSpec(**request))
            except Exception as exc:  # noqa: BLE001 - reported as a figure problem
                stable = {"failed": True, "msg": "%s: %s" % (type(exc).__name__, exc)}
            if stable.get("changed") or stable.get("reconciled") or stable.get("failed"):
                found.append("a third run still changed something: changed=%s reconciled=%s %s"
                             % (stable.get("changed"), stable.get("reconciled"), stable.get("msg", "")))
            # A leftover that stays is reported at the kill that made it, not at every later one.
            new = [p for p in found if p not in reported]
            converged += not new
            fig.problems += ["%s: %s" % (where, p) for p in new]
            reported.update(found)
            if not removing and name not in host.state()["programs"]:
                declared.pop(name)  # it never came: later kills start from what the host holds
        pings = [stop_ping(p) for p in pingers]
        pingers = []
        fig.numbers.update({
            "kills (SIGKILL)": "%d of %d runs: %s" % (
                sum(killed_at.values()), kills, ", ".join("%s %d" % kv for kv in sorted(killed_at.items()))),
            "next run converged": "%d of %d (state = declaration, no leak, a third run a no-op)"
                                  % (converged, kills),
            "distinct problems": len(reported),
            "reconcile notes on next runs": notes,
            "after a kill, traffic met": ", ".join("%s %d" % kv for kv in states_seen.items()),
            "ping sent/answered: chain": "%d/%d" % pings[0],
            "ping: first/last XDP, tcx": "%d/%d" % pings[1],
            "ping: first/last cls_bpf": "%d/%d (not judged: creating / deleting clsact grafts a qdisc, "
                                        "and the kernel resets the device's queues)" % pings[2],
        })
        fig.problems += ["crash point not reached: %s" % n for n in not_killed]
        for (sent, got), v in zip(pings[:2], (veth, veth2)):
            if sent == 0 or got != sent:
                fig.problem("ping across %s: %d sent, %d answered: traffic was blackholed" % (v.name, sent, got))
        return fig
    finally:
        for proc in pingers:
            proc.kill()
            proc.wait()
        host.cleanup()
        for v in (veth, veth2, veth3):
            v.destroy()
        fig.seconds = time.monotonic() - started


def _declared_problems(host: Host, declared: dict) -> list:
    """The state holds exactly the declared programs, with their priority and bytecode."""
    from ansible_collections.bpfd.core.plugins.module_utils._loader import file_sha256
    programs = host.state()["programs"]
    problems = []
    persistent = host.declared()
    if os.path.exists(os.path.join(host.layout.lib_dir, "declared.json")) and set(persistent) != set(declared):
        problems.append("declared.json (restored at boot) holds %s that are not declared and lacks declared %s"
                        % (sorted(set(persistent) - set(declared)), sorted(set(declared) - set(persistent))))
    if set(programs) != set(declared):
        problems.append("the state records %s that are not declared and lacks declared %s"
                        % (sorted(set(programs) - set(declared)), sorted(set(declared) - set(programs))))
    for name in set(programs) & set(declared):
        record, want = programs[name], declared[name]
        got = (record["priority"], record["sha256"], record["interface"])
        if got != (want["priority"], file_sha256(want["path"]), want["interface"]):
            problems.append("%s recorded as %s, declared %s" % (name, got, (want["priority"], want["path"])))
    return problems


# =====================================================================================
# 3. Concurrency: module runs at once on one interface
# =====================================================================================

_LOCK_HOLDER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _at_once(host: Host, requests: list, workdir: pathlib.Path, before_go=None) -> list:
    """Start one process per request, release them together once all are ready; their results."""
    go = str(workdir / ("go-%s" % uuid.uuid4().hex[:8]))
    procs = [host.start(op, go=go, **kwargs) for op, kwargs in requests]
    wait_until(lambda: len([f for f in os.listdir(workdir) if f.startswith(os.path.basename(go) + ".ready.")])
               >= len(procs), timeout=60)
    if before_go:
        before_go()
    pathlib.Path(go).touch()
    results = [host.outcome(p) for p in procs]
    for entry in os.listdir(workdir):
        if entry.startswith(os.path.basename(go)):
            os.unlink(workdir / entry)
    return results


def _wait_figures(results: list) -> tuple:
    """(lock waits, how many results say they waited, mismatches between the two)."""
    waits, said, wrong = [], 0, []
    for result in results:
        wait = max(result.get("_timings", {}).get("lock_waits") or [0.0])
        note = [n for n in result.get("reconciled", []) if n.startswith("waited")]
        waits.append(wait)
        said += bool(note)
        if bool(note) != (wait >= 1.0):
            wrong.append("a run waited %.2f s for the lock; its result says %s" % (wait, note or "nothing"))
    return waits, said, wrong


def concurrency(objects: Objects, runs: int, workdir: pathlib.Path, holder_seconds: float = 1.5) -> Figure:
    """`runs` module runs started at once, each adding its own program to one
    interface; then the same runs at once again, each re-prioritising its program,
    while another run holds the host lock for `holder_seconds` (a long task)."""
    fig = Figure("3. concurrency")
    started = time.monotonic()
    veth, host = Veth().create(), Host(workdir)
    holder = None
    try:
        names = ["%s-c%02d" % (veth.name, i) for i in range(runs)]
        declared = {n: spec(n, objects["count"], veth.name, 100 + 10 * (i % 3)) for i, n in enumerate(names)}
        first = _at_once(host, [("present", declared[n]) for n in names], workdir)

        for n in names:  # the reverse order by priority (ties again by name)
            declared[n] = dict(declared[n], priority=900 - declared[n]["priority"] - names.index(n) % 2)

        def hold() -> None:
            nonlocal holder
            holder = subprocess.Popen([PY, "-c", _LOCK_HOLDER, host.layout.lock_file, str(holder_seconds)],
                                      stdout=subprocess.PIPE, text=True)
            assert holder.stdout.readline().strip() == "held"
        second = _at_once(host, [("present", declared[n]) for n in names], workdir, before_go=hold)
        holder.wait()

        for label, results in (("adding", first), ("re-prioritising", second)):
            for name, result in zip(names, results):
                fig.problems += clean_run(result, "%s %s" % (label, name))
                if not result.get("changed"):
                    fig.problem("%s %s: changed=%s" % (label, name, result.get("changed")))
        state = host.state()
        recorded = {n: r["priority"] for n, r in state["programs"].items()}
        lost = [n for n in names if recorded.get(n) != declared[n]["priority"]]
        hook = next(iter(state["hooks"].values()), {})
        order = [n for n, _prio in sorted(((n, declared[n]["priority"]) for n in names), key=lambda x: (x[1], x[0]))]
        # Every member runs in the attached dispatcher: one test run moves every counter once.
        pins = [os.path.join(host.layout.map_dir(n), objects.map_name) for n in names]
        attached = attached_xdp(veth.name)
        before = [hits_pinned(p) for p in pins]
        verdict = prog_test_run(attached[0], udp_packet(veth.peer_ip, veth.host_ip)) if len(attached) == 1 else None
        ran = [hits_pinned(p) - b for p, b in zip(pins, before)]
        waits1, said1, wrong1 = _wait_figures(first)
        waits2, said2, wrong2 = _wait_figures(second)
        spans = [r["_timings"]["lock_released"][-1] - r["_timings"]["lock_acquired"][-1]
                 for r in first + second if r.get("_timings", {}).get("lock_acquired")]
        fig.numbers.update({
            "runs at once": "%d adding, then %d re-prioritising" % (runs, runs),
            "programs present at the end": "%d of %d" % (len(set(names) & set(recorded)), runs),
            "lost updates": len(lost),
            "chain order": "as declared" if hook.get("members") == order else "WRONG: %s" % hook.get("members"),
            "members run by the dispatcher": "%d of %d (verdict %s)" % (sum(1 for r in ran if r == 1), runs, verdict),
            "lock held per run ms median/max": "%.0f / %.0f" % (1000 * _median(spans), 1000 * max(spans or [0])),
            "lock waits s, adding": "min %.2f / median %.2f / max %.2f; %d say 'waited'"
                                    % (min(waits1), _median(waits1), max(waits1), said1),
            "lock waits s, with a %.1f s holder" % holder_seconds:
                "min %.2f / median %.2f / max %.2f; %d say 'waited'" % (min(waits2), _median(waits2), max(waits2), said2),
        })
        if lost or set(recorded) != set(names):
            fig.problem("lost updates: %s; recorded %s" % (lost, sorted(recorded)))
        if hook.get("members") != order:
            fig.problem("the hook runs %s, declared order %s" % (hook.get("members"), order))
        if verdict != 2 or ran != [1] * runs:
            fig.problem("a test run of the attached dispatcher %s returned %s and ran members %s times"
                        % (attached, verdict, ran))
        fig.problems += wrong1 + wrong2
        if said2 != runs:
            fig.problem("only %d of %d runs behind a %.1f s lock holder say they waited" % (said2, runs, holder_seconds))
        fig.problems += consistency(host, objects, [veth])
        return fig
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        host.cleanup()
        veth.destroy()
        fig.seconds = time.monotonic() - started


# =====================================================================================
# 4. Vanishing attach points
# =====================================================================================


def _gone(ids: set) -> set:
    """Of these kernel program ids, the ones still loaded after an RCU grace period."""
    alive = set()

    def check() -> bool:
        alive.clear()
        alive.update(ids & {p["id"] for p in bpftool("prog", "show") or []})
        return not alive
    wait_until(check)
    return alive


def vanishing(objects: Objects, _size: int, workdir: pathlib.Path) -> Figure:
    """Interface deleted, netns deleted, pins deleted by hand, bpffs unmounted (and
    remounted, or not): the next run detects each, says so in `reconciled`, and
    leaves no program, map, link or pin the state does not record."""
    fig = Figure("4. vanishing attach points")
    started = time.monotonic()
    host = Host(workdir, private_bpffs=True)
    gone_veth, veth, ns_veth = Veth().create(), Veth().create(), Veth().create()
    rows, reported = {}, set()
    try:
        survivor = spec(veth.name + "-b0", objects["count"], veth.name, 10)

        def load(*specs: dict) -> dict:
            results = {}
            for s in specs:
                result = host.run("present", **s)
                fig.problems.extend(clean_run(result, "loading %s" % s["name"]))
                results[s["name"]] = result.get("program", {})
            return results

        def next_run(case: str, phrases: list, freed: set, live: list) -> dict:
            """The next module run (the survivor's task again): it must say what it found."""
            result = host.run("present", **survivor)
            problems = clean_run(result, "the next run")
            notes = result.get("reconciled", [])
            text = "\n".join(notes)
            missing = [p for p in phrases if p not in text]
            if missing:
                problems.append("not reported: %s (reconciled: %s)" % (missing, notes))
            still = _gone(freed)
            if still:
                problems.append("programs still loaded: %s" % sorted(still))
            problems += consistency(host, objects, live)
            # a leftover that stays is reported at the case that made it
            new = [p for p in problems if p not in reported]
            reported.update(problems)
            rows[case] = "%s; %d note(s)%s" % (
                "reported" if not missing else "NOT reported", len(notes),
                "; OK" if not new else "; %d problem(s)" % len(new))
            fig.details.extend("%s: %s" % (case, n) for n in notes)
            fig.problems.extend("%s: %s" % (case, p) for p in new)
            return result

        load(survivor)

        # a. An interface deleted.
        progs = load(spec(gone_veth.name + "-a0", objects["count"], gone_veth.name, 10),
                     spec(gone_veth.name + "-a1", objects["count"], gone_veth.name, 20))
        freed = {p["id"] for p in progs.values()} | {p["dispatcher_id"] for p in progs.values()}
        sh("ip", "link", "del", gone_veth.name)
        next_run("interface deleted", [gone_veth.name, "is gone"] + list(progs), freed, [veth])

        # b. A network namespace deleted (the program sat on the peer, inside it).
        inside = spec(ns_veth.name + "-ns", objects["count"], ns_veth.peer, 10, netns=ns_veth.netns_path)
        progs = load(inside)
        freed = {p["id"] for p in progs.values()} | {p["dispatcher_id"] for p in progs.values()}
        sh("ip", "netns", "del", ns_veth.netns)
        wait_until(lambda: not ns_veth.exists(), timeout=5)
        next_run("netns deleted", ["network namespace %s is gone" % ns_veth.netns_path, inside["name"]],
                 freed, [veth])

        # c. Pins deleted by hand: a program's, a map's, the hook's link.
        progs = load(spec(veth.name + "-b1", objects["count"], veth.name, 20),
                     spec(veth.name + "-b2", objects["count"], veth.name, 30))
        b1 = progs[veth.name + "-b1"]
        os.unlink(os.path.join(host.layout.program_dir(b1["name"]), "prog_%d" % b1["id"]))
        next_run("program pin deleted", [b1["name"], "vanished"], {b1["id"]}, [veth])

        map_pin = os.path.join(host.layout.map_dir(survivor["name"]), objects.map_name)
        os.unlink(map_pin)
        next_run("map pin deleted", [map_pin], set(), [veth])

        state = host.state()
        key, hook = next((k, h) for k, h in state["hooks"].items() if h["interface"] == veth.name)
        os.unlink(hook["link_pin"])
        wait_until(lambda: not attached_xdp(veth.name))
        next_run("hook link pin deleted", [key, "rebuilt"], set(), [veth])
        if attached_xdp(veth.name) != [host.state()["hooks"].get(key, {}).get("dispatcher_id")]:
            fig.problem("hook link pin deleted: the chain was not attached again")

        # d. bpffs unmounted and remounted: every pin goes (a cls_bpf hook keeps its filter).
        load(spec(veth.name + "-t0", objects["tc_count"], veth.name, 10, kind="tc", direction="ingress",
                  mode="cls_bpf"))
        state = host.state()
        freed = {r["prog_id"] for r in state["programs"].values()} | \
            {h["dispatcher_id"] for h in state["hooks"].values()}
        sh("umount", host.mount)
        sh("mount", "-t", "bpf", "bpf", host.mount)
        next_run("bpffs unmounted + remounted", ["vanished"] + sorted(state["programs"]), freed, [veth])

        # e. bpffs unmounted and left so: the next run mounts it again.
        state = host.state()
        freed = {r["prog_id"] for r in state["programs"].values()} | \
            {h["dispatcher_id"] for h in state["hooks"].values()}
        sh("umount", host.mount)
        next_run("bpffs unmounted", ["vanished"] + sorted(state["programs"]), freed, [veth])
        mounted = any(line.split()[1] == host.mount and line.split()[2] == "bpf"
                      for line in pathlib.Path("/proc/mounts").read_text().splitlines())
        if not mounted:
            fig.problem("bpffs unmounted: the next run did not mount %s again" % host.mount)
        if not veth.ping():
            fig.problem("no ping across %s at the end" % veth.name)
        fig.numbers.update(rows)
        return fig
    finally:
        host.cleanup()
        for v in (gone_veth, veth, ns_veth):
            v.destroy()
        fig.seconds = time.monotonic() - started


# =====================================================================================
# 5. Bad input matrix: a clear message and a byte-identical host
# =====================================================================================


def _attempt(layout, op: str, kwargs: dict) -> dict:
    """One Manager call in this process; errors as plugins/module_utils/_module.run reports them."""
    import traceback
    from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
    from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager, ProgramSpec
    manager = Manager(layout)
    try:
        if op == "chain":
            kwargs = dict(kwargs, specs=[ProgramSpec(**s) for s in kwargs["specs"]])
            result = manager.chain(**kwargs)
        else:
            result = manager.present(ProgramSpec(**kwargs))
        return dict(result, failed=False)
    except BpfdError as exc:
        return dict(exc.details, failed=True, msg=exc.msg)
    except Exception as exc:  # noqa: BLE001 - what _module.run calls a bug of ours
        return {"failed": True, "msg": "unexpected error in bpfd.core: %s" % exc, "exception": traceback.format_exc()}


def _bad_cases(objects: Objects, x: Veth, y: Veth, z: Veth, names: dict) -> list:
    """(case, op, kwargs, phrases): every error case of the issues so far, by where it is caught."""
    new = x.name + "-new"

    def xdp(**kw) -> dict:
        return dict(spec(new, objects["pass"], x.name, 500), **kw)

    def tc(dev: str, direction: str, **kw) -> dict:
        return dict(spec(new, objects["tc_count"], dev, 500, kind="tc", direction=direction), **kw)

    def rodata(**kw) -> dict:
        return dict(spec(names["rodata"], objects["xdp_rodata_verdict"], x.name, 30), **kw)

    def trace(**kw) -> dict:
        return dict(dict(spec(new, objects["tracepoint_openat"], None, 0, kind="tracepoint")), **kw)

    chain = dict(kind="xdp", interface=x.name, direction=None, exclusive=False)
    return [
        # the bytecode file and the function
        ("file missing", "present", xdp(path="/nonexistent/xdp.o"), ("does not exist",)),
        ("path is a directory", "present", xdp(path="/tmp"), ("not a regular file",)),
        ("not ELF", "present", xdp(path=objects["not_bpf"]), ("not an ELF object",)),
        ("function missing", "present", xdp(function="nosuch"), ("function nosuch not found",)),
        ("two functions, none named", "present", xdp(path=objects["xdp_two_progs"]), ("bpf_function_name",)),
        ("tc object as xdp", "present", xdp(path=objects["tc_pass"]), ("holds no xdp program",)),
        ("tc function as xdp", "present", xdp(path=objects["tc_pass"], function="tc_pass"), ("not xdp",)),
        ("xdp object as tc", "present", tc(x.name, "ingress", path=objects["pass"]), ("holds no tc program",)),
        # the verifier's reason, not only "Permission denied": R1 offset is outside of the packet
        ("verifier refuses it alone", "present", xdp(path=objects["unsafe"]), ("kernel refused", "packet")),
        ("verifier refuses the dispatcher", "present", xdp(path=objects["deep"]),
         ("kernel refused the xdp dispatcher", "too deep")),
        # programs without a dispatcher: where they attach
        ("tracepoint missing", "present", trace(attach={"tracepoint": "syscalls/sys_enter_nosuch"}),
         ("does not exist on this kernel",)),
        ("tracepoint not category/name", "present", trace(attach={"tracepoint": "sys_enter_openat"}),
         ("is not valid",)),
        ("kprobe on a bad symbol name", "present", trace(kind="kprobe", attach={"function": "no such"}),
         ("is not a valid symbol name",)),
        ("uprobe target neither path nor library", "present",
         trace(kind="uprobe", attach={"target": "lib/libc", "function": "malloc"}), ("must be an absolute path",)),
        # priority, proceed_on, modes, direction
        ("priority 1001", "present", xdp(priority=1001), ("priority must be between 0 and 1000",)),
        ("priority -1", "present", xdp(priority=-1), ("priority must be between 0 and 1000",)),
        ("proceed_on unknown", "present", xdp(proceed_on=["pass", "bogus"]), ("proceed_on", "bogus")),
        ("proceed_on of xdp on tc", "present", tc(x.name, "ingress", proceed_on=["aborted"]), ("proceed_on", "aborted")),
        ("xdp_mode unknown", "present", xdp(mode="turbo"), ("xdp_mode must be one of",)),
        ("xdp_mode mismatch", "present", xdp(mode="skb"), ("native mode",)),
        ("xdp_mode change of a member", "present", dict(spec(names["owner"], objects["count"], x.name, 10), mode="skb"),
         ("native mode",)),
        ("direction unknown", "present", tc(x.name, "sideways"), ("direction must be one of",)),
        ("tc_attach unknown", "present", tc(x.name, "ingress", mode="tcy"), ("tc_attach must be one of",)),
        ("tc_attach mismatch", "present", tc(x.name, "ingress", mode="cls_bpf"), ("use tc_attach: tcx or omit it",)),
        # where: interface, namespace, capacity, other owners
        ("interface missing", "present", xdp(interface="brlnosuch0"), ("interface brlnosuch0 does not exist",)),
        ("netns missing", "present", xdp(interface="lo", netns="/run/netns/bpfd-rel-nosuch"),
         ("network namespace /run/netns/bpfd-rel-nosuch does not exist",)),
        ("interface missing in netns", "present", xdp(interface="nosuch0", netns=x.netns_path),
         ("interface nosuch0 does not exist",)),
        ("11th xdp program", "present", xdp(interface=y.name), ("at most 10 programs",)),
        ("11th tc program", "present", tc(y.name, "egress"), ("at most 10 programs",)),
        ("foreign xdp program", "present", xdp(interface=z.name), ("did not attach",)),
        ("foreign tcx link", "present", tc(z.name, "ingress", mode="tcx"), ("did not attach",)),
        ("foreign cls_bpf filter", "present", tc(z.name, "egress", mode="cls_bpf"), ("did not add",)),
        ("tcx beside a foreign cls_bpf filter", "present", tc(z.name, "egress", mode="tcx"), ("pref 5",)),
        ("cls_bpf behind a foreign tcx link", "present", tc(z.name, "ingress", mode="cls_bpf"), ("link_id",)),
        ("plain ingress qdisc", "present", tc(y.name, "ingress", mode="cls_bpf"), ("plain 'ingress' qdisc",)),
        # maps
        ("map_owner missing", "present", xdp(path=objects["count"], map_owner=x.name + "-nobody"),
         ("names no program managed",)),
        ("map_owner is itself", "present", xdp(path=objects["count"], map_owner=new), ("names the program itself",)),
        ("map_owner is a user", "present", xdp(path=objects["count"], map_owner=names["user"]),
         ("itself uses the maps of",)),
        ("map_owner's map incompatible", "present", xdp(path=objects["array"], map_owner=names["owner"]),
         ("cannot share",)),
        ("update to a missing map_owner", "present",
         dict(spec(names["user"], objects["count"], x.name, 20), map_owner=x.name + "-nobody"),
         ("names no program managed",)),
        # global data
        ("global_data unknown name", "present", rodata(global_data={"no_such_var": "02000000"}),
         ("no_such_var is not a global variable",)),
        ("global_data too short", "present", rodata(global_data={"verdict_value": "0200"}), ("is 4 bytes",)),
        ("global_data too long (new)", "present", rodata(name=new, global_data={"verdict_value": "0200000000"}),
         ("is 4 bytes",)),
        ("global_data not hex", "present", rodata(global_data={"verdict_value": "zz000000"}), ("is not hex bytes",)),
        ("global_data odd digits (new)", "present", rodata(name=new, global_data={"verdict_value": "0200000"}),
         ("is not hex bytes",)),
        ("global_data integer", "present", rodata(global_data={"verdict_value": 2}), ("quoted hex string",)),
        ("global_data unquoted YAML octal", "present", rodata(global_data={"verdict_value": 0o2000000}),
         ("quoted hex string",)),
        # names
        ("name ../x", "present", xdp(name="../x"), ("is not valid",)),
        ("name a/b", "present", xdp(name="a/b"), ("is not valid",)),
        ("name empty", "present", xdp(name=""), ("is not valid",)),
        ("name .", "present", xdp(name="."), ("is not valid",)),
        ("name of 64 characters", "present", xdp(name=x.name + "-" + "x" * (63 - len(x.name))), ("is not valid",)),
        ("name with newline", "present", xdp(name=x.name + "-a\nb"), ("is not valid",)),
        ("name with escape", "present", xdp(name=x.name + "-\x1b[31m"), ("is not valid",)),
        ("name with NUL", "present", xdp(name=x.name + "-\x00x"), ("is not valid",)),
        ("tc name as xdp", "present", xdp(name=names["tc"]), ("a tc program named %s already exists" % names["tc"],)),
        ("xdp name as tc", "present", tc(x.name, "ingress", name=names["owner"]),
         ("xdp program named %s already exists" % names["owner"],)),
        # whole chains
        ("chain: bad name", "chain", dict(chain, specs=[xdp(name="../x")]), ("is not valid",)),
        ("chain: tc name", "chain", dict(chain, specs=[xdp(name=names["tc"])]), ("already exists",)),
        ("chain: a name twice", "chain", dict(chain, specs=[xdp(), xdp(priority=1)]), ("may appear once",)),
        ("chain: another interface", "chain", dict(chain, specs=[xdp(interface=y.name)]),
         ("must be a xdp program on %s" % x.name,)),
        ("chain: 11 programs", "chain",
         dict(chain, specs=[xdp(name="%s-n%d" % (x.name, i), priority=i) for i in range(8)]),
         ("at most 10 programs",)),
        ("chain: one bad member", "chain", dict(chain, specs=[xdp(name=x.name + "-n1"), xdp(path=objects["unsafe"])]),
         ("kernel refused", "packet")),
    ]


def _controls(host: Host, objects: Objects, x: Veth, fig: Figure) -> str:
    """Valid inputs right next to error cases: a refusal must not be wider than its case."""
    from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
    from ansible_collections.bpfd.core.plugins.module_utils import _netlink
    tag = os.urandom(3).hex()
    spaces = ["bpfd-rel-a" + tag, "bpfd-rel-b" + tag]
    pin = "/sys/fs/bpf/bpfd-rel-fp-" + tag
    held, ok, controls = [], 0, 0
    try:
        for ns in spaces:  # an interface created inside each namespace: the same ifindex in both
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "add", "e0", "type", "veth", "peer", "name", "e1")
            sh("ip", "-n", ns, "link", "set", "e0", "up")
        sh("bpftool", "prog", "load", objects["tc_pass"], pin, "type", "classifier")
        with _netlink.in_netns("/run/netns/" + spaces[0]):
            with libbpf.owned_fd(libbpf.obj_get(pin)) as fd:
                held.append(libbpf.link_create(fd, _netlink.interface_index("e0"), libbpf.ATTACH_TCX_INGRESS))
        longest = x.name + "-" + "y" * (62 - len(x.name))
        for case, kwargs in (
                ("name of 63 characters", spec(longest, objects["pass"], x.name, 900)),
                ("tcx in a netns whose ifindex has a tcx link in another netns",
                 spec(x.name + "-ns", objects["tc_count"], "e0", 10, kind="tc", direction="ingress", mode="tcx",
                      netns="/run/netns/" + spaces[1]))):
            controls += 1
            result = _attempt(host.layout, "present", kwargs)
            fig.details.append("%-36s %s" % ("(valid) " + case, result.get("msg") or "accepted"))
            if result.get("failed"):
                fig.problem("valid input refused: %s: %s" % (case, result.get("msg")))
            else:
                ok += 1
                host.manager().absent(name=kwargs["name"])
    finally:
        for fd in held:
            libbpf.close_fd(fd)
        with contextlib.suppress(OSError):
            os.unlink(pin)
        for ns in spaces:
            sh("ip", "netns", "del", ns, check=False)
    return "%d of %d" % (ok, controls)


def bad_input(objects: Objects, _size: int, workdir: pathlib.Path) -> Figure:
    """Every error case in one table-driven run through the Manager: each fails with a
    clear message and leaves the host byte-identical (bpftool net of our devices, our
    programs / maps / links, tc qdiscs and filters, the pin tree, the state files)."""
    from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
    fig = Figure("5. bad input matrix")
    started = time.monotonic()
    host = Host(workdir)
    x, y, z = Veth().create(), Veth().create(), Veth().create()
    foreign_dir = "/sys/fs/bpf/bpfd-rel-foreign-%s" % host.tag
    held = []
    try:
        names = {"owner": x.name + "-owner", "user": x.name + "-user", "rodata": x.name + "-rodata",
                 "tc": x.name + "-tc"}
        setup = [spec(names["owner"], objects["count"], x.name, 10),
                 spec(names["user"], objects["count"], x.name, 20, map_owner=names["owner"]),
                 spec(names["rodata"], objects["xdp_rodata_verdict"], x.name, 30, global_data={"verdict_value": "02000000"}),
                 spec(names["tc"], objects["tc_count"], x.name, 10, kind="tc", direction="ingress", mode="tcx")]
        setup += [spec("%s-f%d" % (y.name, i), objects["count"], y.name, i) for i in range(10)]
        setup += [spec("%s-e%d" % (y.name, i), objects["tc_count"], y.name, i, kind="tc", direction="egress",
                       mode="tcx") for i in range(10)]
        setup += [spec("%s-c%d" % (x.name, i), objects["count"], x.name, 100 + i) for i in range(3)]
        for s in setup:
            result = _attempt(host.layout, "present", s)
            if result["failed"]:
                raise RuntimeError("setup %s: %s" % (s["name"], result["msg"]))
        sh("tc", "qdisc", "add", "dev", y.name, "ingress")
        # Other owners on z: an XDP program (ip link), a tcx link (held by this process), a cls_bpf filter (tc).
        os.makedirs(foreign_dir)
        sh("bpftool", "prog", "load", objects["xdp_pass"], foreign_dir + "/xdp")
        sh("ip", "link", "set", "dev", z.name, "xdpgeneric", "pinned", foreign_dir + "/xdp")
        sh("bpftool", "prog", "load", objects["tc_pass"], foreign_dir + "/tc", "type", "classifier")
        with libbpf.owned_fd(libbpf.obj_get(foreign_dir + "/tc")) as prog_fd:
            held.append(libbpf.link_create(prog_fd, z.ifindex, libbpf.ATTACH_TCX_INGRESS))
        sh("tc", "qdisc", "add", "dev", z.name, "clsact")
        sh("tc", "filter", "add", "dev", z.name, "egress", "prio", "5", "handle", "7", "bpf", "da",
           "object-pinned", foreign_dir + "/tc")

        devices = [(v.name, None) for v in (x, y, z)] + [(x.peer, x.netns)]
        cases = _bad_cases(objects, x, y, z, names)
        previous, fds = host_snapshot(host, objects, devices), own_fds()
        before_all, setup_specs = host.state()["programs"], {s["name"]: s for s in setup}
        clean = identical = 0
        for case, op, kwargs, phrases in cases:
            result = _attempt(host.layout, op, kwargs)
            now, fds_now = host_snapshot(host, objects, devices), own_fds()
            if now["kernel"] != previous["kernel"]:  # maps are freed by a workqueue, after RCU: settle
                wait_until(lambda: {k: sorted(v) for k, v in ours_in_kernel(objects).items()} == previous["kernel"])
                now = host_snapshot(host, objects, devices)
            problems = clean_failure(result, phrases)
            changed = snapshot_diff(previous, now)
            if not result.get("failed"):  # what it changed is what an accepted change does: say it once
                changed = []
            if fds_now != fds:
                changed.append("this process's fds: %s -> %s" % (
                    {k: v for k, v in fds.items() if fds_now.get(k) != v},
                    {k: v for k, v in fds_now.items() if fds.get(k) != v}))
            clean += not problems
            identical += not changed
            fig.problems += ["%s: %s" % (case, p) for p in problems]
            fig.problems += ["%s: the host changed: %s" % (case, c) for c in changed]
            fig.details.append("%-36s %s" % (case, (result.get("msg") or "(no error)").replace("\n", "\\n")))
            if not result.get("failed"):  # accepted: take it away again, so the next case starts clean
                recorded = host.state()["programs"]
                for name in set(recorded) - set(before_all):
                    host.manager().absent(name=name)
                for name in set(recorded) & set(before_all):
                    _attempt(host.layout, "present", setup_specs[name])
                now, fds_now = host_snapshot(host, objects, devices), own_fds()
            previous, fds = now, fds_now
        accepted = _controls(host, objects, x, fig)
        fig.numbers.update({
            "error cases": len(cases),
            "clear message, no traceback": "%d of %d" % (clean, len(cases)),
            "host byte-identical after": "%d of %d" % (identical, len(cases)),
            "compared": "bpftool net (4 devices), our progs/maps/dispatchers/links, tc qdiscs+filters, "
                        "pin tree (inodes), state + declared + bytecode files, this process's fds",
            "valid inputs next to them accepted": accepted,
        })
        fig.problems += consistency(host, objects, [x, y])
        return fig
    finally:
        for fd in held:
            with contextlib.suppress(Exception):
                libbpf.link_detach(fd)
            libbpf.close_fd(fd)
        sh("ip", "link", "set", "dev", z.name, "xdpgeneric", "off", check=False)
        shutil.rmtree(foreign_dir, ignore_errors=True)
        host.cleanup()
        for v in (x, y, z):
            v.destroy()
        fig.seconds = time.monotonic() - started


# =====================================================================================
# 6. Resource bounds: load and remove the same program N times
# =====================================================================================


def resource_bounds(objects: Objects, cycles: int, workdir: pathlib.Path) -> Figure:
    """The same program loaded and removed `cycles` times by one Manager in this
    process: the kernel objects of ours, this process's fds (and, reported, the
    kernel-wide counts and the process's memory) end where they started."""
    fig = Figure("6. resource bounds")
    started = time.monotonic()
    veth, host = Veth().create(), Host(workdir)
    try:
        mgr = host.manager()
        from ansible_collections.bpfd.core.plugins.module_utils._manager import ProgramSpec
        program = ProgramSpec(**spec(veth.name + "-cycled", objects["count"], veth.name, 100))
        for _round in range(2):  # warm up: imports, netlink sockets, libbpf
            mgr.present(program)
            mgr.absent(name=program.name)
        wait_until(lambda: not any(ours_in_kernel(objects).values()))
        fds, rss, world = own_fds(), rss_kib(), {k: len(v) for k, v in kernel_objects().items()}
        ours_before = ours_in_kernel(objects)
        seen = {"progs": set(), "maps": set(), "links": set()}
        timings = []
        for i in range(cycles):
            t0 = time.monotonic()
            loaded = mgr.present(program)["program"]
            mgr.absent(name=program.name)
            timings.append(time.monotonic() - t0)
            seen["progs"].update({loaded["id"], loaded["dispatcher_id"]})
            seen["maps"].update(loaded.get("map_ids") or [])
            seen["links"].add(loaded["link_id"])
        alive = {}

        def freed() -> bool:
            now = kernel_objects()
            alive.update({k: seen[k] & {o["id"] for o in now[k]} for k in seen})
            return not any(alive.values())
        wait_until(freed, timeout=5)
        ours_after = ours_in_kernel(objects)
        fds_after, rss_after = own_fds(), rss_kib()
        world_after = {k: len(v) for k, v in kernel_objects().items()}
        fig.numbers.update({
            "load + remove cycles": cycles,
            "kernel objects of ours, before/after": "progs %d/%d, maps %d/%d, links %d/%d" % (
                len(ours_before["members"] | ours_before["dispatchers"]),
                len(ours_after["members"] | ours_after["dispatchers"]), len(ours_before["maps"]),
                len(ours_after["maps"]), len(ours_before["links"]), len(ours_after["links"])),
            "ids created / still alive": "progs %d/%d, maps %d/%d, links %d/%d" % tuple(
                n for k in ("progs", "maps", "links") for n in (len(seen[k]), len(alive.get(k, ())))),
            "open fds before/after": "%d/%d" % (len(fds), len(fds_after)),
            "kernel-wide progs/maps/links delta": "%+d / %+d / %+d (other users share this kernel)" % tuple(
                world_after[k] - world[k] for k in ("progs", "maps", "links")),
            "RSS before/after": "%d / %d KiB" % (rss, rss_after),
            "cycle ms min/median/max": "%.0f / %.0f / %.0f" % (
                1000 * min(timings), 1000 * _median(timings), 1000 * max(timings)),
        })
        if any(alive.values()):
            fig.problem("kernel objects still alive after removal: %s" % {k: sorted(v) for k, v in alive.items() if v})
        if any(ours_after.values()):
            fig.problem("objects of ours left in the kernel: %s" % {k: sorted(v) for k, v in ours_after.items() if v})
        if fds_after != fds:
            fig.problem("this process's fds changed: %s -> %s" % (
                {k: v for k, v in fds.items() if fds_after.get(k) != v},
                {k: v for k, v in fds_after.items() if fds.get(k) != v}))
        if host.pins() or host.state()["programs"] or host.state()["hooks"]:
            fig.problem("left in bpffs / state: %s %s" % (host.pins(), host.state()))
        return fig
    finally:
        host.cleanup()
        veth.destroy()
        fig.seconds = time.monotonic() - started


SCENARIOS = {
    "zero_loss": (zero_loss, "changes"),
    "crash": (crash_consistency, "kills"),
    "concurrency": (concurrency, "concurrent"),
    "vanishing": (vanishing, None),
    "bad_input": (bad_input, None),
    "resources": (resource_bounds, "cycles"),
}
