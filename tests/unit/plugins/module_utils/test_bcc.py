# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Programs from C source: the pure helpers of _bcc (identity, sections, inputs,
kernel headers, compiler messages), then real compiles with bcc whose objects
are read back with bpftool / llvm-objdump, and the bytecode-store lookup of
compiled_source with a scratch Layout."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _bcc
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._state import Layout

SOURCE = b"int f(void *ctx) { return 0; }\n"


# --- source_digest ------------------------------------------------------------------------


def base_digest(**changes) -> str:
    args = dict(text=SOURCE, cflags=["-DX=1", "-O2"], function="f", section="xdp")
    args.update(changes)
    return _bcc.source_digest(args["text"], args["cflags"], args["function"], args["section"])


def test_source_digest_is_stable_sha256() -> None:
    first = base_digest()
    assert first == base_digest()
    assert re.fullmatch(r"[0-9a-f]{64}", first)


@pytest.mark.parametrize("changes", [
    {"text": SOURCE.replace(b"0", b"1")},                  # one byte of source
    {"text": SOURCE + b"\n"},
    {"cflags": ["-DX=2", "-O2"]},                          # one cflag
    {"cflags": ["-DX=1"]},
    {"cflags": ["-DX=1", "-O2", "-g"]},
    {"cflags": ["-O2", "-DX=1"]},                          # order of cflags
    {"function": "g"},
    {"function": None},
    {"section": "tc"},
    {"section": "kprobe"},
], ids=["source-byte", "source-newline", "cflag-value", "cflag-removed", "cflag-added", "cflag-order",
        "function", "no-function", "section-tc", "section-kprobe"])
def test_source_digest_changes_with_each_input(changes: dict) -> None:
    assert base_digest(**changes) != base_digest()


def test_source_digest_length_prefixes_parts() -> None:
    assert _bcc.source_digest(SOURCE, ["-DA", "B"], None, "xdp") != _bcc.source_digest(SOURCE, ["-DAB"], None, "xdp")
    assert _bcc.source_digest(SOURCE, ["-DA", ""], None, "xdp") != _bcc.source_digest(SOURCE, ["-DA"], None, "xdp")
    # a part boundary moved between function and section
    assert _bcc.source_digest(SOURCE, [], "fx", "dp") != _bcc.source_digest(SOURCE, [], "f", "xdp")
    # the source's end is not confusable with the function
    assert _bcc.source_digest(SOURCE + b"f", [], "", "xdp") != _bcc.source_digest(SOURCE, [], "f", "xdp")


# --- section_for ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind, attach, section", [
    ("xdp", None, "xdp"),
    ("xdp", {"interface": "eth0"}, "xdp"),
    ("tc", {"direction": "ingress"}, "tc"),
    ("tracepoint", {"tracepoint": "syscalls/sys_enter_openat"}, "tracepoint/syscalls/sys_enter_openat"),
    ("kprobe", {"function": "do_sys_openat2"}, "kprobe"),
    ("kprobe", {"function": "do_sys_openat2", "retprobe": False}, "kprobe"),
    ("kprobe", {"function": "do_sys_openat2", "retprobe": True}, "kretprobe"),
    ("uprobe", {"target": "/bin/bash", "function": "readline"}, "uprobe"),
    ("uprobe", {"target": "/bin/bash", "function": "readline", "retprobe": True}, "uretprobe"),
    ("fentry", {"function": "do_unlinkat"}, "fentry/do_unlinkat"),
    ("fexit", {"function": "do_unlinkat"}, "fexit/do_unlinkat"),
])
def test_section_for(kind: str, attach, section: str) -> None:
    assert _bcc.section_for(kind, attach) == section


@pytest.mark.parametrize("kind", ["lsm", "socket_filter", "XDP", ""])
def test_section_for_unknown_kind(kind: str) -> None:
    with pytest.raises(BpfdError, match="programs of kind %s cannot be compiled from source" % kind):
        _bcc.section_for(kind, {})


