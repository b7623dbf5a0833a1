# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one exception type module_utils raises for problems a user can act on."""

from __future__ import annotations

from typing import Any


class BpfdError(Exception):
    """A failure with a sentence for the user and structured details.

    Modules turn it into ``fail_json(msg=..., **details)`` in one place.
    """

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return self.msg
