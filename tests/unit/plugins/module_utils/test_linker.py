# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The dispatcher linker, without a kernel: offsets, function starts, config, refusals."""

from __future__ import annotations

import struct

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _insn
from ansible_collections.bpfd.core.plugins.module_utils import _linker
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._insn import Insn
from ansible_collections.bpfd.core.plugins.module_utils._linker import LinkError, link_dispatcher

XDP_DEFAULT = (1 << 2) | (1 << 31)
EXIT = _insn.exit_insn()


def mov(value: int) -> Insn:
    return _insn.mov64_imm(0, value)


def call(imm: int) -> Insn:
    return Insn(code=_insn.OP_CALL, src=_insn.PSEUDO_CALL, imm=imm)


def ld_imm64(src: int, imm: int, dst: int = 1) -> list[Insn]:
    return [Insn(code=_insn.OP_LD_IMM64, dst=dst, src=src, imm=imm), Insn(code=0)]


def block(*insns: Insn | list[Insn]) -> bytes:
    flat: list[Insn] = []
    for item in insns:
        flat.extend(item if isinstance(item, list) else [item])
    return _insn.encode_all(flat)


def count(raw: bytes) -> int:
    return len(raw) // _insn.INSN_SIZE


def call_target(insns: bytes, index: int) -> int:
    ins = Insn.decode(insns, index)
    assert _insn.is_pseudo_call(ins), "instruction %d is not a bpf-to-bpf call" % index
    return _insn.relative_target(index, ins)


RETURN_PASS = block(mov(2), EXIT)
RETURN_DROP = block(mov(1), EXIT)
# main: call sub; r0 = 2; exit -- sub at 3: r0 = 1; exit
WITH_SUBPROG = block(call(2), mov(2), EXIT, mov(1), EXIT)
# main: r2 = &callback (ld_imm64 with BPF_PSEUDO_FUNC); r0 = 2; exit -- callback at 4: r0 = 0; exit
WITH_CALLBACK = block(ld_imm64(_insn.PSEUDO_FUNC, 3, dst=2), mov(2), EXIT, mov(0), EXIT)


@pytest.fixture(params=["xdp", "tc"])
def kind(request) -> str:
    return request.param


# --- the template ---------------------------------------------------------------

def test_template_calls_every_slot_once(kind: str) -> None:
    template = _linker.load_template(kind)
    assert sorted(slot for _, slot in template.slot_calls) == list(range(template.max_slots))
    for index, _slot in template.slot_calls:
        assert _insn.is_pseudo_call(Insn.decode(template.insns, index))


def test_template_config_loads_are_ld_imm64_inside_config(kind: str) -> None:
    template = _linker.load_template(kind)
    assert template.config_loads
    for index, offset in template.config_loads:
        assert _insn.is_ld_imm64(Insn.decode(template.insns, index))
        assert 0 <= offset < template.config_size


def test_template_layout_holds_num_slots_and_masks(kind: str) -> None:
    template = _linker.load_template(kind)
    assert template.max_slots == 10
    assert template.masks_offset + 4 * template.max_slots <= template.config_size
    assert not template.masks_offset <= template.num_slots_offset < template.masks_offset + 40


def test_unknown_kind() -> None:
    with pytest.raises(LinkError, match="unknown dispatcher kind 'kprobe'"):
        link_dispatcher("kprobe", [RETURN_PASS], [1])


# --- placement and call offsets -------------------------------------------------

def test_one_member_and_stub(kind: str) -> None:
    template = _linker.load_template(kind)
    linked = link_dispatcher(kind, [RETURN_PASS], [XDP_DEFAULT])
    entry = template.insn_count
    stub = entry + 2
    assert linked.member_starts == [entry]
    assert linked.insns[entry * 8:stub * 8] == RETURN_PASS
    assert _insn.decode_all(linked.insns[stub * 8:]) == [mov(_linker.PASS_VERDICT[kind]), EXIT]
    targets = {slot: call_target(linked.insns, index) for index, slot in template.slot_calls}
    assert targets == {0: entry, **{slot: stub for slot in range(1, 10)}}
    assert linked.func_starts == [0, entry, stub]
    assert linked.func_names == [template.entry, "slot_0", "unused_slot"]


