# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A simulated fleet of Linux hosts on this machine, reached by Ansible over SSH.

Each host is a network namespace plus a mount namespace of its own:

* network: ``bpfd-fl<tag>-NN`` holds ``mgmt`` (10.254.K.(10+N), the end of a veth whose
  other end is enslaved to a bridge ``bpfdbr<tag>`` in the root namespace at 10.254.K.1/24)
  and ``fleet0``/``fleet1``, a veth pair whose ``fleet0`` end takes the XDP chain. A host
  made ``broken`` has no ``fleet0``.
* mount: ``unshare --mount --propagation private`` inside ``ip netns exec`` (which already
  gives the host a sysfs of its own), then a fresh bpffs on ``/sys/fs/bpf``, a tmpfs on
  ``/run`` (so ``/run/bpfd`` and ``/run/sshd`` are the host's own) and a tmpfs on
  ``/var/lib/bpfd``.
* an ``sshd -D`` listening on the host's mgmt address only, accepting one throwaway
  ed25519 key for root, with a throwaway host key.

Everything lives in one scratch directory (keys, sshd config, inventory, ansible.cfg,
ssh control sockets). ``Fleet.destroy()`` (also run by ``with Fleet(...)`` and on SIGTERM
through the caller) kills every process inside the host namespaces, by pid, deletes the
namespaces (which takes their veths, mounts and the BPF objects attached there with them),
the bridge, and the scratch directory.

Command line (what ``scripts/fleet.sh`` runs)::

    python tests/fleet/fleet.py --hosts 20 --forks 10 [--batch 5] [--keep] [--collections-path DIR]

runs the whole scenario at full size, checks each step and prints the wall times.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import ipaddress
import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
VENV_PYTHON = os.environ.get("BPFD_VENV_PYTHON", "/opt/bpfd-venv/bin/python")
SSHD = "/usr/sbin/sshd"
# The three members of the chain the rollout playbook declares (tests/fixtures/bpf).
CHAIN_FIXTURES = ("xdp_count_pass", "xdp_subprog", "xdp_pass")
CHAIN_NAMES = ["fleet-count", "fleet-subprog", "fleet-pass"]


class FleetError(RuntimeError):
    pass


def sh(*argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise FleetError("%s failed (rc=%d): %s" % (" ".join(argv), proc.returncode,
                                                    (proc.stderr or proc.stdout).strip()))
    return proc


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.254.K.0/24 that no route of the root namespace overlaps."""
    routes = []
    for line in sh("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("broadcast", "local", "unreachable", "prohibit", "blackhole"):
            word = line.split()[1]
        with contextlib.suppress(ValueError):
            if word != "default":
                routes.append(ipaddress.ip_network(word, strict=False))
    candidates = list(range(1, 251))
    random.shuffle(candidates)
    for k in candidates:
        net = ipaddress.ip_network("10.254.%d.0/24" % k)
        if not any(net.overlaps(r) for r in routes):
            return net
    raise FleetError("no free 10.254.K.0/24 subnet")


def build_chain_objects(dest: pathlib.Path) -> pathlib.Path:
    """Compile the chain's fixtures; dest gets exactly <fixture>.o for each. Returns dest."""
    build_py = REPO / "tests" / "fixtures" / "bpf" / "build.py"
    spec = importlib.util.spec_from_file_location("bpfd_fixture_build_fleet", build_py)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    built = module.build_fixtures(dest.with_name(dest.name + "-build"), CHAIN_FIXTURES)
    dest.mkdir(parents=True, exist_ok=True)
    for name, path in built.items():
        shutil.copyfile(path, dest / (name + ".o"))
    return dest


class Host:
    def __init__(self, fleet: "Fleet", index: int, group: str, broken: bool) -> None:
        self.index = index
        self.name = "fleet-%02d" % index
        self.group = group
        self.broken = broken
        self.netns = "bpfd-fl%s-%02d" % (fleet.tag, index)
        self.bridge_port = "bfl%s%02d" % (fleet.tag, index)  # <= 15 characters
        self.address = str(fleet.subnet.network_address + 10 + index)
        self.proc: subprocess.Popen | None = None

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """A command inside this host's network namespace (the root mount namespace)."""
        return sh("ip", "netns", "exec", self.netns, *argv, check=check)

    def xdp_attached(self) -> bool:
        """Independent check: does fleet0 carry an XDP program (bpftool, not our modules)?"""
        proc = self.run("bpftool", "-j", "net", "show", "dev", "fleet0", check=False)
        if proc.returncode != 0:
            return False
        data = json.loads(proc.stdout or "[]") or [{}]
        return bool(data[0].get("xdp"))


class Fleet:
    """``with Fleet(4, broken=["fleet-02"]) as fleet: fleet.playbook(...)``."""

    def __init__(self, size: int, broken: tuple | list = (), forks: int = 10,
                 collections_path: str | os.PathLike | None = None, workdir: str | None = None) -> None:
        if not 1 <= size <= 200:
            raise ValueError("size must be 1..200")
        self.size = size
        self.forks = forks
        self.tag = uuid.uuid4().hex[:5]
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="bpfd-fleet-", dir=workdir))
        self.collections_path = str(collections_path) if collections_path else os.environ.get(
            "ANSIBLE_COLLECTIONS_PATH", "")
        self.bridge = "bpfdbr%s" % self.tag
        self.subnet: ipaddress.IPv4Network | None = None
        half = (size + 1) // 2
        self._broken = set(broken)
        self.hosts: list[Host] = []
        self._created_lib_dir = False
        self._up = False
        self._planned = [("web" if i <= half else "db", "fleet-%02d" % i in self._broken)
                         for i in range(1, size + 1)]

    # --- life cycle ------------------------------------------------------------------
    def __enter__(self) -> "Fleet":
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def create(self) -> None:
        if os.geteuid() != 0:
            raise FleetError("the fleet needs root (namespaces, mounts, sshd)")
        for tool in (SSHD, shutil.which("unshare"), shutil.which("ssh-keygen"), shutil.which("ip")):
            if not tool or not os.path.exists(tool):
                raise FleetError("missing %s (apt-get install openssh-server iproute2 util-linux)" % tool)
        self._up = True
        self.subnet = _free_subnet()
        self.hosts = [Host(self, i + 1, group, broken) for i, (group, broken) in enumerate(self._planned)]
        self._keys()
        self._sshd_config()
        if not os.path.isdir("/var/lib/bpfd"):
            # The mount point of each host's own /var/lib/bpfd (a tmpfs); removed again if empty.
            os.makedirs("/var/lib/bpfd", mode=0o750)
            self._created_lib_dir = True
        gateway = "%s/%d" % (self.subnet.network_address + 1, self.subnet.prefixlen)
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", gateway, "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for host in self.hosts:
            self._network(host)
        for host in self.hosts:
            self._start_sshd(host)
        self._wait_for_ssh()
        self._write_ansible_files()

    def _keys(self) -> None:
        for name in ("client_key", "host_key"):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bpfd-fleet-%s" % self.tag,
               "-f", str(self.dir / name))
        (self.dir / "authorized_keys").write_text((self.dir / "client_key.pub").read_text())
        skel = pathlib.Path("/etc/skel/.bashrc")
        (self.dir / "bashrc").write_text(skel.read_text() if skel.exists() else "")
        (self.dir / "cp").mkdir(mode=0o700)

    def _sshd_config(self) -> None:
        (self.dir / "sshd_config").write_text("\n".join([
            "Port 22",
            "HostKey %s" % (self.dir / "host_key"),
            "AuthorizedKeysFile %s" % (self.dir / "authorized_keys"),
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "PidFile none",
            "LogLevel ERROR",
            "MaxStartups 200",
            "MaxSessions 100",
            "Subsystem sftp internal-sftp",
            "",
        ]))

    def _network(self, host: Host) -> None:
        sh("ip", "netns", "add", host.netns)
        sh("ip", "link", "add", host.bridge_port, "type", "veth", "peer", "name", "mgmt", "netns", host.netns)
        sh("ip", "link", "set", host.bridge_port, "master", self.bridge)
        sh("ip", "link", "set", host.bridge_port, "up")
        host.run("ip", "addr", "add", "%s/%d" % (host.address, self.subnet.prefixlen), "dev", "mgmt")
        host.run("ip", "link", "set", "mgmt", "up")
        host.run("ip", "link", "set", "lo", "up")
        if not host.broken:
            self.add_interface(host)

    @staticmethod
    def add_interface(host: Host) -> None:
        """The interface the chain goes on (absent on a broken host until repaired)."""
        host.run("ip", "link", "add", "fleet0", "type", "veth", "peer", "name", "fleet1")
        host.run("ip", "link", "set", "fleet0", "up")
        host.run("ip", "link", "set", "fleet1", "up")

    def repair(self, name: str) -> None:
        host = self.host(name)
        self.add_interface(host)
        host.broken = False

    def _start_sshd(self, host: Host) -> None:
        # ip netns exec: the host's network namespace and a sysfs of its own; unshare: a
        # private mount namespace in which the host gets its own bpffs, /run and /var/lib/bpfd.
        # Every step execs the next, so the Popen pid is sshd's.
        script = (
            "set -e; "
            "mount -t bpf bpf /sys/fs/bpf; "
            "mount -t tmpfs -o mode=0755 tmpfs /run; "
            "mkdir -m 0755 /run/sshd; mkdir -m 0750 /run/bpfd; "
            "mount -t tmpfs -o mode=0750 tmpfs /var/lib/bpfd; "
            # A fresh host's root has the stock profile: this machine's /root/.bashrc (which
            # bash reads for every ssh command) may start slow tools (pyenv and the like).
            "if [ -f /root/.bashrc ]; then mount --bind %s /root/.bashrc; fi; "
            "exec %s -D -e -f %s -o ListenAddress=%s"
        ) % (self.dir / "bashrc", SSHD, self.dir / "sshd_config", host.address)
        log = open(self.dir / ("sshd-%s.log" % host.name), "wb")
        try:
            host.proc = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--propagation", "private",
                 "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()

    def _wait_for_ssh(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.hosts)
        while pending and time.monotonic() < deadline:
            for host in list(pending):
                if host.proc.poll() is not None:
                    raise FleetError("sshd of %s exited (rc=%s): %s" % (
                        host.name, host.proc.returncode,
                        (self.dir / ("sshd-%s.log" % host.name)).read_text()[-2000:]))
                with contextlib.suppress(OSError), socket.create_connection((host.address, 22), timeout=0.5) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        pending.remove(host)
            if pending:
                time.sleep(0.1)
        if pending:
            raise FleetError("sshd not answering on %s" % ", ".join(h.name for h in pending))

    def _write_ansible_files(self) -> None:
        lines = []
        for group in ("web", "db"):
            lines.append("[%s]" % group)
            lines += ["%s ansible_host=%s" % (h.name, h.address) for h in self.hosts if h.group == group]
            lines.append("")
        lines += [
            "[fleet:children]", "web", "db", "",
            "[fleet:vars]",
            "ansible_user=root",
            "ansible_python_interpreter=%s" % VENV_PYTHON,
            "ansible_ssh_private_key_file=%s" % (self.dir / "client_key"),
            "fleet_interface=fleet0",
            "",
        ]
        self.inventory.write_text("\n".join(lines))
        ssh_args = " ".join([
            "-o ControlMaster=auto", "-o ControlPersist=300s",
            "-o UserKnownHostsFile=/dev/null", "-o StrictHostKeyChecking=no",
            "-o IdentitiesOnly=yes", "-o LogLevel=ERROR", "-o ConnectTimeout=10",
        ])
        self.config.write_text("\n".join([
            "[defaults]",
            "inventory = %s" % self.inventory,
            "forks = %d" % self.forks,
            "host_key_checking = False",
            "retry_files_enabled = False",
            "interpreter_python = %s" % VENV_PYTHON,
            "",
            "[ssh_connection]",
            "pipelining = True",
            "ssh_args = %s" % ssh_args,
            "control_path_dir = %s" % (self.dir / "cp"),
            "control_path = %(directory)s/%%h",
            "",
        ]))

    @property
    def inventory(self) -> pathlib.Path:
        return self.dir / "inventory.ini"

    @property
    def config(self) -> pathlib.Path:
        return self.dir / "ansible.cfg"

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def env(self) -> dict:
        """Environment for ansible / ansible-playbook / ansible-runner against this fleet."""
        env = dict(os.environ)
        env.update({
            "ANSIBLE_CONFIG": str(self.config),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "PATH": os.pathsep.join([os.path.dirname(VENV_PYTHON), env.get("PATH", "")]),
        })
        if self.collections_path:
            env["ANSIBLE_COLLECTIONS_PATH"] = self.collections_path
        return env

    def destroy(self) -> None:
        """Remove everything create() made; safe to call twice and after a partial create()."""
        errors = []
        for host in self.hosts:
            # Every process inside the host's network namespace is one we started (sshd and
            # its sessions): end them by pid, TERM then KILL.
            for sig in (signal.SIGTERM, signal.SIGKILL):
                pids = self._netns_pids(host)
                if host.proc is not None and host.proc.poll() is None:
                    pids.add(host.proc.pid)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline and (self._netns_pids(host) or (
                        host.proc is not None and host.proc.poll() is None)):
                    time.sleep(0.05)
            if host.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.proc.wait(timeout=1)
        # ssh control masters of this fleet (controller side): ask each to exit.
        control_dir = self.dir / "cp"
        if control_dir.is_dir():
            for sock in control_dir.iterdir():
                sh("ssh", "-o", "ControlPath=%s" % sock, "-O", "exit", "fleet", check=False)
        for host in self.hosts:
            sh("ip", "link", "del", host.bridge_port, check=False)
            if sh("ip", "netns", "del", host.netns, check=False).returncode != 0 and \
                    os.path.exists("/run/netns/%s" % host.netns):
                errors.append("netns %s" % host.netns)
        if self._up:
            sh("ip", "link", "del", self.bridge, check=False)
        if self._created_lib_dir:
            with contextlib.suppress(OSError):
                os.rmdir("/var/lib/bpfd")
            self._created_lib_dir = False
        shutil.rmtree(self.dir, ignore_errors=True)
        self._up = False
        if errors:
            raise FleetError("could not remove: %s" % ", ".join(errors))

    @staticmethod
    def _netns_pids(host: Host) -> set:
        if not os.path.exists("/run/netns/%s" % host.netns):
            return set()
        proc = sh("ip", "netns", "pids", host.netns, check=False)
        return {int(p) for p in proc.stdout.split() if p.isdigit()}

    def leftovers(self) -> list:
        """What of this fleet still exists (empty after destroy())."""
        found = []
        netns = sh("ip", "netns", "list").stdout
        found += [h.netns for h in self.hosts if re.search(r"^%s\b" % re.escape(h.netns), netns, re.M)]
        links = sh("ip", "-o", "link", "show").stdout
        found += [n for n in [self.bridge] + [h.bridge_port for h in self.hosts] if ": %s" % n in links
                  or ": %s@" % n in links]
        found += ["pid %d" % h.proc.pid for h in self.hosts if h.proc is not None and h.proc.poll() is None]
        if self.dir.exists():
            found.append(str(self.dir))
        ps = sh("ps", "-eo", "pid=,args=").stdout
        found += ["process %s" % line.strip() for line in ps.splitlines() if str(self.dir) in line]
        return found

    # --- running Ansible -------------------------------------------------------------------
    def playbook(self, playbook: str | os.PathLike, extravars: dict | None = None, check: bool = False,
                 diff: bool = False, limit: str | None = None, ident: str | None = None):
        """Run a playbook with ansible-runner (events, stats); returns (runner, seconds)."""
        import ansible_runner

        private = self.dir / "runner"
        private.mkdir(exist_ok=True)
        cmdline = " ".join(filter(None, ["--check" if check else "", "--diff" if diff else "",
                                         "--limit %s" % limit if limit else ""]))
        env = self.env()
        envvars = {k: env[k] for k in ("ANSIBLE_CONFIG", "ANSIBLE_NOCOLOR", "ANSIBLE_COLLECTIONS_PATH",
                                       "ANSIBLE_LOCALHOST_WARNING", "PATH") if k in env}
        start = time.monotonic()
        runner = ansible_runner.run(
            private_data_dir=str(private), playbook=str(playbook), inventory=str(self.inventory),
            extravars=extravars or {}, cmdline=cmdline or None, envvars=envvars, quiet=True,
            ident=ident or uuid.uuid4().hex[:8], forks=self.forks)
        return runner, time.monotonic() - start

    def adhoc(self, pattern: str, module: str, args: str = "") -> tuple[int, dict, str]:
        """``ansible PATTERN -m MODULE -a ARGS`` as a user types it.

        Returns (rc, {host: (STATUS, result)}, output); the results come from the tree
        callback (one JSON file per host), STATUS is SUCCESS, CHANGED, FAILED or UNREACHABLE.
        """
        tree = pathlib.Path(tempfile.mkdtemp(prefix="adhoc-", dir=self.dir))
        env = self.env()
        env.update({"ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.tree",
                    "ANSIBLE_CALLBACK_TREE_DIR": str(tree)})
        argv = [os.path.join(os.path.dirname(VENV_PYTHON), "ansible"), pattern, "-m", module]
        if args:
            argv += ["-a", args]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=str(self.dir), check=False)
        results = {}
        for path in sorted(tree.iterdir()):
            result = json.loads(path.read_text())
            status = ("UNREACHABLE" if result.get("unreachable") else "FAILED" if result.get("failed")
                      else "CHANGED" if result.get("changed") else "SUCCESS")
            results[path.name] = (status, result)
        shutil.rmtree(tree, ignore_errors=True)
        return proc.returncode, results, proc.stdout + proc.stderr