# --- check_cflags / read_source -------------------------------------------------------------


@pytest.mark.parametrize("cflags", [[], ["-DX=1"], ["-O2", "-Wall", "-I/usr/include/x"]])
def test_check_cflags_accepts_lists_of_flags(cflags: list) -> None:
    result = _bcc.check_cflags(cflags)
    assert result == cflags
    assert result is not cflags  # a copy


@pytest.mark.parametrize("cflags", ["-DX=1", ("-DX=1",), None, {"-DX": 1}, [""], ["  "], ["-O2", ""], [1],
                                    ["-O2", None]])
def test_check_cflags_refuses(cflags) -> None:
    with pytest.raises(BpfdError, match=r"^cflags must be a list of compiler flags"):
        _bcc.check_cflags(cflags)


def test_read_source_reads_bytes(tmp_path) -> None:
    path = tmp_path / "prog.c"
    path.write_bytes(SOURCE + b"\xff")
    assert _bcc.read_source(str(path)) == SOURCE + b"\xff"


def test_read_source_refuses_relative_paths(tmp_path, monkeypatch) -> None:
    (tmp_path / "prog.c").write_bytes(SOURCE)
    monkeypatch.chdir(tmp_path)  # the relative path exists: still refused
    with pytest.raises(BpfdError, match="source prog.c must be an absolute path"):
        _bcc.read_source("prog.c")


def test_read_source_refuses_missing_files(tmp_path) -> None:
    path = str(tmp_path / "missing.c")
    with pytest.raises(BpfdError, match="source file %s does not exist" % re.escape(path)) as info:
        _bcc.read_source(path)
    assert info.value.details == {"source": path}


def test_read_source_refuses_directories(tmp_path) -> None:
    with pytest.raises(BpfdError, match="source %s is not a regular file" % re.escape(str(tmp_path))):
        _bcc.read_source(str(tmp_path))


def test_read_source_refuses_elf_objects(tmp_path) -> None:
    path = tmp_path / "prog.o"
    path.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))
    with pytest.raises(BpfdError, match="is an ELF object, not C source"):
        _bcc.read_source(str(path))


# --- headers_problem ---------------------------------------------------------------------------


@pytest.fixture
def no_kheaders(monkeypatch) -> None:
    """headers_problem also accepts the kernel's built-in archive; these tests assume
    there is none (it is a real file of the running kernel, not faked here)."""
    if os.path.exists(_bcc.KHEADERS):
        pytest.skip("%s exists on this host (CONFIG_IKHEADERS): headers are always found" % _bcc.KHEADERS)
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)


def test_headers_problem_missing_build_dir(tmp_path, no_kheaders) -> None:
    (tmp_path / "6.1.0-test").mkdir()
    problem = _bcc.headers_problem("6.1.0-test", str(tmp_path))
    build = str(tmp_path / "6.1.0-test" / "build")
    assert problem is not None
    assert "running kernel 6.1.0-test" in problem
    assert "it looked in %s, which does not exist" % build in problem
    assert _bcc.KHEADERS in problem


def test_headers_problem_missing_release_dir(tmp_path, no_kheaders) -> None:
    problem = _bcc.headers_problem("9.9.9", str(tmp_path / "nowhere"))
    assert "%s, which does not exist" % os.path.join(str(tmp_path / "nowhere"), "9.9.9", "build") in problem


def test_headers_problem_dangling_link(tmp_path, no_kheaders) -> None:
    (tmp_path / "6.1.0-test").mkdir()
    target = tmp_path / "usr-src" / "linux-headers-6.1.0-test"
    (tmp_path / "6.1.0-test" / "build").symlink_to(target)
    problem = _bcc.headers_problem("6.1.0-test", str(tmp_path))
    assert problem is not None
    assert "is a dangling link to %s" % target in problem
    assert "does not exist" not in problem


