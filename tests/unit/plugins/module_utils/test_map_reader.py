# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The BTF reader and the map reader, without a kernel.

BTF blobs are written here by hand (an independent little writer, not
``_btf.py``), in both byte orders; the map reader runs against a fake map
(the few ``_libbpf`` calls it makes, replaced) and a fake program lister.
"""

from __future__ import annotations

import struct

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _map_reader
from ansible_collections.bpfd.core.plugins.module_utils._btf_reader import (
    Btf, BtfError, hex_bytes, parse_hex_bytes,
)
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError


class BlobWriter:
    """Writes BTF: add types in id order (first is id 1), then ``raw()``."""

    def __init__(self, endian: str = "<") -> None:
        self.endian = endian
        self.types: list[bytes] = []
        self.strings = bytearray(b"\0")

    def _str(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def _add(self, kind: int, name: str, size_or_type: int, vlen: int = 0, kind_flag: bool = False,
             extra: bytes = b"") -> int:
        info = (int(kind_flag) << 31) | (kind << 24) | vlen
        self.types.append(struct.pack(self.endian + "III", self._str(name), info, size_or_type) + extra)
        return len(self.types)

    def int(self, name: str, size: int, signed: bool = False, bits: int | None = None,
            encoding: int | None = None, offset: int = 0) -> int:
        enc = (1 if signed else 0) if encoding is None else encoding
        word = (enc << 24) | (offset << 16) | (size * 8 if bits is None else bits)
        return self._add(1, name, size, extra=struct.pack(self.endian + "I", word))

    def ptr(self, ref: int) -> int:
        return self._add(2, "", ref)

    def array(self, elem: int, nelems: int, index: int = 0) -> int:
        return self._add(3, "", 0, extra=struct.pack(self.endian + "III", elem, index, nelems))

    def struct(self, name: str, size: int, members: list, union: bool = False) -> int:
        """members: (name, type, bit offset[, bitfield size])."""
        kind_flag = any(len(m) > 3 for m in members)
        extra = b""
        for member in members:
            m_name, m_type, m_off = member[:3]
            if kind_flag:
                m_off |= (member[3] if len(member) > 3 else 0) << 24
            extra += struct.pack(self.endian + "III", self._str(m_name), m_type, m_off)
        return self._add(5 if union else 4, name, size, len(members), kind_flag, extra)

    def enum(self, name: str, size: int, values: list, signed: bool = False) -> int:
        extra = b"".join(struct.pack(self.endian + "Ii", self._str(n), v) for n, v in values)
        return self._add(6, name, size, len(values), signed, extra)

    def enum64(self, name: str, values: list, signed: bool = False) -> int:
        extra = b"".join(struct.pack(self.endian + "III", self._str(n), v & 0xFFFFFFFF, (v >> 32) & 0xFFFFFFFF)
                         for n, v in values)
        return self._add(19, name, 8, len(values), signed, extra)

    def typedef(self, name: str, ref: int) -> int:
        return self._add(8, name, ref)

    def volatile(self, ref: int) -> int:
        return self._add(9, "", ref)

    def const(self, ref: int) -> int:
        return self._add(10, "", ref)

    def restrict(self, ref: int) -> int:
        return self._add(11, "", ref)

    def float(self, name: str, size: int) -> int:
        return self._add(16, name, size)

    def fwd(self, name: str) -> int:
        return self._add(7, name, 0)

    def var(self, name: str, ref: int) -> int:
        return self._add(14, name, ref, extra=struct.pack(self.endian + "I", 1))

    def datasec(self, name: str, size: int, secinfo: list) -> int:
        extra = b"".join(struct.pack(self.endian + "III", *s) for s in secinfo)
        return self._add(15, name, size, len(secinfo), extra=extra)

    def raw(self) -> bytes:
        types = b"".join(self.types)
        header = struct.pack(self.endian + "HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types),
                             len(self.strings))
        return header + types + bytes(self.strings)


def flow_blob(endian: str = "<") -> tuple[bytes, dict]:
    """The xdp_flows fixture's types, plus a few more kinds: (raw BTF, {name: id})."""
    w = BlobWriter(endian)
    ids = {}
    ids["uint"] = w.int("unsigned int", 4)
    ids["u32"] = w.typedef("__u32", ids["uint"])
    ids["ushort"] = w.int("unsigned short", 2)
    ids["u16"] = w.typedef("__u16", ids["ushort"])
    ids["uchar"] = w.int("unsigned char", 1)
    ids["u8"] = w.typedef("__u8", ids["uchar"])
    ids["flow"] = w.struct("flow", 16, [("saddr", ids["u32"], 0), ("daddr", ids["u32"], 32),
                                        ("sport", ids["u16"], 64), ("dport", ids["u16"], 80),
                                        ("proto", ids["u8"], 96)])
    ids["ulong"] = w.int("unsigned long long", 8)
    ids["u64"] = w.typedef("__u64", ids["ulong"])
    ids["counters"] = w.struct("counters", 16, [("packets", ids["u64"], 0), ("bytes", ids["u64"], 64)])
    ids["char"] = w.int("char", 1, signed=True)
    ids["int"] = w.int("int", 4, signed=True)
    ids["name"] = w.array(ids["char"], 16, ids["int"])
    ids["verdict"] = w.enum("last_verdict", 4, [("VERDICT_NONE", 0), ("VERDICT_PASS", 2)])
    ids["label"] = w.struct("label", 24, [("name", ids["name"], 0), ("delta", ids["int"], 128),
                                          ("verdict", ids["verdict"], 160)])
    ids["mac"] = w.array(ids["u8"], 6, ids["int"])
    ids["cchar"] = w.const(ids["char"])
    ids["const_name"] = w.array(ids["cchar"], 4, ids["int"])
    ids["vptr"] = w.ptr(ids["counters"])
    ids["volatile_u32"] = w.volatile(ids["u32"])
    ids["restrict_ptr"] = w.restrict(ids["vptr"])
    ids["double"] = w.float("double", 8)
    ids["float"] = w.float("float", 4)
    ids["bool"] = w.int("_Bool", 1, encoding=4)
    # struct bits { unsigned int a:3; int b:5; enum last_verdict v:2; _Bool on:1; __u16 rest; }
    ids["bits"] = w.struct("bits", 4, [("a", ids["uint"], 0, 3), ("b", ids["int"], 3, 5),
                                       ("v", ids["verdict"], 8, 2), ("on", ids["bool"], 10, 1),
                                       ("rest", ids["u16"], 16, 0)])
    # union { __u32 word; __u8 bytes[4]; } inside struct wrapper { int tag; union {...}; }
    ids["bytes4"] = w.array(ids["u8"], 4, ids["int"])
    ids["anon_union"] = w.struct("", 4, [("word", ids["u32"], 0), ("bytes", ids["bytes4"], 0)], union=True)
    ids["wrapper"] = w.struct("wrapper", 8, [("tag", ids["int"], 0), ("", ids["anon_union"], 32)])
    ids["big_enum"] = w.enum64("big", [("HUGE", 1 << 40), ("NEG", -1)], signed=True)
    ids["fwd"] = w.fwd("opaque")
    ids["long"] = w.int("long", 8, signed=True)
    ids["var_a"] = w.var("counter", ids["long"])
    ids["var_b"] = w.var("label_text", ids["name"])
    ids["datasec"] = w.datasec(".data", 24, [(ids["var_a"], 0, 8), (ids["var_b"], 8, 16)])
    ids["s8"] = w.int("signed char", 1, signed=True)
    ids["u128"] = w.int("unsigned __int128", 16)
    return w.raw(), ids


