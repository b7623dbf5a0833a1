# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The XDP attach point: a bpf_link on an interface, in one of three modes."""

from __future__ import annotations

import errno

from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
from ansible_collections.bpfd.core.plugins.module_utils import _netlink
from ansible_collections.bpfd.core.plugins.module_utils._attach_link import LinkAttachment
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError

MODES = {
    "native": libbpf.XDP_FLAGS_DRV_MODE,
    "skb": libbpf.XDP_FLAGS_SKB_MODE,
    "hw": libbpf.XDP_FLAGS_HW_MODE,
}
# What rtnetlink reports as attached, by our mode names.
NETLINK_MODES = {"xdpdrv": "native", "xdpgeneric": "skb", "xdpoffload": "hw", "xdp": "native"}
# link_create errors that mean "this driver has no native XDP"
_NO_NATIVE = {errno.errorcode[errno.EOPNOTSUPP], errno.errorcode[errno.EINVAL]}


def foreign_program(ifindex: int, our_prog_id: int | None = None) -> dict | None:
    """The program someone else attached at this XDP hook, if any."""
    attached = _netlink.xdp_attachment(ifindex)
    prog_id = attached["prog_id"]
    if not prog_id or prog_id == our_prog_id:
        return None
    found = {"id": prog_id, "mode": NETLINK_MODES.get(str(attached["mode"]), attached["mode"]),
             "name": None, "owner": "attached through netlink (ip link, xdp-loader, ...)"}
    try:
        with libbpf.owned_fd(libbpf.prog_fd_by_id(prog_id)) as fd:
            found["name"] = libbpf.prog_info(fd)["name"]
    except BpfdError:
        pass
    for link_id in libbpf.link_ids():
        try:
            with libbpf.owned_fd(libbpf.link_fd_by_id(link_id)) as fd:
                if libbpf.link_info(fd)["prog_id"] == prog_id:
                    found["owner"] = "bpf_link id %d" % link_id
        except BpfdError:
            continue
    return found


def attach(prog_fd: int, ifindex: int, mode: str | None) -> tuple[int, str]:
    """Create the link; with no mode, native with a fallback to skb."""
    if mode is not None:
        return libbpf.link_create(prog_fd, ifindex, libbpf.ATTACH_XDP, MODES[mode]), mode
    try:
        return libbpf.link_create(prog_fd, ifindex, libbpf.ATTACH_XDP, MODES["native"]), "native"
    except BpfdError as exc:
        if exc.details.get("errno") not in _NO_NATIVE:
            raise
    return libbpf.link_create(prog_fd, ifindex, libbpf.ATTACH_XDP, MODES["skb"]), "skb"


class XdpAttachment(LinkAttachment):
    """The XDP hook of an interface, held by a pinned bpf_link."""

    def foreign(self, hook: dict) -> str | None:
        found = foreign_program(hook["ifindex"])
        if not found:
            return None
        return ("interface %s already has XDP program %s (id %d, %s mode) that bpfd.core did not "
                "attach (%s); remove it first, bpfd.core never replaces it"
                % (hook["interface"], found["name"] or "?", found["id"], found["mode"], found["owner"]))

    def create_link(self, hook: dict, disp_fd: int) -> int:
        link_fd, hook["mode"] = attach(disp_fd, hook["ifindex"], hook.get("mode"))
        return link_fd
