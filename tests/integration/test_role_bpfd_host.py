# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Role bpfd.core.bpfd_host, driven through ansible-playbook on localhost.

present: applied twice (the second run must report changed=0), then in check mode
(changed=0 again), and the layout, mounts, group and pyroute2 are checked directly.

absent on the real host only runs when it cannot destroy anything: nothing pinned under
/sys/fs/bpf/bpfd, no program or hook in /run/bpfd/state.json, empty /etc/bpfd, no
member in the bpfd group. It holds the state store's lock (/run/bpfd/lock) meanwhile
and always runs present again afterwards, so the host ends as it began.

The refusal of absent (programs still managed) is tested in a sandbox: the role's
private path variables are pointed at a temporary tree with extra vars.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pathlib
import re
import stat
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

BPFFS_DIR = pathlib.Path("/sys/fs/bpf/bpfd")
RUN_DIR = pathlib.Path("/run/bpfd")
STORE_DIR = pathlib.Path("/var/lib/bpfd")
CONFIG_DIR = pathlib.Path("/etc/bpfd")
GROUP = "bpfd"
# path -> (group, mode) as the role creates them
LAYOUT = {
    BPFFS_DIR: (GROUP, 0o750),
    BPFFS_DIR / "maps": (GROUP, 0o750),
    RUN_DIR: (GROUP, 0o750),
    STORE_DIR: (GROUP, 0o750),
    CONFIG_DIR: ("root", 0o755),
}

RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)",
    re.M,
)


class PlaybookRun:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.rc = proc.returncode
        self.output = proc.stdout
        match = RECAP.search(self.output.split("PLAY RECAP", 1)[-1])
        assert match, "no PLAY RECAP line in ansible-playbook output:\n" + self.output
        self.recap = {k: (v if k == "host" else int(v)) for k, v in match.groupdict().items()}

    def __getattr__(self, name: str) -> int:
        try:
            return self.recap[name]
        except KeyError:
            raise AttributeError(name) from None


@pytest.fixture
def run_role(tmp_path, collections_path):
    """Return run(extra_vars, check=False) -> PlaybookRun applying the role to localhost."""
    playbook = tmp_path / "role.yml"
    playbook.write_text(
        "- hosts: localhost\n"
        "  gather_facts: false\n"
        "  roles:\n"
        "    - role: bpfd.core.bpfd_host\n"
    )
    inventory = tmp_path / "inventory.ini"
    # The interpreter running the tests is the venv's: the modules must run with it
    # (pyenv shims break interpreter discovery).
    inventory.write_text(
        "localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable
    )
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(collections_path),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_STDOUT_CALLBACK="default",
    )
    ansible_playbook = pathlib.Path(sys.executable).with_name("ansible-playbook")

    def run(extra_vars: dict | None = None, check: bool = False) -> PlaybookRun:
        cmd = [str(ansible_playbook), "-i", str(inventory), str(playbook)]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        if check:
            cmd.append("--check")
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        return PlaybookRun(proc)

    return run


def _mounted(fstype: str, path: str) -> bool:
    with open("/proc/mounts", encoding="utf-8") as mounts:
        return any(line.split()[1:3] == [path, fstype] for line in mounts)


def _has_fs(fstype: str) -> bool:
    with open("/proc/filesystems", encoding="utf-8") as filesystems:
        return any(line.split()[-1] == fstype for line in filesystems if line.strip())


def _assert_layout() -> None:
    gid = grp.getgrnam(GROUP).gr_gid
    for path, (group, mode) in LAYOUT.items():
        st = path.stat()
        assert stat.S_ISDIR(st.st_mode), path
        assert st.st_uid == 0, path
        assert st.st_gid == (gid if group == GROUP else 0), path
        assert stat.S_IMODE(st.st_mode) == mode, "%s has mode %o" % (path, stat.S_IMODE(st.st_mode))


def _assert_ok(run: PlaybookRun) -> None:
    assert run.rc == 0 and run.failed == 0 and run.unreachable == 0, run.output


def test_present_is_idempotent(run_role):
    first = run_role({"bpfd_host_state": "present"})
    _assert_ok(first)
    second = run_role({"bpfd_host_state": "present"})
    _assert_ok(second)
    assert second.changed == 0, "second run changed something:\n" + second.output

    _assert_layout()
    assert _mounted("bpf", "/sys/fs/bpf")
    if _has_fs("tracefs"):
        assert _mounted("tracefs", "/sys/kernel/tracing")
    subprocess.run([sys.executable, "-c", "import pyroute2"], check=True)


def test_check_mode_after_present_predicts_nothing(run_role):
    _assert_ok(run_role())
    check = run_role(check=True)
    _assert_ok(check)
    assert check.changed == 0, check.output


# --- absent -------------------------------------------------------------------------

@contextlib.contextmanager
def _flock(path: pathlib.Path, timeout: float):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("%s stayed locked for %ds" % (path, timeout))
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


@pytest.fixture(scope="module", autouse=True)
def _one_role_test_at_a_time():
    """Serialise concurrent runs of this file (developers sharing one host): one run's
    absent must not pull the layout from under another's assertions. The lock lives
    outside the directories absent removes."""
    lock_dir = pathlib.Path("/run/lock")
    lock_dir.mkdir(exist_ok=True)
    with _flock(lock_dir / "bpfd-core-test-role-bpfd-host.lock", timeout=900):
        yield