def flow_btf(endian: str = "<") -> tuple[Btf, dict]:
    raw, ids = flow_blob(endian)
    return Btf.parse(raw), ids


FLOW_KEY = {"saddr": 0x0100000A, "daddr": 0x0200000A, "sport": 40000, "dport": 5353, "proto": 17}


@pytest.fixture(params=["<", ">"], ids=["little", "big"])
def btf(request):
    return flow_btf(request.param)


def pack(btf: Btf, fmt: str, *values) -> bytes:
    return struct.pack(("<" if btf.byteorder == "little" else ">") + fmt, *values)


# --- parsing and names -----------------------------------------------------------


def test_parse_reads_every_type_and_names_them(btf):
    parsed, ids = btf
    assert len(parsed.types) == max(ids.values()) + 1
    names = {k: parsed.type_name(v) for k, v in ids.items()}
    assert names["u32"] == "__u32"
    assert names["flow"] == "struct flow"
    assert names["name"] == "char[16]"
    assert names["verdict"] == "enum last_verdict"
    assert names["vptr"] == "struct counters *"
    assert names["cchar"] == "const char"
    assert names["anon_union"] == "union {...}"
    assert names["fwd"] == "struct opaque"
    assert parsed.size_of(ids["flow"]) == 16
    assert parsed.size_of(ids["mac"]) == 6
    assert parsed.size_of(ids["volatile_u32"]) == 4
    assert parsed.size_of(ids["vptr"]) == 8