def test_pass_verdicts() -> None:
    assert _linker.PASS_VERDICT == {"xdp": 2, "tc": 0}


def test_two_members_in_order(kind: str) -> None:
    template = _linker.load_template(kind)
    linked = link_dispatcher(kind, [WITH_SUBPROG, RETURN_DROP], [1, 2])
    first = template.insn_count
    second = first + count(WITH_SUBPROG)
    assert linked.member_starts == [first, second]
    targets = {slot: call_target(linked.insns, index) for index, slot in template.slot_calls}
    assert targets[0] == first
    assert targets[1] == second
    assert {targets[slot] for slot in range(2, 10)} == {second + count(RETURN_DROP)}


def test_ten_members_need_no_stub(kind: str) -> None:
    template = _linker.load_template(kind)
    members = [block(mov(slot), EXIT) for slot in range(10)]
    linked = link_dispatcher(kind, members, [XDP_DEFAULT] * 10)
    starts = [template.insn_count + 2 * slot for slot in range(10)]
    assert len(linked.insns) == len(template.insns) + 10 * 16
    assert linked.member_starts == starts
    assert {slot: call_target(linked.insns, index) for index, slot in template.slot_calls} == dict(enumerate(starts))
    assert linked.func_starts == [0] + starts
    assert "unused_slot" not in linked.func_names


def test_members_copied_unchanged(kind: str) -> None:
    members = [WITH_SUBPROG, WITH_CALLBACK, RETURN_PASS]
    linked = link_dispatcher(kind, members, [1, 1, 1])
    for start, member in zip(linked.member_starts, members):
        assert linked.insns[start * 8:start * 8 + len(member)] == member


def test_only_slot_calls_and_config_loads_of_the_entry_change(kind: str) -> None:
    template = _linker.load_template(kind)
    linked = link_dispatcher(kind, [RETURN_PASS], [1])
    allowed = {i for i, _ in template.slot_calls}
    allowed |= {i for i, _ in template.config_loads} | {i + 1 for i, _ in template.config_loads}
    changed = {
        i for i in range(template.insn_count)
        if linked.insns[i * 8:i * 8 + 8] != template.insns[i * 8:i * 8 + 8]
    }
    assert changed <= allowed


# --- function starts -------------------------------------------------------------

def test_func_starts_include_subprograms(kind: str) -> None:
    template = _linker.load_template(kind)
    linked = link_dispatcher(kind, [RETURN_PASS, WITH_SUBPROG], [1, 1])
    second = template.insn_count + 2
    assert linked.func_starts == [0, template.insn_count, second, second + 3, second + 5]
    assert linked.func_names == [template.entry, "slot_0", "slot_1", "slot_1_f_3", "unused_slot"]


def test_func_starts_include_callbacks(kind: str) -> None:
    template = _linker.load_template(kind)
    linked = link_dispatcher(kind, [WITH_CALLBACK], [1])
    start = template.insn_count
    assert linked.func_starts == [0, start, start + 4, start + 6]
    assert linked.func_names[2] == "slot_0_f_4"


def test_func_starts_are_unique_when_calls_share_a_target(kind: str) -> None:
    # two calls and a callback address (a 2-slot ld_imm64) all reaching the function at 6
    member = block(call(5), call(4), ld_imm64(_insn.PSEUDO_FUNC, 3), mov(0), EXIT, mov(1), EXIT)
    linked = link_dispatcher(kind, [member], [1])
    start = _linker.load_template(kind).insn_count
    assert linked.func_starts == [0, start, start + 6, start + 8]


def test_func_btf_matches_func_starts(kind: str) -> None:
    linked = link_dispatcher(kind, [WITH_SUBPROG, WITH_CALLBACK], [1, 1])
    func_btf = linked.func_btf()
    assert func_btf.func_info_cnt == len(linked.func_starts)
    offsets = struct.unpack("<%dI" % (2 * func_btf.func_info_cnt), func_btf.func_info)[::2]
    assert list(offsets) == linked.func_starts


# --- config ------------------------------------------------------------------------

