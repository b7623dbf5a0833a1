# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attach points without a dispatcher: tracepoints, k(ret)probes, u(ret)probes,
fentry/fexit. One program, one bpf_link, pinned so it outlives the module.

Interface used by the Manager (kinds in KINDS):
  PROG_TYPES[kind]                     program types the object's function must have
  check_spec(kind, attach, section)    refuse a wrong attach description (clear sentence)
  probe_kernel(kind, attach)           refuse what this kernel cannot attach (no traceback)
  attach(loaded, kind, attach, pin)    create the link, pin it at `pin`; return the link id
  alive(pin)                           the pinned link still exists
"""

from __future__ import annotations

import os

from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError

KINDS = ("tracepoint", "kprobe", "uprobe", "fentry", "fexit")
PROG_TYPES = {
    "tracepoint": (libbpf.PROG_TYPE_TRACEPOINT,),
    "kprobe": (libbpf.PROG_TYPE_KPROBE,),
    "uprobe": (libbpf.PROG_TYPE_KPROBE,),
    "fentry": (libbpf.PROG_TYPE_TRACING,),
    "fexit": (libbpf.PROG_TYPE_TRACING,),
}


def check_spec(kind: str, attach: dict, section: str | None = None) -> None:
    raise BpfdError("%s programs are not implemented yet" % kind)


def probe_kernel(kind: str, attach: dict) -> None:
    raise BpfdError("%s programs are not implemented yet" % kind)


def attach(loaded, kind: str, attach_point: dict, pin: str) -> int:
    raise BpfdError("%s programs are not implemented yet" % kind)


def alive(pin: str) -> bool:
    return os.path.exists(pin)
