# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The TC attach points: a tcx bpf_link (kernel >= 6.6), or on older kernels
a cls_bpf direct-action filter on a clsact qdisc, replaced in place."""

from __future__ import annotations

import os
import re

from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
from ansible_collections.bpfd.core.plugins.module_utils import _netlink
from ansible_collections.bpfd.core.plugins.module_utils._attach_link import Attachment, LinkAttachment
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError

DIRECTIONS = ("ingress", "egress")
TCX_ATTACH = {"ingress": libbpf.ATTACH_TCX_INGRESS, "egress": libbpf.ATTACH_TCX_EGRESS}
PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
FILTER_PRIO = 1          # our one filter runs first among cls_bpf filters
FILTER_HANDLE = 0xbfd
FILTER_NAME = "bpfd_dispatcher_%d"
_FILTER_NAME_RE = re.compile(r"^bpfd_dispatcher_(\d+)$")
ETH_P_ALL = 0x0003


ATTACH_METHODS = ("tcx", "cls_bpf")


def kernel_has_tcx() -> bool:
    """tcx (bpf_link on the TC hooks) arrived in Linux 6.6."""
    release = os.uname().release.split("-")[0].split(".")
    try:
        return (int(release[0]), int(release[1])) >= (6, 6)
    except (ValueError, IndexError):
        return False


def _describe(found: list) -> str:
    return ", ".join("%s (%s)" % (f.get("name") or f.get("kind") or "?",
                                  ", ".join("%s %s" % (k, v) for k, v in f.items() if k not in ("name",)))
                     for f in found)


def foreign_tcx_programs(ifindex: int, direction: str, ours: set) -> list:
    """tcx links of other owners on this hook (refused: we do not run beside
    programs whose order we do not control). Asked of the device itself (BPF_PROG_QUERY):
    link ids are global, ifindexes are per network namespace."""
    try:
        attached = libbpf.prog_query(ifindex, TCX_ATTACH[direction])
    except BpfdError:
        return []
    return [{"name": _prog_name(prog_id), "link_id": link_id, "prog_id": prog_id}
            for prog_id, link_id in attached if link_id not in ours]


def _prog_name(prog_id: int) -> str | None:
    try:
        with libbpf.owned_fd(libbpf.prog_fd_by_id(prog_id)) as fd:
            return libbpf.prog_info(fd)["name"]
    except BpfdError:
        return None


# --- cls_bpf fallback ----------------------------------------------------------


def _filters(ipr, ifindex: int, direction: str) -> list:
    try:
        return list(ipr.get_filters(index=ifindex, parent=PARENTS[direction]))
    except _netlink.NetlinkError:
        return []


def _qdisc_kinds(ipr, ifindex: int) -> list:
    return [q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index=ifindex) if q["parent"] in (0xFFFFFFF1, 0xFFFFFFF2)]


def cls_bpf_state(ifindex: int, direction: str) -> dict:
    """Our filter (by name: it carries the dispatcher id) and everybody else's."""
    with _netlink.ipr() as ipr:
        kinds = _qdisc_kinds(ipr, ifindex)
        filters = _filters(ipr, ifindex, direction)
    ours, foreign = None, []
    for flt in filters:
        options = flt.get_attr("TCA_OPTIONS")
        if options is None:
            continue  # the per-chain header tc dumps before the filters, not a filter
        name = options.get_attr("TCA_BPF_NAME") if options is not None else None
        match = _FILTER_NAME_RE.match(name or "")
        if match and flt["info"] >> 16 == FILTER_PRIO:
            ours = int(match.group(1))
        elif flt.get_attr("TCA_KIND"):
            foreign.append({"kind": flt.get_attr("TCA_KIND"), "name": name, "pref": flt["info"] >> 16})
    return {"qdiscs": kinds, "dispatcher_id": ours, "foreign": foreign}


def attach_cls_bpf(prog_fd: int, prog_id: int, ifindex: int, direction: str) -> bool:
    """Add our filter (creating clsact if needed); True when we created clsact."""
    with _netlink.ipr() as ipr:
        kinds = _qdisc_kinds(ipr, ifindex)
        if "ingress" in kinds:
            raise BpfdError("the interface has a plain 'ingress' qdisc that bpfd.core did not create; "
                            "cls_bpf needs 'clsact': remove it first (tc qdisc del dev DEV ingress)")
        created = "clsact" not in kinds
        if created:
            ipr.tc("add", "clsact", index=ifindex)
        try:
            _set_filter(ipr, "add-filter", prog_fd, prog_id, ifindex, direction)
        except Exception:
            if created:
                ipr.tc("del", "clsact", index=ifindex)
            raise
    return created


