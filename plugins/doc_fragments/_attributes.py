# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # Attributes every bpfd.core module shares.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
"""

    # Modules that change programs on the host.
    PROGRAM = r"""
options: {}
attributes:
  check_mode:
    support: full
    details: Positions are predicted without loading anything; no kernel object or file is touched.
  diff_mode:
    support: full
    details: The diff shows the chain of programs on each affected attach point, before and after.
  platform:
    support: full
    platforms: Linux
  idempotent:
    description: A second run with the same arguments reports no change and touches no kernel object.
    support: full
"""

    # Modules that change programs without a dispatcher (tracepoint, kprobe, uprobe, fentry, fexit).
    TRACE_PROGRAM = r"""
options: {}
attributes:
  check_mode:
    support: full
    details: The change is predicted without loading anything; no kernel object or file is touched.
  diff_mode:
    support: full
    details: The diff shows where the program attaches and what it runs, before and after.
  platform:
    support: full
    platforms: Linux
  idempotent:
    description: A second run with the same arguments reports no change and touches no kernel object.
    support: full
"""

    # Read-only modules.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details: This module never changes anything.
  diff_mode:
    support: N/A
    details: This module never changes anything.
  platform:
    support: full
    platforms: Linux
"""