@contextlib.contextmanager
def _store_lock():
    """Hold the run-time store's lock, as every bpfd.core mutation does."""
    RUN_DIR.mkdir(mode=0o750, exist_ok=True)
    with _flock(RUN_DIR / "lock", timeout=60):
        yield


def _why_absent_is_unsafe() -> str | None:
    """A reason not to run absent on this host, or None when it destroys nothing."""
    if BPFFS_DIR.exists():
        pins = [p for p in BPFFS_DIR.rglob("*") if not p.is_dir()]
        if pins:
            return "%s holds pins (%s)" % (BPFFS_DIR, pins[0])
    state_file = RUN_DIR / "state.json"
    if RUN_DIR.exists():
        others = [p for p in RUN_DIR.rglob("*") if not p.is_dir() and p.name not in ("lock", "state.json")]
        if others:
            return "%s holds %s" % (RUN_DIR, others[0])
    if state_file.exists():
        state = json.loads(state_file.read_text() or "{}")
        if state.get("programs") or state.get("hooks"):
            return "%s records programs or hooks" % state_file
    if CONFIG_DIR.exists() and any(CONFIG_DIR.iterdir()):
        return "%s is not empty" % CONFIG_DIR
    try:
        if grp.getgrnam(GROUP).gr_mem:
            return "group %s has members" % GROUP
    except KeyError:
        pass
    return None


def test_absent_then_present_again(run_role):
    _assert_ok(run_role())
    with _store_lock():
        reason = _why_absent_is_unsafe()
        if reason:
            pytest.skip("absent would destroy this host's state: " + reason)
        # A store with declared programs is kept; an empty one is removed.
        keep_store = STORE_DIR.exists() and any(STORE_DIR.iterdir())
        try:
            absent = run_role({"bpfd_host_state": "absent", "bpfd_host_keep_store": keep_store})
            if absent.failed and "Nothing was removed" in absent.output:
                # On a shared development host another run can load programs without
                # this lock's help (e.g. after re-creating /run/bpfd); the role's own
                # guard then refuses, which is the behaviour under test elsewhere.
                assert absent.changed == 0 and BPFFS_DIR.exists() and RUN_DIR.exists(), absent.output
                pytest.skip("programs were loaded meanwhile; absent refused and removed nothing")
            _assert_ok(absent)
            assert absent.changed > 0
            for path in (BPFFS_DIR, RUN_DIR, CONFIG_DIR):
                assert not path.exists(), path
            assert STORE_DIR.exists() == keep_store
            with pytest.raises(KeyError):
                grp.getgrnam(GROUP)

            again = run_role({"bpfd_host_state": "absent", "bpfd_host_keep_store": keep_store})
            _assert_ok(again)
            assert again.changed == 0, again.output

            # Check mode predicts the work and does none of it.
            check = run_role({"bpfd_host_state": "present"}, check=True)
            _assert_ok(check)
            assert check.changed > 0, check.output
            assert not BPFFS_DIR.exists() and not CONFIG_DIR.exists()
            with pytest.raises(KeyError):
                grp.getgrnam(GROUP)
        finally:
            restored = run_role({"bpfd_host_state": "present"})
        _assert_ok(restored)
        assert restored.changed > 0
        _assert_layout()


def test_absent_refuses_while_programs_are_managed(run_role, tmp_path):
    """In a sandbox tree: a pin or a recorded program blocks absent, which then changes nothing."""
    root = tmp_path / "host"
    paths = {
        "_bpfd_host_bpffs_dir": root / "bpffs" / "bpfd",
        "_bpfd_host_run_dir": root / "run" / "bpfd",
        "_bpfd_host_store_dir": root / "lib" / "bpfd",
        "_bpfd_host_config_dir": root / "etc" / "bpfd",
    }
    for path in paths.values():
        path.mkdir(parents=True)
    sandbox = {k: str(v) for k, v in paths.items()}
    sandbox.update(bpfd_host_state="absent", bpfd_host_remove_group=False)
    run_dir = paths["_bpfd_host_run_dir"]
    (run_dir / "lock").touch()
    state_file = run_dir / "state.json"

    # A pinned object.
    pin = paths["_bpfd_host_bpffs_dir"] / "programs" / "web" / "prog"
    pin.parent.mkdir(parents=True)
    pin.touch()
    state_file.write_text(json.dumps({"version": 1, "programs": {}, "hooks": {}}))
    refused = run_role(sandbox)
    assert refused.rc != 0 and refused.failed == 1, refused.output
    assert "still has 1 bpfd.core object(s)" in refused.output and str(pin) in refused.output
    assert "Nothing was removed" in refused.output
    assert refused.changed == 0
    assert all(path.exists() for path in paths.values()) and pin.exists()

    # A program recorded in the run-time state, no pin.
    pin.unlink()
    state_file.write_text(json.dumps({"version": 1, "programs": {"web": {}}, "hooks": {}}))
    refused = run_role(sandbox)
    assert refused.failed == 1 and "program web" in refused.output, refused.output
    assert all(path.exists() for path in paths.values())

    # Nothing managed: empty state and the lock file are removed with the layout.
    state_file.write_text(json.dumps({"version": 1, "programs": {}, "hooks": {}}))
    removed = run_role(sandbox)
    _assert_ok(removed)
    assert removed.changed > 0
    assert not any(path.exists() for path in paths.values())
