# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""ELF object -> loaded program: choose the function, load it standalone
through libbpf, and keep what a later rebuild of a dispatcher needs
(final instructions + which instruction carries which map, by map id)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from typing import Iterable

from ansible_collections.bpfd.core.plugins.module_utils import _elf
from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
from ansible_collections.bpfd.core.plugins.module_utils import _member
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._state import bpfd_gid

ELF_MAGIC = b"\x7fELF"
MAP_PIN_MODE = 0o660


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def check_object_file(path: str) -> None:
    """Refuse what libbpf would refuse, with a sentence instead of an errno."""
    if not os.path.exists(path):
        raise BpfdError("bytecode file %s does not exist on the managed host" % path, path=path)
    if not os.path.isfile(path):
        raise BpfdError("bytecode path %s is not a regular file" % path, path=path)
    with open(path, "rb") as handle:
        if handle.read(4) != ELF_MAGIC:
            raise BpfdError("%s is not an ELF object file (compile it with clang -target bpf)"
                            % path, path=path)


@dataclass
class LoadedProgram:
    """A program loaded standalone; its object stays open until closed."""

    obj: libbpf.BpfObject
    function: str
    section: str
    prog_type: int
    fd: int
    prog_id: int
    insns: bytes
    relocs: list = field(default_factory=list)
    maps: dict = field(default_factory=dict)  # name -> {"id", "internal"}
    frags: bool = False
    notes: list = field(default_factory=list)

    def close(self) -> None:
        self.obj.close()


def _choose(programs: list[libbpf.Program], function: str | None,
            prog_types: Iterable[int], kind: str, path: str) -> libbpf.Program:
    wanted = set(prog_types)
    fitting = [p for p in programs if p.prog_type in wanted]
    if function:
        named = [p for p in programs if p.name == function]
        if not named:
            raise BpfdError("function %s not found in %s; it has: %s"
                            % (function, path, ", ".join(p.name for p in programs) or "no programs"))
        if named[0].prog_type not in wanted:
            raise BpfdError("function %s in %s is a %s program (section %s), not %s"
                            % (function, path, named[0].type_name, named[0].section, kind))
        return named[0]
    if len(fitting) == 1:
        return fitting[0]
    if not fitting:
        raise BpfdError("%s holds no %s program (it has: %s)" % (
            path, kind, ", ".join("%s (%s)" % (p.name, p.type_name) for p in programs) or "none"))
    raise BpfdError("%s holds several %s programs (%s): set bpf_function_name"
                    % (path, kind, ", ".join(p.name for p in fitting)))


def _internal_map(obj: libbpf.BpfObject, section: str) -> libbpf.Map | None:
    """libbpf names a data section's map '<object prefix><section>', truncated."""
    for bpf_map in obj.maps():
        if bpf_map.is_internal and "." in bpf_map.name:
            suffix = "." + bpf_map.name.split(".", 1)[1]
            if section == suffix or section.startswith(suffix):
                return bpf_map
    return None


def apply_global_data(obj: libbpf.BpfObject, path: str, global_data: dict) -> None:
    """Write each {name: hex} over the named global before load (bpfd's --global)."""
    variables = _elf.global_variables(path)
    for name, value in sorted(global_data.items()):
        var = variables.get(name)
        if var is None:
            raise BpfdError("global_data: %s is not a global variable of %s (it has: %s)"
                            % (name, path, ", ".join(sorted(variables)) or "none"))
        data = _elf.parse_hex(name, value)
        if len(data) != var.size:
            raise BpfdError("global_data: %s is %d bytes in %s, the value given has %d"
                            % (name, var.size, path, len(data)))
        bpf_map = _internal_map(obj, var.section)
        if bpf_map is None:
            raise BpfdError("global_data: %s lives in section %s, which libbpf did not turn into a map"
                            % (name, var.section))
        initial = bytearray(bpf_map.initial_value())
        initial[var.offset:var.offset + var.size] = data
        bpf_map.set_initial_value(bytes(initial))