@pytest.mark.parametrize("blob, message", [
    (b"\x00" * 10, "too short"),
    (b"\x12\x34" + b"\x00" * 30, "bad magic"),
    (struct.pack("<HBBIIIII", 0xEB9F, 2, 0, 24, 0, 0, 0, 1) + b"\0", "version 2"),
    (struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 100, 0, 1) + b"\0", "past the end"),
    (struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 12, 12, 1) + struct.pack("<III", 0, 31 << 24, 0) + b"\0",
     "unknown BTF kind 31"),
    (struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 12, 12, 1) + struct.pack("<III", 0, 1 << 24, 4) + b"\0",
     "truncated int"),
    (struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 16, 16, 1) + struct.pack("<IIII", 9, 1 << 24, 4, 32) + b"\0",
     "string offset 9"),
])
def test_parse_refuses_malformed_blobs(blob, message):
    with pytest.raises(BtfError, match=message):
        Btf.parse(blob)


def test_unknown_type_id_and_cycles_are_errors():
    w = BlobWriter()
    a = w.typedef("a", 2)
    w.typedef("b", a)  # a -> b -> a
    parsed = Btf.parse(w.raw())
    with pytest.raises(BtfError, match="type id 9"):
        parsed.decode(9, b"\0")
    with pytest.raises(BtfError, match="too deep"):
        parsed.size_of(a)


# --- decoding ----------------------------------------------------------------------


def test_struct_key_and_value(btf):
    parsed, ids = btf
    key = pack(parsed, "IIHHB3x", 0x0100000A, 0x0200000A, 40000, 5353, 17)
    assert parsed.decode(ids["flow"], key) == FLOW_KEY
    assert parsed.decode(ids["counters"], pack(parsed, "QQ", 5, 320)) == {"packets": 5, "bytes": 320}


def test_char_array_signed_int_and_enum(btf):
    parsed, ids = btf
    value = b"bpfd-flows".ljust(16, b"\0") + pack(parsed, "iI", -7, 2)
    assert parsed.decode(ids["label"], value) == {"name": "bpfd-flows", "delta": -7, "verdict": "VERDICT_PASS"}
    unknown = b"x".ljust(16, b"\0") + pack(parsed, "iI", 0, 7)
    assert parsed.decode(ids["label"], unknown)["verdict"] == 7