def test_headers_problem_present(tmp_path, no_kheaders) -> None:
    (tmp_path / "6.1.0-test" / "build").mkdir(parents=True)
    assert _bcc.headers_problem("6.1.0-test", str(tmp_path)) is None
    # a link to a headers tree is as good
    (tmp_path / "tree").mkdir()
    (tmp_path / "6.2.0-test").mkdir()
    (tmp_path / "6.2.0-test" / "build").symlink_to(tmp_path / "tree")
    assert _bcc.headers_problem("6.2.0-test", str(tmp_path)) is None


def test_headers_problem_defaults_to_running_release(tmp_path, no_kheaders) -> None:
    release = os.uname().release
    assert "running kernel %s" % release in _bcc.headers_problem(modules_dir=str(tmp_path))
    (tmp_path / release / "build").mkdir(parents=True)
    assert _bcc.headers_problem(modules_dir=str(tmp_path)) is None


def test_headers_problem_bcc_kernel_source(tmp_path, monkeypatch, no_kheaders) -> None:
    (tmp_path / "6.1.0-test" / "build").mkdir(parents=True)
    missing = str(tmp_path / "no-such-headers")
    monkeypatch.setenv("BCC_KERNEL_SOURCE", missing)
    # the override wins even though /lib/modules/<release>/build would do
    assert _bcc.headers_problem("6.1.0-test", str(tmp_path)) == \
        "BCC_KERNEL_SOURCE=%s is not a directory of kernel headers" % missing
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path))
    assert _bcc.headers_problem("6.1.0-missing", str(tmp_path)) is None


# --- compile_error ------------------------------------------------------------------------------

OPERATOR_PATH = "/srv/bpf/prog.c"

CLANG_OUTPUT = """\
In file included from /virtual/main.c:2:
/virtual/include/bcc/helpers.h:52:2: warning: some header warning [-Wsome-warning]
#warning something
 ^
/virtual/main.c:3:15: warning: shift count >= width of type [-Wshift-count-overflow]
    int a = 1 << 40;
              ^  ~~
/virtual/main.c:7:13: error: use of undeclared identifier 'undefined_one'
    int b = undefined_one;
            ^
/virtual/main.c:4:6: note: previous definition is here
int f(struct xdp_md *ctx) {
     ^
/virtual/main.c:8:13: error: use of undeclared identifier 'undefined_two'
    int c = undefined_two;
            ^
2 errors generated.
"""


def test_compile_error_starts_with_first_error_in_operator_terms() -> None:
    message = _bcc.compile_error(CLANG_OUTPUT, OPERATOR_PATH)
    lines = message.splitlines()
    assert lines[0] == "%s:7:13: error: use of undeclared identifier 'undefined_one'" % OPERATOR_PATH
    assert "/virtual/main.c" not in message
    assert "warning" not in message  # the warnings came before the first error
    assert "%s:4:6: note: previous definition is here" % OPERATOR_PATH in lines
    assert "%s:8:13: error: use of undeclared identifier 'undefined_two'" % OPERATOR_PATH in lines
    assert lines[-1] == "2 errors generated."
    assert len(lines) <= _bcc.MAX_ERROR_LINES + 1


def test_compile_error_long_output_is_cut_and_keeps_the_summary() -> None:
    errors = "".join("/virtual/main.c:%d:5: error: use of undeclared identifier 'x%d'\n    x%d;\n    ^\n" % (n, n, n)
                     for n in range(10, 30))
    stderr = "/virtual/main.c:3:1: warning: w [-Wfoo]\nint a;\n^\n" + errors + "20 errors generated.\n"
    lines = _bcc.compile_error(stderr, OPERATOR_PATH).splitlines()
    assert len(lines) == _bcc.MAX_ERROR_LINES + 1
    assert lines[0] == "%s:10:5: error: use of undeclared identifier 'x10'" % OPERATOR_PATH
    assert lines[-1] == "20 errors generated."
    assert lines[:-1] == [line.replace("/virtual/main.c", OPERATOR_PATH)
                          for line in (errors.splitlines()[:_bcc.MAX_ERROR_LINES])]


