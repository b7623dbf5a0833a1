# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The object writer: map-fd loads turned back into relocations (symbolic), and
the written ELF object read back by tools we did not write (llvm-objdump,
bpftool, readelf) and loaded by libbpf into the real kernel, where the maps
must be exactly as written and the program must run and update them.

Instructions are built here with the _insn helpers, so the program is tiny and
every instruction index is known.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _btf
from ansible_collections.bpfd.core.plugins.module_utils import _insn
from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
from ansible_collections.bpfd.core.plugins.module_utils import _loader
from ansible_collections.bpfd.core.plugins.module_utils._insn import Insn
from ansible_collections.bpfd.core.plugins.module_utils._object_writer import symbolic, write_object

MAP_TYPE_HASH, MAP_TYPE_ARRAY = 1, 2
BPF_F_NO_PREALLOC = 1
XDP_DROP, XDP_TX = 1, 3
FN_MAP_LOOKUP_ELEM, FN_MAP_UPDATE_ELEM = 1, 2

# made-up fds: symbolic() never touches the kernel
FD_COUNTS, FD_SEEN = 1000, 1001
MAPS = [
    ("counts", {"type": MAP_TYPE_ARRAY, "key_size": 4, "value_size": 8, "max_entries": 4, "map_flags": 0}),
    ("seen", {"type": MAP_TYPE_HASH, "key_size": 4, "value_size": 8, "max_entries": 16,
              "map_flags": BPF_F_NO_PREALLOC}),
]
FUNCTION = "count_and_mark"


def ld_map_fd(dst: int, fd: int) -> list[Insn]:
    return [Insn(_insn.OP_LD_IMM64, dst=dst, src=_insn.PSEUDO_MAP_FD, imm=fd), Insn(0)]


def mov_reg(dst: int, src: int) -> Insn:
    return Insn(0xBF, dst=dst, src=src)  # BPF_ALU64 | BPF_MOV | BPF_X


def add_imm(dst: int, imm: int) -> Insn:
    return Insn(0x07, dst=dst, imm=imm)  # BPF_ALU64 | BPF_ADD | BPF_K


def st_w(off: int, imm: int) -> Insn:
    return Insn(0x62, dst=10, off=off, imm=imm)  # *(u32 *)(r10 + off) = imm


def st_dw(off: int, imm: int) -> Insn:
    return Insn(0x7A, dst=10, off=off, imm=imm)  # *(u64 *)(r10 + off) = imm


def call(helper: int) -> Insn:
    return Insn(_insn.OP_CALL, imm=helper)


def jeq0(reg: int, off: int) -> Insn:
    return Insn(0x15, dst=reg, off=off, imm=0)  # if reg == 0 goto +off


def atomic_add_dw(dst: int, src: int) -> Insn:
    return Insn(0xDB, dst=dst, src=src, off=0, imm=0)  # lock *(u64 *)(dst + 0) += src


def program(fd_counts: int = FD_COUNTS, fd_seen: int = FD_SEEN) -> list[Insn]:
    """counts[0] += 1; verdict = seen has key 7 ? XDP_TX : XDP_DROP; seen[7] = 42.

    Map loads at instruction indices 2 (counts), 11 and 19 (seen)."""
    insns = [
        _insn.mov64_imm(6, 1),                                   # 0
        st_w(-4, 0),                                             # 1  key = 0
        *ld_map_fd(1, fd_counts),                                # 2, 3
        mov_reg(2, 10),                                          # 4
        add_imm(2, -4),                                          # 5
        call(FN_MAP_LOOKUP_ELEM),                                # 6
        jeq0(0, 1),                                              # 7
        atomic_add_dw(0, 6),                                     # 8  counts[0] += 1
        _insn.mov64_imm(7, XDP_DROP),                            # 9
        st_w(-4, 7),                                             # 10 key = 7
        *ld_map_fd(1, fd_seen),                                  # 11, 12
        mov_reg(2, 10),                                          # 13
        add_imm(2, -4),                                          # 14
        call(FN_MAP_LOOKUP_ELEM),                                # 15
        jeq0(0, 1),                                              # 16
        _insn.mov64_imm(7, XDP_TX),                              # 17
        st_dw(-16, 42),                                          # 18 value = 42
        *ld_map_fd(1, fd_seen),                                  # 19, 20
        mov_reg(2, 10),                                          # 21
        add_imm(2, -4),                                          # 22
        mov_reg(3, 10),                                          # 23
        add_imm(3, -16),                                         # 24
        _insn.mov64_imm(4, 0),                                   # 25 BPF_ANY
        call(FN_MAP_UPDATE_ELEM),                                # 26
        mov_reg(0, 7),                                           # 27
        _insn.exit_insn(),                                       # 28
    ]
    return insns


