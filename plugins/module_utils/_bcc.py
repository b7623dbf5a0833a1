# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""C source -> BPF object, compiled on the managed host with bcc.

bcc compiles the source and creates its maps; we take the chosen function's
instructions (map references already resolved to bcc's map fds), turn those
references back into relocations and write an ordinary object
(_object_writer). From there a program from source is a program like any
other: libbpf loads it, its maps are pinned in our tree, the bytecode store
keeps the object, and restores or dispatcher rebuilds never compile again.

Identity: sha256 over the source and how it is compiled (cflags, the function,
the program's section), so an unchanged source is found in the bytecode store
and not compiled at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Iterator

from ansible_collections.bpfd.core.plugins.module_utils import _attach_trace
from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
from ansible_collections.bpfd.core.plugins.module_utils import _object_writer
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._loader import file_sha256
from ansible_collections.bpfd.core.plugins.module_utils._state import Layout

# For missing_required_lib: bcc's Python module comes with the distribution's bcc.
BCC_LIBRARY = "bcc (Debian/Ubuntu package python3-bpfcc, Fedora/RHEL python3-bcc)"
BCC_URL = "https://github.com/iovisor/bcc/blob/master/INSTALL.md"
BCC_MAIN_FILE = "/virtual/main.c"  # the name bcc's clang gives the source in its messages
KHEADERS = "/sys/kernel/kheaders.tar.xz"
MAX_ERROR_LINES = 12
# Kinds whose section does not depend on where they attach.
_FIXED_SECTIONS = {"xdp": "xdp", "tc": "tc"}
_DIAGNOSTIC = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<level>fatal error|error|warning|note): ")
# clang's last line: "2 errors generated.", "1 warning and 3 errors generated."
_SUMMARY = re.compile(r"^\d+ (warnings? and \d+ )?errors? generated\.$")


class BccMissing(BpfdError):
    """bcc cannot be imported by this interpreter (`import_error` says why)."""

    def __init__(self, import_error: str) -> None:
        super().__init__("compiling source needs %s; it could not be imported: %s" % (BCC_LIBRARY, import_error))
        self.import_error = import_error


def import_bcc():
    """bcc's Python module, imported on first use: it loads libbcc (LLVM, ~70 ms), which
    only a compile needs; a source found compiled in the store never imports it."""
    try:
        import bcc  # pylint: disable=import-outside-toplevel
    except Exception as exc:  # ImportError, or OSError when libbcc itself is missing
        raise BccMissing("%s: %s" % (type(exc).__name__, exc))
    return bcc


@dataclass(frozen=True)
class CompiledSource:
    """The object to load and what identifies it."""

    object_path: str  # in the bytecode store, or a scratch file when just compiled
    sha256: str  # identity: source_digest()
    facts: dict  # recorded with the program: {"path", "cflags", "object_sha256"}
    compiled: bool  # False: found in the bytecode store, no compile


def section_for(kind: str, attach: dict | None) -> str:
    """The libbpf section that gives the written object's program its type
    (and, for k/uprobes and fentry/fexit, its flavour or target)."""
    attach = attach or {}
    if kind in _FIXED_SECTIONS:
        return _FIXED_SECTIONS[kind]
    if kind in _attach_trace.KINDS:
        _attach_trace.check_spec(kind, attach)  # before a compile, not after
    if kind == "tracepoint":
        return "tracepoint/%s" % attach.get("tracepoint")
    if kind in ("kprobe", "uprobe"):
        return ("%sretprobe" if attach.get("retprobe") else "%sprobe") % kind[0]
    if kind in ("fentry", "fexit"):
        return "%s/%s" % (kind, attach.get("function"))
    raise BpfdError("programs of kind %s cannot be compiled from source" % kind)


def source_digest(text: bytes, cflags: list[str], function: str | None, section: str) -> str:
    """sha256 of the source and how it is compiled, each part length-prefixed so no
    two different inputs share a digest."""
    digest = hashlib.sha256(b"bpfd.core source v1\0")
    for part in [text, (function or "").encode(), section.encode()] + [flag.encode() for flag in cflags]:
        digest.update(b"%d:" % len(part))
        digest.update(part)
    return digest.hexdigest()


def read_source(path: str) -> bytes:
    if not os.path.isabs(path):
        raise BpfdError("source %s must be an absolute path on the managed host" % path, source=path)
    if not os.path.exists(path):
        raise BpfdError("source file %s does not exist on the managed host" % path, source=path)
    if not os.path.isfile(path):
        raise BpfdError("source %s is not a regular file" % path, source=path)
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:4] == b"\x7fELF":
        raise BpfdError("source %s is an ELF object, not C source: give it as path" % path, source=path)
    return data


