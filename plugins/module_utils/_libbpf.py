# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A thin, typed ctypes binding of the libbpf calls bpfd.core uses.

No maintained Python binding of libbpf exists, so this file is ours to keep.
libbpf stays the ELF loader (relocations, global data, map creation); the
low-level ``bpf()`` wrappers are used for everything we build ourselves
(the dispatcher, links, pins, introspection).

libbpf >= 1.0 returns ``-errno`` from int functions and NULL + errno from
pointer functions; both are turned into :class:`BpfdError` here, with the
messages libbpf printed during the call (the verifier log among them).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import threading
from typing import Iterator

from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError

# enum bpf_prog_type
PROG_TYPE_SCHED_CLS = 3
PROG_TYPE_TRACEPOINT = 5
PROG_TYPE_XDP = 6
PROG_TYPE_KPROBE = 2
PROG_TYPE_TRACING = 26
PROG_TYPE_EXT = 28

PROG_TYPE_NAMES = {
    0: "unspec", 1: "socket_filter", 2: "kprobe", 3: "sched_cls", 4: "sched_act",
    5: "tracepoint", 6: "xdp", 7: "perf_event", 8: "cgroup_skb", 9: "cgroup_sock",
    10: "lwt_in", 11: "lwt_out", 12: "lwt_xmit", 13: "sock_ops", 14: "sk_skb",
    15: "cgroup_device", 16: "sk_msg", 17: "raw_tracepoint", 18: "cgroup_sock_addr",
    19: "lwt_seg6local", 20: "lirc_mode2", 21: "sk_reuseport", 22: "flow_dissector",
    23: "cgroup_sysctl", 24: "raw_tracepoint_writable", 25: "cgroup_sockopt",
    26: "tracing", 27: "struct_ops", 28: "ext", 29: "lsm", 30: "sk_lookup",
    31: "syscall", 32: "netfilter",
}

# enum bpf_attach_type (values from the kernel's uapi; tcx is newer than the
# uapi headers Debian 12 ships, so it is written here by value)
ATTACH_XDP = 37
ATTACH_TCX_INGRESS = 46
ATTACH_TCX_EGRESS = 47

# enum bpf_map_type
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERCPU_HASH = 5
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_LRU_PERCPU_HASH = 10
PERCPU_MAP_TYPES = (MAP_TYPE_PERCPU_HASH, MAP_TYPE_PERCPU_ARRAY, MAP_TYPE_LRU_PERCPU_HASH)

BPF_F_RDONLY_PROG = 1 << 7
BPF_F_XDP_HAS_FRAGS = 1 << 5

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3

BPF_OBJ_NAME_LEN = 16
INSN_SIZE = 8

_LOG_SIZE = 1 << 24
_PRINT_LEVELS = ("warning", "info", "debug")


class _ObjectOpenOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_attach_prog_fd", ctypes.c_uint32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", ctypes.c_char_p),
        ("kernel_log_size", ctypes.c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    ]


class _ProgLoadOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("attempts", ctypes.c_int),
        ("expected_attach_type", ctypes.c_uint32),
        ("prog_btf_fd", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_ifindex", ctypes.c_uint32),
        ("kern_version", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_prog_fd", ctypes.c_uint32),
        ("attach_btf_obj_fd", ctypes.c_uint32),
        ("fd_array", ctypes.c_void_p),
        ("func_info", ctypes.c_void_p),
        ("func_info_cnt", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("line_info", ctypes.c_void_p),
        ("line_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_char_p),
    ]


class _BtfLoadOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("log_buf", ctypes.c_char_p),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
    ]


class _MapCreateOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
        ("numa_node", ctypes.c_uint32),
        ("map_ifindex", ctypes.c_uint32),
    ]


class _LinkCreateOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("flags", ctypes.c_uint32),
        ("iter_info", ctypes.c_void_p),
        ("iter_info_len", ctypes.c_uint32),
        ("target_btf_id", ctypes.c_uint32),
        ("_union", ctypes.c_uint64 * 5),
    ]


class _LinkUpdateOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("flags", ctypes.c_uint32),
        ("old_prog_fd", ctypes.c_uint32),
    ]


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class _ProgInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
        ("verified_insns", ctypes.c_uint32),
        ("attach_btf_obj_id", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


class _LinkInfo(ctypes.Structure):
    # type, id, prog_id, then a union whose first words hold the attach
    # point (xdp: ifindex; tcx: ifindex, attach_type).
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("u", ctypes.c_uint32 * 16),
    ]


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_libc: ctypes.CDLL | None = None
_captured: list[str] = []


