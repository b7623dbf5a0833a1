# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Encode and decode eBPF instructions (struct bpf_insn), nothing more.

An instruction is 8 bytes, little-endian: opcode, dst/src registers packed in
one byte (dst in the low nibble), a signed 16-bit offset and a signed 32-bit
immediate. ``ld_imm64`` (opcode 0x18) is the one 16-byte instruction: a
second slot with opcode 0 carries the upper 32 bits in its ``imm``. Indices
used here always count 8-byte slots, as the kernel does (jump offsets,
``func_info.insn_off``, call immediates).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Iterable, Iterator

INSN_SIZE = 8
_INSN = struct.Struct("<BBhi")

# Opcodes (class | op | source) this package inspects or writes.
OP_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW
OP_MOV64_IMM = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K
OP_CALL = 0x85  # BPF_JMP | BPF_CALL
OP_EXIT = 0x95  # BPF_JMP | BPF_EXIT
OP_JA = 0x05  # BPF_JMP | BPF_JA: goto +off
OP_JA32 = 0x06  # BPF_JMP32 | BPF_JA: gotol +imm

# src_reg of a call instruction.
PSEUDO_HELPER_CALL = 0
PSEUDO_CALL = 1  # bpf-to-bpf call, imm = target - (index + 1)
PSEUDO_KFUNC_CALL = 2  # imm = BTF id of a kernel function

# src_reg of an ld_imm64 instruction.
PSEUDO_MAP_FD = 1  # imm = map fd
PSEUDO_MAP_VALUE = 2  # imm = map fd, second imm = offset into the value
PSEUDO_BTF_ID = 3  # imm = BTF id of a kernel variable
PSEUDO_FUNC = 4  # imm = callback start - (index + 1)
PSEUDO_MAP_IDX = 5
PSEUDO_MAP_IDX_VALUE = 6


@dataclasses.dataclass(frozen=True)
class Insn:
    """One 8-byte instruction slot."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    @classmethod
    def decode(cls, raw: bytes, index: int = 0) -> Insn:
        """Decode the slot at ``index`` of ``raw``."""
        code, regs, off, imm = _INSN.unpack_from(raw, index * INSN_SIZE)
        return cls(code=code, dst=regs & 0x0F, src=regs >> 4, off=off, imm=imm)

    def encode(self) -> bytes:
        return _INSN.pack(self.code, (self.src << 4) | self.dst, self.off, self.imm)

    def replace(self, **changes: int) -> Insn:
        return dataclasses.replace(self, **changes)


def insn_count(raw: bytes) -> int:
    """Number of 8-byte slots in ``raw``; raises ValueError if it is not whole."""
    if len(raw) % INSN_SIZE:
        raise ValueError(
            "instruction bytes must be a multiple of %d, got %d bytes" % (INSN_SIZE, len(raw))
        )
    return len(raw) // INSN_SIZE


def decode_all(raw: bytes) -> list[Insn]:
    """Every slot, the second half of each ld_imm64 included."""
    return [Insn.decode(raw, i) for i in range(insn_count(raw))]


def encode_all(insns: Iterable[Insn]) -> bytes:
    return b"".join(insn.encode() for insn in insns)


def iter_insns(raw: bytes) -> Iterator[tuple[int, Insn]]:
    """Yield ``(index, insn)`` per instruction, skipping each ld_imm64's second slot.

    Raises ValueError on a truncated ld_imm64.
    """
    count = insn_count(raw)
    index = 0
    while index < count:
        insn = Insn.decode(raw, index)
        yield index, insn
        if is_ld_imm64(insn):
            if index + 1 >= count:
                raise ValueError("ld_imm64 at instruction %d has no second half" % index)
            index += 2
        else:
            index += 1


def replace_insn(raw: bytes, index: int, insn: Insn) -> bytes:
    """``raw`` with the slot at ``index`` replaced by ``insn``."""
    start = index * INSN_SIZE
    if not 0 <= start < len(raw):
        raise IndexError("instruction index %d out of range" % index)
    return raw[:start] + insn.encode() + raw[start + INSN_SIZE:]


def is_ld_imm64(insn: Insn) -> bool:
    return insn.code == OP_LD_IMM64


def is_call(insn: Insn) -> bool:
    return insn.code == OP_CALL


def is_helper_call(insn: Insn) -> bool:
    return is_call(insn) and insn.src == PSEUDO_HELPER_CALL


def is_pseudo_call(insn: Insn) -> bool:
    """A bpf-to-bpf call (target = index + imm + 1)."""
    return is_call(insn) and insn.src == PSEUDO_CALL


def is_kfunc_call(insn: Insn) -> bool:
    return is_call(insn) and insn.src == PSEUDO_KFUNC_CALL


def is_pseudo_func(insn: Insn) -> bool:
    """An ld_imm64 loading a callback's address (target = index + imm + 1)."""
    return is_ld_imm64(insn) and insn.src == PSEUDO_FUNC


def is_map_fd_load(insn: Insn) -> bool:
    return is_ld_imm64(insn) and insn.src == PSEUDO_MAP_FD


def is_map_value_load(insn: Insn) -> bool:
    return is_ld_imm64(insn) and insn.src == PSEUDO_MAP_VALUE


def is_exit(insn: Insn) -> bool:
    return insn.code == OP_EXIT


def is_unconditional_jump(insn: Insn) -> bool:
    return insn.code in (OP_JA, OP_JA32)


def relative_target(index: int, insn: Insn) -> int:
    """Target index of a pseudo call or pseudo func at ``index``."""
    return index + insn.imm + 1


def mov64_imm(dst: int, imm: int) -> Insn:
    """``dst = imm`` (64-bit move of a sign-extended 32-bit constant)."""
    return Insn(code=OP_MOV64_IMM, dst=dst, imm=imm)


def exit_insn() -> Insn:
    return Insn(code=OP_EXIT)
