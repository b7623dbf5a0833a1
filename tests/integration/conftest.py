# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared fixtures for tests on the real kernel: compiled BPF objects, a veth
pair into a scratch network namespace, playbook runs through ansible-runner
(the engine AWX uses), and an independent view of the kernel (bpftool, ip)."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD_PY = REPO / "tests" / "fixtures" / "bpf" / "build.py"
XDP_TOOLS_OBJECTS = pathlib.Path("/usr/lib/x86_64-linux-gnu/bpf")


def _need(condition: bool, reason: str) -> None:
    if not condition:
        pytest.skip(reason)


def kernel_ready() -> None:
    _need(os.geteuid() == 0, "needs root (loads BPF programs)")
    _need(shutil.which("bpftool") is not None, "needs bpftool (apt-get install bpftool)")
    _need(shutil.which("ip") is not None, "needs iproute2")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def bpftool_json(*argv: str):
    return json.loads(sh("bpftool", "-j", *argv).stdout or "null")


@pytest.fixture(scope="session")
def bpf_objects(tmp_path_factory) -> dict:
    """name -> compiled object path (tests/fixtures/bpf/README.md lists them)."""
    spec = importlib.util.spec_from_file_location("bpfd_fixture_build", BUILD_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bpfd_fixture_build"] = module
    spec.loader.exec_module(module)
    try:
        built = module.build_fixtures(tmp_path_factory.mktemp("bpf"))
    except module.ClangNotFoundError as exc:
        pytest.skip(str(exc))
    return {name: str(path) for name, path in built.items()}


class Veth:
    """host end `name` in the root namespace, peer in netns `netns`.

    10.251.x.1 (host end) <-> 10.251.x.2 (peer): traffic never leaves the pair.
    """

    def __init__(self, index: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name = "bpfdt%s" % tag
        self.peer = "bpfdp%s" % tag
        self.netns = "bpfd-test-%s" % tag
        self.host_ip = "10.251.%d.1" % index
        self.peer_ip = "10.251.%d.2" % index

    def create(self) -> None:
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.name, "type", "veth", "peer", "name", self.peer)
        sh("ip", "link", "set", self.peer, "netns", self.netns)
        sh("ip", "addr", "add", self.host_ip + "/24", "dev", self.name)
        sh("ip", "link", "set", self.name, "up")
        sh("ip", "-n", self.netns, "addr", "add", self.peer_ip + "/24", "dev", self.peer)
        sh("ip", "-n", self.netns, "link", "set", self.peer, "up")
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")

    def destroy(self) -> None:
        sh("ip", "link", "del", self.name, check=False)
        sh("ip", "netns", "del", self.netns, check=False)

    @property
    def ifindex(self) -> int:
        return int(pathlib.Path("/sys/class/net/%s/ifindex" % self.name).read_text())

    def ping(self, count: int = 2, timeout: float = 1.0) -> bool:
        """True when the peer answers (echo crosses the host end's XDP hook on its way back)."""
        proc = sh("ping", "-c", str(count), "-W", str(timeout), "-i", "0.2", "-I", self.name,
                  self.peer_ip, check=False)
        return proc.returncode == 0

    def xdp_programs(self) -> list:
        """What bpftool sees attached at this interface's XDP hook."""
        net = bpftool_json("net", "show", "dev", self.name) or [{}]
        return net[0].get("xdp", [])


_veth_counter = [0]


@pytest.fixture
def veth():
    kernel_ready()
    _veth_counter[0] += 1
    pair = Veth(_veth_counter[0] % 250)
    pair.create()
    try:
        yield pair
    finally:
        unload_all_on(pair.name)
        pair.destroy()


def manager():
    from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager
    return Manager()


def unload_all_on(interface: str) -> None:
    """Remove what a test left on its interface, through our own manager."""
    mgr = manager()
    for prog in mgr.list(interface=interface)["programs"]:
        mgr.absent(name=prog["name"])


@pytest.fixture
def playbook(collections_path, tmp_path, monkeypatch):
    """Run a play (a list of tasks) on localhost; return {task name: result}."""
    import ansible_runner

    # ansible-runner finds ansible-playbook on PATH: the venv's, also when not activated.
    monkeypatch.setenv("PATH", os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))

    def run(tasks: list, check: bool = False, diff: bool = False, extravars: dict | None = None,
            expect_failure: bool = False) -> dict:
        play = [{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]
        private = tmp_path / ("runner-%s" % uuid.uuid4().hex[:8])
        (private / "project").mkdir(parents=True)
        (private / "project" / "play.yml").write_text(json.dumps(play))
        cmdline = " ".join(filter(None, ["--check" if check else "", "--diff" if diff else ""]))
        outcome = ansible_runner.run(
            private_data_dir=str(private), playbook="play.yml", quiet=True,
            inventory="localhost ansible_connection=local ansible_python_interpreter=%s" % sys.executable,
            envvars={"ANSIBLE_COLLECTIONS_PATH": str(collections_path),
                     "ANSIBLE_NOCOLOR": "1"},
            extravars=extravars or {}, cmdline=cmdline or None)
        results = {}
        for event in outcome.events:
            data = event.get("event_data", {})
            if event.get("event") in ("runner_on_ok", "runner_on_failed"):
                res = dict(data.get("res", {}))
                res["_failed"] = event["event"] == "runner_on_failed"
                results[data.get("task")] = res
        if not expect_failure:
            failed = {k: v.get("msg") for k, v in results.items() if v["_failed"]}
            assert outcome.rc == 0 and not failed, "play failed: %s rc=%s\n%s" % (
                failed, outcome.rc, outcome.stdout.read()[-3000:])
        return results

    return run


def kernel_snapshot() -> dict:
    """An independent picture of BPF state: programs, links, bpffs pins."""
    progs = sorted(p["id"] for p in bpftool_json("prog", "show") or [])
    links = sorted(link["id"] for link in bpftool_json("link", "show") or [])
    pins = sorted(str(p) for p in pathlib.Path("/sys/fs/bpf/bpfd").rglob("*")) \
        if pathlib.Path("/sys/fs/bpf/bpfd").exists() else []
    state = pathlib.Path("/run/bpfd/state.json")
    return {"progs": progs, "links": links, "pins": pins,
            "state": json.loads(state.read_text()) if state.exists() else None}
