# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What every attach point does for a dispatcher, and the bpf_link flavour of it.

An attachment puts a dispatcher on a hook, swaps it atomically, takes it off,
and says which program the kernel runs there now (for reconcile). Each kernel
step registers its undo with the caller's undo log.
"""

from __future__ import annotations

import contextlib
import os

from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._state import remove_pin_tree


class Attachment:
    """Interface of an attach point (see the module docstring)."""

    def foreign(self, hook: dict) -> str | None:
        """A sentence naming what someone else attached at the hook, or None."""
        raise NotImplementedError

    def attach(self, hook: dict, disp_fd: int, undo) -> None:
        raise NotImplementedError

    def swap(self, hook: dict, disp_fd: int, undo) -> None:
        raise NotImplementedError

    def detach(self, hook: dict, undo=None) -> None:
        raise NotImplementedError

    def live_prog_id(self, hook: dict) -> int | None:
        raise NotImplementedError


class LinkAttachment(Attachment):
    """A hook held by one pinned bpf_link (XDP, tcx)."""

    def __init__(self, link_pin: str) -> None:
        self.link_pin = link_pin

    def create_link(self, hook: dict, disp_fd: int) -> int:
        raise NotImplementedError

    def attach(self, hook: dict, disp_fd: int, undo) -> None:
        link_fd = self.create_link(hook, disp_fd)
        with libbpf.owned_fd(link_fd):
            os.makedirs(os.path.dirname(self.link_pin), mode=0o750, exist_ok=True)
            try:
                libbpf.obj_pin(link_fd, self.link_pin)
            except BaseException:
                libbpf.link_detach(link_fd)
                raise
            undo.add(self._unpin_and_detach)
            hook["link_pin"] = self.link_pin
            hook["link_id"] = libbpf.link_info(link_fd)["id"]

    def swap(self, hook: dict, disp_fd: int, undo) -> None:
        with libbpf.owned_fd(libbpf.obj_get(self.link_pin)) as link_fd:
            previous_fd = libbpf.prog_fd_by_id(libbpf.link_info(link_fd)["prog_id"])
            undo.release(lambda: libbpf.close_fd(previous_fd))
            libbpf.link_update(link_fd, disp_fd)

        def swap_back() -> None:
            with libbpf.owned_fd(libbpf.obj_get(self.link_pin)) as fd:
                libbpf.link_update(fd, previous_fd)
        undo.add(swap_back)

    def detach(self, hook: dict, undo=None) -> None:
        """Detach explicitly: unpinning alone leaves the link attached while
        anybody (bpftool, an RCU grace period) still holds a reference."""
        previous_fd = None
        with contextlib.suppress(BpfdError, OSError):
            with libbpf.owned_fd(libbpf.obj_get(self.link_pin)) as link_fd:
                if undo is not None:
                    previous_fd = libbpf.prog_fd_by_id(libbpf.link_info(link_fd)["prog_id"])
                libbpf.link_detach(link_fd)
        remove_pin_tree(os.path.dirname(self.link_pin))
        if undo is not None and previous_fd is not None:
            undo.release(lambda: libbpf.close_fd(previous_fd))
            undo.add(lambda: self.attach(hook, previous_fd, _NoUndo()))

    def live_prog_id(self, hook: dict) -> int | None:
        try:
            with libbpf.owned_fd(libbpf.obj_get(self.link_pin)) as link_fd:
                info = libbpf.link_info(link_fd)
        except BpfdError:
            return None
        return info["prog_id"] if info["target"] else None

    def _unpin_and_detach(self) -> None:
        with contextlib.suppress(BpfdError, OSError):
            with libbpf.owned_fd(libbpf.obj_get(self.link_pin)) as link_fd:
                libbpf.link_detach(link_fd)
        remove_pin_tree(os.path.dirname(self.link_pin))


class _NoUndo:
    """For steps that are themselves undo steps."""

    def add(self, step) -> None:
        pass

    def release(self, callback) -> None:
        callback()