@pytest.mark.parametrize("data, expected", [
    (b"abc\0" + b"\0" * 12, "abc"),
    (b"\0" * 16, ""),
    (b"a\x01c\0" + b"\0" * 12, [97, 1, 99] + [0] * 13),  # not printable: numbers, as bpftool
    (b"x" * 16, [120] * 16),  # no NUL: numbers
])
def test_char_arrays_become_strings_only_when_printable(btf, data, expected):
    parsed, ids = btf
    assert parsed.decode(ids["name"], data) == expected


def test_u8_arrays_stay_numbers_and_const_char_is_a_string(btf):
    parsed, ids = btf
    assert parsed.decode(ids["mac"], bytes.fromhex("020000000001")) == [2, 0, 0, 0, 0, 1]
    assert parsed.decode(ids["const_name"], b"ok\0\0") == "ok"


def test_modifiers_pointers_floats_bools(btf):
    parsed, ids = btf
    assert parsed.decode(ids["volatile_u32"], pack(parsed, "I", 42)) == 42
    assert parsed.decode(ids["restrict_ptr"], pack(parsed, "Q", 0xFFFF888012345678)) == "0xffff888012345678"
    assert parsed.decode(ids["double"], pack(parsed, "d", 1.5)) == 1.5
    assert parsed.decode(ids["float"], pack(parsed, "f", float("inf"))) == "inf"
    assert parsed.decode(ids["bool"], b"\x01") is True
    assert parsed.decode(ids["s8"], b"\xff") == -1
    assert parsed.decode(ids["u128"], b"\xff" * 16) == (1 << 128) - 1
    assert parsed.decode(ids["fwd"], b"\x01\x02") == "01 02"


def test_bitfields(btf):
    parsed, ids = btf
    # a=5 (3 bits), b=-3 (5 bits), v=2 (2 bits), on=1, rest=0xbeef
    if parsed.byteorder == "little":
        word = 5 | ((-3 & 0x1F) << 3) | (2 << 8) | (1 << 10)
        data = struct.pack("<HH", word, 0xBEEF)
    else:  # big endian: bitfields fill from the most significant bit
        word = (5 << 13) | ((-3 & 0x1F) << 8) | (2 << 6) | (1 << 5)
        data = struct.pack(">HH", word, 0xBEEF)
    assert parsed.decode(ids["bits"], data) == {"a": 5, "b": -3, "v": "VERDICT_PASS", "on": True, "rest": 0xBEEF}
    assert parsed.encode(ids["bits"], {"a": 5, "b": -3, "v": "VERDICT_PASS", "on": True, "rest": 0xBEEF}) == data


def test_anonymous_union_members_are_flattened(btf):
    parsed, ids = btf
    data = pack(parsed, "i", -1) + b"\x01\x02\x03\x04"
    word = int.from_bytes(b"\x01\x02\x03\x04", parsed.byteorder)
    assert parsed.decode(ids["wrapper"], data) == {"tag": -1, "word": word, "bytes": [1, 2, 3, 4]}
    assert parsed.encode(ids["wrapper"], {"tag": -1, "bytes": [1, 2, 3, 4]}) == data


def test_enum64_and_datasec(btf):
    parsed, ids = btf
    assert parsed.decode(ids["big_enum"], pack(parsed, "Q", 1 << 40)) == "HUGE"
    assert parsed.decode(ids["big_enum"], pack(parsed, "q", -1)) == "NEG"
    assert parsed.decode(ids["big_enum"], pack(parsed, "q", 3)) == 3
    data = pack(parsed, "q", -2) + b"hi\0".ljust(16, b"\0")
    assert parsed.decode(ids["datasec"], data) == {"counter": -2, "label_text": "hi"}


# --- encoding (keys a user gives) ---------------------------------------------------