def _on_print(level: int, fmt: bytes, va_list: int) -> int:
    buf = ctypes.create_string_buffer(4096)
    _libc.vsnprintf(buf, len(buf), fmt, ctypes.c_void_p(va_list))
    if level <= 1:  # warnings and info; debug chatter is dropped
        _captured.append(buf.value.decode("utf-8", "replace"))
    return 0


_print_callback = _PRINT_FN(_on_print)  # module-level so it is never collected


def _declare(lib: ctypes.CDLL) -> None:
    vp, i, u32, sz, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t, ctypes.c_char_p
    signatures = {
        "libbpf_set_print": (vp, [_PRINT_FN]),
        "bpf_object__open_file": (vp, [cp, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__next_program": (vp, [vp, vp]),
        "bpf_object__next_map": (vp, [vp, vp]),
        "bpf_program__name": (cp, [vp]),
        "bpf_program__section_name": (cp, [vp]),
        "bpf_program__type": (i, [vp]),
        "bpf_program__expected_attach_type": (i, [vp]),
        "bpf_program__set_autoload": (i, [vp, ctypes.c_bool]),
        "bpf_program__insns": (vp, [vp]),
        "bpf_program__insn_cnt": (sz, [vp]),
        "bpf_program__fd": (i, [vp]),
        "bpf_program__flags": (u32, [vp]),
        "bpf_map__name": (cp, [vp]),
        "bpf_map__fd": (i, [vp]),
        "bpf_map__type": (i, [vp]),
        "bpf_map__is_internal": (ctypes.c_bool, [vp]),
        "bpf_map__set_pin_path": (i, [vp, cp]),
        "bpf_map__pin_path": (cp, [vp]),
        "bpf_map__initial_value": (vp, [vp, ctypes.POINTER(sz)]),
        "bpf_map__set_initial_value": (i, [vp, vp, sz]),
        "bpf_map__reuse_fd": (i, [vp, i]),
        "bpf_map__key_size": (u32, [vp]),
        "bpf_map__value_size": (u32, [vp]),
        "bpf_map__max_entries": (u32, [vp]),
        "bpf_map__map_flags": (u32, [vp]),
        "bpf_prog_load": (i, [i, cp, cp, vp, sz, ctypes.POINTER(_ProgLoadOpts)]),
        "bpf_btf_load": (i, [vp, sz, ctypes.POINTER(_BtfLoadOpts)]),
        "bpf_map_create": (i, [i, cp, u32, u32, u32, ctypes.POINTER(_MapCreateOpts)]),
        "bpf_map_update_elem": (i, [i, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_map_delete_elem": (i, [i, vp]),
        "bpf_map_get_next_key": (i, [i, vp, vp]),
        "bpf_map_freeze": (i, [i]),
        "bpf_link_create": (i, [i, i, i, ctypes.POINTER(_LinkCreateOpts)]),
        "bpf_link_update": (i, [i, i, ctypes.POINTER(_LinkUpdateOpts)]),
        "bpf_link_detach": (i, [i]),
        "bpf_obj_pin": (i, [i, cp]),
        "bpf_obj_get": (i, [cp]),
        "bpf_obj_get_info_by_fd": (i, [i, vp, ctypes.POINTER(u32)]),
        "bpf_prog_get_fd_by_id": (i, [u32]),
        "bpf_map_get_fd_by_id": (i, [u32]),
        "bpf_link_get_fd_by_id": (i, [u32]),
        "bpf_prog_get_next_id": (i, [u32, ctypes.POINTER(u32)]),
        "bpf_map_get_next_id": (i, [u32, ctypes.POINTER(u32)]),
        "bpf_link_get_next_id": (i, [u32, ctypes.POINTER(u32)]),
        "bpf_prog_test_run_opts": (i, [i, ctypes.POINTER(_TestRunOpts)]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def lib() -> ctypes.CDLL:
    """Load libbpf.so.1 once, or explain how to install it."""
    global _lib, _libc
    with _lock:
        if _lib is None:
            try:
                loaded = ctypes.CDLL("libbpf.so.1", use_errno=True)
            except OSError:
                raise BpfdError(
                    "libbpf.so.1 was not found on the managed host: install libbpf1 "
                    "(Debian/Ubuntu) or libbpf (Fedora/RHEL) >= 1.0, e.g. with the "
                    "bpfd.core.bpfd_host role")
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
            _declare(loaded)
            loaded.libbpf_set_print(_print_callback)
            _lib = loaded
    return _lib


@contextlib.contextmanager
def captured_messages() -> Iterator[list[str]]:
    """Collect what libbpf prints during a block (verifier logs among it)."""
    # Ours again each time: libbcc shares libbpf.so.1 and installs its own printer.
    lib().libbpf_set_print(_print_callback)
    start = len(_captured)
    messages: list[str] = []
    try:
        yield messages
    finally:
        messages.extend(_captured[start:])
        del _captured[start:]


def _check(ret: int, what: str, log: str = "") -> int:
    if ret < 0:
        code = -ret
        msg = "%s failed: %s" % (what, os.strerror(code))
        raise BpfdError(msg, errno=errno.errorcode.get(code, str(code)), log=_tail(log))
    return ret


def _check_ptr(ptr: int | None, what: str, log: str = "") -> int:
    if not ptr:
        code = ctypes.get_errno() or errno.EINVAL
        raise BpfdError("%s failed: %s" % (what, os.strerror(code)),
                        errno=errno.errorcode.get(code, str(code)), log=_tail(log))
    return ptr


def _tail(log: str, lines: int = 40) -> str:
    """The end of a verifier log is where the reason is."""
    parts = log.strip().splitlines()
    return "\n".join(parts[-lines:])


def close_fd(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def owned_fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        close_fd(fd)


# --- the ELF loader -------------------------------------------------------


class Program:
    """One program of an opened object (a libbpf ``struct bpf_program *``)."""

    def __init__(self, handle: int) -> None:
        self._h = handle
        lb = lib()
        self.name: str = lb.bpf_program__name(handle).decode()
        self.section: str = lb.bpf_program__section_name(handle).decode()
        self.prog_type: int = lb.bpf_program__type(handle)
        self.expected_attach_type: int = lb.bpf_program__expected_attach_type(handle)

    @property
    def type_name(self) -> str:
        return PROG_TYPE_NAMES.get(self.prog_type, str(self.prog_type))

    @property
    def flags(self) -> int:
        return lib().bpf_program__flags(self._h)

    def set_autoload(self, autoload: bool) -> None:
        _check(lib().bpf_program__set_autoload(self._h, autoload), "bpf_program__set_autoload")

    @property
    def fd(self) -> int:
        return lib().bpf_program__fd(self._h)

    def instructions(self) -> bytes:
        """Final instructions after load: map FDs in place, subprograms appended."""
        lb = lib()
        count = lb.bpf_program__insn_cnt(self._h)
        ptr = lb.bpf_program__insns(self._h)
        return ctypes.string_at(ptr, count * INSN_SIZE) if ptr else b""


class Map:
    """One map of an opened object (a libbpf ``struct bpf_map *``)."""

    def __init__(self, handle: int) -> None:
        self._h = handle
        lb = lib()
        self.name: str = lb.bpf_map__name(handle).decode()
        self.map_type: int = lb.bpf_map__type(handle)
        self.is_internal: bool = bool(lb.bpf_map__is_internal(handle))

    @property
    def fd(self) -> int:
        return lib().bpf_map__fd(self._h)

    @property
    def pin_path(self) -> str | None:
        path = lib().bpf_map__pin_path(self._h)
        return path.decode() if path else None

    def initial_value(self) -> bytes:
        size = ctypes.c_size_t(0)
        ptr = lib().bpf_map__initial_value(self._h, ctypes.byref(size))
        return ctypes.string_at(ptr, size.value) if ptr else b""

    def definition(self) -> dict:
        """What must match for an existing map to stand in for this one."""
        lb = lib()
        return {"type": self.map_type, "key_size": lb.bpf_map__key_size(self._h),
                "value_size": lb.bpf_map__value_size(self._h),
                "max_entries": lb.bpf_map__max_entries(self._h), "map_flags": lb.bpf_map__map_flags(self._h)}

    def reuse_fd(self, fd: int) -> None:
        """Use an existing kernel map instead of creating this one at load."""
        _check(lib().bpf_map__reuse_fd(self._h, fd), "reusing an existing map for %s" % self.name)

    def set_initial_value(self, data: bytes) -> None:
        buf = ctypes.create_string_buffer(data, len(data))
        _check(lib().bpf_map__set_initial_value(self._h, buf, len(data)),
               "setting the initial value of map %s" % self.name)


class BpfObject:
    """An ELF object opened (and later loaded) by libbpf."""

    def __init__(self, path: str, pin_root_path: str | None = None) -> None:
        lb = lib()
        opts = _ObjectOpenOpts(sz=ctypes.sizeof(_ObjectOpenOpts))
        if pin_root_path:
            opts.pin_root_path = pin_root_path.encode()
        with captured_messages() as messages:
            ptr = lb.bpf_object__open_file(path.encode(), ctypes.byref(opts))
        self._h = _check_ptr(ptr, "opening BPF object %s" % path, "\n".join(messages))
        self.path = path

    def programs(self) -> list[Program]:
        out, cur = [], None
        while True:
            cur = lib().bpf_object__next_program(self._h, cur)
            if not cur:
                return out
            out.append(Program(cur))

    def maps(self) -> list[Map]:
        out, cur = [], None
        while True:
            cur = lib().bpf_object__next_map(self._h, cur)
            if not cur:
                return out
            out.append(Map(cur))

    def load(self) -> None:
        with captured_messages() as messages:
            ret = lib().bpf_object__load(self._h)
        _check(ret, "loading the BPF object", "\n".join(messages))

    def close(self) -> None:
        if self._h:
            lib().bpf_object__close(self._h)
            self._h = 0

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the bpf() syscall wrappers ---------------------------------------------


def prog_load(prog_type: int, name: str, license_name: str, insns: bytes, *,
              expected_attach_type: int = 0, prog_flags: int = 0, btf_fd: int = 0,
              func_info: bytes = b"", func_info_rec_size: int = 8) -> int:
    """BPF_PROG_LOAD; on failure retry with a verifier log for the message."""
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    finfo_buf = ctypes.create_string_buffer(func_info, len(func_info)) if func_info else None

    def attempt(log_buf: ctypes.Array | None) -> int:
        opts = _ProgLoadOpts(sz=ctypes.sizeof(_ProgLoadOpts))
        opts.expected_attach_type = expected_attach_type
        opts.prog_flags = prog_flags
        if func_info:
            opts.prog_btf_fd = btf_fd
            opts.func_info = ctypes.cast(finfo_buf, ctypes.c_void_p)
            opts.func_info_cnt = len(func_info) // func_info_rec_size
            opts.func_info_rec_size = func_info_rec_size
        if log_buf is not None:
            opts.log_level = 1
            opts.log_size = len(log_buf)
            opts.log_buf = ctypes.cast(log_buf, ctypes.c_char_p)
        return lib().bpf_prog_load(prog_type, name[:BPF_OBJ_NAME_LEN - 1].encode(), license_name.encode(),
                                   insn_buf, len(insns) // INSN_SIZE, ctypes.byref(opts))

    fd = attempt(None)
    if fd < 0:
        log_buf = ctypes.create_string_buffer(_LOG_SIZE)
        fd = attempt(log_buf)
        _check(fd, "loading program %s" % name, log_buf.value.decode("utf-8", "replace"))
    return fd


def btf_load(data: bytes) -> int:
    buf = ctypes.create_string_buffer(data, len(data))
    log = ctypes.create_string_buffer(1 << 16)
    opts = _BtfLoadOpts(sz=ctypes.sizeof(_BtfLoadOpts), log_buf=ctypes.cast(log, ctypes.c_char_p),
                        log_level=1, log_size=len(log))
    ret = lib().bpf_btf_load(buf, len(data), ctypes.byref(opts))
    return _check(ret, "loading BTF", log.value.decode("utf-8", "replace"))


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int,
               map_flags: int = 0) -> int:
    opts = _MapCreateOpts(sz=ctypes.sizeof(_MapCreateOpts), map_flags=map_flags)
    ret = lib().bpf_map_create(map_type, name[:BPF_OBJ_NAME_LEN - 1].encode(), key_size, value_size,
                               max_entries, ctypes.byref(opts))
    return _check(ret, "creating map %s" % name)


def map_update(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    _check(lib().bpf_map_update_elem(fd, key, value, flags), "updating a map element")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    out = ctypes.create_string_buffer(value_size)
    ret = lib().bpf_map_lookup_elem(fd, key, out)
    if ret == -errno.ENOENT:
        return None
    _check(ret, "reading a map element")
    return out.raw


def map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    cur: bytes | None = None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        ret = lib().bpf_map_get_next_key(fd, cur, nxt)
        if ret == -errno.ENOENT:
            return
        _check(ret, "walking map keys")
        cur = nxt.raw
        yield cur


def map_freeze(fd: int) -> None:
    _check(lib().bpf_map_freeze(fd), "freezing a map")


def link_create(prog_fd: int, target: int, attach_type: int, flags: int = 0) -> int:
    opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts), flags=flags)
    return _check(lib().bpf_link_create(prog_fd, target, attach_type, ctypes.byref(opts)),
                  "attaching with a bpf_link")


_NR_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
_BPF_PROG_QUERY = 16


def prog_query(target: int, attach_type: int, capacity: int = 64) -> list:
    """BPF_PROG_QUERY on a device (resolved in the caller's network namespace):
    [(prog id, link id or 0)] in the order the kernel runs them. Raw bpf(): libbpf
    1.1's bpf_prog_query_opts has no link_ids (tcx arrived in libbpf 1.3)."""
    import platform
    import struct as _struct
    prog_ids = (ctypes.c_uint32 * capacity)()
    link_ids = (ctypes.c_uint32 * capacity)()
    attr = ctypes.create_string_buffer(_struct.pack(
        "<IIIIQIIQQQQ", target, attach_type, 0, 0, ctypes.addressof(prog_ids), capacity, 0, 0,
        ctypes.addressof(link_ids), 0, 0), 64)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_NR_BPF[platform.machine()], _BPF_PROG_QUERY, attr, 64) < 0:
        code = ctypes.get_errno()
        raise BpfdError("querying attached programs: %s" % os.strerror(code), errno=errno.errorcode.get(code))
    count = _struct.unpack_from("<I", attr.raw, 24)[0]
    return [(prog_ids[i], link_ids[i]) for i in range(count)]


def link_update(link_fd: int, prog_fd: int) -> None:
    """Swap the program behind a link atomically."""
    opts = _LinkUpdateOpts(sz=ctypes.sizeof(_LinkUpdateOpts))
    _check(lib().bpf_link_update(link_fd, prog_fd, ctypes.byref(opts)), "updating the bpf_link")


def link_detach(link_fd: int) -> None:
    _check(lib().bpf_link_detach(link_fd), "detaching the bpf_link")


def obj_pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, path.encode()), "pinning %s" % path)


def obj_get(path: str) -> int:
    return _check(lib().bpf_obj_get(path.encode()), "opening pin %s" % path)


def _fd_by_id(fn_name: str, obj_id: int, what: str) -> int:
    return _check(getattr(lib(), fn_name)(obj_id), "opening %s id %d" % (what, obj_id))


def prog_fd_by_id(prog_id: int) -> int:
    return _fd_by_id("bpf_prog_get_fd_by_id", prog_id, "program")


def map_fd_by_id(map_id: int) -> int:
    return _fd_by_id("bpf_map_get_fd_by_id", map_id, "map")


def link_fd_by_id(link_id: int) -> int:
    return _fd_by_id("bpf_link_get_fd_by_id", link_id, "link")


def _ids(fn_name: str) -> list[int]:
    out, cur, nxt = [], 0, ctypes.c_uint32(0)
    fn = getattr(lib(), fn_name)
    while fn(cur, ctypes.byref(nxt)) == 0:
        cur = nxt.value
        out.append(cur)
    return out


def prog_ids() -> list[int]:
    return _ids("bpf_prog_get_next_id")


def link_ids() -> list[int]:
    return _ids("bpf_link_get_next_id")


def _info(fd: int, struct: type[ctypes.Structure], what: str) -> ctypes.Structure:
    info = struct()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), what)
    return info


def prog_info(fd: int) -> dict:
    """Kernel facts of a program (what ``bpftool prog show`` reports)."""
    info = _info(fd, _ProgInfo, "reading program info")
    map_ids = (ctypes.c_uint32 * info.nr_map_ids)()
    if info.nr_map_ids:
        again = _ProgInfo(nr_map_ids=info.nr_map_ids, map_ids=ctypes.addressof(map_ids))
        size = ctypes.c_uint32(ctypes.sizeof(again))
        _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(again), ctypes.byref(size)),
               "reading program map ids")
    return {
        "id": info.id,
        "type": PROG_TYPE_NAMES.get(info.type, str(info.type)),
        "name": info.name.decode("utf-8", "replace"),
        "tag": bytes(info.tag).hex(),
        "load_time_ns": info.load_time,
        "gpl_compatible": bool(info.gpl_compatible & 1),
        "map_ids": list(map_ids),
        "btf_id": info.btf_id,
        "xlated_prog_len": info.xlated_prog_len,
        "jited_prog_len": info.jited_prog_len,
        "verified_insns": info.verified_insns,
        "created_by_uid": info.created_by_uid,
        "run_time_ns": info.run_time_ns,
        "run_cnt": info.run_cnt,
    }


