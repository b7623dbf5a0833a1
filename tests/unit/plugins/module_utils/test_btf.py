# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The func BTF builder, read back with an independent little parser (and bpftool if present)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ansible_collections.bpfd.core.plugins.module_utils._btf import build_func_btf


def parse_btf(raw: bytes) -> tuple[dict, list[dict]]:
    """Header and types of raw BTF holding only INT, PTR, FUNC_PROTO and FUNC."""
    magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", raw)
    header = dict(magic=magic, version=version, flags=flags, hdr_len=hdr_len, type_off=type_off,
                  type_len=type_len, str_off=str_off, str_len=str_len)
    types_raw = raw[hdr_len + type_off:hdr_len + type_off + type_len]
    strings = raw[hdr_len + str_off:hdr_len + str_off + str_len]

    def name(offset: int) -> str:
        return strings[offset:strings.index(b"\0", offset)].decode()

    types, pos = [], 0
    while pos < len(types_raw):
        name_off, info, size_or_type = struct.unpack_from("<III", types_raw, pos)
        pos += 12
        kind, vlen = info >> 24, info & 0xFFFF
        entry = dict(kind=kind, name=name(name_off), vlen=vlen, size_or_type=size_or_type)
        if kind == 1:
            entry["encoding"] = struct.unpack_from("<I", types_raw, pos)[0]
            pos += 4
        elif kind == 13:
            entry["params"] = []
            for _param in range(vlen):
                p_name, p_type = struct.unpack_from("<II", types_raw, pos)
                entry["params"].append((name(p_name), p_type))
                pos += 8
        types.append(entry)
    return header, types


def test_header() -> None:
    btf = build_func_btf([0, 5]).btf
    header, _types = parse_btf(btf)
    assert header["magic"] == 0xEB9F
    assert header["version"] == 1
    assert header["flags"] == 0
    assert header["hdr_len"] == 24
    assert header["type_off"] == 0
    assert header["str_off"] == header["type_len"]
    assert len(btf) == 24 + header["type_len"] + header["str_len"]


def test_types() -> None:
    _header, types = parse_btf(build_func_btf([0, 7, 30], ["entry", "slot_0", "slot_0_f_23"]).btf)
    int_t, ptr_t, proto, *funcs = types
    assert int_t == dict(kind=1, name="int", vlen=0, size_or_type=4, encoding=(1 << 24) | 32)
    assert ptr_t == dict(kind=2, name="", vlen=0, size_or_type=0)
    assert proto == dict(kind=13, name="", vlen=1, size_or_type=1, params=[("ctx", 2)])
    assert [(f["kind"], f["name"], f["vlen"], f["size_or_type"]) for f in funcs] == [
        (12, "entry", 0, 3),
        (12, "slot_0", 0, 3),
        (12, "slot_0_f_23", 0, 3),
    ]


def test_func_info_records() -> None:
    result = build_func_btf([0, 7, 30])
    assert result.func_info_rec_size == 8
    assert result.func_info_cnt == 3
    assert struct.unpack("<6I", result.func_info) == (0, 4, 7, 5, 30, 6)


def test_default_names() -> None:
    _header, types = parse_btf(build_func_btf([0, 123]).btf)
    assert [t["name"] for t in types[3:]] == ["f_0", "f_123"]


def test_each_string_stored_once() -> None:
    header, _types = parse_btf(build_func_btf([0, 1, 2], ["a", "a", "a"]).btf)
    assert header["str_len"] == len(b"\0int\0ctx\0a\0")


@pytest.mark.parametrize(
    "starts, names, message",
    [
        ([], None, "start at instruction 0"),
        ([3, 5], None, "start at instruction 0"),
        ([0, 5, 5], None, "strictly increasing"),
        ([0, 5, 2], None, "strictly increasing"),
        ([0, 5], ["a"], "1 names for 2 functions"),
        ([0], ["1bad"], "not a valid BTF function name"),
        ([0], ["has-dash"], "not a valid BTF function name"),
    ],
)
def test_refuses_bad_input(starts: list[int], names: list[str] | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_func_btf(starts, names)


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool is not installed")
def test_bpftool_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "func.btf"
    path.write_bytes(build_func_btf([0, 9], ["xdp_dispatcher", "slot_0"]).btf)
    result = subprocess.run(["bpftool", "btf", "dump", "file", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "[1] INT 'int' size=4 bits_offset=0 nr_bits=32 encoding=SIGNED" in result.stdout
    assert "[3] FUNC_PROTO '(anon)' ret_type_id=1 vlen=1" in result.stdout
    assert "[4] FUNC 'xdp_dispatcher' type_id=3 linkage=static" in result.stdout
    assert "[5] FUNC 'slot_0' type_id=3 linkage=static" in result.stdout
