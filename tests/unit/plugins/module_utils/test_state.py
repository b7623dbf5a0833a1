# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The run-time state store: atomic writes, the host lock, version checks.

Everything runs in a tmp dir through an explicit Layout; nothing touches /run/bpfd.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _state
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._state import (
    Layout, StateStore, empty_state, read_state, write_json_atomic,
)


@pytest.fixture
def layout(tmp_path):
    return Layout(bpffs=str(tmp_path / "bpffs" / "bpfd"), run_dir=str(tmp_path / "run"),
                  lib_dir=str(tmp_path / "lib"))


def _leftovers(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith(".tmp-") or n.endswith(".tmp"))


# --- atomic write ------------------------------------------------------------------------


def test_write_json_atomic_writes_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "d" / "state.json"
    write_json_atomic(str(path), {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    write_json_atomic(str(path), {"c": 3})
    assert json.loads(path.read_text()) == {"c": 3}
    assert os.listdir(path.parent) == ["state.json"]


def test_failing_json_dump_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(str(path), {"version": 1, "programs": {"keep": {}}})
    old = path.read_bytes()
    inode = path.stat().st_ino
    with pytest.raises(TypeError):
        # dump writes the first keys, then fails on the set: a partial temp file exists
        write_json_atomic(str(path), {"a": "x" * 100000, "z": {1, 2}})
    assert path.read_bytes() == old
    assert path.stat().st_ino == inode
    assert _leftovers(tmp_path) == []
    assert os.listdir(tmp_path) == ["state.json"]


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_json_atomic(str(path), {"version": 1})
    old = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_state.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(str(path), {"version": 2})
    assert path.read_bytes() == old
    assert _leftovers(tmp_path) == []


# --- read_state ----------------------------------------------------------------------------


def test_read_state_missing_file_is_empty(layout):
    assert read_state(layout) == empty_state() == {"version": 1, "programs": {}, "hooks": {}}


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_read_state_rejects_another_version(layout, version):
    os.makedirs(layout.run_dir)
    data = {"programs": {}, "hooks": {}}
    if version is not None:
        data["version"] = version
    with open(layout.state_file, "w") as handle:
        json.dump(data, handle)
    with pytest.raises(BpfdError) as err:
        read_state(layout)
    msg = err.value.msg
    assert layout.state_file in msg
    assert "version %r" % (version,) in msg
    assert "reads version 1" in msg


def test_read_state_rejects_invalid_json(layout):
    os.makedirs(layout.run_dir)
    with open(layout.state_file, "w") as handle:
        handle.write('{"version": 1, "programs": ')
    with pytest.raises(BpfdError, match="is not valid JSON"):
        read_state(layout)


def test_store_round_trip_and_save_only_on_change(layout):
    store = StateStore(layout)
    with store.locked():
        assert store.data == empty_state()
        store.programs["p"] = {"name": "p"}
        store.hooks["xdp_1"] = {"members": ["p"]}
        store.save()
    assert read_state(layout)["programs"] == {"p": {"name": "p"}}
    before = os.stat(layout.state_file)
    store = StateStore(layout)
    with store.locked():
        store.save()  # nothing changed: no write
    after = os.stat(layout.state_file)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert _leftovers(layout.run_dir) == []


# --- the host lock -----------------------------------------------------------------------

_HOLD = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
""")

_TRY = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(3)
    sys.exit(0)
""")


def _try_lock(path):
    return subprocess.run([sys.executable, "-c", _TRY, path], timeout=30, check=False).returncode


def test_lock_excludes_another_process_while_held(layout):
    store = StateStore(layout)
    with store.locked():
        assert _try_lock(layout.lock_file) == 3
    assert _try_lock(layout.lock_file) == 0


def test_lock_waits_for_another_process(layout):
    os.makedirs(layout.run_dir)
    hold = 1.0
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, layout.lock_file, str(hold)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        store = StateStore(layout)
        with store.locked():
            waited = time.monotonic() - started  # the holder keeps the lock until it exits
        assert waited >= hold * 0.5
        assert store.lock_wait_seconds >= hold * 0.5
    finally:
        holder.kill()
        holder.wait()


def test_lock_file_descriptor_is_released(layout):
    store = StateStore(layout)
    with store.locked():
        pass
    assert store._lock_fd is None
    with pytest.raises(RuntimeError):
        with store.locked():
            raise RuntimeError("inside")
    assert _try_lock(layout.lock_file) == 0


# --- pins helpers on an ordinary directory tree -------------------------------------------


def test_remove_pin_tree(tmp_path):
    root = tmp_path / "prog"
    (root / "sub").mkdir(parents=True)
    (root / "a").write_text("")
    (root / "sub" / "b").write_text("")
    _state.remove_pin_tree(str(root))
    assert not root.exists()
    _state.remove_pin_tree(str(root))  # gone already: fine
    _state.remove_pin(str(tmp_path / "nothing"))