def map_info(fd: int) -> dict:
    info = _info(fd, _MapInfo, "reading map info")
    return {
        "id": info.id, "type": info.type, "name": info.name.decode("utf-8", "replace"),
        "key_size": info.key_size, "value_size": info.value_size,
        "max_entries": info.max_entries, "map_flags": info.map_flags, "btf_id": info.btf_id,
    }


def link_info(fd: int) -> dict:
    info = _info(fd, _LinkInfo, "reading link info")
    return {"id": info.id, "type": info.type, "prog_id": info.prog_id,
            "target": info.u[0], "attach_type": info.u[1]}


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1) -> tuple[int, int]:
    """BPF_PROG_TEST_RUN: (return value, average ns per run)."""
    data_in = ctypes.create_string_buffer(data, len(data))
    data_out = ctypes.create_string_buffer(len(data) + 4096)
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts),
                        data_in=ctypes.cast(data_in, ctypes.c_void_p), data_size_in=len(data),
                        data_out=ctypes.cast(data_out, ctypes.c_void_p), data_size_out=len(data_out),
                        repeat=repeat)
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return opts.retval, opts.duration


def fdinfo_memlock(fd: int) -> int | None:
    """Kernel-allocated memory of a program or map, from /proc/self/fdinfo."""
    try:
        with open("/proc/self/fdinfo/%d" % fd) as handle:
            for line in handle:
                if line.startswith("memlock:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# --- map reading (bpf_map_info): read-only pins, per-CPU sizes, map BTF ------

# enum bpf_map_type, as bpftool names them
MAP_TYPE_NAMES = {
    0: "unspec", 1: "hash", 2: "array", 3: "prog_array", 4: "perf_event_array",
    5: "percpu_hash", 6: "percpu_array", 7: "stack_trace", 8: "cgroup_array",
    9: "lru_hash", 10: "lru_percpu_hash", 11: "lpm_trie", 12: "array_of_maps",
    13: "hash_of_maps", 14: "devmap", 15: "sockmap", 16: "cpumap", 17: "xskmap",
    18: "sockhash", 19: "cgroup_storage", 20: "reuseport_sockarray",
    21: "percpu_cgroup_storage", 22: "queue", 23: "stack", 24: "sk_storage",
    25: "devmap_hash", 26: "struct_ops", 27: "ringbuf", 28: "inode_storage",
    29: "task_storage", 30: "bloom_filter", 31: "user_ringbuf", 32: "cgrp_storage",
    33: "arena",
}
MAP_TYPE_PERCPU_CGROUP_STORAGE = 21

BPF_F_RDONLY = 1 << 3


class _ObjGetOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("file_flags", ctypes.c_uint32),
    ]


