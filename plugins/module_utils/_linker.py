# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Link member programs into one dispatcher program (no kernel access here).

Layout of the result, in instruction slots::

    [entry function, with the main body of each inlined member in place of
     its slot call] [code of member 0 placed after the entry] ... [member n-1]

Each member is the member's final instruction block as libbpf keeps it after
loading the member alone (``bpf_program__insns``): map FDs in its ld_imm64,
its subprograms appended, its bpf-to-bpf calls and callback addresses
relative. The block's **main body** is what comes before its first
subprogram (the lowest target of a call or callback address in the block).

Inlined member (the usual case): a bpf-to-bpf call costs a frame and a
return (slow where the CPU's return-stack mitigations are on), so the slot's
call instruction is replaced by the main body itself:

* every ``exit`` of the body becomes ``ja`` to the instruction after it --
  r0 holds the verdict there, as after the call;
* the body may not touch a register the entry keeps across slot calls
  (``preserved_regs`` of the template: r6, ctx), so each such register the
  body uses is renamed to a callee-saved register the body does not use.
  Helper and subprogram calls preserve r6..r9, so renaming the main body
  alone is sound; the member's subprograms are copied unchanged;
* the member's subprograms are placed after the entry; the body's calls and
  callback addresses are pointed at them; every jump of the entry that
  crosses a spliced body is lengthened, and config loads are re-indexed;
* the body uses the entry's stack frame (the entry itself uses none).

Called member (fallback): the whole block is placed after the entry as a
bpf-to-bpf subprogram and the slot call points at it, as before inlining
existed. A member falls back when inlining would change what it does or is
not possible: a tail call or a legacy LD_ABS/LD_IND packet load in its main
body (both end the whole program when inlined, but only the member when
called), may_goto (its loop budget is per function), indirect jumps, no free
callee-saved register for the renaming, its main body also being a call
target, a jump offset that would no longer fit 16 bits, or a combined stack
that, by a conservative estimate, would go over the kernel's 512 bytes.
``LinkedDispatcher.fallbacks`` says which and why.

An unused slot's call becomes ``r0 = <pass>``. The verifier never runs it
(num_slots is a constant it reads from the frozen config map); it is there so
the entry keeps its shape. Every ld_imm64 reading the config becomes a
BPF_PSEUDO_MAP_VALUE load with the right offset; the caller puts the config
map's fd in its ``imm``.
"""

from __future__ import annotations

import bisect
import dataclasses
import struct
from typing import Dict, Optional, Sequence, Set

from ansible_collections.bpfd.core.plugins.module_utils import _dispatcher_bytecode
from ansible_collections.bpfd.core.plugins.module_utils import _insn
from ansible_collections.bpfd.core.plugins.module_utils._btf import FuncBTF, build_func_btf
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError

KINDS = ("xdp", "tc")
# Verdict of the hook that lets the packet through; the dispatcher's own
# fall-through value (files/dispatcher.bpf.c) and an unused slot's.
PASS_VERDICT = {"xdp": 2, "tc": 0}  # XDP_PASS, TC_ACT_OK
_U32 = struct.Struct("<I")

CALLEE_SAVED = (6, 7, 8, 9)
FRAME_POINTER = 10
MAX_STACK = 512  # MAX_BPF_STACK: combined frames of one call chain
TAIL_CALL_STACK_LIMIT = 256  # frames above a subprogram that tail-calls
BPF_FUNC_TAIL_CALL = 12
_S16 = (-(1 << 15), (1 << 15) - 1)

# Instruction classes and operations (linux/bpf_common.h, linux/bpf.h).
_LD, _LDX, _ST, _STX, _ALU, _JMP, _JMP32, _ALU64 = range(8)
_SRC_X = 0x08
_JA, _CALL, _EXIT, _JCOND = 0x00, 0x80, 0x90, 0xE0
_ADD, _SUB, _NEG, _MOV, _END = 0x00, 0x10, 0x80, 0xB0, 0xD0
_MODE_ATOMIC = 0xC0
_BPF_FETCH, _BPF_CMPXCHG = 0x01, 0xF1


class LinkError(BpfdError, ValueError):
    """A dispatcher cannot be linked from these members."""


@dataclasses.dataclass(frozen=True)
class DispatcherTemplate:
    """One entry function from _dispatcher_bytecode, decoded."""

    kind: str
    entry: str
    insns: bytes
    slot_calls: tuple[tuple[int, int], ...]  # (instruction index, slot)
    config_loads: tuple[tuple[int, int], ...]  # (instruction index, config offset)
    config_size: int
    num_slots_offset: int
    masks_offset: int
    max_slots: int
    preserved_regs: tuple[int, ...] = (6,)  # callee-saved registers live across slot calls

    @property
    def insn_count(self) -> int:
        return len(self.insns) // _insn.INSN_SIZE


@dataclasses.dataclass(frozen=True)
class LinkedDispatcher:
    """A dispatcher ready for BPF_PROG_LOAD once the config map fd is set."""

    kind: str
    insns: bytes
    func_starts: list[int]  # sorted, unique; one func_info record each
    func_names: list[str]  # BTF names, parallel to func_starts
    member_starts: list[int]  # inlined: start of the body in the entry; called: the subprogram
    config: bytes  # the value of the 1-entry config array map
    config_loads: list[int]  # ld_imm64 indices whose imm must be the config map fd
    fallbacks: Dict[int, str] = dataclasses.field(default_factory=dict)  # slot -> why called, not inlined

    def with_config_map_fd(self, map_fd: int) -> bytes:
        """The instructions with the config map's fd put in every config load."""
        return set_config_map_fd(self.insns, self.config_loads, map_fd)

    def func_btf(self) -> FuncBTF:
        """BTF and func_info for this program (load the BTF, pass its fd)."""
        return build_func_btf(self.func_starts, self.func_names)


def load_template(kind: str) -> DispatcherTemplate:
    if kind not in _dispatcher_bytecode.TEMPLATES:
        raise LinkError("unknown dispatcher kind %r (expected one of %s)" % (kind, ", ".join(KINDS)))
    data = _dispatcher_bytecode.TEMPLATES[kind]
    return DispatcherTemplate(
        kind=kind,
        entry=data["entry"],
        insns=bytes.fromhex("".join(data["insns"])),
        slot_calls=tuple(data["slot_calls"]),
        config_loads=tuple(data["config_loads"]),
        config_size=data["config_size"],
        num_slots_offset=data["num_slots_offset"],
        masks_offset=data["masks_offset"],
        max_slots=data["max_slots"],
        preserved_regs=tuple(data["preserved_regs"]),
    )


def dispatcher_config(template: DispatcherTemplate, masks: Sequence[int]) -> bytes:
    """The config blob: number of slots in use and one proceed-on mask per slot."""
    _check_masks(template, masks)
    blob = bytearray(template.config_size)
    _U32.pack_into(blob, template.num_slots_offset, len(masks))
    for slot, mask in enumerate(masks):
        _U32.pack_into(blob, template.masks_offset + slot * _U32.size, mask)
    return bytes(blob)


def set_config_map_fd(insns: bytes, config_loads: Sequence[int], map_fd: int) -> bytes:
    """Put ``map_fd`` in the first imm of each config ld_imm64."""
    patched = insns
    for index in config_loads:
        load = _insn.Insn.decode(patched, index)
        patched = _insn.replace_insn(patched, index, load.replace(imm=map_fd))
    return patched


def link_dispatcher(kind: str, members: Sequence[bytes], masks: Sequence[int], *,
                    inline: bool = True) -> LinkedDispatcher:
    """Build the dispatcher running ``members`` in order with their proceed-on ``masks``.

    ``inline=False`` calls every member as a subprogram (no inlining).
    """
    template = load_template(kind)
    _check_member_count(template, members)
    if len(masks) != len(members):
        raise LinkError("%d programs but %d proceed-on masks" % (len(members), len(masks)))
    config = dispatcher_config(template, masks)
    parsed = [_Member(slot, member, template.preserved_regs) for slot, member in enumerate(members)]
    fallbacks = {m.slot: m.reason or "inlining is off" for m in parsed if not (inline and m.inlinable)}
    inlined = {m.slot for m in parsed if m.slot not in fallbacks}
    while True:
        inlined, stack_fallbacks = _fit_stack(parsed, inlined)
        fallbacks.update(stack_fallbacks)
        try:
            linked = _assemble(template, parsed, inlined)
            break
        except _OffsetOverflow as overflow:
            slot = overflow.slot
            if slot is None or slot not in inlined:  # a template jump: give up the largest body
                slot = max(inlined, key=lambda s: (parsed[s].body_end, s))
            inlined = inlined - {slot}
            fallbacks[slot] = "inlined, a jump offset would not fit in 16 bits"
    insns, func_starts, func_names, member_starts, config_loads = linked
    return LinkedDispatcher(
        kind=kind,
        insns=insns,
        func_starts=func_starts,
        func_names=func_names,
        member_starts=member_starts,
        config=config,
        config_loads=config_loads,
        fallbacks=dict(sorted(fallbacks.items())),
    )


# --- validation -------------------------------------------------------------

def _check_member_count(template: DispatcherTemplate, members: Sequence[bytes]) -> None:
    if not 1 <= len(members) <= template.max_slots:
        raise LinkError(
            "a %s dispatcher runs 1 to %d programs, got %d"
            % (template.kind, template.max_slots, len(members))
        )


def _check_masks(template: DispatcherTemplate, masks: Sequence[int]) -> None:
    if not 1 <= len(masks) <= template.max_slots:
        raise LinkError("a dispatcher takes 1 to %d proceed-on masks, got %d" % (template.max_slots, len(masks)))
    for slot, mask in enumerate(masks):
        if isinstance(mask, bool) or not isinstance(mask, int) or not 0 <= mask <= 0xFFFFFFFF:
            raise LinkError("proceed-on mask of slot %d is not a 32-bit unsigned integer: %r" % (slot, mask))


def _decoded_member(slot: int, member: bytes) -> tuple[list[_insn.Insn], list[tuple[int, _insn.Insn]]]:
    """Every 8-byte slot, and (index, insn) per instruction (no ld_imm64 second halves)."""
    if not member or len(member) % _insn.INSN_SIZE:
        raise LinkError(
            "program in slot %d: instructions must be a non-empty multiple of 8 bytes, got %d bytes"
            % (slot, len(member))
        )
    slots = _insn.decode_all(member)
    decoded, index = [], 0
    while index < len(slots):
        ins = slots[index]
        decoded.append((index, ins))
        if _insn.is_ld_imm64(ins):
            if index + 1 >= len(slots):
                raise LinkError("program in slot %d: ld_imm64 at instruction %d has no second half" % (slot, index))
            index += 2
        else:
            index += 1
    return slots, decoded


def _check_no_kfunc(slot: int, index: int, insn: _insn.Insn) -> None:
    if _insn.is_kfunc_call(insn):
        raise LinkError(
            "program in slot %d calls a kernel function (kfunc, BTF id %d) at instruction %d;"
            " kfunc calls cannot be linked into a dispatcher, attach this program alone"
            % (slot, insn.imm, index)
        )


def _checked_target(slot: int, index: int, insn: _insn.Insn, count: int) -> int:
    target = _insn.relative_target(index, insn)
    if not 0 <= target < count:
        what = "call" if _insn.is_call(insn) else "callback address"
        raise LinkError(
            "program in slot %d: %s at instruction %d targets %d, outside its %d instructions"
            % (slot, what, index, target, count)
        )
    return target


# --- instruction fields ---------------------------------------------------------

class _NotInlinable(Exception):
    """The main body holds something inlining must not move or rename."""


def _register_fields(ins: _insn.Insn) -> tuple[bool, bool]:
    """Whether ``dst`` and ``src`` of an instruction name registers.

    ``src`` of an ld_imm64 or a call is a pseudo kind, of a BPF_K operation or
    a byte swap nothing: those are never registers. Raises _NotInlinable for
    what must not be inlined (LD_ABS/LD_IND, may_goto, indirect jumps/calls).
    """
    code, cls, op = ins.code, ins.code & 0x07, ins.code & 0xF0
    if cls in (_ALU, _ALU64):
        return True, bool(code & _SRC_X) and op not in (_END, _NEG)
    if cls in (_JMP, _JMP32):
        if op in (_JA, _CALL, _EXIT):
            if code & _SRC_X:
                raise _NotInlinable("it makes an indirect jump or call")
            return False, False
        if op == _JCOND:
            raise _NotInlinable("it uses may_goto (its loop budget is per function)")
        return True, bool(code & _SRC_X)
    if cls in (_LDX, _STX):
        return True, True
    if cls == _ST:
        return True, False
    if _insn.is_ld_imm64(ins):
        return True, False
    raise _NotInlinable("it uses a legacy packet load (LD_ABS/LD_IND, opcode 0x%02x)" % code)


def _mentioned_registers(body: Sequence[tuple[int, _insn.Insn]]) -> set[int]:
    mentioned: set[int] = set()
    for _index, ins in body:
        dst, src = _register_fields(ins)
        if dst:
            mentioned.add(ins.dst)
        if src:
            mentioned.add(ins.src)
    return mentioned


def _rename(ins: _insn.Insn, names: Dict[int, int]) -> _insn.Insn:
    """``ins`` with its register fields renamed by ``names`` (a swap map)."""
    dst, src = _register_fields(ins)
    changes = {}
    if dst and ins.dst in names:
        changes["dst"] = names[ins.dst]
    if src and ins.src in names:
        changes["src"] = names[ins.src]
    return ins.replace(**changes) if changes else ins


def _is_jump(ins: _insn.Insn) -> bool:
    """A jump with a relative target: JMP/JMP32 except call and exit."""
    return ins.code & 0x07 in (_JMP, _JMP32) and ins.code & 0xF0 not in (_CALL, _EXIT)


def _jump_offset(ins: _insn.Insn) -> int:
    return ins.imm if ins.code == _insn.OP_JA32 else ins.off


def _with_jump_offset(ins: _insn.Insn, offset: int) -> _insn.Insn:
    if ins.code == _insn.OP_JA32:
        return ins.replace(imm=offset)
    return ins.replace(off=offset)


# --- one member -------------------------------------------------------------------

class _Member:
    """A validated member block, its main body and whether it can be inlined."""

    def __init__(self, slot: int, raw: bytes, preserved: Sequence[int]) -> None:
        self.slot = slot
        self.slots, decoded = _decoded_member(slot, raw)
        self.count = len(self.slots)
        self.decoded = decoded  # (index, insn), without ld_imm64 second halves
        targets = set()
        for index, ins in decoded:
            _check_no_kfunc(slot, index, ins)
            if _insn.is_pseudo_call(ins) or _insn.is_pseudo_func(ins):
                targets.add(_checked_target(slot, index, ins, self.count))
        last = decoded[-1][1]
        if not (_insn.is_exit(last) or _insn.is_unconditional_jump(last)):
            raise LinkError("program in slot %d does not end with exit or an unconditional jump" % slot)
        self.func_offsets = sorted(targets | {0})
        self.body_end = min(targets) if targets else self.count
        self.body: list[_insn.Insn] = []
        self.reason: Optional[str] = None
        try:
            if 0 in targets:
                raise _NotInlinable("its main function is also a call target")
            self.body = self._inline_body([(i, ins) for i, ins in decoded if i < self.body_end], preserved)
        except _NotInlinable as why:
            self.reason = str(why)
        self.functions = _member_functions_stack(self)

    @property
    def inlinable(self) -> bool:
        return self.reason is None

    def _inline_body(self, body: list[tuple[int, _insn.Insn]], preserved: Sequence[int]) -> list[_insn.Insn]:
        """The main body with its registers renamed, or _NotInlinable."""
        for index, ins in body:
            if _insn.is_helper_call(ins) and ins.imm == BPF_FUNC_TAIL_CALL:
                raise _NotInlinable("its main function makes a tail call")
            if _is_jump(ins) and not 0 <= index + _jump_offset(ins) + 1 < self.body_end:
                raise _NotInlinable("a jump at instruction %d leaves its main function" % index)
        last = self.slots[body[-1][0]]
        if not (_insn.is_exit(last) or _insn.is_unconditional_jump(last)):
            raise _NotInlinable("its main function does not end with exit or an unconditional jump")
        mentioned = _mentioned_registers(body)
        clashing = [reg for reg in preserved if reg in mentioned]
        free = [reg for reg in CALLEE_SAVED if reg not in mentioned and reg not in preserved]
        if len(free) < len(clashing):
            raise _NotInlinable(
                "its main function uses %s, leaving no callee-saved register to rename %s to"
                % (", ".join("r%d" % r for r in sorted(mentioned & set(CALLEE_SAVED))),
                   ", ".join("r%d" % r for r in clashing)))
        names: Dict[int, int] = {}
        for reg, new in zip(clashing, free):
            names[reg], names[new] = new, reg
        renamed = list(self.slots[:self.body_end])
        if names:
            for index, ins in body:
                renamed[index] = _rename(ins, names)
        return renamed


# --- stack estimate ----------------------------------------------------------------
#
# Inlined bodies share the entry's frame, so the entry's frame becomes as deep as
# the deepest inlined body, and every call chain from the entry (a called member,
# an inlined member's subprograms) now sits below that frame. The kernel refuses
# a chain over 512 bytes and a tail call below 256 bytes or more of frames. The
# estimate below over-approximates each function's stack from its r10-relative
# accesses (what it cannot follow counts as the full 512 bytes) and rounds frames
# both as JITing kernels and as the interpreter do. It only decides what to
# inline: members stop being inlined while that lowers the estimated excess, and
# if calling every member fits better, every member is called.

_MAX_OFFSETS = 16  # possible offsets tracked per register before giving up


@dataclasses.dataclass
class _Function:
    start: int  # in the member block
    depth: int  # estimated stack bytes, 0..MAX_STACK
    tail_call: bool
    callees: list[int]  # starts of the functions it calls or passes as callbacks


def _member_functions_stack(member: _Member) -> dict[int, _Function]:
    bounds = member.func_offsets + [member.count]
    indices = [index for index, _ins in member.decoded]
    functions = {}
    for start, end in zip(bounds, bounds[1:]):
        decoded = member.decoded[bisect.bisect_left(indices, start):bisect.bisect_left(indices, end)]
        callees, tail_call = [], False
        for index, ins in decoded:
            if _insn.is_pseudo_call(ins) or _insn.is_pseudo_func(ins):
                callees.append(_insn.relative_target(index, ins))
            tail_call |= _insn.is_helper_call(ins) and ins.imm == BPF_FUNC_TAIL_CALL
        functions[start] = _Function(start, _stack_depth(decoded, start, end), tail_call, sorted(set(callees)))
    return functions


def _stack_depth(decoded: list[tuple[int, _insn.Insn]], start: int, end: int) -> int:
    """Conservative stack depth of one function: a forward pass tracking which
    registers hold r10 plus a known constant (a set of possible offsets)."""
    if not any(FRAME_POINTER in (ins.dst, ins.src) for _index, ins in decoded):
        return 0
    deepest = 0
    at = dict(decoded)
    states: dict[int, tuple] = {start: tuple([frozenset()] * 10 + [frozenset([0])])}
    work = [start]

    def note(offset: int) -> None:
        nonlocal deepest
        deepest = max(deepest, -offset)

    while work:
        index = work.pop()
        ins = at.get(index)
        if ins is None:
            continue
        regs = list(states[index])
        code, cls, op = ins.code, ins.code & 0x07, ins.code & 0xF0
        try:
            writes_dst = _register_fields(ins)[0] and cls not in (_JMP, _JMP32, _ST, _STX)
        except _NotInlinable:
            writes_dst = False  # LD_ABS/LD_IND write r0 (cleared below) and read no stack
        if cls in (_LDX, _STX, _ST):
            for offset in regs[ins.src if cls == _LDX else ins.dst]:
                note(offset + ins.off)
        if cls == _ALU64 and op == _MOV and code & _SRC_X and ins.off == 0:
            regs[ins.dst] = regs[ins.src]
        elif cls == _ALU64 and op in (_ADD, _SUB) and not code & _SRC_X and regs[ins.dst]:
            sign = 1 if op == _ADD else -1
            regs[ins.dst] = frozenset(offset + sign * ins.imm for offset in regs[ins.dst])
            for offset in regs[ins.dst]:
                note(offset)
        elif cls == _ALU64 and op == _ADD and code & _SRC_X and (regs[ins.dst] or regs[ins.src]):
            # an index added to the address of a stack object: as in C, taken
            # to stay inside the object, above its (already noted) start
            regs[ins.dst] = regs[ins.dst] | regs[ins.src]
        elif cls == _ALU64 and op == _SUB and code & _SRC_X and regs[ins.dst]:
            return MAX_STACK  # a stack address moved down by an unknown amount
        elif _insn.is_call(ins):
            for reg in range(6):
                regs[reg] = frozenset()
        elif cls == _STX and (code & 0xE0) == _MODE_ATOMIC and ins.imm & _BPF_FETCH:
            regs[0 if ins.imm == _BPF_CMPXCHG else ins.src] = frozenset()
        elif writes_dst:
            regs[ins.dst] = frozenset()
        elif cls == _LD:
            regs[0] = frozenset()
        if deepest >= MAX_STACK:
            return MAX_STACK
        for successor in _successors(index, ins):
            old = states.get(successor)
            new = tuple(regs) if old is None else tuple(a | b for a, b in zip(old, regs))
            if any(len(v) > _MAX_OFFSETS for v in new):
                return MAX_STACK
            if new != old:
                states[successor] = new
                work.append(successor)
    return deepest


def _successors(index: int, ins: _insn.Insn) -> list[int]:
    if _insn.is_ld_imm64(ins):
        return [index + 2]
    if not _is_jump(ins):
        return [] if _insn.is_exit(ins) else [index + 1]
    target = index + _jump_offset(ins) + 1
    if ins.code & 0xF0 == _JA:
        return [target]
    return [index + 1, target]


def _frame(depth: int, jit: bool) -> int:
    """A frame as the kernel's verifier counts it (round_up_stack_depth): with the
    JIT on, recent kernels round to 16 bytes; the interpreter, and older kernels
    always, round to 32 with a minimum of 32."""
    if jit:
        return (depth + 15) // 16 * 16
    return (max(depth, 1) + 31) // 32 * 32


def _stack_excess(members: Sequence[_Member], inlined: Set[int], jit: bool) -> int:
    """By how many bytes the estimated frames go over the kernel's limits (0: fits)."""
    entry = _frame(max([members[s].functions[0].depth for s in inlined], default=0), jit)
    worst = [entry - MAX_STACK, 0]  # over the combined limit, over the tail call limit

    def walk(member: _Member, start: int, above: int, depth: int) -> None:
        function = member.functions[start]
        if function.tail_call:
            worst[1] = max(worst[1], above - TAIL_CALL_STACK_LIMIT + 1)
        total = above + _frame(function.depth, jit)
        worst[0] = max(worst[0], total - MAX_STACK)
        if depth < 16:  # the kernel refuses recursion; this only bounds the walk
            for callee in function.callees:
                walk(member, callee, total, depth + 1)

    for member in members:
        if member.slot in inlined:
            for callee in member.functions[0].callees:
                walk(member, callee, entry, 1)
        else:
            walk(member, 0, entry, 1)
    return max(worst[0], 0) + max(worst[1], 0)


def _stack_score(members: Sequence[_Member], inlined: Set[int]) -> tuple[int, int]:
    """Estimated excess on kernels that JIT (what matters here), then on the rest."""
    return _stack_excess(members, inlined, True), _stack_excess(members, inlined, False)


def _fit_stack(members: Sequence[_Member], inlined: Set[int]) -> tuple[Set[int], Dict[int, str]]:
    """Give up inlining members, greedily, while that lowers the estimated excess."""
    plan = set(inlined)
    score = _stack_score(members, plan)
    while score != (0, 0) and plan:
        best, slot = min((_stack_score(members, plan - {slot}), slot) for slot in plan)
        if best >= score:
            break
        score = best
        plan.discard(slot)
    if _stack_score(members, set()) < score:
        plan = set()  # calling every member fits better
    why = "inlined, the dispatcher's estimated stack would go over the kernel's limits"
    return plan, {slot: why for slot in inlined - plan}


# --- assembly ---------------------------------------------------------------------

class _OffsetOverflow(Exception):
    def __init__(self, slot: Optional[int]) -> None:
        super().__init__(slot)
        self.slot = slot


def _s16(value: int, slot: Optional[int]) -> int:
    if not _S16[0] <= value <= _S16[1]:
        raise _OffsetOverflow(slot)
    return value


def _assemble(template: DispatcherTemplate, members: Sequence[_Member], inlined: Set[int]):
    """The program: entry with spliced bodies, then each member's placed code."""
    entry = _insn.decode_all(template.insns)
    calls = dict(template.slot_calls)
    # where each template instruction lands (a slot call grows into its body)
    new_index, position = [], 0
    for index in range(len(entry)):
        new_index.append(position)
        slot = calls.get(index)
        position += len(members[slot].body) if slot in inlined else 1
    new_index.append(position)
    placed, funcs = {}, {0: template.entry}
    for member in members:
        placed[member.slot] = position
        first = member.body_end if member.slot in inlined else 0
        for offset in member.func_offsets:
            if offset >= first:
                funcs[position + offset - first] = "slot_%d_f_%d" % (member.slot, offset) if offset else \
                    "slot_%d" % member.slot
        position += member.count - first

    out: list[_insn.Insn] = []
    member_starts = [0] * len(members)
    second_half = False
    for index, ins in enumerate(entry):
        slot = calls.get(index)
        if second_half:
            out.append(ins)
        elif slot is None:
            if _is_jump(ins):
                target = new_index[index + _jump_offset(ins) + 1]
                offset = target - (new_index[index] + 1)
                ins = _with_jump_offset(ins, offset if ins.code == _insn.OP_JA32 else _s16(offset, None))
            out.append(ins)
        elif slot >= len(members):
            out.append(_insn.mov64_imm(0, PASS_VERDICT[template.kind]))
        elif slot in inlined:
            member_starts[slot] = len(out)
            out.extend(_splice(members[slot], len(out), placed[slot]))
        else:
            member_starts[slot] = placed[slot]
            out.append(ins.replace(imm=placed[slot] - (len(out) + 1)))
        second_half = not second_half and _insn.is_ld_imm64(ins)
    for index, offset in template.config_loads:
        at = new_index[index]
        out[at] = out[at].replace(src=_insn.PSEUDO_MAP_VALUE, imm=0)
        out[at + 1] = out[at + 1].replace(imm=offset)
    for member in members:
        out.extend(member.slots[member.body_end:] if member.slot in inlined else member.slots)
    starts = sorted(funcs)
    return (_insn.encode_all(out), starts, [funcs[s] for s in starts], member_starts,
            [new_index[index] for index, _offset in template.config_loads])


def _splice(member: _Member, base: int, subprograms: int) -> list[_insn.Insn]:
    """The renamed body at ``base``: exits jump past it, calls reach the
    member's subprograms placed at ``subprograms``."""
    body = list(member.body)
    length = len(body)
    index = 0
    while index < length:
        ins = body[index]
        if _insn.is_exit(ins):
            body[index] = _insn.Insn(code=_insn.OP_JA, off=_s16(length - index - 1, member.slot))
        elif _insn.is_pseudo_call(ins) or _insn.is_pseudo_func(ins):
            target = subprograms + _insn.relative_target(index, ins) - member.body_end
            body[index] = ins.replace(imm=target - (base + index + 1))
        index += 2 if _insn.is_ld_imm64(ins) else 1
    return body
