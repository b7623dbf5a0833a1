# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The pure parts of _attach_trace: attach descriptions, section flavours, library
names (ld.so.cache), ELF function symbols, and the host probes on fake sysfs/tracefs
trees. Nothing here loads a program."""

from __future__ import annotations

import os
import struct

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _attach_trace as at
from ansible_collections.bpfd.core.plugins.module_utils import _facts
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError


def kprobe(function="try_to_wake_up", offset=0, retprobe=False) -> dict:
    return {"function": function, "offset": offset, "retprobe": retprobe}


def uprobe(target="libc", function="malloc", offset=0, pid=0, retprobe=False) -> dict:
    return {"target": target, "function": function, "offset": offset, "pid": pid, "retprobe": retprobe}


# --- tracepoints -------------------------------------------------------------------


@pytest.mark.parametrize("text, parts", [
    ("syscalls/sys_enter_openat", ("syscalls", "sys_enter_openat")),
    ("sched/sched_switch", ("sched", "sched_switch")),
    ("xdp/xdp_redirect_map_err", ("xdp", "xdp_redirect_map_err")),
])
def test_tracepoint_split(text, parts):
    assert at.split_tracepoint(text) == parts
    at.check_spec("tracepoint", {"tracepoint": text})


@pytest.mark.parametrize("text", [
    "sys_enter_openat", "syscalls/sys_enter/openat", "/sys_enter_openat", "syscalls/", "",
    "syscalls/sys enter", None, "../events/x",
])
def test_tracepoint_needs_exactly_one_slash(text):
    with pytest.raises(BpfdError, match="exactly one '/'"):
        at.check_spec("tracepoint", {"tracepoint": text})


def test_tracepoint_section_is_not_its_attach_point():
    # bpfd attaches where the task says; the section's own tracepoint does not matter.
    at.check_spec("tracepoint", {"tracepoint": "syscalls/sys_enter_close"}, "tracepoint/syscalls/sys_enter_openat")


def test_unknown_kind():
    with pytest.raises(BpfdError, match="unknown tracing program kind"):
        at.check_spec("lsm", {})


# --- kprobes ----------------------------------------------------------------------------


@pytest.mark.parametrize("section, retprobe", [
    ("kprobe", False), ("kprobe/try_to_wake_up", False), ("kretprobe", True), ("kretprobe/x", True),
    ("ksyscall/openat", False), ("kretsyscall/openat", True),
])
def test_kprobe_section_matches_retprobe(section, retprobe):
    at.check_spec("kprobe", kprobe(retprobe=retprobe), section)


def test_kretprobe_section_without_retprobe_is_refused():
    with pytest.raises(BpfdError, match=r"section kretprobe/x makes it a kretprobe: set retprobe: true"):
        at.check_spec("kprobe", kprobe(retprobe=False), "kretprobe/x")


def test_kprobe_section_with_retprobe_is_refused():
    with pytest.raises(BpfdError, match=r"makes it a kprobe, not a kretprobe: set retprobe: false"):
        at.check_spec("kprobe", kprobe(retprobe=True), "kprobe/x")


@pytest.mark.parametrize("section", ["uprobe", "tracepoint/a/b", "kprobe.multi/x", "fentry/x"])
def test_kprobe_kind_refuses_other_sections(section):
    with pytest.raises(BpfdError, match="is not a kprobe section"):
        at.check_spec("kprobe", kprobe(), section)


@pytest.mark.parametrize("attach, message", [
    (kprobe(function=None), "function None is not a valid symbol"),
    (kprobe(function="try to wake"), "not a valid symbol"),
    (kprobe(offset=-1), "offset must be a non-negative integer"),
    (kprobe(offset="8"), "offset must be a non-negative integer"),
])
def test_kprobe_bad_input(attach, message):
    with pytest.raises(BpfdError, match=message):
        at.check_spec("kprobe", attach)


def test_kprobe_offset_and_dotted_symbols():
    at.check_spec("kprobe", kprobe(function="do_sys_openat2", offset=16))
    at.check_spec("kprobe", kprobe(function="tcp_v4_connect.cold"))


# --- uprobes ----------------------------------------------------------------------------


@pytest.mark.parametrize("attach", [
    uprobe(), uprobe(target="libc.so.6"), uprobe(target="/usr/bin/bash", function="readline"),
    uprobe(function=None, offset=0x1234), uprobe(function="malloc@GLIBC_2.2.5"), uprobe(pid=42),
])
def test_uprobe_valid(attach):
    at.check_spec("uprobe", attach)


@pytest.mark.parametrize("attach, message", [
    (uprobe(target=None), "target is required"),
    (uprobe(target=" "), "target is required"),
    (uprobe(target="lib/libc.so.6"), "must be an absolute path or a library name"),
    (uprobe(function=None, offset=0), "needs function, offset or both"),
    (uprobe(pid=-1), "pid must be a process id"),
    (uprobe(function="a b"), "not a valid symbol"),
])
def test_uprobe_bad_input(attach, message):
    with pytest.raises(BpfdError, match=message):
        at.check_spec("uprobe", attach)


@pytest.mark.parametrize("section, retprobe", [
    ("uprobe", False), ("uprobe/libc.so.6:malloc", False), ("uprobe.s", False),
    ("uretprobe", True), ("uretprobe.s/x", True),
])
def test_uprobe_section_matches_retprobe(section, retprobe):
    at.check_spec("uprobe", uprobe(retprobe=retprobe), section)


def test_uretprobe_section_without_retprobe_is_refused():
    with pytest.raises(BpfdError, match="makes it a uretprobe: set retprobe: true"):
        at.check_spec("uprobe", uprobe(retprobe=False), "uretprobe")
    with pytest.raises(BpfdError, match="makes it a uprobe, not a uretprobe"):
        at.check_spec("uprobe", uprobe(retprobe=True), "uprobe")


def test_uprobe_kind_refuses_kprobe_sections():
    with pytest.raises(BpfdError, match="is not a uprobe section"):
        at.check_spec("uprobe", uprobe(), "kprobe/x")


# --- fentry / fexit --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fentry", "fexit"])
def test_trampoline_section_must_name_the_function(kind):
    at.check_spec(kind, {"function": "do_unlinkat"})
    at.check_spec(kind, {"function": "do_unlinkat"}, "%s/do_unlinkat" % kind)
    at.check_spec(kind, {"function": "do_unlinkat"}, "%s.s/do_unlinkat" % kind)
    with pytest.raises(BpfdError, match="attaches to vfs_read, not to function do_unlinkat"):
        at.check_spec(kind, {"function": "do_unlinkat"}, "%s/vfs_read" % kind)
    with pytest.raises(BpfdError, match=r"names no kernel function.*SEC\(\"%s/do_unlinkat\"\)" % kind):
        at.check_spec(kind, {"function": "do_unlinkat"}, kind)
    with pytest.raises(BpfdError, match="not a valid symbol"):
        at.check_spec(kind, {"function": None})


def test_fexit_kind_refuses_fentry_section():
    with pytest.raises(BpfdError, match="is not a fexit section"):
        at.check_spec("fexit", {"function": "do_unlinkat"}, "fentry/do_unlinkat")


def test_section_probe():
    assert at.section_probe("kprobe", "kretprobe/x") == ("kretprobe", True, "x")
    assert at.section_probe("uprobe", "uprobe") == ("uprobe", False, None)
    assert at.section_probe("fentry", "fentry/do_unlinkat") == ("fentry", None, "do_unlinkat")


# --- library names: /etc/ld.so.cache -------------------------------------------------------


def ld_so_cache(entries: list, old_format_first: bool = False) -> bytes:
    """A glibc ld.so.cache (new format) holding (soname, path) pairs."""
    header_size, entry_size = 48, 24
    strings = b""
    offsets = []
    base = header_size + entry_size * len(entries)
    for soname, path in entries:
        key = base + len(strings)
        strings += soname.encode() + b"\0"
        value = base + len(strings)
        strings += path.encode() + b"\0"
        offsets.append((key, value))
    header = struct.pack("<20sII", b"glibc-ld.so.cache1.1", len(entries), len(strings)) + bytes(20)
    body = b"".join(struct.pack("<iIIIQ", 0x0303, key, value, 0, 0) for key, value in offsets)
    new = header + body + strings
    if old_format_first:
        return b"ld.so-1.7.0\0" + struct.pack("<I", 0) + new
    return new


CACHE = [
    ("libcrypt.so.1", "/lib/x86_64-linux-gnu/libcrypt.so.1"),
    ("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
    ("libc.so.6", "/lib/i386-linux-gnu/libc.so.6"),
    ("libcap.so.2", "/lib/x86_64-linux-gnu/libcap.so.2"),
    ("libssl.so.3", "/lib/x86_64-linux-gnu/libssl.so.3"),
]


@pytest.mark.parametrize("old_first", [False, True])
def test_parse_ld_so_cache(old_first):
    assert at.parse_ld_so_cache(ld_so_cache(CACHE, old_first)) == CACHE


def test_parse_ld_so_cache_of_garbage():
    assert at.parse_ld_so_cache(b"not a cache") == []


@pytest.mark.parametrize("name, paths", [
    ("libc", ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/i386-linux-gnu/libc.so.6"]),
    ("libc.so.6", ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/i386-linux-gnu/libc.so.6"]),
    ("libssl", ["/lib/x86_64-linux-gnu/libssl.so.3"]),
    ("libcap", ["/lib/x86_64-linux-gnu/libcap.so.2"]),
    ("libca", []),  # a prefix of a name is not the name
    ("libnothere", []),
])
def test_library_candidates(name, paths):
    assert at.library_candidates(name, CACHE) == paths


def _fake_elf(path, machine=62) -> None:
    """An ELF64 little-endian header for `machine` (62: x86-64), enough for the class check."""
    path.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HH", 3, machine) + bytes(44))


def test_resolve_target_absolute(tmp_path):
    binary = tmp_path / "app"
    _fake_elf(binary)
    assert at.resolve_target(str(binary)) == str(binary)
    with pytest.raises(BpfdError, match="uprobe target /nonexistent/app does not exist"):
        at.resolve_target("/nonexistent/app")
    with pytest.raises(BpfdError, match="does not exist"):
        at.resolve_target(str(tmp_path))  # a directory is no target


def test_resolve_target_through_the_cache(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    _fake_elf(lib / "libdemo.so.4")
    cache = tmp_path / "ld.so.cache"
    cache.write_bytes(ld_so_cache([("libdemo.so.4", str(lib / "libdemo.so.4")),
                                   ("libgone.so.1", str(lib / "libgone.so.1"))]))
    assert at.resolve_target("libdemo", str(cache), lib_dirs=()) == str(lib / "libdemo.so.4")
    assert at.resolve_target("libdemo.so.4", str(cache), lib_dirs=()) == str(lib / "libdemo.so.4")
    with pytest.raises(BpfdError, match="uprobe target libgone was not found"):
        at.resolve_target("libgone", str(cache), lib_dirs=())


def test_resolve_target_in_library_directories(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    _fake_elf(lib / "libextra.so.2")
    os.symlink("libextra.so.2", lib / "libextra.so")
    found = at.resolve_target("libextra", str(tmp_path / "no-cache"), lib_dirs=(str(tmp_path / "none"), str(lib)))
    assert found == str(lib / "libextra.so.2")  # the symlink resolved
    with pytest.raises(BpfdError, match="neither an absolute path nor a library"):
        at.resolve_target("libmissing", str(tmp_path / "no-cache"), lib_dirs=(str(lib),))


def test_resolve_target_prefers_this_machine(tmp_path):
    native = at._elf_machine("/proc/self/exe")
    if native is None:
        pytest.skip("this Python is not an ELF binary")
    other_dir, native_dir = tmp_path / "other", tmp_path / "native"
    other_dir.mkdir()
    native_dir.mkdir()
    _fake_elf(other_dir / "libm2.so.1", machine=native[1] + 1)
    _fake_elf(native_dir / "libm2.so.1", machine=native[1])
    if native[0] != 2:
        pytest.skip("this Python is not a 64-bit ELF")
    cache = tmp_path / "cache"
    cache.write_bytes(ld_so_cache([("libm2.so.1", str(other_dir / "libm2.so.1")),
                                   ("libm2.so.1", str(native_dir / "libm2.so.1"))]))
    assert at.resolve_target("libm2", str(cache), lib_dirs=()) == str(native_dir / "libm2.so.1")


# --- ELF function symbols ----------------------------------------------------------------


def elf_with_symbols(symbols: list) -> bytes:
    """A relocatable ELF64 with .symtab/.strtab: [(name, type, section index)]."""
    strtab = b"\0"
    syms = [bytes(24)]
    for name, sym_type, shndx in symbols:
        syms.append(struct.pack("<IBBHQQ", len(strtab), (1 << 4) | sym_type, 0, shndx, 0x1000, 8))
        strtab += name.encode() + b"\0"
    symtab = b"".join(syms)
    shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0"
    text = b"\xc3" * 16
    off_text = 64
    off_symtab = off_text + len(text)
    off_strtab = off_symtab + len(symtab)
    off_shstr = off_strtab + len(strtab)
    shoff = off_shstr + len(shstrtab)
    shoff += (-shoff) % 8
    sections = [
        bytes(64),
        struct.pack("<IIQQQQIIQQ", 1, 1, 6, 0, off_text, len(text), 0, 0, 16, 0),
        struct.pack("<IIQQQQIIQQ", 7, 2, 0, 0, off_symtab, len(symtab), 3, 1, 8, 24),
        struct.pack("<IIQQQQIIQQ", 15, 3, 0, 0, off_strtab, len(strtab), 0, 0, 1, 0),
        struct.pack("<IIQQQQIIQQ", 23, 3, 0, 0, off_shstr, len(shstrtab), 0, 0, 1, 0),
    ]
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 1, 62, 1, 0, 0, shoff,
                         0, 64, 0, 0, 64, len(sections), 4)
    body = header + text + symtab + strtab + shstrtab
    return body + bytes(shoff - len(body)) + b"".join(sections)


def test_elf_functions(tmp_path):
    path = tmp_path / "app.o"
    path.write_bytes(elf_with_symbols([
        ("probe_me", 2, 1), ("ifunc_memcpy", 10, 1), ("a_variable", 1, 1), ("undefined_fn", 2, 0),
    ]))
    assert at.elf_functions(str(path)) == {"probe_me", "ifunc_memcpy"}


def test_elf_functions_of_non_elf(tmp_path):
    path = tmp_path / "script.sh"
    path.write_text("#!/bin/sh\n")
    assert at.elf_functions(str(path)) is None
    assert at.elf_functions(str(tmp_path / "missing")) is None


# --- host probes on fake trees -------------------------------------------------------------


@pytest.fixture
def fake_host(tmp_path, monkeypatch):
    """Empty sysfs PMU dir and tracefs with one tracepoint; kallsyms with two symbols."""
    tracefs = tmp_path / "tracing"
    (tracefs / "events" / "syscalls" / "sys_enter_openat").mkdir(parents=True)
    pmu = tmp_path / "devices"
    pmu.mkdir()
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffffffff81000000 T try_to_wake_up\nffffffff82000000 D some_data\n"
                        "ffffffff83000000 t helper_fn [somemod]\n")
    monkeypatch.setattr(at, "TRACEFS_MOUNTS", (str(tracefs), str(tmp_path / "debug" / "tracing")))
    monkeypatch.setattr(at, "PMU_DIR", str(pmu))
    monkeypatch.setattr(at, "KALLSYMS", str(kallsyms))
    return tmp_path


def test_probe_tracepoint(fake_host):
    at.probe_kernel("tracepoint", {"tracepoint": "syscalls/sys_enter_openat"})
    with pytest.raises(BpfdError, match=r"tracepoint syscalls/sys_enter_nope does not exist on this kernel"):
        at.probe_kernel("tracepoint", {"tracepoint": "syscalls/sys_enter_nope"})
    with pytest.raises(BpfdError, match=r"no category nope either"):
        at.probe_kernel("tracepoint", {"tracepoint": "nope/x"})


def test_probe_kprobes_missing(fake_host):
    with pytest.raises(BpfdError, match=r"this kernel cannot attach kprobes \(CONFIG_KPROBES is not set\)"):
        at.probe_kernel("kprobe", kprobe())


def test_probe_kprobes_present(fake_host):
    (fake_host / "devices" / "kprobe").mkdir()
    at.probe_kernel("kprobe", kprobe())
    at.probe_kernel("kprobe", kprobe(function="helper_fn"))
    with pytest.raises(BpfdError, match="function some_data is not a kernel symbol"):
        at.probe_kernel("kprobe", kprobe(function="some_data"))


def test_kprobe_events_file_is_enough(fake_host):
    (fake_host / "tracing" / "kprobe_events").write_text("")
    assert at.kprobes_supported()


def test_probe_uprobes(fake_host, tmp_path):
    with pytest.raises(BpfdError, match=r"this kernel cannot attach uprobes"):
        at.probe_kernel("uprobe", uprobe())
    (fake_host / "devices" / "uprobe").mkdir()
    with pytest.raises(BpfdError, match="uprobe target /nonexistent does not exist"):
        at.probe_kernel("uprobe", uprobe(target="/nonexistent"))
    binary = tmp_path / "app.o"
    binary.write_bytes(elf_with_symbols([("probe_me", 2, 1)]))
    at.probe_kernel("uprobe", uprobe(target=str(binary), function="probe_me"))
    at.probe_kernel("uprobe", uprobe(target=str(binary), function=None, offset=16))
    with pytest.raises(BpfdError, match=r"function nope is not a function symbol of .*app\.o"):
        at.probe_kernel("uprobe", uprobe(target=str(binary), function="nope"))
    with pytest.raises(BpfdError, match="pid 999999999: no such process"):
        at.probe_kernel("uprobe", uprobe(target=str(binary), function="probe_me", pid=999999999))
    at.probe_kernel("uprobe", uprobe(target=str(binary), function="probe_me", pid=os.getpid()))


def test_tracefs_not_mounted_is_explained(fake_host, monkeypatch):
    monkeypatch.setattr(at, "TRACEFS_MOUNTS", (str(fake_host / "nothing"),))
    with pytest.raises(BpfdError, match="tracefs is not mounted"):
        at.tracefs_root(mount=False)


def test_kallsyms_has(fake_host):
    assert at.kallsyms_has("try_to_wake_up", str(fake_host / "kallsyms")) is True
    assert at.kallsyms_has("some_data", str(fake_host / "kallsyms")) is False
    assert at.kallsyms_has("x", str(fake_host / "missing")) is None


# --- facts and diff text -----------------------------------------------------------------


@pytest.mark.parametrize("kind, attach, text", [
    ("tracepoint", {"tracepoint": "syscalls/sys_enter_openat"}, "tracepoint syscalls/sys_enter_openat"),
    ("kprobe", kprobe(), "kprobe try_to_wake_up"),
    ("kprobe", kprobe(offset=8, retprobe=True), "kretprobe try_to_wake_up+8"),
    ("uprobe", uprobe(pid=42), "uprobe libc:malloc pid 42"),
    ("uprobe", uprobe(function=None, offset=16, retprobe=True), "uretprobe libc:+16"),
    ("fentry", {"function": "do_unlinkat"}, "fentry do_unlinkat"),
    ("fexit", {"function": "do_unlinkat"}, "fexit do_unlinkat"),
])
def test_attach_text(kind, attach, text):
    assert _facts.attach_text(kind, attach) == text


def test_program_facts_carry_the_attach_point():
    record = {"name": "tp", "kind": "tracepoint", "priority": None, "interface": None, "proceed_on": [],
              "attach": {"tracepoint": "syscalls/sys_enter_openat"}, "link_id": 12, "prog_id": 34}
    facts = _facts.program_facts(record, None, None, kernel=False)
    assert (facts["tracepoint"], facts["link_id"], facts["id"]) == ("syscalls/sys_enter_openat", 12, 34)
    assert _facts.program_diff_text(dict(facts, sha256="ab", bpf_function_name="count",
                                         global_data={"target_tgid": "01000000"})) == (
        "tp (tracepoint syscalls/sys_enter_openat):\n  bpf_function_name=count sha256=ab\n"
        "  global_data: target_tgid=01000000\n")
    assert _facts.program_diff_text(None) == ""
