# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A reduced fleet (4 hosts, each its own network + mount namespace and sshd) driven over
SSH: serial rollout with a canary and max_fail_percentage, a broken host, the no-op re-run,
the report play, ad-hoc commands, and a teardown that leaves nothing behind.
``scripts/fleet.sh`` runs the same at 20 hosts."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from fleet import CHAIN_NAMES, PLAYBOOKS, Fleet, build_chain_objects, rollout_vars, task_results  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

SIZE = int(os.environ.get("BPFD_FLEET_SIZE", "4"))
BROKEN = "fleet-02"
SERIAL = [1, 2]          # batches: [01], [02 (broken), 03], [04]
ROLLOUT = PLAYBOOKS / "fleet_rollout.yml"
REPORT = PLAYBOOKS / "fleet_report.yml"
TIMES: dict = {}


@pytest.fixture(scope="module")
def fleet(collections_path):
    for tool in ("/usr/sbin/sshd", shutil.which("bpftool"), shutil.which("unshare")):
        if not tool or not os.path.exists(tool):
            pytest.skip("needs openssh-server, bpftool and util-linux (scripts/bootstrap.sh)")
    if os.geteuid() != 0:
        pytest.skip("needs root")
    start = time.monotonic()
    with Fleet(SIZE, broken=[BROKEN], forks=SIZE, collections_path=collections_path) as f:
        f.objects = build_chain_objects(f.dir / "objects")
        TIMES["setup"] = time.monotonic() - start
        yield f
    print("\nfleet wall times (%d hosts): %s" % (SIZE, ", ".join("%s %.1fs" % kv for kv in TIMES.items())))


def carrying(fleet: Fleet) -> list:
    """Hosts whose fleet0 has an XDP program, seen by bpftool in each namespace."""
    return [h.name for h in fleet.hosts if h.xdp_attached()]


def test_strict_rollout_stops_after_the_failing_batch(fleet):
    run, TIMES["strict rollout"] = fleet.playbook(ROLLOUT, rollout_vars(fleet.objects, SERIAL, 0), ident="strict")
    assert run.rc != 0 and run.status == "failed"
    chain = task_results(run, "Converge the XDP chain of the interface (one dispatcher swap)")
    # canary alone, then batch 2 (the broken host fails, its batch mate finishes the task);
    # the batch after it never starts.
    assert chain["fleet-01"][0] == "runner_on_ok" and chain["fleet-01"][1]["changed"]
    assert chain[BROKEN][0] == "runner_on_failed"
    assert "fleet0" in chain[BROKEN][1]["msg"]
    assert chain["fleet-03"][0] == "runner_on_ok"
    assert "fleet-04" not in chain
    assert carrying(fleet) == ["fleet-01", "fleet-03"]
    assert run.stats["failures"] == {BROKEN: 1}


def test_tolerant_rollout_continues_past_the_broken_host(fleet):
    run, TIMES["tolerant rollout"] = fleet.playbook(ROLLOUT, rollout_vars(fleet.objects, SERIAL, 50), ident="tolerant")
    # 1 failed host of 2 in its batch = 50 %, not more than 50: the rollout goes on.
    assert run.rc != 0  # a host failed, so ansible-playbook still says so
    chain = task_results(run, "Converge the XDP chain of the interface (one dispatcher swap)")
    assert chain[BROKEN][0] == "runner_on_failed"
    assert not chain["fleet-01"][1]["changed"] and not chain["fleet-03"][1]["changed"]
    assert chain["fleet-04"][1]["changed"]
    assert carrying(fleet) == [h.name for h in fleet.hosts if h.name != BROKEN]
    assert run.stats["failures"] == {BROKEN: 1}


