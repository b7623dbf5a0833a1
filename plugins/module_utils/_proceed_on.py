# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Proceed-on values, their masks, and the order of a chain — exactly as bpfd."""

from __future__ import annotations

from typing import Iterable, Sequence

from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError

XDP_ACTIONS = {
    "aborted": 0, "drop": 1, "pass": 2, "tx": 3, "redirect": 4, "dispatcher_return": 31,
}
XDP_DEFAULT_PROCEED_ON = ("pass", "dispatcher_return")

TC_ACTIONS = {
    "unspec": -1, "ok": 0, "reclassify": 1, "shot": 2, "pipe": 3, "stolen": 4,
    "queued": 5, "repeat": 6, "redirect": 7, "trap": 8, "dispatcher_return": 30,
}
TC_DEFAULT_PROCEED_ON = ("pipe", "dispatcher_return")

MIN_PRIORITY = 0
MAX_PRIORITY = 1000
MAX_MEMBERS = 10

_TABLES = {"xdp": (XDP_ACTIONS, 0), "tc": (TC_ACTIONS, 1)}


def actions(kind: str) -> dict[str, int]:
    return _TABLES[kind][0]


def default_proceed_on(kind: str) -> list[str]:
    return list(XDP_DEFAULT_PROCEED_ON if kind == "xdp" else TC_DEFAULT_PROCEED_ON)


def normalize(kind: str, names: Iterable[str] | None) -> list[str]:
    """Validate proceed-on names; return them unique, in the table's order."""
    table = actions(kind)
    chosen = default_proceed_on(kind) if names is None else [str(n).strip().lower() for n in names]
    unknown = sorted(set(chosen) - set(table))
    if unknown:
        raise BpfdError(
            "unknown %s proceed_on value(s): %s; valid values are: %s"
            % (kind.upper(), ", ".join(unknown), ", ".join(table)))
    return [name for name in table if name in chosen]


def mask(kind: str, names: Iterable[str]) -> int:
    """The dispatcher's bit mask: XDP bit 1<<ret, TC bit 1<<(ret+1)."""
    table, shift = _TABLES[kind]
    value = 0
    for name in names:
        value |= 1 << (table[name] + shift)
    return value


def check_priority(priority: int) -> int:
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise BpfdError("priority must be between %d and %d, got %d"
                        % (MIN_PRIORITY, MAX_PRIORITY, priority))
    return priority


def order(members: Sequence[dict]) -> list[dict]:
    """A chain runs by (priority, name): deterministic on every host."""
    return sorted(members, key=lambda m: (m["priority"], m["name"]))
