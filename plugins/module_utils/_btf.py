# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Build the smallest BTF a linked dispatcher needs: one FUNC per subprogram.

The verifier refuses a program that passes a callback (``bpf_loop``, timers,
``bpf_for_each_map_elem``) unless the load carries ``func_info``, and
``func_info`` must name a BTF ``FUNC`` for every subprogram start. Nothing
else is needed, so all functions share one prototype ``int (void *ctx)``
with static linkage (the verifier then checks each one only where it is
called, exactly as for a plain static subprogram).

Format: linux/Documentation/bpf/btf.rst — a 24-byte header, the type section,
the string section; type ids start at 1 (0 is ``void``).
"""

from __future__ import annotations

import dataclasses
import re
import struct

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")  # name_off, info, size/type
_U32 = struct.Struct("<I")
_PARAM = struct.Struct("<II")  # name_off, type
FUNC_INFO = struct.Struct("<II")  # struct bpf_func_info { insn_off; type_id; }

KIND_INT = 1
KIND_PTR = 2
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
INT_SIGNED = 1 << 24  # BTF_INT_ENCODING(SIGNED) in the u32 after an INT
FUNC_STATIC = 0  # linkage, stored in the vlen bits of a FUNC

INT_TYPE_ID = 1
VOID_PTR_TYPE_ID = 2
PROTO_TYPE_ID = 3
FIRST_FUNC_TYPE_ID = 4

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class FuncBTF:
    """Raw BTF for BPF_BTF_LOAD plus the func_info records for BPF_PROG_LOAD."""

    btf: bytes
    func_info: bytes
    func_info_rec_size: int
    func_info_cnt: int


class _Strings:
    """The string section: offset 0 is the empty string, each name stored once."""

    def __init__(self) -> None:
        self._data = bytearray(b"\0")
        self._offsets: dict[str, int] = {"": 0}

    def add(self, name: str) -> int:
        if name not in self._offsets:
            self._offsets[name] = len(self._data)
            self._data += name.encode("ascii") + b"\0"
        return self._offsets[name]

    def raw(self) -> bytes:
        return bytes(self._data)


def _info(kind: int, vlen: int = 0) -> int:
    return (kind << 24) | vlen


def _base_types(strings: _Strings) -> bytes:
    """Type ids 1..3: int, void *, int (void *ctx)."""
    int_type = _TYPE.pack(strings.add("int"), _info(KIND_INT), 4) + _U32.pack(INT_SIGNED | 32)
    void_ptr = _TYPE.pack(0, _info(KIND_PTR), 0)
    proto = _TYPE.pack(0, _info(KIND_FUNC_PROTO, 1), INT_TYPE_ID)
    proto += _PARAM.pack(strings.add("ctx"), VOID_PTR_TYPE_ID)
    return int_type + void_ptr + proto


def _func_type(strings: _Strings, name: str) -> bytes:
    return _TYPE.pack(strings.add(name), _info(KIND_FUNC, FUNC_STATIC), PROTO_TYPE_ID)


def _check_funcs(func_starts: list[int], names: list[str]) -> None:
    if not func_starts or func_starts[0] != 0:
        raise ValueError("the first function must start at instruction 0")
    if any(b <= a for a, b in zip(func_starts, func_starts[1:])):
        raise ValueError("function starts must be strictly increasing")
    if len(names) != len(func_starts):
        raise ValueError("%d names for %d functions" % (len(names), len(func_starts)))
    for name in names:
        if not _IDENTIFIER.match(name):
            raise ValueError("%r is not a valid BTF function name" % name)


def build_func_btf(func_starts: list[int], names: list[str] | None = None) -> FuncBTF:
    """BTF with one static FUNC per entry of ``func_starts`` and its func_info.

    ``func_starts`` are instruction indices, sorted, beginning with 0 (the
    kernel requires one record per subprogram, in order). ``names`` default
    to ``f_<start>``.
    """
    starts = list(func_starts)
    func_names = list(names) if names is not None else ["f_%d" % start for start in starts]
    _check_funcs(starts, func_names)

    strings = _Strings()
    types = _base_types(strings)
    types += b"".join(_func_type(strings, name) for name in func_names)
    string_section = strings.raw()
    header = _HEADER.pack(
        BTF_MAGIC, BTF_VERSION, 0, _HEADER.size, 0, len(types), len(types), len(string_section)
    )
    func_info = b"".join(
        FUNC_INFO.pack(start, FIRST_FUNC_TYPE_ID + i) for i, start in enumerate(starts)
    )
    return FuncBTF(
        btf=header + types + string_section,
        func_info=func_info,
        func_info_rec_size=FUNC_INFO.size,
        func_info_cnt=len(starts),
    )


# --- map definitions (a generated object's .maps section) ---------------------------

KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_VAR = 14
KIND_DATASEC = 15
VAR_GLOBAL_ALLOCATED = 1
# libbpf reads each field of a BTF-defined map as `int (*field)[value]`: a pointer
# (8 bytes in .maps) to an array whose element count is the value.
MAP_FIELDS = ("type", "key_size", "value_size", "max_entries", "map_flags")
MAP_DEF_SIZE = 8 * len(MAP_FIELDS)
_ARRAY = struct.Struct("<III")  # elem type, index type, nelems
_MEMBER = struct.Struct("<III")  # name_off, type, bit offset
_VAR_SECINFO = struct.Struct("<III")  # type, offset, size


def build_maps_btf(maps: list[tuple[str, dict]]) -> bytes:
    """BTF describing `maps` ([(name, {field: value for MAP_FIELDS})], in .maps order,
    MAP_DEF_SIZE bytes each) the way clang writes `struct { __uint(type, ...); ... } name
    SEC(".maps")`, so libbpf creates them from an object we write ourselves."""
    for name, _definition in maps:
        if not _IDENTIFIER.match(name):
            raise ValueError("%r is not a valid map name" % name)
    strings = _Strings()
    types = [_TYPE.pack(strings.add("int"), _info(KIND_INT), 4) + _U32.pack(INT_SIGNED | 32)]
    pointer_ids: dict[int, int] = {}

    def add(blob: bytes) -> int:
        types.append(blob)
        return len(types)

    def pointer_to_array(count: int) -> int:
        if count not in pointer_ids:
            array = add(_TYPE.pack(0, _info(KIND_ARRAY), 0) + _ARRAY.pack(INT_TYPE_ID, INT_TYPE_ID, count))
            pointer_ids[count] = add(_TYPE.pack(0, _info(KIND_PTR), array))
        return pointer_ids[count]

    secinfo = b""
    for index, (name, definition) in enumerate(maps):
        members = b"".join(_MEMBER.pack(strings.add(field), pointer_to_array(int(definition.get(field, 0))), 64 * i)
                           for i, field in enumerate(MAP_FIELDS))
        struct_id = add(_TYPE.pack(0, _info(KIND_STRUCT, len(MAP_FIELDS)), MAP_DEF_SIZE) + members)
        var_id = add(_TYPE.pack(strings.add(name), _info(KIND_VAR), struct_id) + _U32.pack(VAR_GLOBAL_ALLOCATED))
        secinfo += _VAR_SECINFO.pack(var_id, index * MAP_DEF_SIZE, MAP_DEF_SIZE)
    add(_TYPE.pack(strings.add(".maps"), _info(KIND_DATASEC, len(maps)), MAP_DEF_SIZE * len(maps)) + secinfo)
    type_section = b"".join(types)
    string_section = strings.raw()
    header = _HEADER.pack(BTF_MAGIC, BTF_VERSION, 0, _HEADER.size, 0, len(type_section), len(type_section),
                          len(string_section))
    return header + type_section + string_section