def test_compile_error_keeps_summary_with_warnings() -> None:
    errors = "".join("/virtual/main.c:%d:5: error: use of undeclared identifier 'x%d'\n    x%d;\n    ^\n" % (n, n, n)
                     for n in range(10, 30))
    stderr = "/virtual/main.c:3:1: warning: w [-Wfoo]\nint a;\n^\n" + errors + "1 warning and 20 errors generated.\n"
    lines = _bcc.compile_error(stderr, OPERATOR_PATH).splitlines()
    assert lines[-1] == "1 warning and 20 errors generated."


def test_compile_error_fatal_error() -> None:
    stderr = ("/virtual/main.c:1:10: fatal error: 'missing.h' file not found\n#include \"missing.h\"\n"
              "         ^~~~~~~~~~~\n1 error generated.\n")
    lines = _bcc.compile_error(stderr, OPERATOR_PATH).splitlines()
    assert lines == ["%s:1:10: fatal error: 'missing.h' file not found" % OPERATOR_PATH, '#include "missing.h"',
                     "         ^~~~~~~~~~~", "1 error generated."]


def test_compile_error_drops_modprobe_noise() -> None:
    stderr = "sh: 1: modprobe: not found\n" + CLANG_OUTPUT + "sh: 1: modprobe: not found\n"
    message = _bcc.compile_error(stderr, OPERATOR_PATH)
    assert "modprobe" not in message and "sh: " not in message
    assert message == _bcc.compile_error(CLANG_OUTPUT, OPERATOR_PATH)


def test_compile_error_without_diagnostics_keeps_the_tail() -> None:
    stderr = "sh: 1: modprobe: not found\n" + "".join("line %d\n" % n for n in range(20))
    message = _bcc.compile_error(stderr, OPERATOR_PATH)
    assert message == "; ".join("line %d" % n for n in range(8, 20))
    assert _bcc.compile_error("sh: 1: modprobe: not found\n\n", OPERATOR_PATH) == \
        "bcc could not compile the source (no compiler message)"


BCC_NO_HEADERS = """\
sh: 1: modprobe: not found
Unable to find kernel headers. Try rebuilding kernel with CONFIG_IKHEADERS=m (module) or installing the kernel \
development package for your running kernel version.
chdir(/lib/modules/6.18.44/build): No such file or directory
"""


def test_compile_error_missing_headers_gives_the_headers_message(tmp_path, monkeypatch) -> None:
    if os.path.exists(_bcc.KHEADERS):
        pytest.skip("%s exists on this host: headers_problem() never reports a problem" % _bcc.KHEADERS)
    missing = str(tmp_path / "no-headers")
    monkeypatch.setenv("BCC_KERNEL_SOURCE", missing)
    assert _bcc.compile_error(BCC_NO_HEADERS, OPERATOR_PATH) == _bcc.headers_problem()
    assert missing in _bcc.compile_error(BCC_NO_HEADERS, OPERATOR_PATH)
    # headers look present now, yet bcc said it found none: still a message about headers
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path))
    assert _bcc.compile_error(BCC_NO_HEADERS, OPERATOR_PATH) == "bcc found no kernel headers"


def test_compile_error_path_with_space() -> None:
    lines = _bcc.compile_error(CLANG_OUTPUT, "/srv/my bpf/prog.c").splitlines()
    assert lines[0] == "/srv/my bpf/prog.c:7:13: error: use of undeclared identifier 'undefined_one'"


# --- real compiles with bcc ------------------------------------------------------------------------

try:
    _bcc.import_bcc()
except _bcc.BccMissing as _exc:
    BCC_PROBLEM = _exc.import_error
else:
    BCC_PROBLEM = None