class _BtfInfo(ctypes.Structure):
    _fields_ = [
        ("btf", ctypes.c_uint64),
        ("btf_size", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("name", ctypes.c_uint64),
        ("name_len", ctypes.c_uint32),
        ("kernel_btf", ctypes.c_uint32),
    ]


_READER_SIGNATURES = {
    "bpf_obj_get_opts": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(_ObjGetOpts)]),
    "bpf_btf_get_fd_by_id": (ctypes.c_int, [ctypes.c_uint32]),
    "libbpf_num_possible_cpus": (ctypes.c_int, []),
}
_reader_declared: list = []


def _reader_lib() -> ctypes.CDLL:
    """lib(), with the signatures of the calls below declared once."""
    loaded = lib()
    with _lock:
        if not _reader_declared:
            for name, (restype, argtypes) in _READER_SIGNATURES.items():
                fn = getattr(loaded, name)
                fn.restype = restype
                fn.argtypes = argtypes
            _reader_declared.append(True)
    return loaded


def obj_get_readonly(path: str) -> int:
    """BPF_OBJ_GET with BPF_F_RDONLY: a map fd that can only read (needs r on the pin)."""
    opts = _ObjGetOpts(sz=ctypes.sizeof(_ObjGetOpts), file_flags=BPF_F_RDONLY)
    return _check(_reader_lib().bpf_obj_get_opts(path.encode(), ctypes.byref(opts)),
                  "opening pin %s" % path)