def check_cflags(cflags) -> list[str]:
    if not isinstance(cflags, list) or not all(isinstance(flag, str) and flag.strip() for flag in cflags):
        raise BpfdError("cflags must be a list of compiler flags (strings), e.g. ['-DVERDICT=2']; got %r"
                        % (cflags,))
    return list(cflags)


def headers_problem(release: str | None = None, modules_dir: str = "/lib/modules") -> str | None:
    """Why bcc will not find kernel headers on this host, or None. bcc looks at
    $BCC_KERNEL_SOURCE, then /lib/modules/<release>/build, then the kernel's own
    kheaders archive (CONFIG_IKHEADERS)."""
    release = release or os.uname().release
    override = os.environ.get("BCC_KERNEL_SOURCE")
    if override:
        return None if os.path.isdir(override) else \
            "BCC_KERNEL_SOURCE=%s is not a directory of kernel headers" % override
    build = os.path.join(modules_dir, release, "build")
    if os.path.isdir(build) or os.path.exists(KHEADERS):
        return None
    why = "is a dangling link to %s" % os.readlink(build) if os.path.islink(build) else "does not exist"
    return ("bcc needs the headers of the running kernel %s: it looked in %s, which %s, and the kernel has no "
            "built-in headers (%s, CONFIG_IKHEADERS). Install them (Debian/Ubuntu: the linux-headers package "
            "of this kernel; role bpfd.core.bpfd_host with bpfd_host_bcc: true) or link a headers tree as %s"
            % (release, build, why, KHEADERS, build))


def compile_error(stderr: str, source_path: str) -> str:
    """bcc's compiler output, trimmed for a task result: the first error first, then
    its context, file names as the operator knows them."""
    # "sh: 1: modprobe: not found": bcc trying to load the kheaders module
    lines = [line.replace(BCC_MAIN_FILE, source_path) for line in stderr.splitlines()
             if line.strip() and not line.startswith("sh: ")]
    if any("Unable to find kernel headers" in line for line in lines):
        return headers_problem() or "bcc found no kernel headers"
    first = next((i for i, line in enumerate(lines)
                  if (_DIAGNOSTIC.match(line) or line.startswith("fatal error"))
                  and ("error: " in line)), None)
    if first is None:
        return "; ".join(lines[-MAX_ERROR_LINES:]) or "bcc could not compile the source (no compiler message)"
    shown = lines[first:first + MAX_ERROR_LINES]
    summary = next((line for line in lines if _SUMMARY.match(line)), None)
    if summary and summary not in shown:
        shown.append(summary)
    return "\n".join(shown)


