# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Load a linked dispatcher: link the members' code into the shipped entry
function, give it its read-only config map and a synthesized func BTF, and
hand the whole to BPF_PROG_LOAD as one program."""

from __future__ import annotations

import struct
from typing import Sequence

from ansible_collections.bpfd.core.plugins.module_utils import _btf
from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
from ansible_collections.bpfd.core.plugins.module_utils import _linker
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError

PROG_TYPES = {"xdp": libbpf.PROG_TYPE_XDP, "tc": libbpf.PROG_TYPE_SCHED_CLS}
EXPECTED_ATTACH = {"xdp": libbpf.ATTACH_XDP, "tc": 0}
PROG_NAMES = {"xdp": "bpfd_xdp_disp", "tc": "bpfd_tc_disp"}


def _config_map(config: bytes) -> int:
    """A frozen, program-read-only array: the verifier reads it as constants."""
    fd = libbpf.map_create(libbpf.MAP_TYPE_ARRAY, "bpfd_disp_cfg", 4, len(config), 1,
                           libbpf.BPF_F_RDONLY_PROG)
    try:
        libbpf.map_update(fd, struct.pack("<I", 0), config)
        libbpf.map_freeze(fd)
    except BaseException:
        libbpf.close_fd(fd)
        raise
    return fd


def load(kind: str, members: Sequence[bytes], masks: Sequence[int], *, frags: bool = False,
         member_names: Sequence[str] = ()) -> int:
    """Build and load the dispatcher; return its program fd (caller closes)."""
    try:
        linked = _linker.link_dispatcher(kind, members, masks)
    except _linker.LinkError as exc:
        raise BpfdError("cannot build the %s dispatcher: %s" % (kind, exc))
    cfg_fd = _config_map(linked.config)
    btf_fd = -1
    try:
        insns = _linker.set_config_map_fd(linked.insns, linked.config_loads, cfg_fd)
        func_btf = _btf.build_func_btf(linked.func_starts, linked.func_names)
        btf_fd = libbpf.btf_load(func_btf.btf)
        flags = libbpf.BPF_F_XDP_HAS_FRAGS if frags and kind == "xdp" else 0
        try:
            return libbpf.prog_load(
                PROG_TYPES[kind], PROG_NAMES[kind], "GPL", insns,
                expected_attach_type=EXPECTED_ATTACH[kind], prog_flags=flags, btf_fd=btf_fd,
                func_info=func_btf.func_info, func_info_rec_size=func_btf.func_info_rec_size)
        except BpfdError as exc:
            raise BpfdError(
                "the kernel refused the %s dispatcher built from %s: %s"
                % (kind, ", ".join(member_names) or "its members", _reason(exc.details.get("log", ""))),
                **exc.details)
    finally:
        libbpf.close_fd(btf_fd)
        libbpf.close_fd(cfg_fd)


def _reason(log: str) -> str:
    """The verifier's last meaningful line says why."""
    lines = [line for line in log.splitlines() if line.strip() and not line.startswith("processed ")]
    return lines[-1] if lines else "no verifier log"
