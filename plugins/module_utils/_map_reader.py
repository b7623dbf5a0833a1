# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Read a managed program's pinned map: every entry or the keys asked for.

Keys and values are decoded through the BTF the map was created with (fetched
from the kernel by id, read by ``_btf_reader``), as raw hex bytes otherwise.
Per-CPU maps give one value per possible CPU and their sum. The pin is opened
read-only: reading never changes a map.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
from ansible_collections.bpfd.core.plugins.module_utils._btf_reader import (
    Btf, BtfError, hex_bytes, parse_hex_bytes,
)
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError

DEFAULT_MAX_ENTRIES = 1000
PERCPU_TYPES = tuple(libbpf.PERCPU_MAP_TYPES) + (libbpf.MAP_TYPE_PERCPU_CGROUP_STORAGE,)


class _NotSummable(Exception):
    pass


class Codec:
    """Bytes <-> values for one side (key or value) of a map."""

    def __init__(self, size: int, btf: Btf | None = None, type_id: int = 0) -> None:
        self.size = size
        self.btf = btf if btf is not None and type_id else None
        self.type_id = type_id if self.btf is not None else 0

    @property
    def type_name(self) -> str | None:
        return self.btf.type_name(self.type_id) if self.btf is not None else None

    def decode(self, data: bytes) -> Any:
        if self.btf is None:
            return hex_bytes(data)
        return self.btf.decode(self.type_id, data)

    def encode(self, value: Any) -> bytes:
        """A key as a user gives it: a number, a dict of fields, hex bytes, a string."""
        if isinstance(value, str):
            raw = parse_hex_bytes(value.strip())
            if raw is not None:
                if len(raw) != self.size:
                    raise BtfError("%d bytes given, the key has %d" % (len(raw), self.size))
                return raw
        if self.btf is not None:
            return self.btf.encode(self.type_id, value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            value = int(value.strip())
        if isinstance(value, int) and not isinstance(value, bool) and self.size <= 8:
            bits = self.size * 8
            if not -(1 << (bits - 1)) <= value < (1 << bits):
                raise BtfError("%d does not fit a %d-byte key" % (value, self.size))
            return (value & ((1 << bits) - 1)).to_bytes(self.size, sys.byteorder)
        raise BtfError("the map has no BTF for its key: give it as hex bytes "
                       "(e.g. \"0x%s\")" % ("00" * self.size)
                       + (" or a number" if self.size <= 8 else ""))


def per_cpu_sum(values: list) -> Any:
    """Integers summed; dicts and lists summed field by field; other fields kept
    when every CPU holds the same; None when that is not possible."""
    try:
        return _sum(values)
    except _NotSummable:
        return None


def _sum(values: list) -> Any:
    first = values[0]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return sum(values)
    if all(isinstance(v, dict) for v in values) and all(v.keys() == first.keys() for v in values):
        return {k: _sum([v[k] for v in values]) for k in first}
    if all(isinstance(v, list) for v in values) and all(len(v) == len(first) for v in values):
        return [_sum([v[i] for v in values]) for i in range(len(first))]
    if all(v == first for v in values):
        return first
    raise _NotSummable()


def _map_btf(ids: dict, notes: list) -> Btf | None:
    if not ids["btf_id"] or not (ids["btf_key_type_id"] or ids["btf_value_type_id"]):
        return None
    try:
        with libbpf.owned_fd(libbpf.btf_fd_by_id(ids["btf_id"])) as btf_fd:
            return Btf.parse(libbpf.btf_data(btf_fd))
    except BpfdError as exc:
        if exc.details.get("errno") == "EPERM":
            notes.append("the map's BTF (id %d) could not be read: the kernel allows "
                         "BPF_BTF_GET_FD_BY_ID to CAP_SYS_ADMIN only; keys and values are raw hex"
                         % ids["btf_id"])
        else:
            notes.append("the map's BTF (id %d) could not be read (%s); keys and values are raw hex"
                         % (ids["btf_id"], exc.msg))
    except BtfError as exc:
        notes.append("the map's BTF (id %d) could not be parsed (%s); keys and values are raw hex"
                     % (ids["btf_id"], exc))
    return None


def _codec(btf: Btf | None, type_id: int, size: int, side: str, notes: list) -> Codec:
    if btf is None or not type_id:
        return Codec(size)
    try:
        btf_size = btf.size_of(type_id)
    except BtfError as exc:
        notes.append("the %s type of the map cannot be read (%s): shown as raw hex" % (side, exc))
        return Codec(size)
    if btf_size != size:
        notes.append("the %s type %s has %d bytes but the map's %s has %d: shown as raw hex"
                     % (side, btf.type_name(type_id), btf_size, side, size))
        return Codec(size)
    return Codec(size, btf, type_id)


def read_pinned(path: str, keys: list | None = None, max_entries: int = DEFAULT_MAX_ENTRIES) -> dict:
    """The map pinned at ``path``: ``{"map": facts, "entries": [...], "truncated", "notes"}``.

    ``keys`` None: every entry, in the kernel's iteration order, at most
    ``max_entries`` of them (0: no limit). Otherwise one entry per given key,
    in order, with ``found``.
    """
    if max_entries < 0:
        raise BpfdError("max_entries must be 0 (no limit) or more, not %d" % max_entries)
    try:
        fd = libbpf.obj_get_readonly(path)
    except BpfdError as exc:
        reason = {"ENOENT": "it does not exist", "EACCES": "permission denied",
                  "EPERM": "permission denied"}.get(exc.details.get("errno"), exc.msg)
        raise BpfdError("cannot open map pin %s: %s" % (path, reason), path=path, **exc.details)
    with libbpf.owned_fd(fd):
        return _read(fd, path, keys, max_entries)


def _read(fd: int, path: str, keys: list | None, max_entries: int) -> dict:
    info = libbpf.map_info(fd)
    ids = libbpf.map_btf_ids(fd)
    notes: list = []
    type_name = libbpf.MAP_TYPE_NAMES.get(info["type"], str(info["type"]))
    if not info["key_size"]:
        raise BpfdError("map %s (%s) is a %s map: it has no keys, so there are no entries to read"
                        % (info["name"], path, type_name), path=path)
    btf = _map_btf(ids, notes)
    key_codec = _codec(btf, ids["btf_key_type_id"], info["key_size"], "key", notes)
    value_codec = _codec(btf, ids["btf_value_type_id"], info["value_size"], "value", notes)
    percpu = info["type"] in PERCPU_TYPES
    cpus = libbpf.num_possible_cpus() if percpu else 1
    stride = (info["value_size"] + 7) // 8 * 8 if percpu else info["value_size"]

    def entry(raw_key: bytes, raw_value: bytes) -> dict:
        out = {"key": key_codec.decode(raw_key)}
        if percpu:
            slots = [value_codec.decode(raw_value[i * stride:i * stride + info["value_size"]])
                     for i in range(cpus)]
            out["value"] = per_cpu_sum(slots) if value_codec.btf is not None else None
            out["per_cpu"] = slots
        else:
            out["value"] = value_codec.decode(raw_value)
        return out

    def lookup(raw_key: bytes) -> bytes | None:
        try:
            return libbpf.map_lookup(fd, raw_key, stride * cpus)
        except BpfdError as exc:
            raise BpfdError("cannot read map %s (%s, a %s map): %s"
                            % (info["name"], path, type_name, exc.msg), path=path, **exc.details)

    truncated = False
    entries: list = []
    if keys is None:
        seen: set = set()
        for raw_key in libbpf.map_keys(fd, info["key_size"]):
            if raw_key in seen:  # a hash walk restarts when the current key is deleted
                continue
            if max_entries and len(entries) >= max_entries:
                truncated = True
                break
            raw_value = lookup(raw_key)
            if raw_value is not None:
                seen.add(raw_key)
                entries.append(entry(raw_key, raw_value))
    else:
        raw_keys = [_encode_key(key_codec, key, index) for index, key in enumerate(keys)]
        if max_entries and len(raw_keys) > max_entries:
            raw_keys, truncated = raw_keys[:max_entries], True
        for raw_key in raw_keys:
            raw_value = lookup(raw_key)
            if raw_value is None:
                entries.append({"key": key_codec.decode(raw_key), "value": None, "found": False})
            else:
                entries.append(dict(entry(raw_key, raw_value), found=True))
    if truncated:
        notes.append("map %s: only the first %d entries are returned (max_entries)"
                     % (info["name"], max_entries))
    facts = {
        "name": info["name"], "id": info["id"], "type": type_name,
        "key_size": info["key_size"], "value_size": info["value_size"],
        "max_entries": info["max_entries"], "flags": info["map_flags"], "pin_path": path,
        "btf": key_codec.btf is not None or value_codec.btf is not None,
        "btf_id": ids["btf_id"] or None,
        "key_type": key_codec.type_name, "value_type": value_codec.type_name,
        "per_cpu": percpu, "possible_cpus": cpus if percpu else None,
    }
    return {"map": facts, "entries": entries, "truncated": truncated, "notes": notes}


def _encode_key(codec: Codec, key: Any, index: int) -> bytes:
    try:
        return codec.encode(key)
    except BtfError as exc:
        what = "key %r" % (key,)
        type_name = codec.type_name
        raise BpfdError("%s (keys[%d]) does not fit the map's key%s: %s" % (
            what, index, " type %s" % type_name if type_name else "", exc), key=key)


def pinned_maps(pin_dir: str | None) -> list:
    """Names of the maps pinned in a program's map directory."""
    if not pin_dir or not os.path.isdir(pin_dir):
        return []
    return sorted(e for e in os.listdir(pin_dir) if not os.path.isdir(os.path.join(pin_dir, e)))


def read_program_map(program: str, map_name: str | None = None, keys: list | None = None,
                     max_entries: int = DEFAULT_MAX_ENTRIES,
                     lister: Callable[..., dict] | None = None) -> dict:
    """What ``bpf_map_info`` returns: one map of a managed program, read.

    ``lister`` is ``Manager().list`` (injectable for tests).
    """
    if lister is None:
        from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager
        lister = Manager().list
    listed = lister(name=program)
    if not listed["programs"]:
        known = [p["name"] for p in lister()["programs"]]
        raise BpfdError("no program named %s is managed by bpfd.core on this host (managed: %s)"
                        % (program, ", ".join(known) or "none"), program=program)
    facts = listed["programs"][0]
    pin_dir = facts.get("map_pin_path")
    names = pinned_maps(pin_dir)
    if map_name is None:
        if not names:
            raise BpfdError("program %s has no pinned maps to read" % program, program=program, maps=names)
        if len(names) > 1:
            raise BpfdError("program %s has several maps (%s): set map"
                            % (program, ", ".join(names)), program=program, maps=names)
        map_name = names[0]
    elif map_name not in names:
        raise BpfdError("program %s has no map named %s (its maps: %s)"
                        % (program, map_name, ", ".join(names) or "none"), program=program, maps=names)
    result = read_pinned(os.path.join(pin_dir, map_name), keys=keys, max_entries=max_entries)
    result["map"]["program"] = program
    result["map"]["pin_name"] = map_name
    notes = result.pop("notes")
    out = {"changed": False, "map": result["map"], "entries": result["entries"],
           "truncated": result["truncated"], "reconciled": listed.get("reconciled", [])}
    if notes:
        out["warnings"] = notes
    return out
