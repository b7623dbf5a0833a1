# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Link member programs into one dispatcher program (no kernel access here).

Layout of the result, in instruction slots::

    [entry function from _dispatcher_bytecode] [member 0] ... [member n-1] [stub]

Each member is the member's final instruction block as libbpf keeps it after
loading the member alone (``bpf_program__insns``): map FDs in its ld_imm64,
its subprograms appended, its bpf-to-bpf calls and callback addresses
relative. Moving the block as a whole keeps those relative offsets right, so
a member is copied unchanged and only the entry function is patched:

* slot call i gets ``imm = start of member i - (index + 1)``;
* when fewer than MAX slots are used, every unused slot call points at one
  shared stub ``r0 = <pass>; exit``. The verifier never runs it (num_slots is
  a constant it sees), but its CFG check wants every call target to exist;
* every ld_imm64 reading the config becomes a BPF_PSEUDO_MAP_VALUE load with
  the right offset; the caller puts the config map's fd in its ``imm``.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Sequence

from ansible_collections.bpfd.core.plugins.module_utils import _dispatcher_bytecode
from ansible_collections.bpfd.core.plugins.module_utils import _insn
from ansible_collections.bpfd.core.plugins.module_utils._btf import FuncBTF, build_func_btf
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError

KINDS = ("xdp", "tc")
# Verdict of the hook that lets the packet through; the dispatcher's own
# fall-through value (files/dispatcher.bpf.c) and the unused-slot stub's.
PASS_VERDICT = {"xdp": 2, "tc": 0}  # XDP_PASS, TC_ACT_OK
_U32 = struct.Struct("<I")


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
    member_starts: list[int]
    config: bytes  # the value of the 1-entry config array map
    config_loads: list[int]  # ld_imm64 indices whose imm must be the config map fd

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


def link_dispatcher(kind: str, members: Sequence[bytes], masks: Sequence[int]) -> LinkedDispatcher:
    """Build the dispatcher running ``members`` in order with their proceed-on ``masks``."""
    template = load_template(kind)
    _check_member_count(template, members)
    if len(masks) != len(members):
        raise LinkError("%d programs but %d proceed-on masks" % (len(members), len(masks)))
    config = dispatcher_config(template, masks)
    layout = _Layout(template, members)
    insns = _patch_entry(template, layout) + b"".join(members) + layout.stub()
    func_starts, func_names = layout.functions()
    return LinkedDispatcher(
        kind=kind,
        insns=insns,
        func_starts=func_starts,
        func_names=func_names,
        member_starts=list(layout.member_starts),
        config=config,
        config_loads=[index for index, _ in template.config_loads],
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


def _decoded_member(slot: int, member: bytes) -> list[tuple[int, _insn.Insn]]:
    if not member or len(member) % _insn.INSN_SIZE:
        raise LinkError(
            "program in slot %d: instructions must be a non-empty multiple of 8 bytes, got %d bytes"
            % (slot, len(member))
        )
    try:
        return list(_insn.iter_insns(member))
    except ValueError as error:
        raise LinkError("program in slot %d: %s" % (slot, error)) from None


def _member_functions(slot: int, member: bytes) -> list[int]:
    """Validate a member block; return its function starts relative to the block."""
    decoded = _decoded_member(slot, member)
    count = len(member) // _insn.INSN_SIZE
    starts = {0}
    for index, insn in decoded:
        _check_no_kfunc(slot, index, insn)
        if _insn.is_pseudo_call(insn) or _insn.is_pseudo_func(insn):
            starts.add(_checked_target(slot, index, insn, count))
    last = decoded[-1][1]
    if not (_insn.is_exit(last) or _insn.is_unconditional_jump(last)):
        raise LinkError("program in slot %d does not end with exit or an unconditional jump" % slot)
    return sorted(starts)


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


# --- layout and patching ------------------------------------------------------

class _Layout:
    """Where the entry, each member, its functions and the stub land."""

    def __init__(self, template: DispatcherTemplate, members: Sequence[bytes]) -> None:
        self.template = template
        self.member_functions = [_member_functions(slot, m) for slot, m in enumerate(members)]
        self.member_starts: list[int] = []
        position = template.insn_count
        for member in members:
            self.member_starts.append(position)
            position += len(member) // _insn.INSN_SIZE
        self.stub_start = position
        self.has_stub = len(members) < template.max_slots

    def slot_target(self, slot: int) -> int:
        return self.member_starts[slot] if slot < len(self.member_starts) else self.stub_start

    def stub(self) -> bytes:
        if not self.has_stub:
            return b""
        pass_verdict = PASS_VERDICT[self.template.kind]
        return _insn.mov64_imm(0, pass_verdict).encode() + _insn.exit_insn().encode()

    def functions(self) -> tuple[list[int], list[str]]:
        """Every function start with its BTF name, sorted by start."""
        funcs = {0: self.template.entry}
        for slot, (start, offsets) in enumerate(zip(self.member_starts, self.member_functions)):
            for offset in offsets:
                funcs[start + offset] = "slot_%d_f_%d" % (slot, offset) if offset else "slot_%d" % slot
        if self.has_stub:
            funcs[self.stub_start] = "unused_slot"
        starts = sorted(funcs)
        return starts, [funcs[start] for start in starts]


def _patch_entry(template: DispatcherTemplate, layout: _Layout) -> bytes:
    insns = template.insns
    for index, slot in template.slot_calls:
        call = _insn.Insn.decode(insns, index)
        imm = layout.slot_target(slot) - (index + 1)
        insns = _insn.replace_insn(insns, index, call.replace(imm=imm))
    for index, offset in template.config_loads:
        load = _insn.Insn.decode(insns, index)
        insns = _insn.replace_insn(insns, index, load.replace(src=_insn.PSEUDO_MAP_VALUE, imm=0))
        high = _insn.Insn.decode(insns, index + 1)
        insns = _insn.replace_insn(insns, index + 1, high.replace(imm=offset))
    return insns
