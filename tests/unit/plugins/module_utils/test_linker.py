# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The dispatcher linker, without a kernel: inlining, renaming, offsets, function
starts, fallbacks, config, refusals -- and a small BPF interpreter that runs the
linked program to check the chain's verdicts and which members ran."""

from __future__ import annotations

import random
import struct
from typing import Callable

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _insn
from ansible_collections.bpfd.core.plugins.module_utils import _linker
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._insn import Insn
from ansible_collections.bpfd.core.plugins.module_utils._linker import LinkError, link_dispatcher

XDP_DEFAULT = (1 << 2) | (1 << 31)
EXIT = _insn.exit_insn()
R10 = 10

# opcodes used below (class | op | source)
ALU64_X = {"mov": 0xBF, "add": 0x0F, "sub": 0x1F, "and": 0x5F, "or": 0x4F, "xor": 0xAF, "lsh": 0x6F, "rsh": 0x7F}
ALU64_K = {"mov": 0xB7, "add": 0x07, "sub": 0x17, "and": 0x57, "or": 0x47, "xor": 0xA7, "lsh": 0x67, "rsh": 0x77}
LDX_W, LDX_DW, STX_W, STX_DW, ST_W = 0x61, 0x79, 0x63, 0x7B, 0x62
JEQ_K, JLT_X32, JA = 0x15, 0xAE, 0x05
ATOMIC_ADD_DW = 0xDB
BE16 = 0xDC  # ALU | END | TO_BE: the source bit says big endian, src is no register
MAY_GOTO = 0xE5
LD_ABS_B = 0x30
GOTOX = 0x0D  # JMP | JA | X: indirect jump through a register
HELPER_TAIL_CALL, HELPER_LOOP = 12, 181


def mov(value: int, dst: int = 0) -> Insn:
    return _insn.mov64_imm(dst, value)


def alu(op: str, dst: int, src: int | None = None, imm: int = 0) -> Insn:
    if src is None:
        return Insn(code=ALU64_K[op], dst=dst, imm=imm)
    return Insn(code=ALU64_X[op], dst=dst, src=src)


def ldx(dst: int, src: int, off: int, code: int = LDX_W) -> Insn:
    return Insn(code=code, dst=dst, src=src, off=off)


def stx(dst: int, off: int, src: int, code: int = STX_W) -> Insn:
    return Insn(code=code, dst=dst, src=src, off=off)


def jump(code: int, dst: int = 0, off: int = 0, src: int = 0, imm: int = 0) -> Insn:
    return Insn(code=code, dst=dst, src=src, off=off, imm=imm)


def call(imm: int) -> Insn:
    return Insn(code=_insn.OP_CALL, src=_insn.PSEUDO_CALL, imm=imm)


def helper(number: int) -> Insn:
    return Insn(code=_insn.OP_CALL, imm=number)


def ld_imm64(src: int, imm: int, dst: int = 1, high: int = 0) -> list[Insn]:
    return [Insn(code=_insn.OP_LD_IMM64, dst=dst, src=src, imm=imm), Insn(code=0, imm=high)]


def block(*insns: Insn | list[Insn]) -> bytes:
    flat: list[Insn] = []
    for item in insns:
        flat.extend(item if isinstance(item, list) else [item])
    return _insn.encode_all(flat)


def count(raw: bytes) -> int:
    return len(raw) // _insn.INSN_SIZE


def decoded(raw: bytes) -> list[Insn]:
    return _insn.decode_all(raw)


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
# a main body that writes all of r6..r9: nothing left to rename r6 to
ALL_CALLEE_SAVED = block(alu("mov", 6, 1), mov(7, dst=7), mov(8, dst=8), mov(9, dst=9), mov(2), EXIT)


@pytest.fixture(params=["xdp", "tc"])
def kind(request) -> str:
    return request.param


# --- a small BPF interpreter ------------------------------------------------------

