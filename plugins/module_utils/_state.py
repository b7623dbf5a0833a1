# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The host layout and the run-time state store.

Run-time state lives in /run (tmpfs) so it has the same lifetime as the pins
in bpffs it describes (a persistent record of vanished pins is how bpfman
#1563 corrupted after reboot). Every mutation holds an exclusive flock; every
write is temp file + fsync + rename.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import grp
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError

STATE_VERSION = 1
BPFD_GROUP = "bpfd"
BPFFS_MAGIC_MOUNT = "/sys/fs/bpf"


@dataclass(frozen=True)
class Layout:
    """Where bpfd.core keeps things on a host (env overrides are for tests)."""

    bpffs: str = field(default_factory=lambda: os.environ.get("BPFD_BPFFS_DIR", "/sys/fs/bpf/bpfd"))
    run_dir: str = field(default_factory=lambda: os.environ.get("BPFD_RUN_DIR", "/run/bpfd"))
    lib_dir: str = field(default_factory=lambda: os.environ.get("BPFD_LIB_DIR", "/var/lib/bpfd"))

    @property
    def state_file(self) -> str:
        return os.path.join(self.run_dir, "state.json")

    @property
    def lock_file(self) -> str:
        return os.path.join(self.run_dir, "lock")

    @property
    def programs_dir(self) -> str:
        return os.path.join(self.bpffs, "programs")

    @property
    def maps_dir(self) -> str:
        return os.path.join(self.bpffs, "maps")

    @property
    def hooks_dir(self) -> str:
        return os.path.join(self.bpffs, "hooks")

    @property
    def bytecode_dir(self) -> str:
        return os.path.join(self.lib_dir, "bytecode")

    def program_dir(self, name: str) -> str:
        return os.path.join(self.programs_dir, name)

    def map_dir(self, name: str) -> str:
        return os.path.join(self.maps_dir, name)

    def hook_dir(self, hook_key: str) -> str:
        return os.path.join(self.hooks_dir, hook_key)


def empty_state() -> dict:
    return {"version": STATE_VERSION, "programs": {}, "hooks": {}}


def _is_bpffs(path: str) -> bool:
    try:
        with open("/proc/mounts") as mounts:
            return any(line.split()[1] == path and line.split()[2] == "bpf" for line in mounts)
    except OSError:
        return False


def ensure_bpffs(layout: Layout) -> None:
    """bpffs must be mounted for pins to outlive the module; mount it if absent."""
    root = os.path.dirname(layout.bpffs.rstrip("/")) or BPFFS_MAGIC_MOUNT
    if not _is_bpffs(root):
        os.makedirs(root, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "bpf", "bpf", root], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BpfdError("bpffs is not mounted at %s and mounting it failed: %s"
                            % (root, proc.stderr.strip()))
    for path in (layout.bpffs, layout.programs_dir, layout.maps_dir, layout.hooks_dir):
        os.makedirs(path, mode=0o750, exist_ok=True)
    # Members of group bpfd read map pins without sudo: they must be able to walk
    # <bpffs>/bpfd and maps/ (after a reboot the module, not the role, creates them).
    gid = bpfd_gid()
    if gid is not None:
        for path in (layout.bpffs, layout.maps_dir):
            if os.stat(path).st_gid != gid:
                os.chown(path, 0, gid)


def bpfd_gid() -> int | None:
    try:
        return grp.getgrnam(BPFD_GROUP).gr_gid
    except KeyError:
        return None


def write_json_atomic(path: str, data: Any) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o750, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_state(layout: Layout) -> dict:
    try:
        with open(layout.state_file) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return empty_state()
    except ValueError as exc:
        raise BpfdError("the state file %s is not valid JSON (%s); it is written atomically, "
                        "so something else changed it" % (layout.state_file, exc))
    if data.get("version") != STATE_VERSION:
        raise BpfdError("the state file %s has version %r; this collection reads version %d"
                        % (layout.state_file, data.get("version"), STATE_VERSION))
    return data


class StateStore:
    """Exclusive access to the host state for one operation."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.data: dict = empty_state()
        self._saved: dict = empty_state()
        self.lock_wait_seconds = 0.0
        self._lock_fd: int | None = None

    @contextlib.contextmanager
    def locked(self) -> Iterator["StateStore"]:
        os.makedirs(self.layout.run_dir, mode=0o750, exist_ok=True)
        share_with_group(self.layout.run_dir, 0o750)
        self._lock_fd = os.open(self.layout.lock_file, os.O_RDWR | os.O_CREAT, 0o640)
        started = time.monotonic()
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self.lock_wait_seconds = round(time.monotonic() - started, 3)
            self.data = read_state(self.layout)
            self._saved = copy.deepcopy(self.data)
            yield self
        finally:
            os.close(self._lock_fd)
            self._lock_fd = None

    def save(self) -> None:
        if self.data != self._saved:
            write_json_atomic(self.layout.state_file, self.data)
            share_with_group(self.layout.state_file, 0o640)
            self._saved = copy.deepcopy(self.data)

    @property
    def programs(self) -> dict:
        return self.data["programs"]

    @property
    def hooks(self) -> dict:
        return self.data["hooks"]


def remove_pin(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def remove_pin_tree(path: str) -> None:
    """Unpin everything below a bpffs directory, then the directory."""
    if not os.path.isdir(path):
        remove_pin(path)
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            remove_pin(os.path.join(root, name))
        for name in dirs:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(os.path.join(root, name))
    try:
        os.rmdir(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


CRASH_POINT_ENV = "BPFD_CRASH_AT"


def crash_point(name: str) -> None:
    """Test hook: die here with SIGKILL when BPFD_CRASH_AT names this point.

    The reliability suite places kills between the steps of a change (load,
    pin, swap, record, cleanup) to prove every step order converges.
    """
    if os.environ.get(CRASH_POINT_ENV) == name:
        os.kill(os.getpid(), 9)


def share_with_group(path: str, mode: int) -> None:
    """root:bpfd with `mode`, so members of bpfd read state without sudo."""
    gid = bpfd_gid()
    try:
        if gid is not None and os.stat(path).st_gid != gid:
            os.chown(path, 0, gid)
        os.chmod(path, mode)
    except PermissionError:
        pass  # not root (a read-only caller): leave it as it is