# --- reading ansible-runner results --------------------------------------------------------
def task_results(runner, task: str) -> dict:
    """{host: (event, res)} of one task (by name) across the run."""
    out = {}
    for event in runner.events:
        data = event.get("event_data", {})
        if data.get("task") == task and event.get("event", "").startswith("runner_on_") and \
                event["event"] in ("runner_on_ok", "runner_on_failed", "runner_on_skipped",
                                   "runner_on_unreachable"):
            out[data["host"]] = (event["event"], data.get("res", {}))
    return out


def stats(runner) -> dict:
    return runner.stats or {}


def batches(runner) -> list:
    """Hosts of each serial batch, in order (a play start per batch)."""
    result, current = [], None
    for event in runner.events:
        if event.get("event") == "playbook_on_play_start":
            current = []
            result.append(current)
        elif event.get("event") == "playbook_on_task_start":
            pass
        elif event.get("event") in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable",
                                    "runner_on_skipped") and current is not None:
            host = event["event_data"]["host"]
            if host not in current:
                current.append(host)
    return result


# --- the full-size scenario (scripts/fleet.sh) ----------------------------------------------------
def rollout_vars(objects: pathlib.Path, serial: list, max_fail: int) -> dict:
    return {"fleet_objects_dir": str(objects), "fleet_serial": serial, "fleet_max_fail_percentage": max_fail}


