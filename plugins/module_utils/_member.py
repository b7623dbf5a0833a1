# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A dispatcher member's code as stored between runs.

libbpf hands us final instructions whose ld_imm64 carry map file
descriptors of *this* process. To rebuild a dispatcher in a later process we
keep the instructions plus a relocation table (instruction index -> map id)
and patch fresh descriptors in, opened by id.
"""

from __future__ import annotations

import base64
import contextlib
from typing import Iterator

from ansible_collections.bpfd.core.plugins.module_utils import _insn
from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError


def map_relocations(insns: bytes, fd_to_id: dict[int, int]) -> list[list[int]]:
    """[[insn index, map id], ...] for every ld_imm64 that carries a map fd."""
    relocs = []
    for index, insn in _insn.iter_insns(insns):
        if _insn.is_map_fd_load(insn) or _insn.is_map_value_load(insn):
            if insn.imm not in fd_to_id:
                raise BpfdError("instruction %d references file descriptor %d, which is no map "
                                "of the object" % (index, insn.imm))
            relocs.append([index, fd_to_id[insn.imm]])
    return relocs


def encode(insns: bytes) -> str:
    return base64.b64encode(insns).decode("ascii")


@contextlib.contextmanager
def resolved(record: dict) -> Iterator[bytes]:
    """The recorded instructions with this process's map fds patched in."""
    insns = base64.b64decode(record["insns"])
    fds: dict[int, int] = {}
    try:
        for index, map_id in record["relocs"]:
            if map_id not in fds:
                fds[map_id] = libbpf.map_fd_by_id(map_id)
            insns = _insn.replace_insn(insns, index, _insn.Insn.decode(insns, index).replace(imm=fds[map_id]))
        yield insns
    finally:
        for fd in fds.values():
            libbpf.close_fd(fd)
