# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible_collections.bpfd.core.plugins.plugin_utils._ship_src import ShipSrcAction


class ActionModule(ShipSrcAction):
    """Ships O(src) from the controller, then runs the module on the host."""