class Poison:
    """An uninitialised register: any use fails the test."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return "<poison: %s>" % self.why


MASK64 = (1 << 64) - 1


class Machine:
    """Runs a linked dispatcher. Values are ints (u64) or pointers (region, offset);
    regions: "ctx" (verdict words, then one hit counter per slot), "config", and
    one stack per frame. Helpers: 12 (tail call: always fails, returns -1),
    181 (bpf_loop: calls the callback r1 times with (i, r3)); others return 0."""

    def __init__(self, linked: _linker.LinkedDispatcher, verdicts: list[int]) -> None:
        self.insns = decoded(linked.insns)
        self.func_starts = set(linked.func_starts)
        self.memory = {"ctx": bytearray(struct.pack("<10i", *(verdicts + [0] * (10 - len(verdicts)))) + bytes(40)),
                       "config": bytearray(linked.config)}
        self.config_loads = set(linked.config_loads)
        self.spilled: dict = {}  # (region, offset) -> pointer stored there
        self.frames = 0
        self.steps = 0

    def hits(self) -> list[int]:
        return list(struct.unpack_from("<10I", self.memory["ctx"], 40))

    def run(self) -> int:
        result = self.function(0, [("ctx", 0)])
        assert isinstance(result, int)
        return struct.unpack("<i", struct.pack("<I", result & 0xFFFFFFFF))[0]

    def function(self, start: int, args: list) -> int:
        assert start in self.func_starts, "call to %d, not a function start" % start
        self.frames += 1
        assert self.frames <= 8
        stack = "stack%d_%d" % (self.frames, self.steps)
        self.memory[stack] = bytearray(512)
        regs: list = [Poison("r%d" % r) for r in range(11)]
        for number, value in enumerate(args, start=1):
            regs[number] = value
        regs[R10] = (stack, 512)
        pc = start
        while True:
            self.steps += 1
            assert self.steps < 100000
            ins = self.insns[pc]
            result = self.step(pc, ins, regs)
            if isinstance(result, tuple):  # ("exit", r0)
                self.frames -= 1
                del self.memory[stack]
                return result[1]
            pc = result

    def value(self, regs: list, number: int):
        value = regs[number]
        assert not isinstance(value, Poison), "read of uninitialised %s" % value.why
        return value

    def load(self, pointer, off: int, size: int):
        region, base = pointer
        if size == 8 and (region, base + off) in self.spilled:
            return self.spilled[region, base + off]
        return int.from_bytes(self.memory[region][base + off:base + off + size], "little")

    def store(self, pointer, off: int, size: int, value) -> None:
        region, base = pointer
        assert region != "config", "write to the read-only config"
        self.spilled.pop((region, base + off), None)
        if isinstance(value, tuple):
            assert size == 8
            self.spilled[region, base + off] = value
            return
        self.memory[region][base + off:base + off + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")

    def step(self, pc: int, ins: Insn, regs: list):  # noqa: C901 - one case per opcode family
        code, cls, op = ins.code, ins.code & 7, ins.code & 0xF0
        if code == _insn.OP_LD_IMM64:
            high = self.insns[pc + 1].imm
            if ins.src == _insn.PSEUDO_MAP_VALUE:
                assert pc in self.config_loads
                regs[ins.dst] = ("config", high)
            elif ins.src == _insn.PSEUDO_FUNC:
                regs[ins.dst] = ("func", pc + ins.imm + 1)
            else:
                regs[ins.dst] = ((high << 32) | (ins.imm & 0xFFFFFFFF)) & MASK64
            return pc + 2
        if cls in (4, 7):  # ALU, ALU64
            source = self.value(regs, ins.src) if code & 8 else ins.imm & MASK64
            if cls == 4:  # 32-bit: operands and result zero-extended from the low 32 bits
                assert isinstance(source, int)
                source &= 0xFFFFFFFF
            if op == 0xB0:
                regs[ins.dst] = source
                return pc + 1
            dst = self.value(regs, ins.dst)
            if isinstance(dst, tuple):
                assert op in (0x00, 0x10) and isinstance(source, int)
                regs[ins.dst] = (dst[0], dst[1] + (source if op == 0 else -source))
                return pc + 1
            operations: dict[int, Callable[[int, int], int]] = {
                0x00: lambda a, b: a + b, 0x10: lambda a, b: a - b, 0x40: lambda a, b: a | b,
                0x50: lambda a, b: a & b, 0x60: lambda a, b: a << (b & 63), 0x70: lambda a, b: a >> (b & 63),
                0xA0: lambda a, b: a ^ b}
            if cls == 4:
                regs[ins.dst] = operations[op](dst & 0xFFFFFFFF, source & 31 if op in (0x60, 0x70) else source) \
                    & 0xFFFFFFFF
            else:
                regs[ins.dst] = operations[op](dst, source) & MASK64
            return pc + 1
        if cls in (5, 6):
            if op == 0x80:  # call
                return self.call(pc, ins, regs)
            if op == 0x90:
                return ("exit", self.value(regs, 0))
            if op == 0x00:
                return pc + (ins.imm if cls == 6 else ins.off) + 1
            dst = self.value(regs, ins.dst)
            source = self.value(regs, ins.src) if code & 8 else ins.imm & MASK64
            if cls == 6:
                dst, source = dst & 0xFFFFFFFF, source & 0xFFFFFFFF
            tests = {0x10: dst == source, 0x50: dst != source, 0x20: dst > source, 0xA0: dst < source}
            return pc + (ins.off if tests[op] else 0) + 1
        size = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}[code & 0x18]
        if cls == 1:
            regs[ins.dst] = self.load(self.value(regs, ins.src), ins.off, size)
        elif cls == 3:
            value = self.value(regs, ins.src)
            if code & 0xE0 == 0xC0:
                assert ins.imm == 0  # atomic add
                value += self.load(self.value(regs, ins.dst), ins.off, size)
            self.store(self.value(regs, ins.dst), ins.off, size, value)
        elif cls == 2:
            self.store(self.value(regs, ins.dst), ins.off, size, ins.imm)
        else:
            raise AssertionError("opcode 0x%02x not interpreted" % code)
        return pc + 1

    def call(self, pc: int, ins: Insn, regs: list) -> int:
        if ins.src == _insn.PSEUDO_CALL:
            result = self.function(pc + ins.imm + 1, [self.value(regs, r) if not isinstance(regs[r], Poison)
                                                      else regs[r] for r in range(1, 6)])
        elif ins.imm == HELPER_LOOP:
            loops, callback, data = self.value(regs, 1), self.value(regs, 2), self.value(regs, 3)
            assert callback[0] == "func"
            for i in range(loops):
                self.function(callback[1], [i, data])
            result = loops
        elif ins.imm == HELPER_TAIL_CALL:
            result = MASK64  # -1: no program in the slot, the caller goes on
        else:
            result = 0
        for number in range(1, 6):
            regs[number] = Poison("r%d after a call at %d" % (number, pc))
        regs[0] = result
        return pc + 1


def expected(kind: str, verdicts: list[int], masks: list[int]) -> tuple[int, list[int]]:
    """The chain's verdict and which slots ran."""
    ran = []
    for slot, (verdict, mask) in enumerate(zip(verdicts, masks)):
        ran.append(slot)
        bit = verdict if kind == "xdp" else verdict + 1
        if not (0 <= bit < 32 and (mask >> bit) & 1):
            return verdict, ran
    return _linker.PASS_VERDICT[kind], ran