def test_config_bytes(kind: str) -> None:
    template = _linker.load_template(kind)
    masks = [0x80000004, 0x2, 0xFFFFFFFF]
    linked = link_dispatcher(kind, [RETURN_PASS] * 3, masks)
    assert len(linked.config) == template.config_size
    assert struct.unpack_from("<I", linked.config, template.num_slots_offset) == (3,)
    assert list(struct.unpack_from("<10I", linked.config, template.masks_offset)) == masks + [0] * 7


def test_config_loads_read_map_value(kind: str) -> None:
    template = _linker.load_template(kind)
    linked = link_dispatcher(kind, [RETURN_PASS], [1])
    assert linked.config_loads == [index for index, _ in template.config_loads]
    for index, offset in template.config_loads:
        low, high = Insn.decode(linked.insns, index), Insn.decode(linked.insns, index + 1)
        assert (low.src, low.imm, high.imm) == (_insn.PSEUDO_MAP_VALUE, 0, offset)


def test_set_config_map_fd(kind: str) -> None:
    linked = link_dispatcher(kind, [RETURN_PASS], [1])
    patched = linked.with_config_map_fd(42)
    assert patched == _linker.set_config_map_fd(linked.insns, linked.config_loads, 42)
    for index in linked.config_loads:
        assert Insn.decode(patched, index) == Insn.decode(linked.insns, index).replace(imm=42)
    changed = {i for i in range(count(patched)) if patched[i * 8:i * 8 + 8] != linked.insns[i * 8:i * 8 + 8]}
    assert changed == set(linked.config_loads)


# --- refusals ----------------------------------------------------------------------

def test_link_error_is_a_value_error_and_a_bpfd_error() -> None:
    assert issubclass(LinkError, ValueError)
    assert issubclass(LinkError, BpfdError)


@pytest.mark.parametrize("number", [0, 11])
def test_member_count(kind: str, number: int) -> None:
    with pytest.raises(LinkError, match="runs 1 to 10 programs, got %d" % number):
        link_dispatcher(kind, [RETURN_PASS] * number, [1] * number)


def test_masks_must_match_members(kind: str) -> None:
    with pytest.raises(LinkError, match="2 programs but 1 proceed-on masks"):
        link_dispatcher(kind, [RETURN_PASS] * 2, [1])


@pytest.mark.parametrize("mask", [-1, 1 << 32, True, 1.0, "4"])
def test_masks_are_32_bit_unsigned(kind: str, mask) -> None:
    with pytest.raises(LinkError, match="slot 1 is not a 32-bit unsigned integer"):
        link_dispatcher(kind, [RETURN_PASS] * 2, [1, mask])


@pytest.mark.parametrize(
    "member, message",
    [
        (b"", "non-empty multiple of 8 bytes, got 0 bytes"),
        (RETURN_PASS + b"\0\0\0\0", "multiple of 8 bytes, got 20 bytes"),
        (block(mov(1)), "does not end with exit or an unconditional jump"),
        (block(mov(1), EXIT, ld_imm64(0, 5)), "does not end with exit"),
        (block(mov(1), EXIT, ld_imm64(0, 5)[0]), "ld_imm64 at instruction 2 has no second half"),
        (block(call(5), EXIT), "call at instruction 0 targets 6, outside its 2 instructions"),
        (block(call(-2), EXIT), "call at instruction 0 targets -1"),
        (block(ld_imm64(_insn.PSEUDO_FUNC, 9), EXIT), "callback address at instruction 0 targets 10"),
    ],
)
def test_bad_member(kind: str, member: bytes, message: str) -> None:
    with pytest.raises(LinkError, match="program in slot 1.*" + message):
        link_dispatcher(kind, [RETURN_PASS, member], [1, 1])


def test_members_may_end_with_a_jump(kind: str) -> None:
    member = block(mov(1), Insn(code=_insn.OP_JA, off=-2))
    assert link_dispatcher(kind, [member], [1]).member_starts


def test_kfunc_refused(kind: str) -> None:
    kfunc = Insn(code=_insn.OP_CALL, src=_insn.PSEUDO_KFUNC_CALL, imm=12345)
    member = block(kfunc, mov(2), EXIT)
    with pytest.raises(LinkError, match=r"slot 0 calls a kernel function \(kfunc, BTF id 12345\) at instruction 0"):
        link_dispatcher(kind, [member], [1])