def test_encode_round_trips(btf):
    parsed, ids = btf
    key = parsed.encode(ids["flow"], FLOW_KEY)
    assert key == pack(parsed, "IIHHB3x", 0x0100000A, 0x0200000A, 40000, 5353, 17)
    assert parsed.decode(ids["flow"], key) == FLOW_KEY
    assert parsed.encode(ids["flow"], {"proto": 1}) == pack(parsed, "IIHHB3x", 0, 0, 0, 0, 1)
    assert parsed.encode(ids["u32"], 7) == pack(parsed, "I", 7)
    assert parsed.encode(ids["u32"], "7") == pack(parsed, "I", 7)
    assert parsed.encode(ids["int"], -7) == pack(parsed, "i", -7)
    assert parsed.encode(ids["verdict"], "VERDICT_PASS") == pack(parsed, "I", 2)
    assert parsed.encode(ids["name"], "bpfd") == b"bpfd".ljust(16, b"\0")
    assert parsed.encode(ids["label"], {"name": "x", "delta": -1}) == b"x".ljust(16, b"\0") + pack(parsed, "iI", -1, 0)
    assert parsed.encode(ids["double"], 2.5) == pack(parsed, "d", 2.5)


@pytest.mark.parametrize("type_key, value, message", [
    ("u32", -1, "does not fit __u32"),
    ("u32", 1 << 32, "does not fit"),
    ("u8", 256, "does not fit"),
    ("int", "seven", "expected a number"),
    ("int", True, "expected a number"),
    ("flow", {"port": 1}, "has no field port .its fields: saddr, daddr, sport, dport, proto"),
    ("flow", 5, "expected a dict"),
    ("verdict", "VERDICT_DROP", "not a value of enum last_verdict .it has: VERDICT_NONE, VERDICT_PASS"),
    ("name", "x" * 17, "longer than 16"),
    ("mac", [1] * 7, "7 elements given for an array of 6"),
    ("anon_union", {"word": 1, "bytes": [1]}, "give one field"),
    ("fwd", 1, "cannot build"),
])
def test_encode_refuses_what_does_not_fit(btf, type_key, value, message):
    parsed, ids = btf
    with pytest.raises(BtfError, match=message):
        parsed.encode(ids[type_key], value)


@pytest.mark.parametrize("text, expected", [
    ("0x0a000001", b"\x0a\x00\x00\x01"),
    ("0a 00 00 01", b"\x0a\x00\x00\x01"),
    ("0x0a 0x0 0x00 0x1", b"\x0a\x00\x00\x01"),
    ("bpfd", None),
    ("17", None),
])
def test_hex_bytes_in_and_out(text, expected):
    assert parse_hex_bytes(text) == expected
    if expected is not None:
        assert hex_bytes(expected) == "0a 00 00 01"


def test_hex_needs_whole_bytes():
    with pytest.raises(BtfError, match="whole number of hex bytes"):
        parse_hex_bytes("0xabc")


# --- per-CPU sums ----------------------------------------------------------------------


@pytest.mark.parametrize("values, expected", [
    ([1, 2, 3], 6),
    ([{"packets": 1, "bytes": 64}, {"packets": 2, "bytes": 128}], {"packets": 3, "bytes": 192}),
    ([{"name": "a", "n": 1}, {"name": "a", "n": 2}], {"name": "a", "n": 3}),
    ([{"name": "a", "n": 1}, {"name": "b", "n": 2}], None),
    ([[1, 2], [3, 4]], [4, 6]),
    ([True, True], True),
    ([True, False], None),
    (["VERDICT_PASS", "VERDICT_PASS"], "VERDICT_PASS"),
])
def test_per_cpu_sum(values, expected):
    assert _map_reader.per_cpu_sum(values) == expected


# --- the map reader on a fake map -------------------------------------------------------