# Members for the interpreter. Each bumps its hit counter in ctx and returns
# the verdict word ctx[slot], so a wrong ctx or a clobbered dispatcher register
# shows. ``slot`` is baked in.

def counting_body(slot: int) -> list[Insn]:
    """r1 = ctx: ctx->hits[slot] += 1 (atomic add through r2)."""
    return [alu("mov", 2, 1), alu("add", 2, imm=40 + 4 * slot), mov(1, dst=3),
            Insn(code=0xC3, dst=2, src=3, off=0)]  # lock *(u32 *)(r2 + 0) += r3


def member_simple(slot: int) -> bytes:
    return block(*counting_body(slot), ldx(0, 1, 4 * slot), EXIT)


def member_uses_r6(slot: int) -> bytes:
    """Keeps ctx in r6 across a helper call, spills r6 to the stack, two exits."""
    return block(alu("mov", 6, 1), helper(5), alu("mov", 1, 6), *counting_body(slot),
                 stx(R10, -8, 6, STX_DW), ldx(7, R10, -8, LDX_DW), ldx(0, 7, 4 * slot),
                 jump(JEQ_K, 0, 1, imm=0x12345), EXIT, mov(99), EXIT)


def member_with_subprog(slot: int) -> bytes:
    """main: r6 = ctx; r0 = sub(ctx); r8 = r0; count; r0 = r8; exit -- sub: r0 = ctx[slot]."""
    main = [alu("mov", 6, 1), call(0), alu("mov", 8, 0), alu("mov", 1, 6), *counting_body(slot),
            alu("mov", 0, 8), EXIT]
    main[1] = call(len(main) - 2)
    sub = [alu("mov", 6, 1), mov(0, dst=7), ldx(0, 6, 4 * slot), EXIT]
    return block(*main, *sub)


def member_with_loop(slot: int) -> bytes:
    """bpf_loop(3, callback, ctx): the callback bumps the counter (3 hits per run)."""
    main = [alu("mov", 6, 1), mov(3, dst=1)] + ld_imm64(_insn.PSEUDO_FUNC, 0, dst=2) + \
        [alu("mov", 3, 6), mov(0, dst=4), helper(HELPER_LOOP), ldx(0, 6, 4 * slot), EXIT]
    main[2] = main[2].replace(imm=len(main) - 3)
    callback = [alu("mov", 1, 2), *counting_body(slot), mov(0), EXIT]
    return block(*main, *callback)


def member_all_regs(slot: int) -> bytes:
    return block(alu("mov", 6, 1), mov(7, dst=7), mov(8, dst=8), mov(9, dst=9), alu("mov", 1, 6),
                 *counting_body(slot), ldx(0, 6, 4 * slot), EXIT)


def member_tail_call(slot: int) -> bytes:
    return block(alu("mov", 6, 1), *counting_body(slot), alu("mov", 1, 6), ld_imm64(_insn.PSEUDO_MAP_FD, 7, dst=2),
                 mov(0, dst=3), helper(HELPER_TAIL_CALL), ldx(0, 6, 4 * slot), EXIT)


MEMBER_KINDS = {
    "simple": (member_simple, 1), "uses_r6": (member_uses_r6, 1), "subprog": (member_with_subprog, 1),
    "loop": (member_with_loop, 3), "all_regs": (member_all_regs, 1), "tail_call": (member_tail_call, 1),
}
VERDICTS = {"xdp": [0, 1, 2, 3, 4, 31, 66], "tc": [-1, 0, 1, 2, 3, 7, 30, 40]}


