# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Write a one-program BPF ELF object, as clang would, from instructions whose
map references are symbolic.

Code compiled elsewhere (bcc) becomes an object like any other: libbpf loads
it, its maps are created from BTF-defined ``.maps`` and pinned like every
program's, and the bytecode store keeps it, so later runs and boot-time
restores load it without compiling again.

Sections: the program's, its ``.rel`` relocations (R_BPF_64_64 per map
reference), ``.maps`` + ``.BTF`` when there are maps, ``license``,
``.symtab`` and one string table.
"""

from __future__ import annotations

import struct

from ansible_collections.bpfd.core.plugins.module_utils import _btf
from ansible_collections.bpfd.core.plugins.module_utils import _insn

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_REL = struct.Struct("<QQ")
ELFCLASS64, ELFDATA2LSB, EV_CURRENT = 2, 1, 1
ET_REL, EM_BPF = 1, 247
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_REL = 1, 2, 3, 9
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
STB_GLOBAL, STT_OBJECT, STT_FUNC = 1, 1, 2
R_BPF_64_64 = 1


class _Strings:
    def __init__(self) -> None:
        self.data = bytearray(b"\0")

    def add(self, name: str) -> int:
        offset = len(self.data)
        self.data += name.encode("ascii") + b"\0"
        return offset


def symbolic(insns: bytes, map_names: dict[int, str]) -> tuple[bytes, list[tuple[int, str]]]:
    """Turn every ld_imm64 of a map fd (`map_names`: fd -> map name) back into a
    relocation: the instruction is zeroed as clang leaves it, the returned list says
    which map it loads. Any other kind of reference cannot be written out."""
    relocs = []
    for index, insn in _insn.iter_insns(insns):
        if _insn.is_map_fd_load(insn):
            if insn.imm not in map_names:
                raise ValueError("instruction %d loads file descriptor %d, which is no map of the program"
                                 % (index, insn.imm))
            relocs.append((index, map_names[insn.imm]))
            insns = _insn.replace_insn(insns, index, insn.replace(src=0, imm=0))
        elif _insn.is_ld_imm64(insn) and insn.src != 0 or _insn.is_pseudo_call(insn) or \
                _insn.is_kfunc_call(insn):
            raise ValueError("instruction %d refers to another function, a map value or a kernel symbol; "
                             "only self-contained functions with map references can be written out" % index)
    return insns, relocs


def write_object(path: str, *, section: str, function: str, insns: bytes, relocs: list[tuple[int, str]],
                 maps: list[tuple[str, dict]], license_text: str = "GPL") -> None:
    """Write the object to `path`. `relocs`: [(instruction index, map name)];
    `maps`: [(name, definition with _btf.MAP_FIELDS)]."""
    names = [name for name, _definition in maps]
    unknown = sorted({name for _index, name in relocs} - set(names))
    if unknown:
        raise ValueError("relocations name unknown maps: %s" % ", ".join(unknown))
    strings = _Strings()
    # (name, type, flags, data, link, info, align, entsize); indices are fixed up below
    sections: list[list] = [["", 0, 0, b"", 0, 0, 0, 0]]

    def add_section(name, sh_type, flags, data, align, entsize=0, link=0, info=0) -> int:
        sections.append([name, sh_type, flags, data, link, info, align, entsize])
        return len(sections) - 1

    strtab = add_section(".strtab", SHT_STRTAB, 0, b"", 1)
    prog = add_section(section, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, insns, 8)
    rel = add_section(".rel" + section, SHT_REL, 0, b"", 8, _REL.size, info=prog) if relocs else None
    maps_sec = add_section(".maps", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE,
                           bytes(_btf.MAP_DEF_SIZE * len(maps)), 8) if maps else None
    lic = add_section("license", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, license_text.encode() + b"\0", 1)
    if maps:
        add_section(".BTF", SHT_PROGBITS, 0, _btf.build_maps_btf(maps), 4)
    symtab = add_section(".symtab", SHT_SYMTAB, 0, b"", 8, _SYM.size, link=strtab, info=1)

    symbols = [_SYM.pack(0, 0, 0, 0, 0, 0),
               _SYM.pack(strings.add(function), (STB_GLOBAL << 4) | STT_FUNC, 0, prog, 0, len(insns)),
               _SYM.pack(strings.add("_license"), (STB_GLOBAL << 4) | STT_OBJECT, 0, lic, 0,
                         len(license_text) + 1)]
    map_symbol = {}
    for i, name in enumerate(names):
        map_symbol[name] = len(symbols)
        symbols.append(_SYM.pack(strings.add(name), (STB_GLOBAL << 4) | STT_OBJECT, 0, maps_sec, i * _btf.MAP_DEF_SIZE,
                                 _btf.MAP_DEF_SIZE))
    sections[symtab][3] = b"".join(symbols)
    if rel is not None:
        sections[rel][3] = b"".join(_REL.pack(index * _insn.INSN_SIZE, (map_symbol[name] << 32) | R_BPF_64_64)
                                    for index, name in relocs)
        sections[rel][4] = symtab
    name_offsets = [strings.add(s[0]) if s[0] else 0 for s in sections]
    sections[strtab][3] = bytes(strings.data)

    body = bytearray(_EHDR.size)
    offsets = []
    for _name, _type, _flags, data, _link, _info, align, _entsize in sections:
        if align > 1:
            body += bytes(-len(body) % align)
        offsets.append(len(body) if data else 0)
        body += data
    body += bytes(-len(body) % 8)
    shoff = len(body)
    for (_name, sh_type, flags, data, link, info, align, entsize), name_off, offset in zip(
            sections, name_offsets, offsets):
        body += _SHDR.pack(name_off, sh_type, flags, 0, offset, len(data), link, info, align, entsize)
    ident = b"\x7fELF" + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT]) + bytes(9)
    body[:_EHDR.size] = _EHDR.pack(ident, ET_REL, EM_BPF, EV_CURRENT, 0, 0, shoff, 0, _EHDR.size, 0, 0,
                                   _SHDR.size, len(sections), strtab)
    with open(path, "wb") as handle:
        handle.write(bytes(body))
