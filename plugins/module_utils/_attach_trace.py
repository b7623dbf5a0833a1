# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attach points without a dispatcher: tracepoints, k(ret)probes, u(ret)probes,
fentry/fexit. One program, one bpf_link, pinned so it outlives the module.

Interface used by the Manager (kinds in KINDS):
  PROG_TYPES[kind]                     program types the object's function must have
  check_spec(kind, attach, section)    refuse a wrong attach description (clear sentence)
  probe_kernel(kind, attach)           refuse what this kernel cannot attach (no traceback)
  attach(loaded, kind, attach, pin)    create the link, pin it at `pin`; return the link id
  alive(pin)                           the pinned link still exists

Attach descriptions (what the modules pass, all keys present):
  tracepoint  {"tracepoint": "category/name"}
  kprobe      {"function", "offset", "retprobe"}
  uprobe      {"target", "function", "offset", "pid", "retprobe"}
  fentry      {"function"}           fexit {"function"}

check_spec is pure (unit-tested); probe_kernel reads the host (tracefs, sysfs,
BTF, the target file) and loads nothing that outlives it.
"""

from __future__ import annotations

import errno
import os
import platform
import re
import struct
import subprocess

from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError

KINDS = ("tracepoint", "kprobe", "uprobe", "fentry", "fexit")
PROG_TYPES = {
    "tracepoint": (libbpf.PROG_TYPE_TRACEPOINT,),
    "kprobe": (libbpf.PROG_TYPE_KPROBE,),
    "uprobe": (libbpf.PROG_TYPE_KPROBE,),
    "fentry": (libbpf.PROG_TYPE_TRACING,),
    "fexit": (libbpf.PROG_TYPE_TRACING,),
}

TRACEFS_MOUNTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
PMU_DIR = "/sys/bus/event_source/devices"
KALLSYMS = "/proc/kallsyms"
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
LD_SO_CACHE = "/etc/ld.so.cache"
# A kernel function that exists whenever BPF test runs do: the trampoline probe's target.
TRAMPOLINE_PROBE_FUNCTION = "bpf_fentry_test1"

_TRACEPOINT_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_SYMBOL = re.compile(r"^[A-Za-z_.$][A-Za-z0-9_.$]*(@@?[A-Za-z0-9_.]+)?$")
# libbpf SEC() prefixes per kind; the return-probe ones make the program a return probe.
_SECTION_PREFIXES = {
    "kprobe": (("kprobe", False), ("kretprobe", True), ("ksyscall", False), ("kretsyscall", True)),
    "uprobe": (("uprobe", False), ("uprobe.s", False), ("uretprobe", True), ("uretprobe.s", True)),
    "fentry": (("fentry", None), ("fentry.s", None)),
    "fexit": (("fexit", None), ("fexit.s", None)),
}
_RETPROBE_KIND = {"kprobe": "kretprobe", "uprobe": "uretprobe"}
_STANDARD_LIB_DIRS = ("/lib/{multiarch}", "/usr/lib/{multiarch}", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
                      "/usr/local/lib")


# --- pure checks -----------------------------------------------------------------------


def split_tracepoint(tracepoint) -> tuple[str, str]:
    """'category/name' -> (category, name); exactly one '/'."""
    text = tracepoint if isinstance(tracepoint, str) else ""
    parts = text.split("/")
    if len(parts) != 2 or not all(_TRACEPOINT_PART.match(p) for p in parts):
        raise BpfdError("tracepoint %r is not valid: write it as category/name with exactly one '/' "
                        "(e.g. syscalls/sys_enter_openat, as listed under <tracefs>/events)" % (tracepoint,))
    return parts[0], parts[1]


def section_probe(kind: str, section: str) -> tuple[str, bool | None, str | None]:
    """(prefix, is a return probe (None: n/a), target named by the section) of a libbpf section."""
    prefix, target = section.partition("/")[::2]
    for known, retprobe in _SECTION_PREFIXES.get(kind, ()):
        if prefix == known:
            return prefix, retprobe, target or None
    wanted = ", ".join(sorted({known for known, _retprobe in _SECTION_PREFIXES.get(kind, ())}))
    raise BpfdError("the program's section %s is not a %s section (expected SEC(\"%s...\"): %s)"
                    % (section, kind, _SECTION_PREFIXES[kind][0][0], wanted))


def _check_symbol(what: str, name) -> None:
    if not isinstance(name, str) or not _SYMBOL.match(name):
        raise BpfdError("%s %r is not a valid symbol name" % (what, name))


def _check_offset(offset) -> None:
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise BpfdError("offset must be a non-negative integer, not %r" % (offset,))


def check_spec(kind: str, attach: dict, section: str | None = None) -> None:
    """Refuse a wrong attach description; with `section`, also a program of the wrong flavour."""
    if kind not in KINDS:
        raise BpfdError("unknown tracing program kind %s (known: %s)" % (kind, ", ".join(KINDS)))
    if kind == "tracepoint":
        split_tracepoint(attach.get("tracepoint"))
        return
    if kind in ("fentry", "fexit"):
        _check_symbol("function", attach.get("function"))
        if section is not None:
            target = section_probe(kind, section)[2]
            if target is None:
                raise BpfdError("section %s names no kernel function; libbpf fixes an %s program's target "
                                "at load from its section: use SEC(\"%s/%s\")"
                                % (section, kind, kind, attach["function"]))
            if target != attach["function"]:
                raise BpfdError("the program's section %s attaches to %s, not to function %s: the target of "
                                "an %s program is fixed at load by its section"
                                % (section, target, attach["function"], kind))
        return
    # kprobe / uprobe
    retprobe = bool(attach.get("retprobe"))
    offset = attach.get("offset") or 0
    _check_offset(offset)
    if kind == "kprobe":
        _check_symbol("function", attach.get("function"))
    else:
        target = attach.get("target")
        if not isinstance(target, str) or not target.strip():
            raise BpfdError("target is required: a library name (libc) or the absolute path of a binary")
        if "/" in target and not os.path.isabs(target):
            raise BpfdError("target %s must be an absolute path or a library name without '/'" % target)
        if attach.get("function") is not None:
            _check_symbol("function", attach["function"])
        elif not offset:
            raise BpfdError("a uprobe needs function, offset or both (offset alone: from the start of %s)"
                            % target)
        pid = attach.get("pid") or 0
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
            raise BpfdError("pid must be a process id, or 0 for every process; not %r" % (pid,))
    if section is not None:
        section_retprobe = section_probe(kind, section)[1]
        if section_retprobe != retprobe:
            probe, retprobe_name = kind, _RETPROBE_KIND[kind]
            if section_retprobe:
                raise BpfdError("the program's section %s makes it a %s: set retprobe: true (or load a %s program)"
                                % (section, retprobe_name, probe))
            raise BpfdError("the program's section %s makes it a %s, not a %s: set retprobe: false (or load a "
                            "%s program)" % (section, probe, retprobe_name, retprobe_name))


# --- library names (uprobe targets) ----------------------------------------------------

_CACHE_NEW = b"glibc-ld.so.cache1.1"
_CACHE_OLD = b"ld.so-1.7.0"
_NEW_HEADER = struct.Struct("<20sII")  # magic+version, nlibs, len_strings (then flags, pad, ext, unused)
_NEW_HEADER_SIZE = 48
_NEW_ENTRY = struct.Struct("<iIIIQ")  # flags, key, value, osversion, hwcap


def parse_ld_so_cache(data: bytes) -> list[tuple[str, str]]:
    """[(soname, path)] of glibc's /etc/ld.so.cache (new format, possibly after the old one)."""
    start = data.find(_CACHE_NEW)
    if start < 0:
        return []
    _magic, nlibs, _strings = _NEW_HEADER.unpack_from(data, start)
    out = []
    base = start + _NEW_HEADER_SIZE
    for i in range(nlibs):
        offset = base + i * _NEW_ENTRY.size
        if offset + _NEW_ENTRY.size > len(data):
            break
        _flags, key, value, _os, _hwcap = _NEW_ENTRY.unpack_from(data, offset)
        out.append((_cstr(data, start + key), _cstr(data, start + value)))
    return out


