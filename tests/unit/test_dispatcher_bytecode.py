# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The committed dispatcher bytecode must come from the committed source."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _dispatcher_bytecode

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "files" / "dispatcher.bpf.c"
TOOL = ROOT / "tools" / "build_dispatcher.py"


def clang_major() -> str | None:
    if shutil.which("clang") is None:
        return None
    output = subprocess.run(["clang", "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"clang version (\d+)\.", output)
    return match.group(1) if match else None


def test_source_hash_matches() -> None:
    actual = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    assert _dispatcher_bytecode.SOURCE_SHA256 == actual, (
        "files/dispatcher.bpf.c changed: run tools/build_dispatcher.py and commit the result"
    )


def test_rebuild_matches() -> None:
    major = clang_major()
    if major is None:
        pytest.skip("clang is not installed: cannot rebuild the dispatcher")
    recorded = _dispatcher_bytecode.CLANG_VERSION.split(".", maxsplit=1)[0]
    if major != recorded:
        pytest.skip("clang %s here, the bytecode was built with clang %s" % (major, _dispatcher_bytecode.CLANG_VERSION))
    result = subprocess.run([sys.executable, str(TOOL), "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- what the linker may assume about the entry functions ------------------------

def load_tool():
    spec = importlib.util.spec_from_file_location("bpfd_build_dispatcher", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def program(*lines: tuple) -> bytes:
    """(code, dst, src, off, imm) tuples -> instruction bytes."""
    return b"".join(struct.pack("<BBhi", code, (src << 4) | dst, off, imm) for code, dst, src, off, imm in lines)


MOV_X, MOV_K, ADD_K, CALL, EXIT, JEQ_K, LDX_W, STX_DW = 0xBF, 0xB7, 0x07, 0x85, 0x95, 0x15, 0x61, 0x7B
SLOT_CALL = (CALL, 0, 1, 0, -1)


@pytest.mark.parametrize("kind", ["xdp", "tc"])
def test_committed_entries_keep_only_ctx_across_slot_calls(kind: str) -> None:
    assert _dispatcher_bytecode.TEMPLATES[kind]["preserved_regs"] == (6,)


@pytest.mark.parametrize("lines, calls, kept", [
    # r6 = ctx, passed to both calls: only r6
    ([(MOV_X, 6, 1, 0, 0), (MOV_X, 1, 6, 0, 0), SLOT_CALL, (MOV_X, 1, 6, 0, 0), SLOT_CALL, (EXIT, 0, 0, 0, 0)],
     [2, 4], (6,)),
    # r7 set before the first call, read after the second: live across both
    ([(MOV_X, 6, 1, 0, 0), (MOV_K, 7, 0, 0, 5), SLOT_CALL, (MOV_X, 1, 6, 0, 0), SLOT_CALL,
      (MOV_X, 0, 7, 0, 0), (EXIT, 0, 0, 0, 0)], [2, 4], (6, 7)),
    # r8 written after the call before any read: not kept
    ([SLOT_CALL, (MOV_K, 8, 0, 0, 1), (MOV_X, 0, 8, 0, 0), (EXIT, 0, 0, 0, 0)], [0], ()),
    # r9 read on one branch only, through a load: kept
    ([(MOV_K, 9, 0, 0, 1), SLOT_CALL, (JEQ_K, 0, 0, 1, 0), (EXIT, 0, 0, 0, 0), (LDX_W, 0, 9, 0, 0),
      (EXIT, 0, 0, 0, 0)], [1], (9,)),
])
def test_preserved_registers(lines: list, calls: list[int], kept: tuple) -> None:
    tool = load_tool()
    assert tool.preserved_registers(program(*lines), tuple((c, s) for s, c in enumerate(calls))) == kept


def test_an_entry_using_the_stack_is_refused() -> None:
    tool = load_tool()
    raw = program(SLOT_CALL, (STX_DW, 10, 0, -8, 0), (EXIT, 0, 0, 0, 0))
    with pytest.raises(tool.BuildError, match="uses the stack"):
        tool.preserved_registers(raw, ((0, 0),))
