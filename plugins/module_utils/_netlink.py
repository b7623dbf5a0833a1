# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Everything that talks to rtnetlink, through pyroute2."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
import struct
from typing import Any, Iterator

from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError

try:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    HAS_PYROUTE2 = True
except ImportError:  # the module reports missing_required_lib("pyroute2")
    IPRoute = None
    NetlinkError = OSError
    HAS_PYROUTE2 = False


def ipr() -> Any:
    if not HAS_PYROUTE2:
        raise BpfdError("the Python library pyroute2 is required on the managed host "
                        "(pip install pyroute2, or run the bpfd.core.bpfd_host role)")
    return IPRoute()


def _link(ipr: Any, **selector: Any) -> Any | None:
    try:
        found = ipr.link("get", **selector)
    except NetlinkError:
        return None
    return found[0] if found else None


def interface_index(name: str) -> int:
    """The ifindex of an interface in the module's network namespace."""
    with ipr() as conn:
        link = _link(conn, ifname=name)
    if link is None:
        raise BpfdError("interface %s does not exist on this host" % name, interface=name)
    return int(link["index"])


def interface_name(ifindex: int) -> str | None:
    """The current name of an ifindex, or None when the interface is gone."""
    with ipr() as conn:
        link = _link(conn, index=ifindex)
    return None if link is None else link.get_attr("IFLA_IFNAME")


def xdp_attachment(ifindex: int) -> dict:
    """What the kernel has attached at the interface's XDP hook."""
    with ipr() as conn:
        link = _link(conn, index=ifindex)
    xdp = link.get_attr("IFLA_XDP") if link is not None else None
    if xdp is None:
        return {"mode": None, "prog_id": None}
    attached = xdp.get_attr("IFLA_XDP_ATTACHED")
    prog_id = xdp.get_attr("IFLA_XDP_PROG_ID")
    if not attached or attached == "none" or attached == 0:
        return {"mode": None, "prog_id": None}
    return {"mode": attached, "prog_id": prog_id}


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise BpfdError("cannot enter network namespace %s: %s" % (what, os.strerror(code)))


@contextlib.contextmanager
def in_netns(path: str | None) -> Iterator[None]:
    """Run the block in another network namespace (bpfman's --netns); None = stay.

    Interface indexes, netlink sockets and XDP/tcx links all resolve in the
    namespace of the calling thread, so everything that touches a hook in a
    namespace runs inside this block.
    """
    if not path:
        yield
        return
    try:
        target = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise BpfdError("network namespace %s does not exist (%s)" % (path, exc.strerror), netns=path)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(target, path)
        try:
            yield
        finally:
            _setns(home, "of the module (going back)")
    finally:
        os.close(target)
        os.close(home)


def netns_id(path: str | None) -> str | None:
    """A stable name for a namespace: its inode (what `ip netns identify` compares)."""
    if not path:
        return None
    try:
        return "ns%d" % os.stat(path).st_ino
    except OSError:
        raise BpfdError("network namespace %s does not exist" % path, netns=path)


def netns_exists(path: str | None) -> bool:
    return not path or os.path.exists(path)


SO_NETNS_COOKIE = 71


def current_netns_cookie() -> int | None:
    """The kernel's never-reused id of the calling thread's namespace (5.14+).

    A path like /run/netns/NAME can be deleted and re-created; the cookie
    tells the new namespace from the old one.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            return struct.unpack("<Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    except OSError:
        return None


def netns_cookie(path: str | None) -> int | None:
    with in_netns(path):
        return current_netns_cookie()