def _cstr(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    return data[offset:end if end >= 0 else len(data)].decode("utf-8", "replace")


def library_candidates(name: str, entries: list[tuple[str, str]]) -> list[str]:
    """Paths whose soname is `name` itself, else starts with `name`.so (libc -> libc.so.6), as aya
    resolves bpfd's uprobe targets; exact matches first, cache order kept."""
    stem = name if ".so" in name else name + ".so"
    exact = [path for soname, path in entries if soname == name]
    prefixed = [path for soname, path in entries if soname != name and soname.startswith(stem)
                and (len(soname) == len(stem) or soname[len(stem)] == ".")]
    return exact + prefixed


def _elf_machine(path: str) -> tuple | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(20)
    except OSError:
        return None
    if head[:4] != b"\x7fELF" or len(head) < 20:
        return None
    order = "<" if head[5] == 1 else ">"
    return head[4], struct.unpack(order + "H", head[18:20])[0]


def _multiarch() -> str:
    machine = platform.machine()
    return "%s-linux-gnu" % {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def resolve_target(target: str, cache_path: str = LD_SO_CACHE, lib_dirs: tuple | None = None) -> str:
    """An absolute path as given (it must exist), or a library name through the ld.so cache,
    then the standard library directories; same ELF class and machine as this Python first."""
    if os.path.isabs(target):
        if not os.path.isfile(target):
            raise BpfdError("uprobe target %s does not exist on the managed host (or is not a regular file)"
                            % target, target=target)
        return target
    try:
        with open(cache_path, "rb") as handle:
            entries = parse_ld_so_cache(handle.read())
    except OSError:
        entries = []
    found = [p for p in library_candidates(target, entries) if os.path.isfile(p)]
    if not found:
        if lib_dirs is None:
            lib_dirs = tuple(d.format(multiarch=_multiarch()) for d in _STANDARD_LIB_DIRS)
        for directory in lib_dirs:
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                continue
            local = [(n, os.path.join(directory, n)) for n in names]
            found += [p for p in library_candidates(target, local) if os.path.isfile(p)]
    if not found:
        raise BpfdError("uprobe target %s was not found: it is neither an absolute path nor a library "
                        "known to the dynamic linker (%s) or present in the standard library directories"
                        % (target, cache_path), target=target)
    native = _elf_machine("/proc/self/exe")
    same = [p for p in found if _elf_machine(p) == native]
    return os.path.realpath((same or found)[0])


# --- ELF symbols (uprobe functions) ----------------------------------------------------

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_STT_FUNC, _STT_GNU_IFUNC = 2, 10


def elf_functions(path: str) -> set[str] | None:
    """Names of the defined functions of a 64-bit little-endian ELF file (symtab + dynsym),
    or None when the file is not one this reader knows (libbpf then decides)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    if data[:4] != b"\x7fELF" or len(data) < _EHDR.size or data[4] != 2 or data[5] != 1:
        return None
    header = _EHDR.unpack_from(data, 0)
    shoff, shentsize, shnum = header[6], header[11], header[12]
    if not shoff or shentsize != _SHDR.size or shoff + shnum * shentsize > len(data):
        return None
    sections = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    names: set[str] = set()
    for sec in sections:
        if sec[1] not in (_SHT_SYMTAB, _SHT_DYNSYM) or sec[6] >= len(sections):
            continue
        strtab = sections[sec[6]]
        strings = data[strtab[4]:strtab[4] + strtab[5]]
        for i in range(sec[5] // _SYM.size):
            st_name, st_info, _other, st_shndx, _value, _size = _SYM.unpack_from(data, sec[4] + i * _SYM.size)
            if st_info & 0xF in (_STT_FUNC, _STT_GNU_IFUNC) and st_shndx != 0:
                names.add(_cstr(strings, st_name))
    return names


# --- kernel probes ---------------------------------------------------------------------


def tracefs_root(mount: bool = True) -> str:
    """Where tracefs is; mounted at /sys/kernel/tracing when it is not (the role makes that permanent)."""
    for root in TRACEFS_MOUNTS:
        if os.path.isdir(os.path.join(root, "events")):
            return root
    if mount:
        proc = subprocess.run(["mount", "-t", "tracefs", "tracefs", TRACEFS_MOUNTS[0]],
                              capture_output=True, text=True, check=False)
        if os.path.isdir(os.path.join(TRACEFS_MOUNTS[0], "events")):
            return TRACEFS_MOUNTS[0]
        raise BpfdError("tracefs is not mounted and mounting it failed (mount -t tracefs tracefs %s: %s); "
                        "tracepoint programs need it (the bpfd_host role mounts it permanently)"
                        % (TRACEFS_MOUNTS[0], (proc.stderr or proc.stdout).strip() or "exit %d" % proc.returncode))
    raise BpfdError("tracefs is not mounted (%s)" % " or ".join(TRACEFS_MOUNTS))


def _has_pmu(name: str, tracefs_file: str) -> bool:
    if os.path.isdir(os.path.join(PMU_DIR, name)):
        return True
    return any(os.path.exists(os.path.join(root, tracefs_file)) for root in TRACEFS_MOUNTS)


def kprobes_supported() -> bool:
    return _has_pmu("kprobe", "kprobe_events")


def uprobes_supported() -> bool:
    return _has_pmu("uprobe", "uprobe_events")


def kallsyms_has(function: str, path: str | None = None) -> bool | None:
    """Whether the kernel has a text symbol `function` (None: kallsyms unreadable)."""
    try:
        with open(path or KALLSYMS) as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == function and fields[1] in "tTwW":
                    return True
    except OSError:
        return None
    return False


ENOTSUPP = 524  # the kernel's internal "not supported" (no arch trampoline)
_REFUSALS = {errno.EPERM: "EPERM", errno.EACCES: "EACCES", errno.EOPNOTSUPP: "EOPNOTSUPP", ENOTSUPP: "ENOTSUPP"}


def trampolines_refused(attach_type: int) -> str | None:
    """Load a do-nothing fentry/fexit program on a known kernel function; the refusal, if any."""
    btf_id = libbpf.vmlinux_function_btf_id(TRAMPOLINE_PROBE_FUNCTION)
    if btf_id is None:
        return None  # no known target to probe with: the real load will tell
    code, log = libbpf.probe_tracing_load(attach_type, btf_id)
    if code not in _REFUSALS:
        return None  # loaded, or refused for another reason: the real load will tell
    last = log.strip().splitlines()[-1] if log.strip() else ""
    return "%s (%s) loading a do-nothing program on %s%s" % (
        _REFUSALS[code], os.strerror(code) if code != ENOTSUPP else "not supported",
        TRAMPOLINE_PROBE_FUNCTION, ": " + last if last else "")


def probe_kernel(kind: str, attach: dict) -> None:
    """Refuse what this kernel cannot attach, before anything is loaded."""
    if kind == "tracepoint":
        category, name = split_tracepoint(attach.get("tracepoint"))
        root = tracefs_root()
        if not os.path.isdir(os.path.join(root, "events", category, name)):
            hint = "" if os.path.isdir(os.path.join(root, "events", category)) else \
                " (no category %s either)" % category
            raise BpfdError("tracepoint %s/%s does not exist on this kernel: %s/events/%s/%s is missing%s"
                            % (category, name, root, category, name, hint), tracepoint=attach.get("tracepoint"))
    elif kind == "kprobe":
        if not kprobes_supported():
            raise BpfdError("this kernel cannot attach kprobes (CONFIG_KPROBES is not set): there is no "
                            "kprobe PMU (%s/kprobe) and no kprobe_events in tracefs" % PMU_DIR)
        if kallsyms_has(attach["function"]) is False:
            raise BpfdError("function %s is not a kernel symbol (%s)" % (attach["function"], KALLSYMS))
    elif kind == "uprobe":
        if not uprobes_supported():
            raise BpfdError("this kernel cannot attach uprobes (CONFIG_UPROBE_EVENTS is not set): there is "
                            "no uprobe PMU (%s/uprobe) and no uprobe_events in tracefs" % PMU_DIR)
        path = resolve_target(attach["target"])
        function = attach.get("function")
        if function:
            known = elf_functions(path)
            if known is not None and function.split("@")[0] not in known:
                raise BpfdError("function %s is not a function symbol of %s" % (function, path),
                                target=path)
        pid = attach.get("pid") or 0
        if pid and not os.path.isdir("/proc/%d" % pid):
            raise BpfdError("pid %d: no such process" % pid)
    elif kind in ("fentry", "fexit"):
        if not os.path.exists(VMLINUX_BTF):
            raise BpfdError("this kernel has no BTF (%s; CONFIG_DEBUG_INFO_BTF is not set): %s programs "
                            "need it" % (VMLINUX_BTF, kind))
        attach_type = libbpf.ATTACH_TRACE_FENTRY if kind == "fentry" else libbpf.ATTACH_TRACE_FEXIT
        refused = trampolines_refused(attach_type)
        if refused:
            raise BpfdError("this kernel refuses BPF trampolines (fentry/fexit): %s" % refused)
        if libbpf.btf_function_exists(attach["function"]) is False:
            raise BpfdError("function %s is not in the kernel's BTF (vmlinux or a module): %s cannot "
                            "attach to it" % (attach["function"], kind))
    else:
        check_spec(kind, attach)


# --- attaching -------------------------------------------------------------------------


def _program(loaded) -> libbpf.Program:
    for program in loaded.obj.programs():
        if program.name == loaded.function:
            return program
    raise BpfdError("program %s vanished from its object" % loaded.function)


def _create_link(program: libbpf.Program, kind: str, attach_point: dict) -> libbpf.Link:
    if kind == "tracepoint":
        category, name = split_tracepoint(attach_point["tracepoint"])
        return libbpf.attach_tracepoint(program, category, name)
    if kind == "kprobe":
        return libbpf.attach_kprobe(program, attach_point["function"], attach_point.get("offset") or 0,
                                    bool(attach_point.get("retprobe")))
    if kind == "uprobe":
        return libbpf.attach_uprobe(program, resolve_target(attach_point["target"]),
                                    attach_point.get("function"), attach_point.get("offset") or 0,
                                    pid=attach_point.get("pid") or -1, retprobe=bool(attach_point.get("retprobe")))
    return libbpf.attach_trace(program)


def attach(loaded, kind: str, attach_point: dict, pin: str) -> int:
    """Create the link, pin it at `pin` and let go of it; return the link id."""
    check_spec(kind, attach_point, loaded.section)
    link = _create_link(_program(loaded), kind, attach_point)
    try:
        link.pin(pin)
    except BaseException:
        link.destroy()
        raise
    try:
        link_id = libbpf.link_info(link.fd)["id"]
    except BaseException:
        link.destroy()
        _unpin(pin)
        raise
    link.release()
    return link_id


def _unpin(pin: str) -> None:
    try:
        os.unlink(pin)
    except FileNotFoundError:
        pass


def alive(pin: str) -> bool:
    return os.path.exists(pin)