MAP_LOADS = [(2, "counts"), (11, "seen"), (19, "seen")]


def encode(insns: list[Insn]) -> bytes:
    return b"".join(insn.encode() for insn in insns)


def written_object(tmp_path, maps=None, section="xdp", function=FUNCTION) -> tuple[str, bytes]:
    maps = MAPS if maps is None else maps
    insns, relocs = symbolic(encode(program()), {FD_COUNTS: "counts", FD_SEEN: "seen"})
    path = str(tmp_path / "prog.o")
    write_object(path, section=section, function=function, insns=insns, relocs=relocs, maps=maps)
    return path, insns


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("none of %s is installed" % ", ".join(names))


# --- symbolic ---------------------------------------------------------------------------


def test_symbolic_map_loads_become_zeroed_loads_and_relocations_in_order() -> None:
    raw = encode(program())
    insns, relocs = symbolic(raw, {FD_COUNTS: "counts", FD_SEEN: "seen"})
    assert relocs == MAP_LOADS
    assert len(insns) == len(raw)
    before, after = _insn.decode_all(raw), _insn.decode_all(insns)
    for index, (old, new) in enumerate(zip(before, after)):
        if index in dict(MAP_LOADS):
            # as clang leaves it for the linker: opcode and destination kept, no fd, no pseudo src
            assert new == Insn(_insn.OP_LD_IMM64, dst=1), index
            assert old.src == _insn.PSEUDO_MAP_FD and old.imm in (FD_COUNTS, FD_SEEN)
        else:
            assert new == old, index  # everything else byte for byte, second ld_imm64 slots included


def test_symbolic_same_fd_twice_gives_two_relocations() -> None:
    raw = encode(ld_map_fd(1, 7) + ld_map_fd(2, 7) + [_insn.mov64_imm(0, 0), _insn.exit_insn()])
    insns, relocs = symbolic(raw, {7: "m"})
    assert relocs == [(0, "m"), (2, "m")]
    assert _insn.decode_all(insns)[:4] == [Insn(0x18, dst=1), Insn(0), Insn(0x18, dst=2), Insn(0)]


def test_symbolic_unknown_fd_is_refused() -> None:
    raw = encode(program())
    with pytest.raises(ValueError, match=r"instruction 11 loads file descriptor %d" % FD_SEEN):
        symbolic(raw, {FD_COUNTS: "counts"})


@pytest.mark.parametrize("insn", [
    Insn(_insn.OP_CALL, src=_insn.PSEUDO_CALL, imm=1),           # bpf-to-bpf call
    Insn(_insn.OP_CALL, src=_insn.PSEUDO_KFUNC_CALL, imm=1234),  # kfunc
], ids=["pseudo-call", "kfunc-call"])
def test_symbolic_refuses_calls_to_other_code(insn: Insn) -> None:
    raw = encode([_insn.mov64_imm(0, 0), insn, _insn.exit_insn(), _insn.mov64_imm(0, 1), _insn.exit_insn()])
    with pytest.raises(ValueError, match=r"^instruction 1 refers to"):
        symbolic(raw, {})


@pytest.mark.parametrize("src", [_insn.PSEUDO_MAP_VALUE, _insn.PSEUDO_BTF_ID, _insn.PSEUDO_FUNC,
                                 _insn.PSEUDO_MAP_IDX, _insn.PSEUDO_MAP_IDX_VALUE],
                         ids=["map-value", "btf-id", "func", "map-idx", "map-idx-value"])
def test_symbolic_refuses_other_pseudo_ld_imm64(src: int) -> None:
    # even when the fd is a known map's: a map *value* address cannot be a map relocation
    raw = encode([_insn.mov64_imm(0, 0), Insn(_insn.OP_LD_IMM64, dst=1, src=src, imm=FD_COUNTS), Insn(0),
                  _insn.exit_insn()])
    with pytest.raises(ValueError, match=r"^instruction 1 refers to"):
        symbolic(raw, {FD_COUNTS: "counts"})


