# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The instruction codec, checked against bytes clang and the kernel agree on."""

from __future__ import annotations

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _insn
from ansible_collections.bpfd.core.plugins.module_utils._insn import Insn

# (bytes as llvm-objdump prints them, decoded instruction)
KNOWN = [
    ("b700000002000000", Insn(code=0xB7, dst=0, imm=2)),  # r0 = 2
    ("bf16000000000000", Insn(code=0xBF, dst=6, src=1)),  # r6 = r1
    ("85100000ffffffff", Insn(code=0x85, src=1, imm=-1)),  # call -1 (bpf-to-bpf)
    ("1501910000000000", Insn(code=0x15, dst=1, off=0x91)),  # if r1 == 0 goto +145
    ("6171040000000000", Insn(code=0x61, dst=1, src=7, off=4)),  # r1 = *(u32 *)(r7 + 4)
    ("0500ffff00000000", Insn(code=0x05, off=-1)),  # goto -1
    ("9500000000000000", Insn(code=0x95)),  # exit
]


def ld_imm64(dst: int, src: int, low: int, high: int = 0) -> list[Insn]:
    return [Insn(code=_insn.OP_LD_IMM64, dst=dst, src=src, imm=low), Insn(code=0, imm=high)]


@pytest.mark.parametrize("hexbytes, insn", KNOWN)
def test_decode_known_bytes(hexbytes: str, insn: Insn) -> None:
    assert Insn.decode(bytes.fromhex(hexbytes)) == insn


@pytest.mark.parametrize("hexbytes, insn", KNOWN)
def test_encode_known_bytes(hexbytes: str, insn: Insn) -> None:
    assert insn.encode().hex() == hexbytes


def test_decode_at_index() -> None:
    raw = bytes.fromhex("".join(h for h, _expected in KNOWN))
    assert Insn.decode(raw, 2) == KNOWN[2][1]


def test_decode_all_keeps_both_halves_of_ld_imm64() -> None:
    insns = ld_imm64(1, _insn.PSEUDO_MAP_FD, 7) + [_insn.exit_insn()]
    assert _insn.decode_all(_insn.encode_all(insns)) == insns


def test_iter_insns_skips_second_half_of_ld_imm64() -> None:
    insns = [_insn.mov64_imm(0, 1)] + ld_imm64(1, 0, 5, 6) + [_insn.exit_insn()]
    indices = [index for index, _decoded in _insn.iter_insns(_insn.encode_all(insns))]
    assert indices == [0, 1, 3]


def test_iter_insns_refuses_truncated_ld_imm64() -> None:
    raw = _insn.encode_all([_insn.mov64_imm(0, 1), ld_imm64(1, 0, 5)[0]])
    with pytest.raises(ValueError, match="no second half"):
        list(_insn.iter_insns(raw))


def test_insn_count_refuses_partial_instruction() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        _insn.insn_count(b"\0" * 12)


def test_replace_insn() -> None:
    raw = _insn.encode_all([_insn.mov64_imm(0, 1), _insn.exit_insn()])
    patched = _insn.replace_insn(raw, 0, _insn.mov64_imm(0, 2))
    assert _insn.decode_all(patched) == [_insn.mov64_imm(0, 2), _insn.exit_insn()]
    with pytest.raises(IndexError):
        _insn.replace_insn(raw, 2, _insn.exit_insn())


def test_replace_field() -> None:
    assert Insn(code=0x85, src=1, imm=-1).replace(imm=9) == Insn(code=0x85, src=1, imm=9)


CALL_HELPER = Insn(code=0x85, imm=1)
CALL_PSEUDO = Insn(code=0x85, src=1, imm=3)
CALL_KFUNC = Insn(code=0x85, src=2, imm=1234)
LD_MAP_FD = ld_imm64(1, 1, 5)[0]
LD_MAP_VALUE = ld_imm64(1, 2, 5)[0]
LD_FUNC = ld_imm64(2, 4, 10)[0]
LD_PLAIN = ld_imm64(2, 0, 10)[0]


@pytest.mark.parametrize(
    "predicate, matching",
    [
        (_insn.is_ld_imm64, {LD_MAP_FD, LD_MAP_VALUE, LD_FUNC, LD_PLAIN}),
        (_insn.is_call, {CALL_HELPER, CALL_PSEUDO, CALL_KFUNC}),
        (_insn.is_helper_call, {CALL_HELPER}),
        (_insn.is_pseudo_call, {CALL_PSEUDO}),
        (_insn.is_kfunc_call, {CALL_KFUNC}),
        (_insn.is_pseudo_func, {LD_FUNC}),
        (_insn.is_map_fd_load, {LD_MAP_FD}),
        (_insn.is_map_value_load, {LD_MAP_VALUE}),
        (_insn.is_exit, {_insn.exit_insn()}),
        (_insn.is_unconditional_jump, {Insn(code=0x05, off=3), Insn(code=0x06, imm=3)}),
    ],
)
def test_predicates(predicate, matching: set[Insn]) -> None:
    every = {CALL_HELPER, CALL_PSEUDO, CALL_KFUNC, LD_MAP_FD, LD_MAP_VALUE, LD_FUNC, LD_PLAIN,
             _insn.exit_insn(), Insn(code=0x05, off=3), Insn(code=0x06, imm=3), _insn.mov64_imm(0, 2)}
    assert {insn for insn in every if predicate(insn)} == matching


def test_relative_target() -> None:
    assert _insn.relative_target(10, CALL_PSEUDO) == 14
    assert _insn.relative_target(4, Insn(code=0x85, src=1, imm=-5)) == 0