class FakeMap:
    """Stands in for the kernel behind the _libbpf calls the reader makes."""

    def __init__(self, entries: dict, *, map_type: int = 1, key_size: int = 16, value_size: int = 16,
                 btf_blob: bytes | None = None, key_type: int = 0, value_type: int = 0, cpus: int = 1,
                 btf_errno: str | None = None) -> None:
        self.entries = entries
        self.info = {"id": 77, "type": map_type, "name": "flows", "key_size": key_size,
                     "value_size": value_size, "max_entries": 64, "map_flags": 0,
                     "btf_id": 5 if btf_blob else 0}
        self.btf_ids = {"btf_id": 5 if btf_blob else 0, "btf_key_type_id": key_type,
                        "btf_value_type_id": value_type, "btf_vmlinux_value_type_id": 0}
        self.btf_blob = btf_blob
        self.cpus = cpus
        self.btf_errno = btf_errno
        self.closed: list = []
        self.lookups = 0

    def install(self, monkeypatch) -> "FakeMap":
        lb = _map_reader.libbpf

        def btf_fd_by_id(btf_id):
            if self.btf_errno:
                raise BpfdError("opening BTF id %d failed" % btf_id, errno=self.btf_errno)
            return 1001

        def map_lookup(fd, key, size):
            self.lookups += 1
            value = self.entries.get(key)
            assert value is None or len(value) == size, "reader asked for %d bytes, map has %d" % (size, len(value))
            return value

        def obj_get_readonly(path):
            if path.endswith("missing"):
                raise BpfdError("opening pin failed", errno="ENOENT")
            return 1000

        def map_keys(fd, size):  # a hash walk that restarts: the first key comes twice
            return iter(list(self.entries) + list(self.entries)[:1])

        monkeypatch.setattr(lb, "obj_get_readonly", obj_get_readonly)
        monkeypatch.setattr(lb, "map_info", lambda fd: dict(self.info))
        monkeypatch.setattr(lb, "map_btf_ids", lambda fd: dict(self.btf_ids))
        monkeypatch.setattr(lb, "btf_fd_by_id", btf_fd_by_id)
        monkeypatch.setattr(lb, "btf_data", lambda fd: self.btf_blob)
        monkeypatch.setattr(lb, "num_possible_cpus", lambda: self.cpus)
        monkeypatch.setattr(lb, "map_keys", map_keys)
        monkeypatch.setattr(lb, "map_lookup", map_lookup)
        monkeypatch.setattr(lb, "close_fd", self.closed.append)
        return self


def _flow_map(monkeypatch, n: int = 3, **kwargs) -> FakeMap:
    blob, ids = flow_blob("<")
    entries = {}
    for i in range(n):
        key = struct.pack("<IIHHB3x", 0x0100000A + i, 0x0200000A, 40000, 5353, 17)
        entries[key] = struct.pack("<QQ", i + 1, 64 * (i + 1))
    return FakeMap(entries, btf_blob=blob, key_type=ids["flow"], value_type=ids["counters"],
                   **kwargs).install(monkeypatch)


def test_reads_every_entry_decoded_and_skips_a_repeated_key(monkeypatch):
    fake = _flow_map(monkeypatch)
    out = _map_reader.read_pinned("/sys/fs/bpf/bpfd/maps/p/flows")
    assert [e["value"] for e in out["entries"]] == [{"packets": i, "bytes": 64 * i} for i in (1, 2, 3)]
    assert out["entries"][0]["key"] == FLOW_KEY
    assert out["map"] == {
        "name": "flows", "id": 77, "type": "hash", "key_size": 16, "value_size": 16, "max_entries": 64,
        "flags": 0, "pin_path": "/sys/fs/bpf/bpfd/maps/p/flows", "btf": True, "btf_id": 5,
        "key_type": "struct flow", "value_type": "struct counters", "per_cpu": False, "possible_cpus": None}
    assert out["truncated"] is False and out["notes"] == []
    assert fake.closed == [1001, 1000]  # the BTF fd and the map fd