def run_chain(kind: str, shapes: list[str], verdicts: list[int], masks: list[int], inline: bool = True):
    members = [MEMBER_KINDS[shape][0](slot) for slot, shape in enumerate(shapes)]
    linked = link_dispatcher(kind, members, masks, inline=inline)
    check_structure(linked)
    machine = Machine(linked, verdicts)
    return linked, machine.run(), machine.hits()


def check_structure(linked: _linker.LinkedDispatcher) -> None:
    """What the verifier's CFG check wants: jumps stay inside their function,
    calls and callback addresses reach function starts, each function ends
    with exit or ja, every jump offset fits."""
    instructions = list(_insn.iter_insns(linked.insns))
    bounds = linked.func_starts + [count(linked.insns)]
    function, last = 0, None
    for index, ins in instructions:
        if index >= bounds[function + 1]:
            assert _insn.is_exit(last) or _insn.is_unconditional_jump(last), (bounds[function], last)
            function += 1
            assert index == bounds[function], "function %d starts inside an ld_imm64" % bounds[function]
        start, end = bounds[function], bounds[function + 1]
        if _linker._is_jump(ins):
            assert start <= index + _linker._jump_offset(ins) + 1 < end, (index, ins)
        if _insn.is_pseudo_call(ins) or _insn.is_pseudo_func(ins):
            assert _insn.relative_target(index, ins) in linked.func_starts, (index, ins)
        last = ins
    assert function == len(linked.func_starts) - 1
    assert _insn.is_exit(last) or _insn.is_unconditional_jump(last)


# --- the template ---------------------------------------------------------------

def test_template_calls_every_slot_once(kind: str) -> None:
    template = _linker.load_template(kind)
    assert sorted(slot for _index, slot in template.slot_calls) == list(range(template.max_slots))
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


def test_template_keeps_only_ctx_across_slot_calls(kind: str) -> None:
    template = _linker.load_template(kind)
    assert template.preserved_regs == (6,)
    for index, _slot in template.slot_calls:  # and ctx is what each call gets
        assert Insn.decode(template.insns, index - 1) == alu("mov", 1, 6)


def test_unknown_kind() -> None:
    with pytest.raises(LinkError, match="unknown dispatcher kind 'kprobe'"):
        link_dispatcher("kprobe", [RETURN_PASS], [1])


def test_pass_verdicts() -> None:
    assert _linker.PASS_VERDICT == {"xdp": 2, "tc": 0}


# --- inlining: placement ----------------------------------------------------------

def slot_call_index(template: _linker.DispatcherTemplate, slot: int) -> int:
    return dict((s, i) for i, s in template.slot_calls)[slot]


def entry_positions(template: _linker.DispatcherTemplate, body_lengths: dict[int, int]) -> list[int]:
    """Where each template instruction lands when slot s's call becomes body_lengths[s] instructions."""
    calls = dict(template.slot_calls)
    positions, position = [], 0
    for index in range(template.insn_count + 1):
        positions.append(position)
        position += body_lengths.get(calls.get(index, -1), 1)
    return positions


def test_one_member_is_inlined_in_place_of_its_call(kind: str) -> None:
    template = _linker.load_template(kind)
    linked = link_dispatcher(kind, [RETURN_PASS], [XDP_DEFAULT])
    at = slot_call_index(template, 0)
    ja_past = Insn(code=JA, off=0)
    assert linked.member_starts == [at]
    assert decoded(linked.insns)[at:at + 2] == [mov(2), ja_past]
    assert count(linked.insns) == template.insn_count + 1
    assert linked.func_starts == [0] and linked.func_names == [template.entry]
    assert linked.fallbacks == {}


def test_unused_slots_return_pass(kind: str) -> None:
    template = _linker.load_template(kind)
    linked = link_dispatcher(kind, [RETURN_PASS], [1])
    positions = entry_positions(template, {0: 2})
    for index, slot in template.slot_calls[1:]:
        assert Insn.decode(linked.insns, positions[index]) == mov(_linker.PASS_VERDICT[kind])


def test_ten_members_fill_every_slot(kind: str) -> None:
    template = _linker.load_template(kind)
    members = [block(mov(slot), EXIT) for slot in range(10)]
    linked = link_dispatcher(kind, members, [XDP_DEFAULT] * 10)
    positions = entry_positions(template, {slot: 2 for slot in range(10)})
    assert count(linked.insns) == template.insn_count + 10
    assert linked.member_starts == [positions[slot_call_index(template, slot)] for slot in range(10)]
    for slot, start in enumerate(linked.member_starts):
        assert decoded(linked.insns)[start] == mov(slot)
    assert linked.func_starts == [0]
    assert not any(_insn.is_call(ins) for ins in decoded(linked.insns))