def test_symbolic_leaves_code_without_maps_untouched() -> None:
    raw = encode([
        Insn(_insn.OP_LD_IMM64, dst=2, imm=0x12345678), Insn(0, imm=-0x65432110),  # plain 64-bit constant
        call(5),                                                                # helper call (ktime_get_ns)
        _insn.mov64_imm(0, 2),
        _insn.exit_insn(),
    ])
    assert symbolic(raw, {FD_COUNTS: "counts"}) == (raw, [])


def test_symbolic_truncated_ld_imm64_is_refused() -> None:
    with pytest.raises(ValueError, match="no second half"):
        symbolic(encode([_insn.mov64_imm(0, 0), Insn(_insn.OP_LD_IMM64, dst=1, src=1, imm=FD_COUNTS)]),
                 {FD_COUNTS: "counts"})


# --- the written file, read by other tools -----------------------------------------------


def test_write_object_refuses_relocations_to_unknown_maps(tmp_path) -> None:
    insns, relocs = symbolic(encode(program()), {FD_COUNTS: "counts", FD_SEEN: "seen"})
    with pytest.raises(ValueError, match="unknown maps: seen"):
        write_object(str(tmp_path / "x.o"), section="xdp", function=FUNCTION, insns=insns, relocs=relocs,
                     maps=MAPS[:1])
    assert not (tmp_path / "x.o").exists()