@contextlib.contextmanager
def _stderr_to(path: str) -> Iterator[None]:
    """Send fd 2 (where bcc's clang writes its messages) to `path` for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "wb") as sink:
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _functions(bcc, compiled) -> list[str]:
    lib = bcc.lib
    return [lib.bpf_function_name(compiled.module, i).decode() for i in range(lib.bpf_num_functions(compiled.module))]


def _table_fds(bcc, compiled) -> dict[int, str]:
    """fd -> name of every map bcc created for the source (libbcc's table API,
    which bcc's Python module does not declare)."""
    lib = bcc.lib
    lib.bpf_num_tables.restype, lib.bpf_num_tables.argtypes = ctypes.c_ulonglong, [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_fd_id.restype = ctypes.c_int
    lib.bpf_table_name.argtypes = lib.bpf_table_fd_id.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong]
    return {lib.bpf_table_fd_id(compiled.module, i): lib.bpf_table_name(compiled.module, i).decode()
            for i in range(lib.bpf_num_tables(compiled.module))}


def _choose_function(functions: list[str], function: str | None, source_path: str) -> str:
    if function:
        if function not in functions:
            raise BpfdError("function %s not found in %s; it has: %s"
                            % (function, source_path, ", ".join(functions) or "no functions"))
        return function
    if len(functions) == 1:
        return functions[0]
    raise BpfdError("%s defines %s: set bpf_function_name" % (
        source_path, "several functions (%s)" % ", ".join(functions) if functions else "no functions"))


def _bcc_module(bcc, text: bytes, cflags: list[str], source_path: str):
    """bcc's compiled module (its maps exist, nothing is attached)."""

    class Compiled(bcc.BPF):
        def _trace_autoload(self):
            """bcc attaches kprobe__*/tracepoint__* functions on its own; we attach."""

    flags = list(cflags) + ["-I%s" % os.path.dirname(source_path)]
    with tempfile.NamedTemporaryFile(prefix="bpfd-bcc-", suffix=".log") as log:
        try:
            with _stderr_to(log.name):
                return Compiled(text=text, cflags=flags)
        except Exception as exc:
            log.seek(0)
            message = compile_error(log.read().decode(errors="replace"), source_path)
            raise BpfdError("bcc could not compile %s:\n%s" % (source_path, message), source=source_path,
                            bcc_error=str(exc))


def compile_object(text: bytes, cflags: list[str], *, source_path: str, function: str | None,
                   section: str, out_path: str) -> str:
    """Compile `text` with bcc and write the chosen function as an object at
    `out_path`; returns the function's name."""
    bcc = import_bcc()
    problem = headers_problem()
    if problem:
        raise BpfdError(problem, source=source_path)
    compiled = _bcc_module(bcc, text, cflags, source_path)
    try:
        functions = _functions(bcc, compiled)
        chosen = _choose_function(functions, function, source_path)
        tables = _table_fds(bcc, compiled)
        try:
            insns, relocs = _object_writer.symbolic(compiled.dump_func(chosen.encode()), tables)
        except ValueError as exc:
            raise BpfdError("function %s of %s cannot be loaded as one program: %s" % (chosen, source_path, exc))
        used = []
        for _index, name in relocs:
            if name not in used:
                used.append(name)
        by_name = {name: fd for fd, name in tables.items()}
        maps = [(name, libbpf.map_info(by_name[name])) for name in used]
        license_text = (bcc.lib.bpf_module_license(compiled.module) or b"GPL").decode()
        _object_writer.write_object(out_path, section=section, function=chosen, insns=insns, relocs=relocs,
                                    maps=maps, license_text=license_text)
        return chosen
    finally:
        compiled.cleanup()


@contextlib.contextmanager
def compiled_source(source_path: str, cflags, *, kind: str, attach: dict | None, function: str | None,
                    layout: Layout | None = None) -> Iterator[CompiledSource]:
    """The object for `source_path` compiled with `cflags`: from the bytecode store
    when this very source was compiled before, else compiled now into a scratch
    directory that lives as long as the context."""
    layout = layout or Layout()
    flags = check_cflags(cflags)
    text = read_source(source_path)
    section = section_for(kind, attach)
    digest = source_digest(text, flags, function, section)
    stored = os.path.join(layout.bytecode_dir, "%s.o" % digest)
    if os.path.isfile(stored):
        yield CompiledSource(stored, digest, _facts(source_path, flags, stored), compiled=False)
        return
    scratch = tempfile.mkdtemp(prefix="bpfd-bcc-")
    try:
        out = os.path.join(scratch, "%s.o" % digest)
        compile_object(text, flags, source_path=source_path, function=function, section=section, out_path=out)
        yield CompiledSource(out, digest, _facts(source_path, flags, out), compiled=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _facts(source_path: str, cflags: list[str], object_path: str) -> dict:
    return {"path": source_path, "cflags": cflags, "object_sha256": file_sha256(object_path)}