def test_only_slot_calls_jumps_and_config_loads_of_the_entry_change(kind: str) -> None:
    template = _linker.load_template(kind)
    linked = link_dispatcher(kind, [RETURN_PASS, RETURN_DROP], [1, 1])
    positions = entry_positions(template, {0: 2, 1: 2})
    calls = dict(template.slot_calls)
    loads = {i for i, _offset in template.config_loads} | {i + 1 for i, _offset in template.config_loads}
    for index, ins in enumerate(decoded(template.insns)):
        if index in calls or index in loads:
            continue
        now = Insn.decode(linked.insns, positions[index])
        if _linker._is_jump(ins):
            assert now.replace(off=0) == ins.replace(off=0)
        else:
            assert now == ins


def test_template_jumps_reach_the_same_instruction_after_splicing(kind: str) -> None:
    template = _linker.load_template(kind)
    members = [member_uses_r6(0), WITH_SUBPROG, block(*[mov(1)] * 300, EXIT)]
    linked = link_dispatcher(kind, members, [1, 1, 1])
    body_lengths = {0: count(members[0]), 1: 3, 2: 301}
    positions = entry_positions(template, body_lengths)
    spliced = [slot_call_index(template, slot) for slot in body_lengths]
    crossing = 0
    for index, ins in enumerate(decoded(template.insns)):
        if index in dict(template.slot_calls) or not _linker._is_jump(ins):
            continue
        old_target = index + ins.off + 1
        now = Insn.decode(linked.insns, positions[index])
        assert positions[index] + now.off + 1 == positions[old_target]
        crosses = any(index < call < old_target for call in spliced)
        assert (now.off != ins.off) == crosses
        crossing += crosses
    assert crossing >= 6  # e.g. the jumps to the common exit from before each spliced body


def test_exits_become_jumps_past_the_body(kind: str) -> None:
    template = _linker.load_template(kind)
    # if r1 == 0 goto +2; r0 = 1; exit; r0 = 2; exit
    member = block(jump(JEQ_K, 1, 2), mov(1), EXIT, mov(2), EXIT)
    linked = link_dispatcher(kind, [member], [1])
    start = linked.member_starts[0]
    body = decoded(linked.insns)[start:start + 5]
    assert body == [jump(JEQ_K, 1, 2), mov(1), Insn(code=JA, off=2), mov(2), Insn(code=JA, off=0)]
    after = start + 5  # the template's instruction after the slot call
    call = slot_call_index(template, 0)
    assert entry_positions(template, {0: 5})[call + 1] == after
    assert Insn.decode(linked.insns, after).code == Insn.decode(template.insns, call + 1).code


def test_config_loads_follow_the_shift(kind: str) -> None:
    template = _linker.load_template(kind)
    members = [block(*[mov(1)] * 7, EXIT), RETURN_PASS, member_with_loop(2)]
    linked = link_dispatcher(kind, members, [1, 1, 1])
    positions = entry_positions(template, {0: 8, 1: 2, 2: _linker._Member(2, members[2], (6,)).body_end})
    assert linked.config_loads == [positions[index] for index, _offset in template.config_loads]
    for index, (_old, offset) in zip(linked.config_loads, template.config_loads):
        low, high = Insn.decode(linked.insns, index), Insn.decode(linked.insns, index + 1)
        assert (low.code, low.src, low.imm, high.imm) == (_insn.OP_LD_IMM64, _insn.PSEUDO_MAP_VALUE, 0, offset)


def test_set_config_map_fd(kind: str) -> None:
    linked = link_dispatcher(kind, [RETURN_PASS, member_uses_r6(1)], [1, 1])
    patched = linked.with_config_map_fd(42)
    assert patched == _linker.set_config_map_fd(linked.insns, linked.config_loads, 42)
    for index in linked.config_loads:
        assert Insn.decode(patched, index) == Insn.decode(linked.insns, index).replace(imm=42)
    changed = {i for i in range(count(patched)) if patched[i * 8:i * 8 + 8] != linked.insns[i * 8:i * 8 + 8]}
    assert changed == set(linked.config_loads)


# --- inlining: renaming ------------------------------------------------------------

