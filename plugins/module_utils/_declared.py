# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The persistent record of what the operator declared, for restore at boot.

Run-time state (/run/bpfd) dies with the pins at reboot, on purpose. What must
survive is the *declaration*: which programs, where, in which order, from which
bytecode. It lives in /var/lib/bpfd/declared.json, with every program's object
kept in the bytecode store by sha256, so a restore needs no registry and no
controller.
"""

from __future__ import annotations

import json
import os
import shutil

from ansible_collections.bpfd.core.plugins.module_utils._state import Layout, write_json_atomic

DECLARED_VERSION = 1
DECLARED_FIELDS = ("kind", "interface", "direction", "netns", "priority", "proceed_on", "bpf_function_name",
                   "global_data", "map_owner", "metadata", "requested_mode", "path", "sha256", "bytecode",
                   "attach", "image", "source")


def declared_file(layout: Layout) -> str:
    return os.path.join(layout.lib_dir, "declared.json")


def keep_bytecode(layout: Layout, path: str, sha256: str) -> str:
    """The object's copy in the store (content-addressed, written once)."""
    kept = os.path.join(layout.bytecode_dir, "%s.o" % sha256)
    if not os.path.exists(kept):
        os.makedirs(layout.bytecode_dir, mode=0o750, exist_ok=True)
        tmp = "%s.tmp-%d" % (kept, os.getpid())
        shutil.copyfile(path, tmp)
        os.rename(tmp, kept)
    return kept


def declaration(programs: dict) -> dict:
    return {"version": DECLARED_VERSION,
            "programs": {name: {k: record.get(k) for k in DECLARED_FIELDS} for name, record in programs.items()}}


def read(layout: Layout) -> dict:
    try:
        with open(declared_file(layout)) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return declaration({})


def write(layout: Layout, programs: dict, already_declared: bool = False) -> None:
    """Record the declaration (from records, or declared entries) when it changed;
    drop bytecode nobody declares."""
    wanted = {"version": DECLARED_VERSION, "programs": programs} if already_declared else declaration(programs)
    if read(layout) != wanted:
        write_json_atomic(declared_file(layout), wanted)
    used = {"%s.o" % p["sha256"] for p in wanted["programs"].values()}
    for entry in os.listdir(layout.bytecode_dir) if os.path.isdir(layout.bytecode_dir) else []:
        if entry.endswith(".o") and entry not in used:
            os.unlink(os.path.join(layout.bytecode_dir, entry))


def update(layout: Layout, changes: dict) -> None:
    """Declare (record) or forget (None) the named programs; keep all others."""
    current = read(layout).get("programs", {})
    programs = {name: entry for name, entry in current.items() if name not in changes}
    programs.update({name: {k: record.get(k) for k in DECLARED_FIELDS}
                     for name, record in changes.items() if record is not None})
    write(layout, programs, already_declared=True)
