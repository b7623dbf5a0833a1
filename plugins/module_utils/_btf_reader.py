# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Read BTF and use it to turn map keys and values into plain values and back.

``_btf.py`` *builds* the little BTF the dispatcher needs; this file *reads*
the BTF a map was created with (fetched from the kernel by id) — the other
half of cilium/ebpf's ``btf`` package, kept to what map data needs:

- INT (signedness, width, bit offset, bool), FLOAT, PTR (shown as hex),
- ARRAY (``char`` arrays as strings when printable, as bpftool does),
- STRUCT / UNION (members by name, anonymous members flattened, bitfields),
- ENUM / ENUM64 (the enumerator's name, or the number when none matches),
- TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG (looked through),
- VAR / DATASEC (global-data maps), anything else as raw hex.

Format: linux/Documentation/bpf/btf.rst. Data is in the byte order of the
BTF blob (the kernel's: the host's).
"""

from __future__ import annotations

import dataclasses
import math
import re
import struct
from typing import Any

BTF_MAGIC = 0xEB9F

KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

INT_SIGNED = 1
INT_CHAR = 2
INT_BOOL = 4

MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)
QUALIFIERS = {KIND_VOLATILE: "volatile", KIND_CONST: "const", KIND_RESTRICT: "restrict"}
POINTER_SIZE = 8
_MAX_DEPTH = 64  # deeper chains of references are malformed (or cyclic) BTF

_HEX_BYTE_TOKEN = re.compile(r"^(0[xX])?[0-9a-fA-F]{1,2}$")
_DECIMAL = re.compile(r"^[+-]?\d+$")


class BtfError(ValueError):
    """The blob is not BTF we can read, or a value does not fit its type."""


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int = 0  # 0: not a bitfield


@dataclasses.dataclass(frozen=True)
class BtfType:
    kind: int
    name: str = ""
    size: int = 0  # INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC
    ref: int = 0  # PTR, TYPEDEF, modifiers, VAR, FUNC; ARRAY: element type
    kind_flag: bool = False
    encoding: int = 0  # INT
    bits: int = 0  # INT
    int_offset: int = 0  # INT
    nelems: int = 0  # ARRAY
    members: tuple = ()  # STRUCT, UNION: Member; DATASEC: (type_id, offset, size)
    enumerators: tuple = ()  # ENUM, ENUM64: (name, value)


VOID = BtfType(kind=0, name="void")


def _kind_name(kind: int) -> str:
    return {
        KIND_INT: "int", KIND_PTR: "ptr", KIND_ARRAY: "array", KIND_STRUCT: "struct",
        KIND_UNION: "union", KIND_ENUM: "enum", KIND_FWD: "fwd", KIND_TYPEDEF: "typedef",
        KIND_VOLATILE: "volatile", KIND_CONST: "const", KIND_RESTRICT: "restrict",
        KIND_FUNC: "func", KIND_FUNC_PROTO: "func_proto", KIND_VAR: "var",
        KIND_DATASEC: "datasec", KIND_FLOAT: "float", KIND_DECL_TAG: "decl_tag",
        KIND_TYPE_TAG: "type_tag", KIND_ENUM64: "enum64",
    }.get(kind, "kind %d" % kind)


def hex_bytes(data: bytes) -> str:
    """Raw bytes as bpftool prints them: ``0a 00 00 01``."""
    return " ".join("%02x" % b for b in data)


def parse_hex_bytes(text: str) -> bytes | None:
    """``0x0a000001``, ``0a 00 00 01`` or ``0x0a 0x00 0x00 0x01`` -> bytes, in that
    order (raw map bytes, not a number); None when ``text`` is none of these."""
    tokens = text.split()
    if len(tokens) == 1 and tokens[0][:2] in ("0x", "0X"):
        digits = tokens[0][2:]
        if len(digits) % 2 or not digits or not re.match(r"^[0-9a-fA-F]+$", digits):
            raise BtfError("%r is not a whole number of hex bytes" % text)
        return bytes.fromhex(digits)
    if len(tokens) > 1 and all(_HEX_BYTE_TOKEN.match(t) for t in tokens):
        return bytes(int(t, 16) for t in tokens)
    return None


class Btf:
    """Parsed BTF: ``types[id]`` (id 0 is void) and the helpers maps need."""

    def __init__(self, types: list, byteorder: str) -> None:
        self.types = types
        self.byteorder = byteorder
        self._endian = "<" if byteorder == "little" else ">"

    # --- parsing -----------------------------------------------------------

    @classmethod
    def parse(cls, blob: bytes) -> "Btf":
        if len(blob) < 24:
            raise BtfError("BTF blob too short (%d bytes)" % len(blob))
        if struct.unpack_from("<H", blob)[0] == BTF_MAGIC:
            endian, byteorder = "<", "little"
        elif struct.unpack_from(">H", blob)[0] == BTF_MAGIC:
            endian, byteorder = ">", "big"
        else:
            raise BtfError("not BTF: bad magic %s" % blob[:2].hex())
        _magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            endian + "HBBIIIII", blob)
        if version != 1:
            raise BtfError("BTF version %d is not supported" % version)
        types_at, strings_at = hdr_len + type_off, hdr_len + str_off
        if types_at + type_len > len(blob) or strings_at + str_len > len(blob):
            raise BtfError("BTF sections run past the end of the blob")
        strings = blob[strings_at:strings_at + str_len]
        section = blob[types_at:types_at + type_len]
        return cls([VOID] + _parse_types(section, strings, endian), byteorder)

    # --- looking at types ----------------------------------------------------

    def type(self, type_id: int) -> BtfType:
        if not 0 <= type_id < len(self.types):
            raise BtfError("type id %d is not in this BTF (it has %d types)"
                           % (type_id, len(self.types) - 1))
        return self.types[type_id]

    def resolve(self, type_id: int) -> BtfType:
        """The type behind typedefs, qualifiers and VARs."""
        for _depth in range(_MAX_DEPTH):
            btf_type = self.type(type_id)
            if btf_type.kind not in MODIFIERS and btf_type.kind != KIND_VAR:
                return btf_type
            type_id = btf_type.ref
        raise BtfError("type reference chain too deep (cycle?)")

    def size_of(self, type_id: int, depth: int = 0) -> int:
        if depth > _MAX_DEPTH:
            raise BtfError("type reference chain too deep (cycle?)")
        btf_type = self.resolve(type_id)
        if btf_type.kind == KIND_PTR:
            return POINTER_SIZE
        if btf_type.kind == KIND_ARRAY:
            return btf_type.nelems * self.size_of(btf_type.ref, depth + 1)
        if btf_type.kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64,
                             KIND_FLOAT, KIND_DATASEC):
            return btf_type.size
        raise BtfError("a %s has no size" % _kind_name(btf_type.kind))

    def type_name(self, type_id: int, depth: int = 0) -> str:
        """A C-like spelling: ``__u32``, ``struct flow``, ``char[16]``, ``void *``."""
        if depth > _MAX_DEPTH:
            return "?"
        btf_type = self.type(type_id)
        kind = btf_type.kind
        if kind in (0, KIND_INT, KIND_FLOAT, KIND_TYPEDEF):
            return btf_type.name
        if kind in (KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64):
            tag = {KIND_STRUCT: "struct", KIND_UNION: "union"}.get(kind, "enum")
            return "%s %s" % (tag, btf_type.name or "{...}")
        if kind == KIND_FWD:
            return "%s %s" % ("union" if btf_type.kind_flag else "struct", btf_type.name)
        if kind == KIND_PTR:
            return self.type_name(btf_type.ref, depth + 1) + " *"
        if kind == KIND_ARRAY:
            return "%s[%d]" % (self.type_name(btf_type.ref, depth + 1), btf_type.nelems)
        if kind in QUALIFIERS:
            return "%s %s" % (QUALIFIERS[kind], self.type_name(btf_type.ref, depth + 1))
        if kind in (KIND_TYPE_TAG, KIND_VAR):
            return self.type_name(btf_type.ref, depth + 1)
        return btf_type.name or _kind_name(kind)

    def is_char_array(self, btf_type: BtfType) -> bool:
        """bpftool's rule: elements are a 1-byte INT named ``char`` (or CHAR-encoded),
        seen through qualifiers but not through typedefs (``__u8[6]`` stays numbers)."""
        if btf_type.kind != KIND_ARRAY or not btf_type.nelems:
            return False
        elem = self.type(btf_type.ref)
        for _depth in range(_MAX_DEPTH):
            if elem.kind not in QUALIFIERS and elem.kind != KIND_TYPE_TAG:
                break
            elem = self.type(elem.ref)
        return elem.kind == KIND_INT and elem.size == 1 and (
            bool(elem.encoding & INT_CHAR) or elem.name == "char")

    # --- bytes -> values -------------------------------------------------------

    def decode(self, type_id: int, data: bytes, depth: int = 0) -> Any:
        """The value of ``type_id`` held in ``data`` as JSON-friendly Python."""
        if depth > _MAX_DEPTH:
            raise BtfError("type nesting too deep")
        btf_type = self.resolve(type_id)
        kind = btf_type.kind
        if kind == KIND_INT:
            return self._decode_int(btf_type, data)
        if kind in (KIND_ENUM, KIND_ENUM64):
            number = int.from_bytes(data[:btf_type.size], self.byteorder, signed=btf_type.kind_flag)
            return self._enum_name(btf_type, number)
        if kind == KIND_PTR:
            return "0x%x" % int.from_bytes(data[:POINTER_SIZE], self.byteorder)
        if kind == KIND_FLOAT:
            return self._decode_float(btf_type, data)
        if kind == KIND_ARRAY:
            return self._decode_array(btf_type, data, depth)
        if kind in (KIND_STRUCT, KIND_UNION):
            return self._decode_members(btf_type, data, depth)
        if kind == KIND_DATASEC:
            return {self.type(var_id).name: self.decode(var_id, data[offset:offset + size], depth + 1)
                    for var_id, offset, size in btf_type.members}
        return hex_bytes(data)

    def _decode_int(self, btf_type: BtfType, data: bytes) -> Any:
        signed = bool(btf_type.encoding & INT_SIGNED)
        raw = data[:btf_type.size]
        if btf_type.int_offset or btf_type.bits < btf_type.size * 8:
            value = (int.from_bytes(raw, self.byteorder) >> btf_type.int_offset) & ((1 << btf_type.bits) - 1)
            value = _sign_extend(value, btf_type.bits) if signed else value
        else:
            value = int.from_bytes(raw, self.byteorder, signed=signed)
        return bool(value) if btf_type.encoding & INT_BOOL else value

    def _decode_float(self, btf_type: BtfType, data: bytes) -> Any:
        fmt = {2: "e", 4: "f", 8: "d"}.get(btf_type.size)
        if fmt is None:
            return hex_bytes(data[:btf_type.size])
        value = struct.unpack(self._endian + fmt, data[:btf_type.size])[0]
        return value if math.isfinite(value) else str(value)

    def _decode_array(self, btf_type: BtfType, data: bytes, depth: int) -> Any:
        elem_size = self.size_of(btf_type.ref)
        if self.is_char_array(btf_type):
            text = _printable_string(data[:btf_type.nelems])
            if text is not None:
                return text
        return [self.decode(btf_type.ref, data[i * elem_size:(i + 1) * elem_size], depth + 1)
                for i in range(btf_type.nelems)]

    def _decode_members(self, btf_type: BtfType, data: bytes, depth: int) -> dict:
        out: dict = {}
        for member in btf_type.members:
            value = self._decode_member(member, data, depth)
            if not member.name and isinstance(value, dict):
                out.update(value)  # anonymous struct/union: its fields belong to us
            else:
                out[member.name] = value
        return out

    def _decode_member(self, member: Member, data: bytes, depth: int) -> Any:
        nbits = self._bitfield_bits(member)
        if nbits:
            member_type = self.resolve(member.type_id)
            signed = (member_type.kind == KIND_INT and bool(member_type.encoding & INT_SIGNED)) or (
                member_type.kind in (KIND_ENUM, KIND_ENUM64) and member_type.kind_flag)
            value = _get_bits(data, member.bit_offset, nbits, self.byteorder)
            value = _sign_extend(value, nbits) if signed else value
            if member_type.kind in (KIND_ENUM, KIND_ENUM64):
                return self._enum_name(member_type, value)
            if member_type.kind == KIND_INT and member_type.encoding & INT_BOOL:
                return bool(value)
            return value
        start = member.bit_offset // 8
        return self.decode(member.type_id, data[start:start + self.size_of(member.type_id)], depth + 1)

    def _bitfield_bits(self, member: Member) -> int:
        """Width of a bitfield member, 0 for an ordinary one (old-style BTF marks
        bitfields only by an INT narrower than its size, or an odd offset)."""
        if member.bitfield_size:
            return member.bitfield_size
        member_type = self.resolve(member.type_id)
        if member_type.kind == KIND_INT and (
                member.bit_offset % 8 or member_type.bits < member_type.size * 8 or member_type.int_offset):
            return member_type.bits
        return 0

    @staticmethod
    def _enum_name(btf_type: BtfType, number: int) -> Any:
        for name, value in btf_type.enumerators:
            if value == number:
                return name
        return number

    # --- values -> bytes -------------------------------------------------------

    def encode(self, type_id: int, value: Any, depth: int = 0) -> bytes:
        """The bytes of ``value`` as type ``type_id`` (for map keys a user gives)."""
        if depth > _MAX_DEPTH:
            raise BtfError("type nesting too deep")
        btf_type = self.resolve(type_id)
        kind = btf_type.kind
        if kind not in (KIND_INT, KIND_ENUM, KIND_ENUM64, KIND_PTR, KIND_FLOAT, KIND_ARRAY,
                        KIND_STRUCT, KIND_UNION):
            raise BtfError("cannot build a value of type %s" % self.type_name(type_id))
        size = self.size_of(type_id)
        if kind == KIND_INT:
            number = self._int_value(value, btf_type)
            signed = bool(btf_type.encoding & INT_SIGNED)
            _check_range(number, btf_type.bits, signed, self.type_name(type_id))
            return (number & ((1 << (size * 8)) - 1)).to_bytes(size, self.byteorder)
        if kind in (KIND_ENUM, KIND_ENUM64):
            number = self._enum_value(btf_type, value)
            _check_range(number, size * 8, btf_type.kind_flag or number < 0, self.type_name(type_id))
            return (number & ((1 << (size * 8)) - 1)).to_bytes(size, self.byteorder)
        if kind == KIND_PTR:
            number = int(value, 0) if isinstance(value, str) else _as_int(value, "a pointer")
            return number.to_bytes(POINTER_SIZE, self.byteorder)
        if kind == KIND_FLOAT and size in (2, 4, 8):
            return struct.pack(self._endian + {2: "e", 4: "f", 8: "d"}[size], float(value))
        if kind == KIND_ARRAY:
            return self._encode_array(btf_type, value, size, depth)
        if kind in (KIND_STRUCT, KIND_UNION):
            return self._encode_members(type_id, btf_type, value, depth)
        raise BtfError("cannot build a value of type %s" % self.type_name(type_id))

    def _int_value(self, value: Any, btf_type: BtfType) -> int:
        if btf_type.encoding & INT_BOOL and isinstance(value, bool):
            return int(value)
        if isinstance(value, str) and _DECIMAL.match(value.strip()):
            return int(value.strip())
        return _as_int(value, btf_type.name or "an integer")

    def _enum_value(self, btf_type: BtfType, value: Any) -> int:
        if isinstance(value, str):
            for name, number in btf_type.enumerators:
                if name == value:
                    return number
            if _DECIMAL.match(value.strip()):
                return int(value.strip())
            raise BtfError("%r is not a value of enum %s (it has: %s)" % (
                value, btf_type.name or "{...}", ", ".join(pair[0] for pair in btf_type.enumerators)))
        return _as_int(value, "enum %s" % (btf_type.name or "{...}"))

    def _encode_array(self, btf_type: BtfType, value: Any, size: int, depth: int) -> bytes:
        if isinstance(value, str) and self.is_char_array(btf_type):
            data = value.encode("utf-8")
            if len(data) > btf_type.nelems:
                raise BtfError("%r is longer than %d characters" % (value, btf_type.nelems))
            return data.ljust(size, b"\0")
        if not isinstance(value, (list, tuple)):
            raise BtfError("expected a list for %s, got %r" % (self.type_name(btf_type.ref) + "[]", value))
        if len(value) > btf_type.nelems:
            raise BtfError("%d elements given for an array of %d" % (len(value), btf_type.nelems))
        data = b"".join(self.encode(btf_type.ref, item, depth + 1) for item in value)
        return data.ljust(size, b"\0")

    def _fields(self, btf_type: BtfType) -> dict:
        """name -> (member, bit offset) with anonymous members' fields flattened in."""
        out: dict = {}
        for member in btf_type.members:
            member_type = self.resolve(member.type_id)
            if not member.name and member_type.kind in (KIND_STRUCT, KIND_UNION):
                for name, (inner, offset) in self._fields(member_type).items():
                    out[name] = (inner, member.bit_offset + offset)
            elif member.name:
                out[member.name] = (member, member.bit_offset)
        return out

    def _encode_members(self, type_id: int, btf_type: BtfType, value: Any, depth: int) -> bytes:
        if not isinstance(value, dict):
            raise BtfError("expected a dict with the fields of %s, got %r" % (self.type_name(type_id), value))
        fields = self._fields(btf_type)
        unknown = sorted(set(map(str, value)) - set(fields))
        if unknown:
            raise BtfError("%s has no field %s (its fields: %s)" % (
                self.type_name(type_id), ", ".join(unknown), ", ".join(fields)))
        if btf_type.kind == KIND_UNION and len(value) > 1:
            raise BtfError("give one field of %s, not %d" % (self.type_name(type_id), len(value)))
        total = btf_type.size
        number = 0  # the whole struct as one integer in our byte order
        for name, item in value.items():
            member, bit_offset = fields[str(name)]
            nbits = self._bitfield_bits(member)
            if nbits:
                member_type = self.resolve(member.type_id)
                if member_type.kind in (KIND_ENUM, KIND_ENUM64):
                    field_value = self._enum_value(member_type, item)
                else:
                    field_value = self._int_value(item, member_type)
                signed = member_type.kind == KIND_INT and bool(member_type.encoding & INT_SIGNED)
                _check_range(field_value, nbits, signed or field_value < 0, name)
                raw = field_value & ((1 << nbits) - 1)
            else:
                nbits = self.size_of(member.type_id) * 8
                raw = int.from_bytes(self.encode(member.type_id, item, depth + 1), self.byteorder)
            number |= _place_bits(raw, bit_offset, nbits, total, self.byteorder)
        return number.to_bytes(total, self.byteorder)


def _parse_types(section: bytes, strings: bytes, endian: str) -> list:
    def name_at(offset: int) -> str:
        if offset >= len(strings):
            raise BtfError("string offset %d outside the string section" % offset)
        end = strings.find(b"\0", offset)
        return strings[offset:end if end >= 0 else len(strings)].decode("utf-8", "replace")

    u32 = struct.Struct(endian + "I")
    triple = struct.Struct(endian + "III")
    enum32 = struct.Struct(endian + "Ii")
    types, pos = [], 0
    while pos < len(section):
        if pos + 12 > len(section):
            raise BtfError("truncated type at offset %d" % pos)
        name_off, info, size_or_type = triple.unpack_from(section, pos)
        pos += 12
        kind, vlen, kind_flag = (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31)
        name = name_at(name_off)
        extra_need = {KIND_INT: 4, KIND_ARRAY: 12, KIND_STRUCT: 12 * vlen, KIND_UNION: 12 * vlen,
                      KIND_ENUM: 8 * vlen, KIND_ENUM64: 12 * vlen, KIND_FUNC_PROTO: 8 * vlen,
                      KIND_VAR: 4, KIND_DATASEC: 12 * vlen, KIND_DECL_TAG: 4}.get(kind, 0)
        if kind == 0 or kind > KIND_ENUM64:
            raise BtfError("unknown BTF kind %d at offset %d" % (kind, pos - 12))
        if pos + extra_need > len(section):
            raise BtfError("truncated %s at offset %d" % (_kind_name(kind), pos - 12))
        common = dict(kind=kind, name=name, kind_flag=kind_flag)
        if kind == KIND_INT:
            word = u32.unpack_from(section, pos)[0]
            btf_type = BtfType(size=size_or_type, encoding=(word >> 24) & 0x0F,
                               int_offset=(word >> 16) & 0xFF, bits=word & 0xFF, **common)
        elif kind == KIND_ARRAY:
            elem, _index, nelems = triple.unpack_from(section, pos)
            btf_type = BtfType(ref=elem, nelems=nelems, **common)
        elif kind in (KIND_STRUCT, KIND_UNION):
            members = []
            for i in range(vlen):
                m_name, m_type, m_offset = triple.unpack_from(section, pos + 12 * i)
                if kind_flag:
                    members.append(Member(name_at(m_name), m_type, m_offset & 0xFFFFFF, m_offset >> 24))
                else:
                    members.append(Member(name_at(m_name), m_type, m_offset))
            btf_type = BtfType(size=size_or_type, members=tuple(members), **common)
        elif kind == KIND_ENUM:
            values = []
            for i in range(vlen):
                e_name, e_val = enum32.unpack_from(section, pos + 8 * i)
                values.append((name_at(e_name), e_val if kind_flag else e_val & 0xFFFFFFFF))
            btf_type = BtfType(size=size_or_type, enumerators=tuple(values), **common)
        elif kind == KIND_ENUM64:
            values = []
            for i in range(vlen):
                e_name, lo, hi = triple.unpack_from(section, pos + 12 * i)
                number = (hi << 32) | lo
                values.append((name_at(e_name), _sign_extend(number, 64) if kind_flag else number))
            btf_type = BtfType(size=size_or_type, enumerators=tuple(values), **common)
        elif kind == KIND_DATASEC:
            secinfo = tuple(triple.unpack_from(section, pos + 12 * i) for i in range(vlen))
            btf_type = BtfType(size=size_or_type, members=secinfo, **common)
        elif kind in (KIND_FLOAT,):
            btf_type = BtfType(size=size_or_type, **common)
        else:  # PTR, FWD, TYPEDEF, modifiers, FUNC, FUNC_PROTO, VAR, DECL_TAG, TYPE_TAG
            btf_type = BtfType(ref=size_or_type if kind != KIND_FWD else 0, **common)
        types.append(btf_type)
        pos += extra_need
    return types


def _sign_extend(value: int, bits: int) -> int:
    return value - (1 << bits) if bits and value >> (bits - 1) & 1 else value


def _get_bits(data: bytes, bit_offset: int, nbits: int, byteorder: str) -> int:
    whole = int.from_bytes(data, byteorder)
    if byteorder == "little":
        return (whole >> bit_offset) & ((1 << nbits) - 1)
    return (whole >> (len(data) * 8 - bit_offset - nbits)) & ((1 << nbits) - 1)


def _place_bits(raw: int, bit_offset: int, nbits: int, total_bytes: int, byteorder: str) -> int:
    if byteorder == "little":
        return raw << bit_offset
    return raw << (total_bytes * 8 - bit_offset - nbits)


def _check_range(number: int, bits: int, signed: bool, what: str) -> None:
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not low <= number <= high:
        raise BtfError("%d does not fit %s (%d..%d)" % (number, what, low, high))


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BtfError("expected a number for %s, got %r" % (what, value))
    return value


def _printable_string(data: bytes) -> str | None:
    """Up to the first NUL, when everything before it is printable ASCII."""
    end = data.find(b"\0")
    if end < 0:
        return None
    text = data[:end]
    if any(b < 0x20 or b > 0x7E for b in text):
        return None
    return text.decode("ascii")