def test_renaming_touches_register_fields_only() -> None:
    body = [
        alu("mov", 6, 1),                                   # 0: dst 6
        alu("add", 2, 6),                                   # 1: src 6
        alu("add", 6, imm=6),                               # 2: dst 6, imm 6 stays
        ldx(0, 6, 4),                                       # 3: LDX src 6
        stx(R10, -8, 6, STX_DW),                            # 4: STX src 6
        Insn(code=ST_W, dst=6, off=8, imm=6),               # 5: ST dst 6, imm stays
        Insn(code=ATOMIC_ADD_DW, dst=6, src=6, off=0),      # 6: atomic, both
        jump(JEQ_K, 6, 1, imm=6),                           # 7: JMP K: dst only
        jump(JLT_X32, 1, 0, src=6),                         # 8: JMP32 X: src
        Insn(code=BE16, dst=6, imm=16),                     # 9: byte swap: dst only
        *ld_imm64(6, 0, dst=6),                             # 10-11: src = BPF_PSEUDO_MAP_IDX_VALUE stays
        *ld_imm64(_insn.PSEUDO_MAP_VALUE, 3, dst=2, high=6),  # 12-13
        helper(6),                                          # 14: helper 6, src 0
        mov(2),                                             # 15
        EXIT,                                               # 16
    ]
    member = _linker._Member(0, block(*body), (6,))
    assert member.inlinable
    renamed = [
        alu("mov", 7, 1), alu("add", 2, 7), alu("add", 7, imm=6), ldx(0, 7, 4), stx(R10, -8, 7, STX_DW),
        Insn(code=ST_W, dst=7, off=8, imm=6), Insn(code=ATOMIC_ADD_DW, dst=7, src=7, off=0),
        jump(JEQ_K, 7, 1, imm=6), jump(JLT_X32, 1, 0, src=7), Insn(code=BE16, dst=7, imm=16),
        *ld_imm64(6, 0, dst=7), *ld_imm64(_insn.PSEUDO_MAP_VALUE, 3, dst=2, high=6), helper(6), mov(2), EXIT,
    ]
    assert member.body == renamed


def test_renaming_picks_a_register_the_body_does_not_use() -> None:
    body = block(alu("mov", 6, 1), mov(0, dst=7), mov(0, dst=9), ldx(0, 6, 0), EXIT)
    member = _linker._Member(0, body, (6,))
    assert member.body == [alu("mov", 8, 1), mov(0, dst=7), mov(0, dst=9), ldx(0, 8, 0), EXIT]


def test_body_without_reserved_registers_is_unchanged() -> None:
    body = block(alu("mov", 7, 1), ldx(0, 7, 0), EXIT)
    assert _linker._Member(0, body, (6,)).body == decoded(body)


def test_several_reserved_registers_each_get_a_free_one() -> None:
    body = block(alu("mov", 6, 1), alu("mov", 7, 6), ldx(0, 7, 0), EXIT)
    member = _linker._Member(0, body, (6, 7))
    assert member.body == [alu("mov", 8, 1), alu("mov", 9, 8), ldx(0, 9, 0), EXIT]
    crowded = block(alu("mov", 6, 1), alu("mov", 7, 6), mov(0, dst=8), ldx(0, 7, 0), EXIT)
    assert not _linker._Member(0, crowded, (6, 7)).inlinable


def test_subprograms_are_not_renamed(kind: str) -> None:
    member = member_with_subprog(0)
    linked = link_dispatcher(kind, [member], [1])
    parsed = _linker._Member(0, member, (6,))
    subprogram = linked.func_starts[1]
    assert linked.insns[subprogram * 8:] == member[parsed.body_end * 8:]
    body = decoded(linked.insns)[linked.member_starts[0]:linked.member_starts[0] + parsed.body_end]
    assert all(6 not in (ins.dst, ins.src) for ins in body if not _insn.is_call(ins))


# --- inlining: calls and callbacks of inlined bodies -------------------------------

def test_inlined_calls_reach_the_subprograms(kind: str) -> None:
    template = _linker.load_template(kind)
    linked = link_dispatcher(kind, [RETURN_PASS, WITH_SUBPROG], [1, 1])
    positions = entry_positions(template, {0: 2, 1: 3})
    entry_end = positions[-1]
    start = linked.member_starts[1]
    assert start == positions[slot_call_index(template, 1)]
    assert call_target(linked.insns, start) == entry_end
    assert decoded(linked.insns)[entry_end:] == [mov(1), EXIT]
    assert linked.func_starts == [0, entry_end]
    assert linked.func_names == [template.entry, "slot_1_f_3"]


def test_inlined_callback_addresses_reach_the_callbacks(kind: str) -> None:
    linked = link_dispatcher(kind, [WITH_CALLBACK], [1])
    start = linked.member_starts[0]
    load = Insn.decode(linked.insns, start)
    assert _insn.is_pseudo_func(load)
    callback = _insn.relative_target(start, load)
    assert linked.func_starts == [0, callback]
    assert linked.func_names[1] == "slot_0_f_4"
    assert decoded(linked.insns)[callback:] == [mov(0), EXIT]


def test_func_starts_are_unique_when_calls_share_a_target(kind: str) -> None:
    # two calls and a callback address (a 2-slot ld_imm64) all reaching the function at 6
    member = block(call(5), call(4), ld_imm64(_insn.PSEUDO_FUNC, 3), mov(0), EXIT, mov(1), EXIT)
    linked = link_dispatcher(kind, [member], [1])
    assert len(linked.func_starts) == 2
    sub = linked.func_starts[1]
    start = linked.member_starts[0]
    assert call_target(linked.insns, start) == call_target(linked.insns, start + 1) == sub
    assert _insn.relative_target(start + 2, Insn.decode(linked.insns, start + 2)) == sub


