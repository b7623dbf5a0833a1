# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the reliability suite: sizes from BPFD_RELIABILITY_SCALE, the BPF
objects (built once per session, with names unique to the session)."""

from __future__ import annotations

import os
import shutil

import pytest

import scenarios


@pytest.fixture(scope="session")
def size() -> dict:
    return scenarios.sizes()


@pytest.fixture(scope="session")
def objects(tmp_path_factory) -> scenarios.Objects:
    if os.geteuid() != 0:
        pytest.skip("needs root (loads BPF programs, creates veth pairs and namespaces)")
    for tool in ("bpftool", "ip", "tc", "ping"):
        if shutil.which(tool) is None:
            pytest.skip("needs %s" % tool)
    scenarios.collection_root()
    try:
        return scenarios.build_objects(tmp_path_factory.mktemp("reliability-objects"))
    except Exception as exc:  # clang or libbpf headers missing
        if type(exc).__name__ == "ClangNotFoundError":
            pytest.skip(str(exc))
        raise