def num_possible_cpus() -> int:
    """How many value slots a per-CPU map lookup returns."""
    return _check(_reader_lib().libbpf_num_possible_cpus(), "counting possible CPUs")


def map_btf_ids(fd: int) -> dict:
    """The BTF a map was created with: object id and key/value type ids (0: none)."""
    info = _info(fd, _MapInfo, "reading map info")
    return {"btf_id": info.btf_id, "btf_key_type_id": info.btf_key_type_id,
            "btf_value_type_id": info.btf_value_type_id,
            "btf_vmlinux_value_type_id": info.btf_vmlinux_value_type_id}


def btf_fd_by_id(btf_id: int) -> int:
    """BPF_BTF_GET_FD_BY_ID (the kernel requires CAP_SYS_ADMIN)."""
    return _check(_reader_lib().bpf_btf_get_fd_by_id(btf_id), "opening BTF id %d" % btf_id)


def btf_data(fd: int) -> bytes:
    """The raw BTF blob (header, types, strings) behind a BTF fd."""
    info = _info(fd, _BtfInfo, "reading BTF info")
    if not info.btf_size:
        return b""
    buf = ctypes.create_string_buffer(info.btf_size)
    again = _BtfInfo(btf=ctypes.addressof(buf), btf_size=info.btf_size)
    size = ctypes.c_uint32(ctypes.sizeof(again))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(again), ctypes.byref(size)),
           "reading BTF data")
    return buf.raw[:again.btf_size]


