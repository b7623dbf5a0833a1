# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Just enough ELF64 reading to find a global variable's section, offset and
size by its symbol — works for objects built without BTF, where libbpf's
datasec information is not available."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
SHT_SYMTAB = 2
STT_OBJECT = 1
DATA_SECTIONS = (".rodata", ".data", ".bss")


@dataclass(frozen=True)
class GlobalVariable:
    name: str
    section: str
    offset: int
    size: int


def _cstr(blob: bytes, offset: int) -> str:
    return blob[offset:blob.index(b"\0", offset)].decode("utf-8", "replace")


def global_variables(path: str) -> dict[str, GlobalVariable]:
    """Every data object of .rodata/.data/.bss (and their .name suffixes), by name."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BpfdError("%s is not a 64-bit little-endian ELF object" % path)
    header = _EHDR.unpack_from(data, 0)
    shoff, shentsize, shnum, shstrndx = header[6], header[11], header[12], header[13]
    sections = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    names_blob = data[sections[shstrndx][4]:][:sections[shstrndx][5]]
    names = [_cstr(names_blob, s[0]) for s in sections]
    found: dict[str, GlobalVariable] = {}
    for sec in sections:
        if sec[1] != SHT_SYMTAB:
            continue
        strtab = sections[sec[6]]
        strings = data[strtab[4]:strtab[4] + strtab[5]]
        for i in range(sec[5] // _SYM.size):
            st_name, st_info, _other, st_shndx, st_value, st_size = _SYM.unpack_from(data, sec[4] + i * _SYM.size)
            if st_info & 0xF != STT_OBJECT or not 0 < st_shndx < len(names):
                continue
            section = names[st_shndx]
            if section.split(".")[1:2] and "." + section.split(".")[1] in DATA_SECTIONS:
                name = _cstr(strings, st_name)
                found[name] = GlobalVariable(name, section, st_value, st_size)
    return found


def parse_hex(name: str, value: str) -> bytes:
    if not isinstance(value, str):
        raise BpfdError("global_data %s: give the value as a quoted hex string (e.g. \"01000000\"); "
                        "unquoted, YAML read %r as a number" % (name, value))
    text = str(value).strip().lower()
    text = text[2:] if text.startswith("0x") else text
    text = text.replace(" ", "").replace(":", "")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise BpfdError("global_data %s: %r is not hex bytes (e.g. '01000000' for a little-endian 1)"
                        % (name, value))