needs_bcc = pytest.mark.skipif(BCC_PROBLEM is not None, reason="bcc cannot be imported: %s" % BCC_PROBLEM)
# bcc compiles against the running kernel's headers (the fixture in tests/conftest.py).
compiles = pytest.mark.usefixtures("kernel_headers")


def test_missing_bcc_is_a_bpfd_error_naming_the_package(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bcc", None)  # what `import bcc` does without python3-bpfcc
    source = write_source(tmp_path, SOURCE)
    with pytest.raises(_bcc.BccMissing) as info:
        _bcc.compile_object(SOURCE, [], source_path=source, function=None, section="xdp",
                            out_path=str(tmp_path / "out.o"))
    assert isinstance(info.value, BpfdError)
    assert info.value.msg.startswith("compiling source needs bcc (Debian/Ubuntu package python3-bpfcc")
    assert info.value.import_error.startswith(("ImportError: ", "ModuleNotFoundError: "))
    assert not (tmp_path / "out.o").exists()


TWO_MAPS = b"""\
#include <uapi/linux/bpf.h>

BPF_ARRAY(packets, u64, 4);
BPF_HASH(never_used, u32, u64, 64);
BPF_F_TABLE("hash", u32, u64, sparse, 128, BPF_F_NO_PREALLOC);

int count_packets(struct xdp_md *ctx) {
    int key = 1;
    u64 *value = packets.lookup(&key);
    if (value)
        __sync_fetch_and_add(value, 1);
    u32 k = 5;
    u64 one = 1;
    sparse.update(&k, &one);
    return XDP_PASS;
}
"""

SEVERAL = b"""\
#include <uapi/linux/bpf.h>
int first_fn(struct xdp_md *ctx) { return XDP_PASS; }
int second_fn(struct xdp_md *ctx) { return XDP_DROP; }
"""

SYNTAX_ERROR = b"""\
#include <uapi/linux/bpf.h>

int broken(struct xdp_md *ctx) {
    int x = 1
    return XDP_PASS;
}
"""


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip("needs %s" % tool)
    return path


def btf_types(path: str) -> dict:
    proc = subprocess.run([need("bpftool"), "-j", "btf", "dump", "file", path], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return {t["id"]: t for t in json.loads(proc.stdout)["types"]}


def map_definitions(path: str) -> dict:
    """{map name: {field: value}} from the object's .maps DATASEC, as bpftool reads it."""
    types = btf_types(path)
    maps = {}
    for sec in (t for t in types.values() if t["kind"] == "DATASEC" and t["name"] == ".maps"):
        for var_ref in sec["vars"]:
            var = types[var_ref["type_id"]]
            struct = types[var["type_id"]]
            maps[var["name"]] = {m["name"]: types[types[m["type_id"]]["type_id"]]["nr_elems"]
                                 for m in struct["members"]}
    return maps


def write_source(tmp_path, text: bytes, name: str = "prog.c") -> str:
    path = tmp_path / name
    path.write_bytes(text)
    return str(path)


def compile_to(tmp_path, text: bytes, function=None, cflags=(), section="xdp") -> tuple[str, str, str]:
    source = write_source(tmp_path, text)
    out = str(tmp_path / "out.o")
    chosen = _bcc.compile_object(text, list(cflags), source_path=source, function=function, section=section,
                                 out_path=out)
    return chosen, out, source


def fd2_identity() -> tuple[int, int]:
    st = os.fstat(2)
    return st.st_dev, st.st_ino


@needs_bcc
@pytest.mark.needs_root
@pytest.mark.integration
@compiles
def test_compile_object_keeps_only_the_maps_the_function_uses(tmp_path) -> None:
    chosen, out, _source = compile_to(tmp_path, TWO_MAPS)
    assert chosen == "count_packets"
    assert map_definitions(out) == {
        "packets": {"type": 2, "key_size": 4, "value_size": 8, "max_entries": 4, "map_flags": 0},
        "sparse": {"type": 1, "key_size": 4, "value_size": 8, "max_entries": 128, "map_flags": 1},
    }
    dump = subprocess.run([need("llvm-objdump"), "-d", "-r", out], capture_output=True, text=True, check=False)
    assert dump.returncode == 0, dump.stderr
    assert "Disassembly of section xdp:" in dump.stdout
    assert "<count_packets>:" in dump.stdout
    targets = re.findall(r"R_BPF_64_64\s+(\S+)$", dump.stdout, re.M)
    assert sorted(set(targets)) == ["packets", "sparse"]
    assert "never_used" not in dump.stdout


@needs_bcc
@pytest.mark.needs_root
@pytest.mark.integration
@compiles
def test_compile_object_written_object_loads_with_libbpf(tmp_path) -> None:
    """What bcc compiled, loaded again from our object: maps as bcc defined them."""
    from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
    from ansible_collections.bpfd.core.plugins.module_utils import _loader
    _chosen, out, _source = compile_to(tmp_path, TWO_MAPS)
    loaded = _loader.load_program(out, function=None, prog_types=(libbpf.PROG_TYPE_XDP,), kind="xdp",
                                  map_pin_dir=str(tmp_path))
    try:
        assert loaded.function == "count_packets"
        assert sorted(loaded.maps) == ["packets", "sparse"]
        packet = bytes.fromhex("02000000000102000000000288b5") + bytes(50)
        retval, _duration = libbpf.prog_test_run(loaded.fd, packet)
        assert retval == 2  # XDP_PASS
        by_name = {m.name: m for m in loaded.obj.maps()}
        sparse = libbpf.map_info(by_name["sparse"].fd)
        assert (sparse["type"], sparse["max_entries"], sparse["map_flags"]) == (1, 128, 1)
        assert libbpf.map_lookup(by_name["packets"].fd, (1).to_bytes(4, "little"), 8) == (1).to_bytes(8, "little")
        assert libbpf.map_lookup(by_name["sparse"].fd, (5).to_bytes(4, "little"), 8) == (1).to_bytes(8, "little")
    finally:
        loaded.close()


@needs_bcc
@pytest.mark.needs_root
@pytest.mark.integration
@compiles
def test_compile_object_several_functions_need_a_name(tmp_path) -> None:
    with pytest.raises(BpfdError) as info:
        compile_to(tmp_path, SEVERAL)
    assert re.search(r"defines several functions \((first_fn, second_fn|second_fn, first_fn)\): "
                     r"set bpf_function_name", info.value.msg), info.value.msg
    assert not (tmp_path / "out.o").exists()
    chosen, out, _source = compile_to(tmp_path, SEVERAL, function="second_fn")
    assert chosen == "second_fn"
    symbols = subprocess.run([need("llvm-objdump"), "-t", out], capture_output=True, text=True, check=True).stdout
    assert re.search(r"\sg\s+F\s+xdp\s+[0-9a-f]+ second_fn$", symbols, re.M), symbols
    assert "first_fn" not in symbols


@needs_bcc
@pytest.mark.needs_root
@pytest.mark.integration
@compiles
def test_compile_object_unknown_function(tmp_path) -> None:
    with pytest.raises(BpfdError, match=r"function nope not found in .*prog\.c; it has: .*first_fn"):
        compile_to(tmp_path, SEVERAL, function="nope")


@needs_bcc
@pytest.mark.needs_root
@pytest.mark.integration
@compiles
def test_compile_object_syntax_error_and_fd2_restored(tmp_path) -> None:
    before = fd2_identity()
    with pytest.raises(BpfdError) as info:
        compile_to(tmp_path, SYNTAX_ERROR)
    assert fd2_identity() == before
    source = str(tmp_path / "prog.c")
    lines = info.value.msg.splitlines()
    assert lines[0] == "bcc could not compile %s:" % source
    assert lines[1].startswith("%s:4:14: error: " % source), lines
    assert "/virtual/main.c" not in info.value.msg
    assert info.value.details["source"] == source


@needs_bcc
@pytest.mark.needs_root
@pytest.mark.integration
@compiles
def test_compile_object_fd2_goes_back_where_it_was(tmp_path) -> None:
    """Writes to fd 2 after a compile (failed and successful) reach the original
    stderr, not bcc's log."""
    mine = tmp_path / "my-stderr"
    saved = os.dup(2)
    try:
        with open(mine, "wb") as sink:
            os.dup2(sink.fileno(), 2)
        with pytest.raises(BpfdError):
            compile_to(tmp_path, SYNTAX_ERROR)
        os.write(2, b"after-failure\n")
        compile_to(tmp_path, TWO_MAPS)
        os.write(2, b"after-success\n")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    assert mine.read_bytes().splitlines()[-2:] == [b"after-failure", b"after-success"]
    assert b"error:" not in mine.read_bytes(), "the compiler's messages went to bcc's log, not to stderr"
    assert not list(tmp_path.glob("bpfd-bcc-*.log")) and not (tmp_path / "bcc.log").exists()


# --- compiled_source with a scratch layout ----------------------------------------------------------


@pytest.fixture
def layout(tmp_path, monkeypatch):
    bpffs = "/sys/fs/bpf/bpfd-test-%s" % uuid.uuid4().hex[:8]
    existed = os.path.exists(bpffs)
    monkeypatch.setenv("BPFD_BPFFS_DIR", bpffs)
    monkeypatch.setenv("BPFD_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("BPFD_LIB_DIR", str(tmp_path / "lib"))
    scratch_root = tmp_path / "scratch"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))  # where compiled_source's mkdtemp goes
    yield Layout()
    created = not existed and os.path.exists(bpffs)
    if created:
        shutil.rmtree(bpffs, ignore_errors=True)
    assert not created, "compiled_source created %s" % bpffs


def sha256_of(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@needs_bcc
@pytest.mark.needs_root
@pytest.mark.integration
@compiles
def test_compiled_source_compiles_then_finds_the_stored_object(tmp_path, layout) -> None:
    assert layout.bytecode_dir == str(tmp_path / "lib" / "bytecode")
    source = write_source(tmp_path, TWO_MAPS)
    cflags = ["-DUNUSED_FLAG=1"]
    digest = _bcc.source_digest(TWO_MAPS, cflags, None, "xdp")
    scratch_root = tmp_path / "scratch"

    with _bcc.compiled_source(source, cflags, kind="xdp", attach={"interface": "lo"}, function=None,
                              layout=layout) as first:
        assert first.compiled is True
        assert first.sha256 == digest
        assert os.path.isfile(first.object_path)
        assert os.path.basename(first.object_path) == "%s.o" % digest
        scratch = os.path.dirname(first.object_path)
        assert os.path.dirname(scratch) == str(scratch_root)
        assert not first.object_path.startswith(layout.bytecode_dir)
        assert first.facts == {"path": source, "cflags": cflags, "object_sha256": sha256_of(first.object_path)}
        assert sorted(map_definitions(first.object_path)) == ["packets", "sparse"]
        os.makedirs(layout.bytecode_dir)
        stored = os.path.join(layout.bytecode_dir, "%s.o" % first.sha256)
        shutil.copyfile(first.object_path, stored)
    assert not os.path.exists(scratch), "the scratch directory outlived the context"
    assert list(scratch_root.iterdir()) == []

    with _bcc.compiled_source(source, cflags, kind="xdp", attach=None, function=None, layout=layout) as second:
        assert second.compiled is False
        assert second.object_path == stored
        assert second.sha256 == digest
        assert second.facts == {"path": source, "cflags": cflags, "object_sha256": sha256_of(stored)}
    assert os.path.isfile(stored)  # the stored object is not the context's to remove
    assert list(scratch_root.iterdir()) == []

    # another cflag is another identity: compiled again, the stored object untouched
    with _bcc.compiled_source(source, cflags + ["-DMORE=1"], kind="xdp", attach=None, function=None,
                              layout=layout) as third:
        assert third.compiled is True
        assert third.sha256 != digest
    assert sorted(os.listdir(layout.bytecode_dir)) == ["%s.o" % digest]


@needs_bcc
@pytest.mark.needs_root
@pytest.mark.integration
@compiles
def test_compiled_source_failure_leaves_no_scratch(tmp_path, layout) -> None:
    source = write_source(tmp_path, SYNTAX_ERROR)
    with pytest.raises(BpfdError, match=r"^bcc could not compile %s:" % re.escape(source)):
        with _bcc.compiled_source(source, [], kind="xdp", attach=None, function=None, layout=layout):
            pytest.fail("a broken source yielded an object")
    assert list((tmp_path / "scratch").iterdir()) == []


def test_compiled_source_checks_inputs_before_compiling(tmp_path, layout) -> None:
    source = write_source(tmp_path, SOURCE)
    with pytest.raises(BpfdError, match="cflags must be a list"):
        with _bcc.compiled_source(source, "-O2", kind="xdp", attach=None, function=None, layout=layout):
            pass
    with pytest.raises(BpfdError, match="programs of kind lsm cannot be compiled"):
        with _bcc.compiled_source(source, [], kind="lsm", attach=None, function=None, layout=layout):
            pass
    with pytest.raises(BpfdError, match="must be an absolute path"):
        with _bcc.compiled_source("prog.c", [], kind="xdp", attach=None, function=None, layout=layout):
            pass
    assert list((tmp_path / "scratch").iterdir()) == []


def test_compiled_source_found_in_store_never_imports_bcc(tmp_path, collections_path) -> None:
    """A stored object is used as is: no compile, and bcc (libbcc, LLVM) is not even imported."""
    source = write_source(tmp_path, SOURCE)
    digest = _bcc.source_digest(SOURCE, ["-DX=1"], "f", "kretprobe")
    bytecode = tmp_path / "lib" / "bytecode"
    bytecode.mkdir(parents=True)
    stored = bytecode / ("%s.o" % digest)
    stored.write_bytes(b"\x7fELF stored object")
    script = textwrap.dedent("""
        import json, sys
        sys.path.insert(0, %r)
        from ansible_collections.bpfd.core.plugins.module_utils import _bcc
        from ansible_collections.bpfd.core.plugins.module_utils._state import Layout
        with _bcc.compiled_source(%r, ["-DX=1"], kind="kprobe", attach={"function": "f", "retprobe": True},
                                  function="f", layout=Layout()) as found:
            result = dict(found.__dict__)
        result["bcc_imported"] = "bcc" in sys.modules
        print(json.dumps(result))
    """) % (str(collections_path), source)
    env = dict(os.environ, BPFD_LIB_DIR=str(tmp_path / "lib"), BPFD_RUN_DIR=str(tmp_path / "run"),
               BPFD_BPFFS_DIR=str(tmp_path / "bpffs"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == {
        "object_path": str(stored), "sha256": digest, "compiled": False, "bcc_imported": False,
        "facts": {"path": source, "cflags": ["-DX=1"],
                  "object_sha256": hashlib.sha256(b"\x7fELF stored object").hexdigest()},
    }


@pytest.mark.parametrize("kind, attach, match", [
    ("tracepoint", {}, "is not valid"),
    ("tracepoint", {"tracepoint": "no-slash"}, "is not valid"),
    ("fentry", {}, "function"),
    ("uprobe", {"function": "getpid"}, "target is required"),
])
def test_section_for_refuses_an_attach_description_before_any_compile(kind, attach, match) -> None:
    with pytest.raises(BpfdError, match=match):
        _bcc.section_for(kind, attach)
