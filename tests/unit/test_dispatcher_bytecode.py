# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The committed dispatcher bytecode must come from the committed source."""

from __future__ import annotations

import hashlib
import re
import shutil
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
    output = subprocess.run(["clang", "--version"], capture_output=True, text=True).stdout
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
    recorded = _dispatcher_bytecode.CLANG_VERSION.split(".")[0]
    if major != recorded:
        pytest.skip("clang %s here, the bytecode was built with clang %s" % (major, _dispatcher_bytecode.CLANG_VERSION))
    result = subprocess.run([sys.executable, str(TOOL), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