def test_func_btf_matches_func_starts(kind: str) -> None:
    linked = link_dispatcher(kind, [WITH_SUBPROG, WITH_CALLBACK, ALL_CALLEE_SAVED], [1, 1, 1])
    func_btf = linked.func_btf()
    assert func_btf.func_info_cnt == len(linked.func_starts)
    offsets = struct.unpack("<%dI" % (2 * func_btf.func_info_cnt), func_btf.func_info)[::2]
    assert list(offsets) == linked.func_starts


# --- fallback: the member is called ----------------------------------------------------

@pytest.mark.parametrize("member, reason", [
    (ALL_CALLEE_SAVED, "uses r6, r7, r8, r9, leaving no callee-saved register to rename r6 to"),
    (member_tail_call(0), "makes a tail call"),
    (block(Insn(code=LD_ABS_B, imm=12), EXIT), "legacy packet load"),
    (block(jump(MAY_GOTO, off=1), mov(1), mov(2), EXIT), "may_goto"),
    (block(mov(1, dst=1), Insn(code=GOTOX, dst=1), mov(2), EXIT), "indirect jump"),
    (block(mov(0), jump(JEQ_K, 1, 1), EXIT, call(-4), EXIT), "main function is also a call target"),
])
def test_fallback_calls_the_member(kind: str, member: bytes, reason: str) -> None:
    template = _linker.load_template(kind)
    linked = link_dispatcher(kind, [RETURN_PASS, member], [1, 1])
    assert list(linked.fallbacks) == [1] and reason in linked.fallbacks[1]
    positions = entry_positions(template, {0: 2})
    placed = positions[-1]
    assert linked.member_starts == [positions[slot_call_index(template, 0)], placed]
    assert call_target(linked.insns, positions[slot_call_index(template, 1)]) == placed
    assert linked.insns[placed * 8:placed * 8 + len(member)] == member  # copied unchanged
    assert placed in linked.func_starts and "slot_1" in linked.func_names


def test_inline_false_calls_every_member(kind: str) -> None:
    template = _linker.load_template(kind)
    members = [WITH_SUBPROG, WITH_CALLBACK, RETURN_PASS]
    linked = link_dispatcher(kind, members, [1, 1, 1], inline=False)
    assert set(linked.fallbacks) == {0, 1, 2}
    entry = template.insn_count
    starts = [entry, entry + count(WITH_SUBPROG), entry + count(WITH_SUBPROG) + count(WITH_CALLBACK)]
    assert linked.member_starts == starts
    for start, member in zip(starts, members):
        assert linked.insns[start * 8:start * 8 + len(member)] == member
    targets = {slot: call_target(linked.insns, index) for index, slot in template.slot_calls[:3]}
    assert targets == dict(enumerate(starts))
    assert linked.func_starts == [0, starts[0], starts[0] + 3, starts[1], starts[1] + 4, starts[2]]
    assert linked.func_names == [template.entry, "slot_0", "slot_0_f_3", "slot_1", "slot_1_f_4", "slot_2"]


def test_a_body_too_long_for_16_bit_jumps_is_called(kind: str) -> None:
    # inlined, the entry's jumps to its common exit would have to cross 33000 instructions
    huge = block(*[mov(1)] * 33000, EXIT)
    linked = link_dispatcher(kind, [RETURN_PASS, huge], [1, 1])
    assert "16 bits" in linked.fallbacks[1] and 0 not in linked.fallbacks
    check_structure(linked)


def test_exit_far_from_the_end_falls_back(kind: str) -> None:
    # an exit early in a 33000-instruction body needs ja +33001: too far
    member = block(jump(JEQ_K, 1, 1), EXIT, *[mov(1)] * 33000, EXIT)
    linked = link_dispatcher(kind, [member], [1])
    assert "16 bits" in linked.fallbacks[0]
    check_structure(linked)
    with pytest.raises(_linker._OffsetOverflow) as raised:  # the splice itself refuses the exit's ja
        _linker._splice(_linker._Member(3, member, (6,)), 0, 0)
    assert raised.value.slot == 3


def test_many_large_bodies_give_up_the_largest_first(kind: str) -> None:
    members = [block(*[mov(1)] * (3000 + 100 * slot), EXIT) for slot in range(10)]
    linked = link_dispatcher(kind, members, [1] * 10)
    check_structure(linked)
    assert linked.fallbacks and all("16 bits" in why for why in linked.fallbacks.values())
    called = sorted(linked.fallbacks)
    assert called == list(range(10 - len(called), 10))  # the largest ones


# --- stack ----------------------------------------------------------------------------

def stack_member(depth: int) -> bytes:
    return block(mov(0, dst=1), stx(R10, -depth, 1, STX_DW), mov(2), EXIT)