def reuse_maps(obj: libbpf.BpfObject, pins: dict, strict: bool) -> list:
    """Let the new object use existing maps (same name, compatible definition).

    strict (map_owner): an incompatible map is an error. Otherwise (a reload)
    it is replaced by a new, empty map and the returned notes say so.
    """
    notes = []
    if strict and pins and not {m.name for m in obj.maps() if not m.is_internal} & set(pins):
        raise BpfdError("%s shares no map with its map_owner: the owner pins %s, the object has %s"
                        % (obj.path, ", ".join(sorted(pins)),
                           ", ".join(sorted(m.name for m in obj.maps() if not m.is_internal)) or "no maps"))
    for bpf_map in obj.maps():
        pin = pins.get(bpf_map.name)  # a pin path, or the fd of a map loaded in this run
        if bpf_map.is_internal or pin is None or (isinstance(pin, str) and not os.path.exists(pin)):
            continue
        with contextlib.ExitStack() as stack:
            fd = pin if isinstance(pin, int) else stack.enter_context(libbpf.owned_fd(libbpf.obj_get(pin)))
            have = libbpf.map_info(fd)
            want = bpf_map.definition()
            if all(have[key] == want[key] for key in want):
                bpf_map.reuse_fd(fd)
                continue
        differ = ", ".join("%s %s -> %s" % (k, _readable(k, have[k]), _readable(k, want[k]))
                           for k in want if have[k] != want[k])
        if strict:
            raise BpfdError("map %s of %s cannot share the existing map at %s: %s"
                            % (bpf_map.name, obj.path, pin if isinstance(pin, str) else "its owner", differ))
        notes.append("map %s changed its definition (%s); a new, empty map replaces it" % (bpf_map.name, differ))
    return notes


def _readable(field: str, value: int) -> str:
    return libbpf.MAP_TYPE_NAMES.get(value, str(value)) if field == "type" else str(value)


def load_program(path: str, *, function: str | None, prog_types: Iterable[int], kind: str,
                 map_pin_dir: str, global_data: dict | None = None, reuse: dict | None = None,
                 strict_reuse: bool = False) -> LoadedProgram:
    """Open, select one function, load it alone; the caller pins and closes."""
    check_object_file(path)
    obj = libbpf.BpfObject(path, pin_root_path=map_pin_dir)
    chosen = None
    try:
        programs = obj.programs()
        chosen = _choose(programs, function, prog_types, kind, path)
        for prog in programs:
            prog.set_autoload(prog is chosen)
        if global_data:
            apply_global_data(obj, path, global_data)
        notes = reuse_maps(obj, reuse or {}, strict_reuse)
        obj.load()
        insns = chosen.instructions()
        maps = {}
        fd_to_id = {}
        for bpf_map in obj.maps():
            if bpf_map.fd < 0:
                continue
            info = libbpf.map_info(bpf_map.fd)
            maps[bpf_map.name] = {"id": info["id"], "internal": bpf_map.is_internal,
                                  "pinned_by_object": bool(bpf_map.pin_path)}
            fd_to_id[bpf_map.fd] = info["id"]
        return LoadedProgram(
            obj=obj, function=chosen.name, section=chosen.section, prog_type=chosen.prog_type,
            fd=chosen.fd, prog_id=libbpf.prog_info(chosen.fd)["id"], insns=insns,
            relocs=_member.map_relocations(insns, fd_to_id), maps=maps,
            frags=bool(chosen.flags & libbpf.BPF_F_XDP_HAS_FRAGS), notes=notes)
    except BpfdError as exc:
        obj.close()
        if "loading the BPF object" in exc.msg:
            raise BpfdError("the kernel refused %s from %s: %s (%s)" % (
                chosen.name if chosen else function or kind, path, _verifier_reason(exc.details.get("log", "")), exc.msg), **exc.details)
        raise
    except BaseException:
        obj.close()
        raise


def _verifier_reason(log: str) -> str:
    """The verifier's last meaningful line (libbpf appends its own lines after the END marker)."""
    log = log.split("-- END PROG LOAD LOG --")[0]
    lines = [line for line in log.splitlines() if line.strip() and not line.startswith("processed ")]
    return lines[-1] if lines else "no verifier log"


def pin_program(loaded: LoadedProgram, pin_path: str) -> None:
    os.makedirs(os.path.dirname(pin_path), mode=0o750, exist_ok=True)
    libbpf.obj_pin(loaded.fd, pin_path)


def pin_maps(loaded: LoadedProgram, map_dir: str, skip: Iterable[str] = ()) -> None:
    """Pin every map but global-data ones (and `skip`: shared ones pinned by
    their owner) at <map_dir>/<map>, 0660 group bpfd."""
    os.makedirs(map_dir, mode=0o750, exist_ok=True)
    gid = bpfd_gid()
    for bpf_map in loaded.obj.maps():
        if bpf_map.is_internal or bpf_map.fd < 0 or bpf_map.name in skip:
            continue
        path = os.path.join(map_dir, bpf_map.name)
        if bpf_map.pin_path != path:
            libbpf.obj_pin(bpf_map.fd, path)
        os.chmod(path, MAP_PIN_MODE)
        if gid is not None:
            os.chown(path, 0, gid)
    if gid is not None:
        os.chown(map_dir, 0, gid)