def test_max_entries_truncates_and_says_so(monkeypatch):
    fake = _flow_map(monkeypatch, n=5)
    out = _map_reader.read_pinned("/p/flows", max_entries=2)
    assert len(out["entries"]) == 2 and out["truncated"] is True
    assert "only the first 2 entries" in out["notes"][0]
    assert fake.lookups == 2
    assert _map_reader.read_pinned("/p/flows", max_entries=5)["truncated"] is False
    assert len(_map_reader.read_pinned("/p/flows", max_entries=0)["entries"]) == 5
    with pytest.raises(BpfdError, match="max_entries must be 0"):
        _map_reader.read_pinned("/p/flows", max_entries=-1)


def test_given_keys_in_every_form(monkeypatch):
    _flow_map(monkeypatch)
    raw = struct.pack("<IIHHB3x", 0x0100000A, 0x0200000A, 40000, 5353, 17)
    out = _map_reader.read_pinned("/p/flows", keys=[
        FLOW_KEY, "0x" + raw.hex(), hex_bytes(raw), {"proto": 6},
        {"saddr": "16777227", "daddr": 0x0200000A, "sport": 40000, "dport": 5353, "proto": 17}])
    assert [e["found"] for e in out["entries"]] == [True, True, True, False, True]
    assert out["entries"][0]["value"] == {"packets": 1, "bytes": 64}
    assert out["entries"][3] == {"key": dict(FLOW_KEY, saddr=0, daddr=0, sport=0, dport=0, proto=6),
                                 "value": None, "found": False}
    assert out["entries"][4]["value"] == {"packets": 2, "bytes": 128}


@pytest.mark.parametrize("key, message", [
    ({"port": 1}, r"key \{'port': 1\} \(keys\[0\]\) does not fit the map's key type struct flow: struct flow has no field port"),
    ("0x0a00", "2 bytes given, the key has 16"),
    (3, "expected a dict"),
])
def test_given_keys_that_do_not_fit(monkeypatch, key, message):
    _flow_map(monkeypatch)
    with pytest.raises(BpfdError, match=message):
        _map_reader.read_pinned("/p/flows", keys=[key])


def test_per_cpu_values_listed_and_summed(monkeypatch):
    # value_size 12 is padded to 16 per CPU, as the kernel lays per-CPU values out
    w = BlobWriter("<")
    u32 = w.int("unsigned int", 4)
    three = w.struct("three", 12, [("a", u32, 0), ("b", u32, 32), ("c", u32, 64)])
    per_cpu = [struct.pack("<III4x", 1, 2, 3), struct.pack("<III4x", 10, 20, 30)]
    FakeMap({struct.pack("<I", 0): b"".join(per_cpu)}, map_type=6, key_size=4, value_size=12,
            btf_blob=w.raw(), key_type=u32, value_type=three, cpus=2).install(monkeypatch)
    out = _map_reader.read_pinned("/p/stats")
    assert out["entries"] == [{"key": 0, "value": {"a": 11, "b": 22, "c": 33},
                               "per_cpu": [{"a": 1, "b": 2, "c": 3}, {"a": 10, "b": 20, "c": 30}]}]
    assert out["map"]["per_cpu"] is True and out["map"]["possible_cpus"] == 2


def test_no_btf_is_raw_hex_and_int_keys_still_work(monkeypatch):
    key = struct.pack("<I", 1)
    FakeMap({key: struct.pack("<Q", 9) + struct.pack("<Q", 1)}, map_type=6, key_size=4, value_size=8,
            cpus=2).install(monkeypatch)
    out = _map_reader.read_pinned("/p/hits", keys=[1, "1", "01 00 00 00", 2])
    assert out["map"]["btf"] is False and out["map"]["key_type"] is None
    assert out["entries"][0] == {"key": "01 00 00 00", "value": None, "found": True,
                                 "per_cpu": ["09 00 00 00 00 00 00 00", "01 00 00 00 00 00 00 00"]}
    assert [e["found"] for e in out["entries"]] == [True, True, True, False]
    with pytest.raises(BpfdError, match="no BTF for its key: give it as hex bytes"):
        _map_reader.read_pinned("/p/hits", keys=[{"a": 1}])