# --- tracing attach points: tracepoints, k(ret)probes, u(ret)probes, fentry/fexit ---

# enum bpf_attach_type
ATTACH_TRACE_FENTRY = 24
ATTACH_TRACE_FEXIT = 25

# enum bpf_link_type
LINK_TYPE_TRACING = 2
LINK_TYPE_PERF_EVENT = 7

BTF_KIND_FUNC = 12


class _KprobeOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("bpf_cookie", ctypes.c_uint64),
        ("offset", ctypes.c_size_t),
        ("retprobe", ctypes.c_bool),
    ]


class _UprobeOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ref_ctr_offset", ctypes.c_size_t),
        ("bpf_cookie", ctypes.c_uint64),
        ("retprobe", ctypes.c_bool),
        ("func_name", ctypes.c_char_p),
    ]


_TRACE_SIGNATURES = {
    "bpf_program__attach_tracepoint": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]),
    "bpf_program__attach_kprobe_opts": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p,
                                                          ctypes.POINTER(_KprobeOpts)]),
    "bpf_program__attach_uprobe_opts": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p,
                                                          ctypes.c_size_t, ctypes.POINTER(_UprobeOpts)]),
    "bpf_program__attach_trace": (ctypes.c_void_p, [ctypes.c_void_p]),
    "bpf_link__pin": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    "bpf_link__fd": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_link__disconnect": (None, [ctypes.c_void_p]),
    "bpf_link__destroy": (ctypes.c_int, [ctypes.c_void_p]),
    "btf__load_vmlinux_btf": (ctypes.c_void_p, []),
    "btf__parse_split": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_void_p]),
    "btf__find_by_name_kind": (ctypes.c_int32, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]),
    "btf__free": (None, [ctypes.c_void_p]),
}
_trace_declared: list = []


