# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Compile files/dispatcher.bpf.c and write plugins/module_utils/_dispatcher_bytecode.py.

Managed hosts have no compiler, so the dispatcher ships as data: for each hook
kind, the entry function's instructions, which instruction calls which slot,
which ld_imm64 reads the configuration (and at what offset), which
callee-saved registers (r6..r9) hold a value across a slot call, and the
configuration's layout. The slot stubs in .text are not recorded: the linker
replaces every slot call by a member's inlined main body (or points it at the
member placed as a subprogram).

The linker may only inline a member whose body leaves the registers the entry
keeps across slot calls alone (it renames them away), so this tool checks the
entry function with a register liveness analysis, records the kept set, and
refuses an entry that uses the stack (inlined bodies use the entry's frame).

    python tools/build_dispatcher.py           # regenerate the module
    python tools/build_dispatcher.py --check   # exit 1 if the committed module is stale
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import importlib.util
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "files" / "dispatcher.bpf.c"
OUTPUT = ROOT / "plugins" / "module_utils" / "_dispatcher_bytecode.py"
# -mcpu=v3: 32-bit jumps and ALU (kernel >= 5.1) shorten each slot's verdict test
CLANG_FLAGS = ["-O2", "-mcpu=v3", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c"]

# hook kind -> (program section, entry function, slot stub name pattern)
KINDS = {
    "xdp": ("xdp", "xdp_dispatcher", re.compile(r"^xdp_slot_(\d+)$")),
    "tc": ("tc", "tc_dispatcher", re.compile(r"^tc_slot_(\d+)$")),
}
CONFIG_SYMBOL = "CONFIG"
LAYOUT_SECTION = ".bpfd.layout"


def _load_insn_codec():
    """plugins/module_utils/_insn.py, imported by path (stdlib-only file)."""
    path = ROOT / "plugins" / "module_utils" / "_insn.py"
    spec = importlib.util.spec_from_file_location("_bpfd_insn", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses looks its module up there
    spec.loader.exec_module(module)
    return module


insn = _load_insn_codec()


class BuildError(Exception):
    pass


# --- a small ELF64 little-endian reader -------------------------------------

EM_BPF = 247
SHT_SYMTAB = 2
SHT_REL = 9
STT_SECTION = 3
R_BPF_64_64 = 1  # ld_imm64
R_BPF_64_32 = 10  # call imm

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_REL = struct.Struct("<QQ")


@dataclasses.dataclass(frozen=True)
class Section:
    index: int
    name: str
    type: int
    offset: int
    size: int
    link: int
    info: int


@dataclasses.dataclass(frozen=True)
class Symbol:
    name: str
    type: int
    shndx: int
    value: int
    size: int


@dataclasses.dataclass(frozen=True)
class Reloc:
    offset: int
    type: int
    symbol: Symbol


def _cstring(table: bytes, offset: int) -> str:
    return table[offset:table.index(b"\0", offset)].decode("ascii")


class Elf:
    def __init__(self, data: bytes) -> None:
        self.data = data
        ident, _type, machine, *_rest = _EHDR.unpack_from(data)
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            raise BuildError("not a little-endian ELF64 file")
        if machine != EM_BPF:
            raise BuildError("not a BPF object (e_machine %d)" % machine)
        self.sections = self._read_sections()
        self.symbols = self._read_symbols()

    def _read_sections(self) -> list[Section]:
        fields = _EHDR.unpack_from(self.data)
        shoff, shentsize, shnum, shstrndx = fields[6], fields[11], fields[12], fields[13]
        raw = [_SHDR.unpack_from(self.data, shoff + i * shentsize) for i in range(shnum)]
        names = self._bytes_at(raw[shstrndx][4], raw[shstrndx][5])
        return [
            Section(i, _cstring(names, h[0]), h[1], h[4], h[5], h[6], h[7])
            for i, h in enumerate(raw)
        ]

    def _bytes_at(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]

    def _read_symbols(self) -> list[Symbol]:
        symtab = self.section_by_type(SHT_SYMTAB)
        strtab = self.contents(self.sections[symtab.link])
        raw = self.contents(symtab)
        symbols = []
        for offset in range(0, len(raw), _SYM.size):
            name, info, _other, shndx, value, size = _SYM.unpack_from(raw, offset)
            if info & 0xF == STT_SECTION:
                name_text = self.sections[shndx].name
            else:
                name_text = _cstring(strtab, name)
            symbols.append(Symbol(name_text, info & 0xF, shndx, value, size))
        return symbols

    def section_by_type(self, sh_type: int) -> Section:
        for section in self.sections:
            if section.type == sh_type:
                return section
        raise BuildError("no section of type %d" % sh_type)

    def section(self, name: str) -> Section:
        for section in self.sections:
            if section.name == name:
                return section
        raise BuildError("no section %r" % name)

    def contents(self, section: Section) -> bytes:
        return self._bytes_at(section.offset, section.size)

    def symbol(self, name: str) -> Symbol:
        for symbol in self.symbols:
            if symbol.name == name:
                return symbol
        raise BuildError("no symbol %r" % name)

    def relocations_for(self, target: Section) -> list[Reloc]:
        relocs = []
        for section in self.sections:
            if section.type == SHT_REL and section.info == target.index:
                raw = self.contents(section)
                for offset in range(0, len(raw), _REL.size):
                    r_offset, r_info = _REL.unpack_from(raw, offset)
                    relocs.append(Reloc(r_offset, r_info & 0xFFFFFFFF, self.symbols[r_info >> 32]))
        return relocs


# --- from the object to templates -------------------------------------------

@dataclasses.dataclass(frozen=True)
class ConfigLayout:
    size: int
    num_slots_offset: int
    masks_offset: int
    max_slots: int


@dataclasses.dataclass(frozen=True)
class Template:
    kind: str
    entry: str
    insns: bytes
    slot_calls: tuple[tuple[int, int], ...]
    config_loads: tuple[tuple[int, int], ...]
    layout: ConfigLayout
    preserved_regs: tuple[int, ...] = ()


def read_layout(elf: Elf) -> ConfigLayout:
    raw = elf.contents(elf.section(LAYOUT_SECTION))
    layout = ConfigLayout(*struct.unpack("<4I", raw))
    config = elf.symbol(CONFIG_SYMBOL)
    if config.size != layout.size:
        raise BuildError("CONFIG is %d bytes, layout says %d" % (config.size, layout.size))
    return layout


def _slot_of_call(elf: Elf, reloc: Reloc, call: Any, stub_name: re.Pattern) -> int:
    """The slot number of the stub a relocated call reaches (libbpf's rule:
    target = symbol value / 8 + imm + 1, inside .text)."""
    text = elf.section(".text")
    if reloc.symbol.shndx != text.index:
        raise BuildError("call relocation against %r outside .text" % reloc.symbol.name)
    target = reloc.symbol.value + (call.imm + 1) * insn.INSN_SIZE
    for symbol in elf.symbols:
        match = stub_name.match(symbol.name)
        if symbol.shndx == text.index and symbol.value == target and match:
            return int(match.group(1))
    raise BuildError("call at byte %d does not reach a slot stub" % reloc.offset)


def _config_offset(elf: Elf, reloc: Reloc, load: Any, layout: ConfigLayout) -> int:
    """Offset into CONFIG an ld_imm64 reads (libbpf's rule: symbol value + imm)."""
    config = elf.symbol(CONFIG_SYMBOL)
    if reloc.symbol.shndx != config.shndx:
        raise BuildError("ld_imm64 relocation against %r, not CONFIG" % reloc.symbol.name)
    offset = reloc.symbol.value + load.imm - config.value
    if not 0 <= offset < layout.size:
        raise BuildError("ld_imm64 reads outside CONFIG (offset %d)" % offset)
    return offset


def _check_unrelocated(raw: bytes, relocated: set[int]) -> None:
    """Every ld_imm64 and non-helper call must be one we understood."""
    for index, ins in insn.iter_insns(raw):
        special = insn.is_ld_imm64(ins) or (insn.is_call(ins) and not insn.is_helper_call(ins))
        if special and index not in relocated:
            raise BuildError("instruction %d is a call or ld_imm64 the tool cannot place" % index)


# --- which registers the entry keeps across its slot calls ------------------

CALLEE_SAVED = frozenset((6, 7, 8, 9))
FRAME_POINTER = 10
_CLASS_LD, _CLASS_LDX, _CLASS_ST, _CLASS_STX = 0x00, 0x01, 0x02, 0x03
_CLASS_ALU, _CLASS_JMP, _CLASS_JMP32, _CLASS_ALU64 = 0x04, 0x05, 0x06, 0x07
_SRC_X = 0x08
_OP_JA, _OP_CALL, _OP_EXIT = 0x00, 0x80, 0x90
_OP_NEG, _OP_MOV, _OP_END = 0x80, 0xB0, 0xD0
_MODE_ATOMIC = 0xC0
_BPF_FETCH, _BPF_CMPXCHG = 0x01, 0xF1


def reads_writes(ins: Any) -> tuple[set[int], set[int]]:
    """Registers an instruction of the entry function reads and writes.

    Covers what clang emits for an entry function; anything else is refused,
    so the liveness result can be trusted.
    """
    code, cls, op = ins.code, ins.code & 0x07, ins.code & 0xF0
    if cls in (_CLASS_ALU, _CLASS_ALU64):
        if op == _OP_END or op == _OP_NEG:
            return {ins.dst}, {ins.dst}
        src = {ins.src} if code & _SRC_X else set()
        if op == _OP_MOV:
            return src, {ins.dst}
        return src | {ins.dst}, {ins.dst}
    if cls in (_CLASS_JMP, _CLASS_JMP32):
        if op == _OP_CALL and not code & _SRC_X:
            return {1, 2, 3, 4, 5}, {0, 1, 2, 3, 4, 5}  # the calling convention
        if op == _OP_EXIT and not code & _SRC_X:
            return {0}, set()
        if op == _OP_JA and not code & _SRC_X:
            return set(), set()
        if op not in (_OP_JA, _OP_CALL, _OP_EXIT, 0xE0):  # 0xE0: may_goto
            return {ins.dst} | ({ins.src} if code & _SRC_X else set()), set()
    if code == insn.OP_LD_IMM64:
        return set(), {ins.dst}
    if cls == _CLASS_LDX:
        return {ins.src}, {ins.dst}
    if cls == _CLASS_ST:
        return {ins.dst}, set()
    if cls == _CLASS_STX:
        if (code & 0xE0) == _MODE_ATOMIC and ins.imm & _BPF_FETCH:
            written = {0} if ins.imm == _BPF_CMPXCHG else {ins.src}
            return {ins.dst, ins.src, 0}, written
        return {ins.dst, ins.src}, set()
    raise BuildError("opcode 0x%02x: not understood by the liveness check" % code)


def _successors(index: int, ins: Any, count: int) -> list[int]:
    cls, op = ins.code & 0x07, ins.code & 0xF0
    if insn.is_ld_imm64(ins):
        return [index + 2]
    if cls not in (_CLASS_JMP, _CLASS_JMP32) or op == _OP_CALL:
        return [index + 1]
    if op == _OP_EXIT:
        return []
    if op == _OP_JA:
        offset = ins.imm if cls == _CLASS_JMP32 else ins.off
        return [index + offset + 1]
    return [index + 1, index + ins.off + 1]


def preserved_registers(raw: bytes, slot_calls: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """Callee-saved registers live after some slot call (read on a path from it
    before being written): an inlined member must not change them."""
    decoded = dict(insn.iter_insns(raw))
    count = len(raw) // insn.INSN_SIZE
    for index, ins in decoded.items():
        reads, writes = reads_writes(ins)
        if FRAME_POINTER in reads | writes:
            raise BuildError(
                "instruction %d uses the stack (r10): inlined members share the entry's frame,"
                " so the entry function must use none" % index)
        for target in _successors(index, ins, count):
            if target not in decoded:
                raise BuildError("instruction %d jumps to %d, not an instruction" % (index, target))
    live_in: dict[int, frozenset[int]] = {index: frozenset() for index in decoded}
    changed = True
    while changed:  # backward liveness to a fixed point
        changed = False
        for index in sorted(decoded, reverse=True):
            ins = decoded[index]
            reads, writes = reads_writes(ins)
            live_out = frozenset().union(*(live_in[t] for t in _successors(index, ins, count)))
            new = frozenset(reads) | (live_out - writes)
            if new != live_in[index]:
                live_in[index], changed = new, True
    kept: set[int] = set()
    for index, _slot in slot_calls:
        kept |= live_in[index + 1] & CALLEE_SAVED
    return tuple(sorted(kept))


def read_template(elf: Elf, kind: str, layout: ConfigLayout) -> Template:
    section_name, entry, stub_name = KINDS[kind]
    section = elf.section(section_name)
    symbol = elf.symbol(entry)
    if symbol.shndx != section.index or symbol.value != 0 or symbol.size != section.size:
        raise BuildError("section %r must hold %s() alone" % (section_name, entry))
    raw = elf.contents(section)
    slot_calls, config_loads = [], []
    for reloc in elf.relocations_for(section):
        index = reloc.offset // insn.INSN_SIZE
        ins = insn.Insn.decode(raw, index)
        if reloc.type == R_BPF_64_32 and insn.is_pseudo_call(ins):
            slot_calls.append((index, _slot_of_call(elf, reloc, ins, stub_name)))
        elif reloc.type == R_BPF_64_64 and insn.is_ld_imm64(ins):
            config_loads.append((index, _config_offset(elf, reloc, ins, layout)))
        else:
            raise BuildError("unexpected relocation type %d at byte %d" % (reloc.type, reloc.offset))
    _check_unrelocated(raw, {i for i, _what in slot_calls + config_loads})
    if sorted(slot for _index, slot in slot_calls) != list(range(layout.max_slots)):
        raise BuildError("%s() must call each of the %d slots once" % (entry, layout.max_slots))
    slot_calls = sorted(slot_calls)
    preserved = preserved_registers(raw, tuple(slot_calls))
    if preserved == tuple(sorted(CALLEE_SAVED)):
        raise BuildError("%s() keeps all of r6..r9 across its slot calls: no member could be inlined" % entry)
    return Template(kind, entry, raw, tuple(slot_calls), tuple(sorted(config_loads)), layout, preserved)


# --- the generated module ---------------------------------------------------

HEADER = '''\
# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The compiled dispatcher entry functions (source: files/dispatcher.bpf.c).

GENERATED by tools/build_dispatcher.py -- do not edit. After changing the
source run ``python tools/build_dispatcher.py`` and commit both; the unit
tests run it with ``--check``.

Per hook kind: ``insns`` (hex, one 8-byte slot per line), ``slot_calls``
((instruction index, slot), ...) -- bpf-to-bpf calls the linker replaces by
members, ``config_loads`` ((instruction index, offset into the config), ...)
-- ld_imm64 that must read the frozen config map, ``preserved_regs`` -- the
callee-saved registers the entry keeps across slot calls (an inlined member
must leave them alone), and the config layout. The entry uses no stack.
"""

from __future__ import annotations

from typing import Any

'''


def _insn_lines(template: Template) -> list[str]:
    calls = dict(template.slot_calls)
    loads = dict(template.config_loads)
    lines = []
    for index in range(len(template.insns) // insn.INSN_SIZE):
        chunk = template.insns[index * insn.INSN_SIZE:(index + 1) * insn.INSN_SIZE]
        note = ""
        if index in calls:
            note = " call slot %d" % calls[index]
        elif index in loads:
            note = " config + %d" % loads[index]
        lines.append('            "%s"  # %d%s' % (chunk.hex(), index, note))
    return lines


def _pairs(pairs: tuple[tuple[int, int], ...]) -> str:
    return repr(tuple(pairs))


def _template_source(template: Template) -> list[str]:
    layout = template.layout
    return [
        '    "%s": {' % template.kind,
        '        "entry": "%s",' % template.entry,
        '        "insns": (',
        *_insn_lines(template),
        "        ),",
        '        "slot_calls": %s,' % _pairs(template.slot_calls),
        '        "config_loads": %s,' % _pairs(template.config_loads),
        '        "preserved_regs": %r,' % (template.preserved_regs,),
        '        "config_size": %d,' % layout.size,
        '        "num_slots_offset": %d,' % layout.num_slots_offset,
        '        "masks_offset": %d,' % layout.masks_offset,
        '        "max_slots": %d,' % layout.max_slots,
        "    },",
    ]


def render(templates: list[Template], source_sha256: str, clang_version: str) -> str:
    lines = [
        'SOURCE_SHA256 = "%s"' % source_sha256,
        'CLANG_VERSION = "%s"' % clang_version,
        "",
        "TEMPLATES: dict[str, dict[str, Any]] = {",
    ]
    for template in templates:
        lines += _template_source(template)
    lines.append("}")
    return HEADER + "\n".join(lines) + "\n"


# --- driver -----------------------------------------------------------------

def clang_version(clang: str) -> str:
    output = subprocess.run([clang, "--version"], check=True, capture_output=True, text=True).stdout
    match = re.search(r"clang version (\d+\.\d+\.\d+)", output)
    if not match:
        raise BuildError("cannot read the clang version from: %s" % output.splitlines()[0])
    return match.group(1)


def compile_source(clang: str, source: Path, workdir: Path) -> bytes:
    obj = workdir / "dispatcher.bpf.o"
    result = subprocess.run(
        [clang, *CLANG_FLAGS, str(source), "-o", str(obj)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BuildError("clang failed:\n%s" % result.stderr)
    return obj.read_bytes()


def build(clang: str, source: Path) -> str:
    with tempfile.TemporaryDirectory(prefix="bpfd-dispatcher-") as workdir:
        elf = Elf(compile_source(clang, source, Path(workdir)))
    layout = read_layout(elf)
    templates = [read_template(elf, kind, layout) for kind in KINDS]
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    return render(templates, sha256, clang_version(clang))


def _without_clang_version(text: str) -> str:
    return re.sub(r"^CLANG_VERSION = .*$", "CLANG_VERSION = ...", text, flags=re.MULTILINE)


def check(generated: str, output: Path) -> int:
    """0 if ``output`` holds ``generated``; another clang patch release is fine."""
    current = output.read_text() if output.exists() else ""
    if _without_clang_version(current) == _without_clang_version(generated):
        print("%s is up to date" % output)
        return 0
    diff = difflib.unified_diff(
        current.splitlines(True), generated.splitlines(True), str(output), "rebuilt"
    )
    sys.stdout.writelines(list(diff)[:80])
    print("\n%s is stale: run tools/build_dispatcher.py and commit the result" % output)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--clang", default="clang", help="clang binary (default: clang)")
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    try:
        generated = build(args.clang, args.source)
    except BuildError as error:
        print("error: %s" % error, file=sys.stderr)
        return 2
    if args.check:
        return check(generated, args.output)
    args.output.write_text(generated)
    print("wrote %s" % args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