def test_unreadable_btf_falls_back_to_hex_with_a_note(monkeypatch):
    _flow_map(monkeypatch, btf_errno="EPERM")
    out = _map_reader.read_pinned("/p/flows")
    assert out["map"]["btf"] is False
    assert out["entries"][0]["key"] == "0a 00 00 01 0a 00 00 02 40 9c e9 14 11 00 00 00"
    assert "CAP_SYS_ADMIN" in out["notes"][0]


def test_btf_size_mismatch_falls_back_to_hex(monkeypatch):
    fake = _flow_map(monkeypatch)
    fake.info["value_size"] = 8
    fake.entries = {k: v[:8] for k, v in fake.entries.items()}
    out = _map_reader.read_pinned("/p/flows")
    assert out["entries"][0]["key"] == FLOW_KEY  # the key still decodes
    assert out["entries"][0]["value"] == "01 00 00 00 00 00 00 00"
    assert "struct counters has 16 bytes but the map's value has 8" in out["notes"][0]


def test_keyless_maps_and_missing_pins_are_clear_errors(monkeypatch):
    fake = _flow_map(monkeypatch)
    fake.info.update(type=27, key_size=0)
    with pytest.raises(BpfdError, match="is a ringbuf map: it has no keys"):
        _map_reader.read_pinned("/p/events")
    with pytest.raises(BpfdError, match="cannot open map pin /p/missing: it does not exist"):
        _map_reader.read_pinned("/p/missing")


# --- choosing the map of a program ---------------------------------------------------------


def _lister(programs: dict):
    def lister(name=None):
        chosen = [p for p in programs.values() if name is None or p["name"] == name]
        return {"changed": False, "programs": chosen, "reconciled": ["a note"]}
    return lister


def test_read_program_map_chooses_and_explains(monkeypatch, tmp_path):
    _flow_map(monkeypatch)
    one = tmp_path / "one"
    one.mkdir()
    (one / "flows").touch()
    two = tmp_path / "two"
    two.mkdir()
    (two / "flows").touch()
    (two / "per_kind").touch()
    empty = tmp_path / "empty"
    empty.mkdir()
    programs = {n: {"name": n, "map_pin_path": str(d)} for n, d in
                (("one", one), ("two", two), ("empty", empty))}
    lister = _lister(programs)

    out = _map_reader.read_program_map("one", lister=lister)
    assert out["map"]["program"] == "one" and out["map"]["pin_path"] == str(one / "flows")
    assert out["changed"] is False and out["reconciled"] == ["a note"] and "warnings" not in out
    assert _map_reader.read_program_map("two", "flows", lister=lister)["map"]["pin_name"] == "flows"

    with pytest.raises(BpfdError, match=r"no program named nope is managed by bpfd.core on this host \(managed: one, two, empty\)"):
        _map_reader.read_program_map("nope", lister=lister)
    with pytest.raises(BpfdError, match=r"program two has several maps \(flows, per_kind\): set map"):
        _map_reader.read_program_map("two", lister=lister)
    with pytest.raises(BpfdError, match=r"program two has no map named hits \(its maps: flows, per_kind\)"):
        _map_reader.read_program_map("two", "hits", lister=lister)
    with pytest.raises(BpfdError, match="program empty has no pinned maps to read"):
        _map_reader.read_program_map("empty", lister=lister)


def test_truncation_becomes_a_warning(monkeypatch, tmp_path):
    _flow_map(monkeypatch, n=3)
    (tmp_path / "flows").touch()
    out = _map_reader.read_program_map("p", max_entries=1,
                                       lister=_lister({"p": {"name": "p", "map_pin_path": str(tmp_path)}}))
    assert out["truncated"] is True and "only the first 1 entries" in out["warnings"][0]