def test_llvm_objdump_shows_function_and_map_relocations(tmp_path) -> None:
    objdump = tool("llvm-objdump")
    path, insns = written_object(tmp_path)
    proc = run(objdump, "-d", "-r", path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""
    out = proc.stdout
    assert "file format elf64-bpf" in out
    assert "Disassembly of section xdp:" in out
    assert re.search(r"^0000000000000000 <%s>:$" % FUNCTION, out, re.M), out
    relocations = re.findall(r"^\s*([0-9a-f]+):\s+(R_BPF_\w+)\s+(\S+)$", out, re.M)
    assert relocations == [("%016x" % (index * 8), "R_BPF_64_64", name) for index, name in MAP_LOADS], out
    # every instruction slot disassembled (ld_imm64 prints as one line with both slots)
    slots = re.findall(r"^\s*(\d+):\t", out, re.M)
    assert [int(s) for s in slots] == [index for index, _insn_ in _insn.iter_insns(insns)]
    assert out.count("r1 = 0 ll") == 3
    assert out.rstrip().endswith("exit")


def test_llvm_objdump_symbol_table(tmp_path) -> None:
    objdump = tool("llvm-objdump")
    path, insns = written_object(tmp_path)
    proc = run(objdump, "-t", path)
    assert proc.returncode == 0, proc.stderr
    # "value g F section size name"
    symbols = {m.group(5): (int(m.group(1), 16), m.group(2), m.group(3), int(m.group(4), 16)) for m in re.finditer(
        r"^([0-9a-f]{16}) g\s+(F|O)\s+(\S+)\s+([0-9a-f]{16}) (\S+)$", proc.stdout, re.M)}
    assert symbols[FUNCTION] == (0, "F", "xdp", len(insns))
    assert symbols["counts"] == (0, "O", ".maps", _btf.MAP_DEF_SIZE)
    assert symbols["seen"] == (_btf.MAP_DEF_SIZE, "O", ".maps", _btf.MAP_DEF_SIZE)
    assert symbols["_license"] == (0, "O", "license", 4)


def test_bpftool_reads_btf_datasec_maps(tmp_path) -> None:
    bpftool = tool("bpftool")
    path, _insns = written_object(tmp_path)
    proc = run(bpftool, "-j", "btf", "dump", "file", path)
    assert proc.returncode == 0, proc.stderr
    types = {t["id"]: t for t in json.loads(proc.stdout)["types"]}
    datasecs = [t for t in types.values() if t["kind"] == "DATASEC"]
    assert len(datasecs) == 1
    sec = datasecs[0]
    assert sec["name"] == ".maps" and sec["size"] == 2 * _btf.MAP_DEF_SIZE
    assert [(v["offset"], v["size"]) for v in sec["vars"]] == [(0, 40), (40, 40)]
    for var_ref, (name, definition) in zip(sec["vars"], MAPS):
        var = types[var_ref["type_id"]]
        assert var["kind"] == "VAR" and var["name"] == name and var["linkage"] == "global"
        struct = types[var["type_id"]]
        assert struct["kind"] == "STRUCT" and struct["size"] == _btf.MAP_DEF_SIZE
        fields = {}
        for member in struct["members"]:
            pointer = types[member["type_id"]]
            assert pointer["kind"] == "PTR"
            array = types[pointer["type_id"]]
            assert array["kind"] == "ARRAY"
            fields[member["name"]] = (member["bits_offset"], array["nr_elems"])
        # libbpf reads each field as int (*field)[value]
        assert fields == {field: (64 * i, definition[field]) for i, field in enumerate(_btf.MAP_FIELDS)}


def test_bpftool_text_dump_names_vars_in_datasec(tmp_path) -> None:
    bpftool = tool("bpftool")
    path, _insns = written_object(tmp_path)
    out = run(bpftool, "btf", "dump", "file", path).stdout
    assert re.search(r"DATASEC '\.maps' size=80 vlen=2", out), out
    assert re.search(r"type_id=\d+ offset=0 size=40 \(VAR 'counts'\)", out), out
    assert re.search(r"type_id=\d+ offset=40 size=40 \(VAR 'seen'\)", out), out


def _readelf() -> str:
    return tool("readelf", "llvm-readelf")


def test_readelf_header_sections_and_symbols(tmp_path) -> None:
    readelf = _readelf()
    path, insns = written_object(tmp_path)
    header = run(readelf, "-h", path)
    assert header.returncode == 0 and header.stderr.strip() == "", header.stderr
    assert re.search(r"Class:\s+ELF64", header.stdout)
    assert re.search(r"Data:\s+2's complement, little endian", header.stdout)
    assert re.search(r"Type:\s+REL", header.stdout)
    assert re.search(r"Machine:\s+Linux BPF", header.stdout)

    sections = run(readelf, "-S", "-W", path)
    assert sections.returncode == 0 and sections.stderr.strip() == "", sections.stderr
    found = {m.group(1): (m.group(2), int(m.group(3), 16)) for m in re.finditer(
        r"^\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)", sections.stdout, re.M)}
    assert found["xdp"] == ("PROGBITS", len(insns))
    assert found[".relxdp"] == ("REL", 16 * len(MAP_LOADS))
    assert found[".maps"] == ("PROGBITS", 2 * _btf.MAP_DEF_SIZE)
    assert found["license"] == ("PROGBITS", 4)
    assert found[".BTF"][0] == "PROGBITS"
    assert found[".symtab"] == ("SYMTAB", 24 * 5)
    assert found[".strtab"][0] == "STRTAB"

    symbols = run(readelf, "-s", "-W", path)
    assert symbols.returncode == 0 and symbols.stderr.strip() == "", symbols.stderr
    rows = {}
    for m in re.finditer(r"^\s*\d+:\s+([0-9a-f]+)\s+(\d+)\s+(\w+)\s+(\w+)\s+\w+\s+(\S+)\s+(\S+)$",
                         symbols.stdout, re.M):
        rows[m.group(6)] = (int(m.group(1), 16), int(m.group(2)), m.group(3), m.group(4))
    assert rows[FUNCTION] == (0, len(insns), "FUNC", "GLOBAL")
    assert rows["counts"] == (0, 40, "OBJECT", "GLOBAL")
    assert rows["seen"] == (40, 40, "OBJECT", "GLOBAL")
    assert rows["_license"] == (0, 4, "OBJECT", "GLOBAL")

    relocs = run(readelf, "-r", "-W", path)
    assert relocs.returncode == 0 and relocs.stderr.strip() == "", relocs.stderr
    # type 1 is R_BPF_64_64 to LLVM, R_BPF_INSN_64 to binutils
    entries = re.findall(r"^([0-9a-f]{16})\s+([0-9a-f]{16})\s+(R_BPF_64_64|R_BPF_INSN_64)\s+[0-9a-f]+\s+(\S+)",
                         relocs.stdout, re.M)
    assert [(int(off, 16), int(info, 16) & 0xFFFFFFFF, name) for off, info, _type, name in entries] \
        == [(i * 8, 1, n) for i, n in MAP_LOADS], relocs.stdout


def test_object_without_maps_has_no_maps_btf_or_relocations(tmp_path) -> None:
    readelf = _readelf()
    insns = encode([_insn.mov64_imm(0, 2), _insn.exit_insn()])
    path = str(tmp_path / "pass.o")
    write_object(path, section="xdp", function="just_pass", insns=insns, relocs=[], maps=[], license_text="MIT")
    out = run(readelf, "-S", "-W", path)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
    names = re.findall(r"^\s*\[\s*\d+\]\s+(\S+)", out.stdout, re.M)
    assert sorted(n for n in names if n != "NULL") == sorted([".strtab", "xdp", "license", ".symtab"])
    dump = run(readelf, "-x", "license", path).stdout
    assert "MIT." in dump  # 'MIT\0' printed as MIT.


# --- the real kernel ------------------------------------------------------------------------


def _bpftool_json(*argv: str):
    proc = run("bpftool", "-j", *argv)
    assert proc.returncode == 0, "bpftool %s: %s" % (" ".join(argv), proc.stderr)
    return json.loads(proc.stdout)


def _exists(kind: str, obj_id: int) -> bool:
    return run("bpftool", kind, "show", "id", str(obj_id)).returncode == 0


def _wait_gone(kind: str, obj_id: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _exists(kind, obj_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _le(values: list) -> int:
    return int.from_bytes(bytes(int(v, 16) for v in values), "little")


def _prog_run(prog_id: int, packet_path: str) -> int:
    out = _bpftool_json("prog", "run", "id", str(prog_id), "data_in", packet_path, "repeat", "1")
    return out["retval"]


@pytest.mark.integration
@pytest.mark.needs_root
def test_round_trip_on_the_kernel(tmp_path) -> None:
    if shutil.which("bpftool") is None:
        pytest.skip("needs bpftool")
    path, _insns = written_object(tmp_path)
    pin_dir = tmp_path / "pins"
    pin_dir.mkdir()
    packet = tmp_path / "packet.bin"
    packet.write_bytes(bytes.fromhex("02000000000102000000000288b5") + b"bpfd" + bytes(44))

    loaded = _loader.load_program(path, function=None, prog_types=(libbpf.PROG_TYPE_XDP,), kind="xdp",
                                  map_pin_dir=str(pin_dir))
    prog_id = loaded.prog_id
    map_ids = {name: m["id"] for name, m in loaded.maps.items()}
    try:
        assert loaded.function == FUNCTION and loaded.section == "xdp"
        assert sorted(map_ids) == ["counts", "seen"]
        prog = _bpftool_json("prog", "show", "id", str(prog_id))
        assert prog["type"] == "xdp"
        assert prog["name"] == FUNCTION[:15]
        assert prog["gpl_compatible"] is True
        assert sorted(prog["map_ids"]) == sorted(map_ids.values())

        expected = {"counts": ("array", 4, 8, 4, 0), "seen": ("hash", 4, 8, 16, BPF_F_NO_PREALLOC)}
        for name, map_id in map_ids.items():
            info = _bpftool_json("map", "show", "id", str(map_id))
            assert info["name"] == name
            assert (info["type"], info["bytes_key"], info["bytes_value"], info["max_entries"], info["flags"]) \
                == expected[name], info

        # the map references really point at the maps: seen is empty, counts all zero
        assert _bpftool_json("map", "dump", "id", str(map_ids["seen"])) == []

        assert _prog_run(prog_id, str(packet)) == XDP_DROP   # key 7 not seen yet
        assert _prog_run(prog_id, str(packet)) == XDP_TX     # the first run stored it

        seen = _bpftool_json("map", "dump", "id", str(map_ids["seen"]))
        assert [(_le(e["key"]), _le(e["value"])) for e in seen] == [(7, 42)]
        counts = _bpftool_json("map", "dump", "id", str(map_ids["counts"]))
        assert [(_le(e["key"]), _le(e["value"])) for e in counts] == [(0, 2), (1, 0), (2, 0), (3, 0)]
    finally:
        loaded.close()
    # no pins were asked for (no LIBBPF_PIN_BY_NAME in the maps) and none were made
    assert list(pin_dir.iterdir()) == []
    assert _wait_gone("prog", prog_id), "program %d still loaded after close" % prog_id
    for name, map_id in map_ids.items():
        assert _wait_gone("map", map_id), "map %s (%d) still exists after close" % (name, map_id)


def test_libbpf_opens_object_with_section_type_and_map_definitions(tmp_path) -> None:
    """libbpf (not our code) parses the object: the section gives the program its type,
    the BTF gives each map its definition."""
    path, _insns = written_object(tmp_path, section="tc")
    with libbpf.BpfObject(path) as obj:
        programs = obj.programs()
        assert [(p.name, p.section, p.prog_type) for p in programs] == [(FUNCTION, "tc", libbpf.PROG_TYPE_SCHED_CLS)]
        definitions = {m.name: m.definition() for m in obj.maps()}
    assert definitions == dict(MAPS)