def scenario(size: int, forks: int, keep: bool = False, collections_path: str | None = None,
             batch: int | None = None) -> int:
    batch = batch or max(1, size // 4)
    times = {}
    fleet = Fleet(size, broken=["fleet-02"], forks=forks, collections_path=collections_path)
    print("fleet: %d hosts (fleet-02 broken: no fleet0), forks %d, serial [1, %d]" % (size, forks, batch))
    start = time.monotonic()
    failures = []

    def expect(cond: bool, what: str) -> None:
        print("  %s %s" % ("ok  " if cond else "FAIL", what))
        if not cond:
            failures.append(what)

    try:
        fleet.create()
        times["setup (namespaces, sshd)"] = time.monotonic() - start
        objects = build_chain_objects(fleet.dir / "objects")
        print("fleet: scratch %s, subnet %s" % (fleet.dir, fleet.subnet))
        pb = PLAYBOOKS / "fleet_rollout.yml"

        run, t = fleet.playbook(pb, rollout_vars(objects, [1, batch], 0), ident="strict")
        times["rollout, max_fail_percentage=0 (stops)"] = t
        touched = [h.name for h in fleet.hosts if h.xdp_attached()]
        expect(run.rc != 0 and len(touched) == batch, "strict rollout stops after batch 2: %d hosts carry "
               "the chain (canary + %d of batch 2), rc=%s" % (len(touched), batch - 1, run.rc))

        run, t = fleet.playbook(pb, rollout_vars(objects, [1, batch], 50), ident="tolerant")
        times["rollout, max_fail_percentage=50 (continues)"] = t
        touched = [h.name for h in fleet.hosts if h.xdp_attached()]
        expect(len(touched) == size - 1 and run.stats["failures"] == {"fleet-02": 1},
               "tolerant rollout reaches all %d healthy hosts, fails fleet-02 only" % (size - 1))

        fleet.repair("fleet-02")
        run, t = fleet.playbook(pb, rollout_vars(objects, [1, batch], 0), ident="repaired")
        times["rollout after repairing fleet-02"] = t
        changed = sorted(h for h, n in run.stats.get("changed", {}).items() if n)
        expect(run.rc == 0 and changed == ["fleet-02"], "after the repair only fleet-02 changes (%s)" % changed)

        run, t = fleet.playbook(pb, rollout_vars(objects, [1, batch], 0), ident="noop")
        times["no-op re-run"] = t
        changed = sum(run.stats.get("changed", {}).values())
        expect(run.rc == 0 and changed == 0 and len(run.stats.get("ok", {})) == size,
               "re-run: %d hosts ok, changed=%d" % (len(run.stats.get("ok", {})), changed))

        run, t = fleet.playbook(PLAYBOOKS / "fleet_report.yml", ident="report")
        times["report play"] = t
        rows = next((r["ansible_facts"]["fleet_report_rows"] for _event, r in task_results(
            run, "Build the fleet table").values()), [])
        expect(run.rc == 0 and len(rows) == 3 * size, "report: %d rows (3 programs x %d hosts)" % (len(rows), size))
        table = next((r.get("msg") for _event, r in task_results(run, "Print the fleet table").values()), [])
        print("\n".join(table[:8] + (["  ..."] if len(table) > 8 else [])))

        t0 = time.monotonic()
        rc, res, out = fleet.adhoc("all", "bpfd.core.bpf_program_info")
        times["ad-hoc bpf_program_info (all)"] = time.monotonic() - t0
        expect(rc == 0 and len(res) == size and all(len(r["programs"]) == 3 for _status, r in res.values()),
               "ansible all -m bpfd.core.bpf_program_info: %d hosts, 3 programs each" % len(res))
        t0 = time.monotonic()
        rc, res, out = fleet.adhoc("web", "bpfd.core.bpf_xdp_program", "name=fleet-pass state=absent")
        times["ad-hoc bpf_xdp_program state=absent (web)"] = time.monotonic() - t0
        web = [h.name for h in fleet.hosts if h.group == "web"]
        expect(rc == 0 and sorted(res) == web and all(s == "CHANGED" for s, _result in res.values()),
               "ansible web -m bpfd.core.bpf_xdp_program -a 'name=fleet-pass state=absent': %d CHANGED"
               % sum(s == "CHANGED" for s, _result in res.values()))
    except Exception as exc:  # noqa: BLE001 - report, clean up, fail
        failures.append("%s: %s" % (type(exc).__name__, exc))
        print("fleet: ERROR %s" % exc)
    finally:
        if keep and not failures:
            print("fleet: --keep: the fleet stays up until you press Enter (or Ctrl-C); try\n"
                  "  ANSIBLE_CONFIG=%s ANSIBLE_COLLECTIONS_PATH=%s ansible all -m bpfd.core.bpf_program_info"
                  % (fleet.config, fleet.collections_path))
            with contextlib.suppress(EOFError, KeyboardInterrupt):
                input()
        t0 = time.monotonic()
        fleet.destroy()
        times["teardown"] = time.monotonic() - t0
        left = fleet.leftovers()
        if left:
            failures.append("left behind: %s" % left)
    print("\nfleet wall times (%d hosts, forks %d):" % (size, forks))
    for what, seconds in times.items():
        print("  %-45s %6.1f s" % (what, seconds))
    print("  %-45s %6.1f s" % ("total", time.monotonic() - start))
    if failures:
        print("fleet: FAILED: %s" % "; ".join(failures))
        return 1
    print("fleet: all checks passed")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--forks", type=int, default=10)
    parser.add_argument("--batch", type=int, help="hosts per batch after the canary (default hosts/4)")
    parser.add_argument("--keep", action="store_true",
                        help="when all passed, keep the fleet up until Enter is pressed, then clean up")
    parser.add_argument("--collections-path", help="ANSIBLE_COLLECTIONS_PATH holding bpfd.core")
    args = parser.parse_args(argv)

    def stop(signum, frame):  # SIGTERM/SIGHUP: unwind through the cleanup in scenario()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    return scenario(args.hosts, args.forks, keep=args.keep, collections_path=args.collections_path,
                    batch=args.batch)


if __name__ == "__main__":
    sys.exit(main())