def _trace_lib() -> ctypes.CDLL:
    """lib(), with the signatures of the calls below declared once."""
    loaded = lib()
    with _lock:
        if not _trace_declared:
            for name, (restype, argtypes) in _TRACE_SIGNATURES.items():
                fn = getattr(loaded, name)
                fn.restype = restype
                fn.argtypes = argtypes
            _trace_declared.append(True)
    return loaded


class Link:
    """A libbpf ``struct bpf_link *``: pin it, then `release` the handle (the pin
    keeps the kernel link); `destroy` detaches instead.

    A disconnected libbpf link keeps its fds open (libbpf closes them only when it
    detaches), so `release` closes them itself: the link fd, and for perf_event links
    the perf event fd libbpf opened for it (found as the perf_event fds the attach call
    created; libbpf has no API that returns it).
    """

    def __init__(self, handle: int, perf_fds: tuple = ()) -> None:
        self._h = handle
        self._perf_fds = perf_fds

    @property
    def fd(self) -> int:
        return _trace_lib().bpf_link__fd(self._h)

    def pin(self, path: str) -> None:
        _check(_trace_lib().bpf_link__pin(self._h, path.encode()), "pinning the link at %s" % path)

    def release(self) -> None:
        """Free the userspace handle and its fd without detaching."""
        if self._h:
            lb = _trace_lib()
            fd = lb.bpf_link__fd(self._h)
            lb.bpf_link__disconnect(self._h)
            lb.bpf_link__destroy(self._h)
            self._h = 0
            for each in {fd, *self._perf_fds}:
                close_fd(each)

    def destroy(self) -> None:
        """Detach (unless pinned elsewhere) and free."""
        if self._h:
            _trace_lib().bpf_link__destroy(self._h)
            self._h = 0