@pytest.mark.parametrize("insns, depth", [
    ([mov(2), EXIT], 0),
    ([mov(0, dst=1), stx(R10, -8, 1, STX_DW), mov(2), EXIT], 8),
    ([alu("mov", 2, R10), alu("add", 2, imm=-24), helper(1), mov(2), EXIT], 24),
    ([alu("mov", 2, R10), alu("add", 2, imm=-300), mov(0, dst=1), alu("add", 2, 1), stx(2, 0, 1), mov(2), EXIT], 300),
    ([alu("mov", 2, R10), jump(JEQ_K, 1, 2), alu("add", 2, imm=-16), jump(JA, off=1), alu("add", 2, imm=-40),
      ldx(0, 2, -8), EXIT], 48),
    ([alu("mov", 2, R10), mov(8, dst=1), alu("sub", 2, 1), ldx(0, 2, 0), EXIT], 512),
])
def test_stack_depth_estimate(insns: list[Insn], depth: int) -> None:
    member = _linker._Member(0, block(*insns), (6,))
    assert member.functions[0].depth == depth


def test_deep_inlined_stack_is_kept_when_it_fits(kind: str) -> None:
    linked = link_dispatcher(kind, [stack_member(500), stack_member(300), RETURN_PASS], [1, 1, 1])
    assert linked.fallbacks == {}


def test_deep_inlined_stack_is_not_put_above_a_called_member(kind: str) -> None:
    # inlined, 504 bytes in the entry's frame plus the called member's 16 > 512
    linked = link_dispatcher(kind, [stack_member(504), block(*decoded(ALL_CALLEE_SAVED)[:-2],
                                                             stx(R10, -16, 1, STX_DW), mov(2), EXIT)], [1, 1])
    assert "stack" in linked.fallbacks[0]
    assert "no callee-saved register" in linked.fallbacks[1]


def test_deep_inlined_stack_is_not_put_above_a_tail_call(kind: str) -> None:
    # a tail call under 256 bytes or more of frames is refused
    linked = link_dispatcher(kind, [stack_member(300), member_tail_call(1)], [1, 1])
    assert "stack" in linked.fallbacks[0]
    linked = link_dispatcher(kind, [stack_member(200), member_tail_call(1)], [1, 1])
    assert 0 not in linked.fallbacks


# --- the linked program runs the chain ----------------------------------------------------

@pytest.mark.parametrize("shape", sorted(MEMBER_KINDS))
@pytest.mark.parametrize("inline", [True, False])
def test_each_member_shape_runs(kind: str, shape: str, inline: bool) -> None:
    verdict = 1
    for masks in ([0], [0xFFFFFFFF]):
        linked, result, hits = run_chain(kind, [shape, "simple"], [verdict, 3], masks + [0], inline)
        want, ran = expected(kind, [verdict, 3], masks + [0])
        assert result == want
        assert hits[:2] == [MEMBER_KINDS[shape][1] if 0 in ran else 0, 1 if 1 in ran else 0]
        inlined = inline and shape not in ("all_regs", "tail_call")
        assert (0 not in linked.fallbacks) == inlined


@pytest.mark.parametrize("seed", range(40))
def test_random_chains_run_as_the_masks_say(kind: str, seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([1, 2, 5, 10])
    shapes = [rng.choice(sorted(MEMBER_KINDS)) for _slot in range(size)]
    verdicts = [rng.choice(VERDICTS[kind]) for _slot in range(size)]
    masks = [rng.choice([0, 0xFFFFFFFF, XDP_DEFAULT, rng.getrandbits(32)]) for _slot in range(size)]
    for inline in (True, False):
        linked, result, hits = run_chain(kind, shapes, verdicts, masks, inline)
        want, ran = expected(kind, verdicts, masks)
        assert result == want
        assert hits == [MEMBER_KINDS[shapes[s]][1] if s in ran else 0 for s in range(size)] + [0] * (10 - size)


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


def test_config_bytes(kind: str) -> None:
    template = _linker.load_template(kind)
    masks = [0x80000004, 0x2, 0xFFFFFFFF]
    linked = link_dispatcher(kind, [RETURN_PASS] * 3, masks)
    assert len(linked.config) == template.config_size
    assert struct.unpack_from("<I", linked.config, template.num_slots_offset) == (3,)
    assert list(struct.unpack_from("<10I", linked.config, template.masks_offset)) == masks + [0] * 7


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
    member = block(mov(1), jump(JEQ_K, 1, 1), EXIT, Insn(code=JA, off=-4))
    linked = link_dispatcher(kind, [member], [1])
    assert linked.fallbacks == {}
    check_structure(linked)


def test_kfunc_refused(kind: str) -> None:
    kfunc = Insn(code=_insn.OP_CALL, src=_insn.PSEUDO_KFUNC_CALL, imm=12345)
    member = block(kfunc, mov(2), EXIT)
    with pytest.raises(LinkError, match=r"slot 0 calls a kernel function \(kfunc, BTF id 12345\) at instruction 0"):
        link_dispatcher(kind, [member], [1])