def test_repaired_host_converges_then_rerun_changes_nothing(fleet):
    fleet.repair(BROKEN)
    run, TIMES["after repair"] = fleet.playbook(ROLLOUT, rollout_vars(fleet.objects, SERIAL, 0), ident="repair")
    assert run.rc == 0
    assert sorted(h for h, n in run.stats["changed"].items() if n) == [BROKEN]

    run, TIMES["no-op re-run"] = fleet.playbook(ROLLOUT, rollout_vars(fleet.objects, SERIAL, 0), ident="noop")
    assert run.rc == 0 and run.status == "successful"
    assert sum(run.stats.get("changed", {}).values()) == 0
    assert sorted(run.stats["ok"]) == [h.name for h in fleet.hosts]
    chain = task_results(run, "Converge the XDP chain of the interface (one dispatcher swap)")
    for host, (event, res) in chain.items():
        assert event == "runner_on_ok" and res["changed"] is False, host
        assert [p["name"] for p in res["chain"]] == CHAIN_NAMES


def test_each_host_has_its_own_bpffs_and_state(fleet):
    # Root namespace: none of the fleet's pins or records.
    assert not pathlib.Path("/sys/fs/bpf/bpfd/programs/fleet-count").exists()
    state = pathlib.Path("/run/bpfd/state.json")
    assert "fleet-count" not in (state.read_text() if state.exists() else "")
    # Each host: its own record of exactly the chain, its own pins, its own bytecode directory.
    rc, res, out = fleet.adhoc("all", "ansible.builtin.command",
                               "cat /run/bpfd/state.json /proc/self/mountinfo")
    assert rc == 0, out
    for host, (status, result) in res.items():
        stdout = result.get("stdout", "")
        state = json.loads(stdout[:stdout.index("\n}") + 2])
        assert sorted(state["programs"]) == sorted(CHAIN_NAMES), host
        assert " /sys/fs/bpf " in stdout and " /var/lib/bpfd " in stdout and " /run " in stdout, host


def test_report_gathers_one_table(fleet):
    report = fleet.dir / "report.json"
    run, TIMES["report"] = fleet.playbook(REPORT, {"fleet_report_file": str(report)}, ident="report")
    assert run.rc == 0
    rows = json.loads(report.read_text())
    assert len(rows) == 3 * SIZE
    for host in fleet.hosts:
        mine = [r for r in rows if r["host"] == host.name]
        assert [r["name"] for r in mine] == CHAIN_NAMES
        assert [r["position"] for r in mine] == [0, 1, 2]
        assert {r["interface"] for r in mine} == {"fleet0"}
    # kernel ids are per kernel, so every host has different ones
    assert len({r["id"] for r in rows}) == len(rows)
    table = next(iter(task_results(run, "Print the fleet table").values()))[1]["msg"]
    assert table[0].split()[:4] == ["HOST", "STATUS", "INTERFACE", "POS"]
    assert len(table) == 1 + 3 * SIZE


def test_adhoc_commands(fleet):
    rc, res, out = fleet.adhoc("all", "bpfd.core.bpf_program_info")
    assert rc == 0, out
    assert sorted(res) == [h.name for h in fleet.hosts]
    for host, (status, result) in res.items():
        assert status == "SUCCESS" and not result["changed"]
        assert [p["name"] for p in result["programs"]] == sorted(CHAIN_NAMES)

    web = sorted(h.name for h in fleet.hosts if h.group == "web")
    rc, res, out = fleet.adhoc("web", "bpfd.core.bpf_xdp_program", "name=fleet-pass state=absent")
    assert rc == 0, out
    assert sorted(res) == web and all(status == "CHANGED" for status, _result in res.values()), out
    rc, res, out = fleet.adhoc("web", "bpfd.core.bpf_xdp_program", "name=fleet-pass state=absent")
    assert rc == 0 and all(status == "SUCCESS" for status, _result in res.values()), out

    rc, res, out = fleet.adhoc("fleet", "bpfd.core.bpf_program_info", "interface=fleet0")
    for host in fleet.hosts:
        programs = sorted(res[host.name][1]["programs"], key=lambda p: p["position"])
        names = [p["name"] for p in programs]
        expected = [n for n in CHAIN_NAMES if not (host.group == "web" and n == "fleet-pass")]
        assert names == expected, host.name


def test_teardown_leaves_nothing(fleet):
    start = time.monotonic()
    fleet.destroy()
    TIMES["teardown"] = time.monotonic() - start
    assert fleet.leftovers() == []