def replace_cls_bpf(prog_fd: int, prog_id: int, ifindex: int, direction: str) -> None:
    """Swap the program of our filter in place (one netlink message)."""
    with _netlink.ipr() as ipr:
        _set_filter(ipr, "replace-filter", prog_fd, prog_id, ifindex, direction)


def detach_cls_bpf(ifindex: int, direction: str, remove_clsact: bool) -> None:
    with _netlink.ipr() as ipr:
        try:
            ipr.tc("del-filter", "bpf", index=ifindex, handle=FILTER_HANDLE, parent=PARENTS[direction],
                   prio=FILTER_PRIO, protocol=ETH_P_ALL)
        except _netlink.NetlinkError:
            pass  # already gone (interface reset by someone)
        if remove_clsact and not _filters(ipr, ifindex, "ingress") and not _filters(ipr, ifindex, "egress"):
            try:
                ipr.tc("del", "clsact", index=ifindex)
            except _netlink.NetlinkError:
                pass


def _set_filter(ipr, command: str, prog_fd: int, prog_id: int, ifindex: int, direction: str) -> None:
    try:
        ipr.tc(command, "bpf", index=ifindex, handle=FILTER_HANDLE, fd=prog_fd,
               name=FILTER_NAME % prog_id, parent=PARENTS[direction], classid=1,
               direct_action=True, prio=FILTER_PRIO, protocol=ETH_P_ALL)
    except _netlink.NetlinkError as exc:
        raise BpfdError("tc refused our cls_bpf filter on ifindex %d %s: %s" % (ifindex, direction, exc))


class TcxAttachment(LinkAttachment):
    """A TC hook held by a tcx bpf_link (kernel >= 6.6)."""

    def foreign(self, hook: dict) -> str | None:
        # tcx runs before clsact: our verdict would end TC before a foreign filter runs.
        found = foreign_tcx_programs(hook["ifindex"], hook["direction"], {hook.get("link_id")}) + \
            cls_bpf_state(hook["ifindex"], hook["direction"])["foreign"]
        if not found:
            return None
        return ("interface %s %s already runs tcx programs bpfd.core did not attach: %s; remove them "
                "first, bpfd.core never runs beside programs whose order it does not control"
                % (hook["interface"], hook["direction"], _describe(found)))

    def create_link(self, hook: dict, disp_fd: int) -> int:
        return libbpf.link_create(disp_fd, hook["ifindex"], TCX_ATTACH[hook["direction"]])


class ClsBpfAttachment(Attachment):
    """A TC hook held by our cls_bpf filter on a clsact qdisc (kernels < 6.6)."""

    def foreign(self, hook: dict) -> str | None:
        # a foreign tcx program runs before clsact and may end TC before our filter runs
        found = cls_bpf_state(hook["ifindex"], hook["direction"])["foreign"] + \
            foreign_tcx_programs(hook["ifindex"], hook["direction"], set())
        if not found:
            return None
        return ("interface %s %s already has tc filters bpfd.core did not add: %s; remove them first, "
                "bpfd.core never runs beside filters whose order it does not control"
                % (hook["interface"], hook["direction"], _describe(found)))

    def attach(self, hook: dict, disp_fd: int, undo) -> None:
        prog_id = libbpf.prog_info(disp_fd)["id"]
        hook["clsact_created"] = attach_cls_bpf(disp_fd, prog_id, hook["ifindex"], hook["direction"])
        undo.add(lambda: detach_cls_bpf(hook["ifindex"], hook["direction"], hook["clsact_created"]))

    def swap(self, hook: dict, disp_fd: int, undo) -> None:
        previous_id = cls_bpf_state(hook["ifindex"], hook["direction"])["dispatcher_id"]
        previous_fd = libbpf.prog_fd_by_id(previous_id) if previous_id else None
        if previous_fd is not None:
            undo.release(lambda: libbpf.close_fd(previous_fd))
        replace_cls_bpf(disp_fd, libbpf.prog_info(disp_fd)["id"], hook["ifindex"], hook["direction"])
        if previous_fd is not None:
            undo.add(lambda: replace_cls_bpf(previous_fd, previous_id, hook["ifindex"], hook["direction"]))

    def detach(self, hook: dict, undo=None) -> None:
        previous_id = cls_bpf_state(hook["ifindex"], hook["direction"])["dispatcher_id"]
        previous_fd = libbpf.prog_fd_by_id(previous_id) if (undo is not None and previous_id) else None
        detach_cls_bpf(hook["ifindex"], hook["direction"], hook.get("clsact_created", False))
        if previous_fd is not None:
            undo.release(lambda: libbpf.close_fd(previous_fd))
            undo.add(lambda: attach_cls_bpf(previous_fd, previous_id, hook["ifindex"], hook["direction"]))

    def live_prog_id(self, hook: dict) -> int | None:
        return cls_bpf_state(hook["ifindex"], hook["direction"])["dispatcher_id"]