def _open_fds() -> set:
    """This process's open fds (not the one listing them: it is closed when checked)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return set()
    found = set()
    for name in names:
        with contextlib.suppress(OSError):
            os.readlink("/proc/self/fd/" + name)
            found.add(int(name))
    return found


def _is_perf_event(fd: int) -> bool:
    try:
        return os.readlink("/proc/self/fd/%d" % fd) == "anon_inode:[perf_event]"
    except OSError:
        return False


def _attached(fn_name: str, what: str, *args) -> Link:
    before = _open_fds()
    with captured_messages() as messages:
        ptr = getattr(_trace_lib(), fn_name)(*args)
    handle = _check_ptr(ptr, what, "\n".join(messages))
    return Link(handle, tuple(fd for fd in sorted(_open_fds() - before) if _is_perf_event(fd)))


def attach_tracepoint(program: Program, category: str, name: str) -> Link:
    return _attached("bpf_program__attach_tracepoint", "attaching to tracepoint %s/%s" % (category, name),
                     program._h, category.encode(), name.encode())


def attach_kprobe(program: Program, function: str, offset: int = 0, retprobe: bool = False) -> Link:
    opts = _KprobeOpts(sz=ctypes.sizeof(_KprobeOpts), offset=offset, retprobe=retprobe)
    return _attached("bpf_program__attach_kprobe_opts",
                     "attaching a %s to %s+%d" % ("kretprobe" if retprobe else "kprobe", function, offset),
                     program._h, function.encode(), ctypes.byref(opts))


def attach_uprobe(program: Program, binary: str, function: str | None, offset: int = 0,
                  pid: int = -1, retprobe: bool = False) -> Link:
    """pid -1: every process (libbpf reads 0 as the calling process)."""
    opts = _UprobeOpts(sz=ctypes.sizeof(_UprobeOpts), retprobe=retprobe,
                       func_name=function.encode() if function else None)
    where = "%s:%s+%d" % (binary, function or "", offset)
    return _attached("bpf_program__attach_uprobe_opts",
                     "attaching a %s to %s" % ("uretprobe" if retprobe else "uprobe", where),
                     program._h, pid, binary.encode(), offset, ctypes.byref(opts))


def attach_trace(program: Program) -> Link:
    """fentry/fexit: the target was fixed at load (section name or attach target)."""
    return _attached("bpf_program__attach_trace", "attaching %s (%s)" % (program.name, program.section),
                     program._h)


def btf_function_exists(name: str) -> bool | None:
    """Whether vmlinux or a module's BTF has a FUNC `name`; None: no kernel BTF."""
    lb = _trace_lib()
    vmlinux = lb.btf__load_vmlinux_btf()
    if not vmlinux:
        return None
    try:
        if lb.btf__find_by_name_kind(vmlinux, name.encode(), BTF_KIND_FUNC) > 0:
            return True
        base = "/sys/kernel/btf"
        for module in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            if module == "vmlinux":
                continue
            split = lb.btf__parse_split(os.path.join(base, module).encode(), vmlinux)
            if not split:
                continue
            try:
                if lb.btf__find_by_name_kind(split, name.encode(), BTF_KIND_FUNC) > 0:
                    return True
            finally:
                lb.btf__free(split)
        return False
    finally:
        lb.btf__free(vmlinux)


def vmlinux_function_btf_id(name: str) -> int | None:
    lb = _trace_lib()
    vmlinux = lb.btf__load_vmlinux_btf()
    if not vmlinux:
        return None
    try:
        found = lb.btf__find_by_name_kind(vmlinux, name.encode(), BTF_KIND_FUNC)
        return found if found > 0 else None
    finally:
        lb.btf__free(vmlinux)


# r0 = 0; exit
_RETURN_ZERO = bytes.fromhex("b700000000000000 9500000000000000")


def probe_tracing_load(attach_type: int, attach_btf_id: int) -> tuple[int, str]:
    """Load (and close) a do-nothing tracing program on a kernel function:
    (0 or the errno, verifier log)."""
    insns = ctypes.create_string_buffer(_RETURN_ZERO, len(_RETURN_ZERO))
    log = ctypes.create_string_buffer(1 << 16)
    opts = _ProgLoadOpts(sz=ctypes.sizeof(_ProgLoadOpts), expected_attach_type=attach_type,
                         attach_btf_id=attach_btf_id, log_level=1, log_size=len(log),
                         log_buf=ctypes.cast(log, ctypes.c_char_p))
    fd = lib().bpf_prog_load(PROG_TYPE_TRACING, b"bpfd_probe", b"GPL", insns,
                             len(_RETURN_ZERO) // INSN_SIZE, ctypes.byref(opts))
    if fd >= 0:
        close_fd(fd)
        return 0, ""
    return -fd, log.value.decode("utf-8", "replace")
