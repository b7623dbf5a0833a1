# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A job template run the way AWX runs it: ansible-runner on a private data directory
(project/, inventory/, env/extravars, env/cmdline with the job type and diff mode), then the
job's outcome read back from artifacts/<ident>/ (status, rc, job_events/*.json) - the files
AWX itself turns into the job's status, host summaries and event list."""

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
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
VENV_BIN = pathlib.Path(sys.executable).parent
LOAD_TASK = "Load the programs in priority order"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> pathlib.Path:
    spec = importlib.util.spec_from_file_location(
        "bpfd_fixture_build_awx", REPO / "tests" / "fixtures" / "bpf" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    build = tmp_path_factory.mktemp("awx-build")
    try:
        built = module.build_fixtures(build, ["xdp_count_pass", "xdp_pass"])
    except module.ClangNotFoundError as exc:
        pytest.skip(str(exc))
    dest = tmp_path_factory.mktemp("awx-objects")
    for name, path in built.items():
        shutil.copyfile(path, dest / (name + ".o"))
    return dest


@pytest.fixture
def interface():
    """A veth whose peer sits in a scratch network namespace (no addresses: no traffic)."""
    if os.geteuid() != 0 or not shutil.which("bpftool"):
        pytest.skip("needs root and bpftool")
    tag = uuid.uuid4().hex[:6]
    name, peer, netns = "bpfdawx%s" % tag, "bpfdawp%s" % tag, "bpfd-awx-%s" % tag
    sh("ip", "netns", "add", netns)
    try:
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", peer, "netns", netns)
        sh("ip", "link", "set", name, "up")
        sh("ip", "-n", netns, "link", "set", peer, "up")
        yield name
    finally:
        from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager
        mgr = Manager()
        for prog in mgr.list(interface=name)["programs"]:
            mgr.absent(name=prog["name"])
        sh("ip", "link", "del", name, check=False)
        sh("ip", "netns", "del", netns, check=False)


def xdp_on(interface: str) -> list:
    net = json.loads(sh("bpftool", "-j", "net", "show", "dev", interface).stdout or "[]") or [{}]
    return net[0].get("xdp", [])


class JobTemplate:
    """A private data directory laid out as AWX lays it out for a job."""

    def __init__(self, root: pathlib.Path, collections_path: pathlib.Path, extravars: dict) -> None:
        self.root = root
        shutil.copytree(HERE / "project", root / "project")
        (root / "inventory").mkdir()
        (root / "inventory" / "hosts").write_text(
            "[edge]\nedge-1 ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
        (root / "env").mkdir()
        (root / "env" / "extravars").write_text(yaml.safe_dump(extravars))
        (root / "env" / "envvars").write_text(yaml.safe_dump({
            "ANSIBLE_COLLECTIONS_PATH": str(collections_path),
            "ANSIBLE_NOCOLOR": "1",
        }))
        (root / "env" / "settings").write_text(yaml.safe_dump({"suppress_ansible_output": True}))

    def launch(self, ident: str, job_type: str = "run", diff_mode: bool = True,
               extravars: dict | None = None) -> "Job":
        """ansible-runner run ... --ident IDENT: the job type becomes --check, diff mode --diff."""
        cmdline = " ".join(filter(None, ["--check" if job_type == "check" else "",
                                         "--diff" if diff_mode else ""]))
        cmdline_file = self.root / "env" / "cmdline"
        cmdline_file.unlink(missing_ok=True)
        if cmdline:
            cmdline_file.write_text(cmdline)
        argv = [str(VENV_BIN / "ansible-runner"), "run", str(self.root), "-p", "xdp_job.yml",
                "--ident", ident]
        if extravars:
            # Launch-time extra vars (a survey): on top of env/extravars.
            base = yaml.safe_load((self.root / "env" / "extravars").read_text())
            (self.root / "env" / "extravars").write_text(yaml.safe_dump({**base, **extravars}))
        env = dict(os.environ, PATH=os.pathsep.join([str(VENV_BIN), os.environ["PATH"]]))
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        return Job(self.root / "artifacts" / ident, proc)


class Job:
    """What AWX reads back: status, rc and the job events."""

    def __init__(self, artifacts: pathlib.Path, proc: subprocess.CompletedProcess) -> None:
        self.artifacts = artifacts
        self.proc = proc
        self.status = (artifacts / "status").read_text().strip()
        self.rc = int((artifacts / "rc").read_text().strip())
        files = sorted((artifacts / "job_events").glob("*.json"),
                       key=lambda p: int(p.name.split("-", 1)[0]))
        self.events = [json.loads(p.read_text()) for p in files]

    def of(self, event: str, task: str | None = None) -> list:
        return [e for e in self.events if e["event"] == event
                and (task is None or e["event_data"].get("task") == task)]

    @property
    def stats(self) -> dict:
        (stats,) = self.of("playbook_on_stats")
        return stats["event_data"]

    def item_results(self, task: str) -> list:
        return [e["event_data"]["res"] for e in self.of("runner_item_on_ok", task)]

    def explain(self) -> str:
        return "status=%s rc=%s\n%s" % (self.status, self.rc, self.proc.stdout[-3000:] + self.proc.stderr[-2000:])


def test_job_template_check_then_run(tmp_path, collections_path, objects, interface):
    template = JobTemplate(tmp_path / "job", collections_path,
                           {"awx_interface": interface, "awx_objects_dir": str(objects)})

    # 1. Job type "check" with diff mode: predicted changes, diffs, nothing on the kernel.
    check = template.launch("1-check", job_type="check")
    assert check.status == "successful" and check.rc == 0, check.explain()
    assert check.of("playbook_on_start")[0]["event_data"]["playbook"] == "xdp_job.yml"
    items = check.item_results(LOAD_TASK)
    assert [r["changed"] for r in items] == [True, True]
    for res in items:
        assert res["diff"], res  # AWX shows these as the task's diff
    diffs = [d for r in items for d in (r["diff"] if isinstance(r["diff"], list) else [r["diff"]])]
    assert any("awx-pass" in json.dumps(d.get("after")) for d in diffs)
    assert check.stats["changed"] == {"edge-1": 1} and not check.stats["failures"]
    assert xdp_on(interface) == []
    listed = check.of("runner_on_ok", "List the programs of the interface (bpfctl list)")[0]
    assert listed["event_data"]["res"]["programs"] == []

    # 2. The same template as a real job: the changes happen, with the same diffs.
    run = template.launch("2-run")
    assert run.status == "successful" and run.rc == 0, run.explain()
    assert [r["changed"] for r in run.item_results(LOAD_TASK)] == [True, True]
    assert all(r["diff"] for r in run.item_results(LOAD_TASK))
    assert run.stats["changed"] == {"edge-1": 1} and run.stats["ok"] == {"edge-1": 3}
    report = run.of("runner_on_ok", "Report the chain")[0]["event_data"]["res"]["msg"]
    assert report == ["awx-count", "awx-pass"]
    assert len(xdp_on(interface)) == 1  # one dispatcher holds both

    # 3. Launched again (a schedule): nothing changes; check mode agrees.
    again = template.launch("3-rerun")
    assert again.status == "successful" and again.stats["changed"] == {}, again.explain()
    assert [r["changed"] for r in again.item_results(LOAD_TASK)] == [False, False]
    assert template.launch("4-check", job_type="check").stats["changed"] == {}

    # 4. Survey answer awx_state=absent: removed, the hook is empty again.
    gone = template.launch("5-absent", extravars={"awx_state": "absent"})
    assert gone.status == "successful" and gone.stats["changed"] == {"edge-1": 1}, gone.explain()
    assert xdp_on(interface) == []

    # Every job left its own artifacts, as AWX keeps one record per job.
    assert sorted(p.name for p in (template.root / "artifacts").iterdir()) == [
        "1-check", "2-run", "3-rerun", "4-check", "5-absent"]


def test_failed_job_is_reported_as_failed(tmp_path, collections_path, objects):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    template = JobTemplate(tmp_path / "job", collections_path,
                           {"awx_interface": "bpfd-no-such-if", "awx_objects_dir": str(objects)})
    job = template.launch("1-run")
    assert job.status == "failed" and job.rc == 2
    failed = job.of("runner_item_on_failed", LOAD_TASK)
    assert failed and "bpfd-no-such-if" in failed[0]["event_data"]["res"]["msg"]
    assert job.stats["failures"] == {"edge-1": 1}
