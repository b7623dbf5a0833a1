"""Check the eBPF test fixtures (tests/fixtures/bpf) build and behave.

Each XDP/TC fixture is compiled into a pytest tmp dir, loaded standalone with
``bpftool prog load`` (``loadall`` for multi-program objects), pinned under
/sys/fs/bpf/fixture_test_<name>, run once with ``bpftool prog run`` on a
64-byte packet, and its return value compared with the one build.FIXTURES
promises.  Pins are always removed.

Needs clang for everything, and root + bpftool + bpffs at /sys/fs/bpf for
the load/run tests; those are skipped with the reason when absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD_PY = REPO / "tests" / "fixtures" / "bpf" / "build.py"
BPFFS = pathlib.Path("/sys/fs/bpf")
PIN_PREFIX = "fixture_test_"


def _import_build():
    name = "bpfd_fixture_build"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BUILD_PY)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


fb = _import_build()


def _clang_missing() -> str | None:
    try:
        fb.find_clang()
    except fb.ClangNotFoundError as exc:
        return str(exc)
    return None


def _bpffs_mounted() -> bool:
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            return any(line.split()[1:3] == [str(BPFFS), "bpf"] for line in fh)
    except OSError:
        return False


def _kernel_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to load BPF programs"
    if shutil.which("bpftool") is None:
        return "bpftool not found on PATH"
    if not _bpffs_mounted():
        return f"bpffs is not mounted at {BPFFS}"
    return None


_NO_CLANG = _clang_missing()
_NO_KERNEL = _kernel_missing()
if _NO_CLANG:
    print(f"\ntest_fixtures: skipping all: {_NO_CLANG}", file=sys.stderr)
elif _NO_KERNEL:
    print(f"\ntest_fixtures: skipping load/run tests: {_NO_KERNEL}", file=sys.stderr)

needs_clang = pytest.mark.skipif(bool(_NO_CLANG), reason=_NO_CLANG or "")
needs_kernel = pytest.mark.skipif(
    bool(_NO_CLANG or _NO_KERNEL), reason=_NO_CLANG or _NO_KERNEL or "")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def _bpftool(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["bpftool", *args], capture_output=True, text=True,
                         timeout=60, check=False)
    if check and res.returncode != 0:
        raise AssertionError(
            f"bpftool {' '.join(args)} failed ({res.returncode}):\n"
            f"{res.stdout}{res.stderr}")
    return res


def _bpftool_json(*args: str):
    return json.loads(_bpftool("-j", *args).stdout)


def _unpin(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _unpin(child)
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()


def _elf_section_names(path: pathlib.Path) -> list[str]:
    """Section names of a little-endian ELF64 file (enough for BPF objects)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    str_off = sections[shstrndx][4]
    names = []
    for sec in sections:
        start = str_off + sec[0]
        names.append(data[start:data.index(b"\0", start)].decode())
    return names


def _map_named(prog_pin: pathlib.Path, suffix: str) -> dict:
    info = _bpftool_json("prog", "show", "pinned", str(prog_pin))
    for map_id in info.get("map_ids", []):
        minfo = _bpftool_json("map", "show", "id", str(map_id))
        if minfo.get("name", "").endswith(suffix):
            return minfo
    raise AssertionError(f"no map named *{suffix} used by {prog_pin}: {info}")


def _map_slot0_total(map_id: int) -> int:
    """Value of key 0 summed over CPUs (works for ARRAY and PERCPU_ARRAY)."""
    def raw(hexbytes) -> int:
        return int.from_bytes(bytes(int(b, 16) for b in hexbytes), "little")

    # Use the raw little-endian hex bytes bpftool always prints; the
    # "formatted" (BTF) view differs between map kinds (.rodata is a DATASEC).
    entries = _bpftool_json("map", "dump", "id", str(map_id))
    for entry in entries:
        if raw(entry["key"]) != 0:
            continue
        if "values" in entry:  # per-CPU map
            return sum(raw(v["value"]) for v in entry["values"])
        return raw(entry["value"])
    raise AssertionError(f"key 0 missing from map {map_id}: {entries}")


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def objs(tmp_path_factory) -> dict[str, pathlib.Path]:
    if _NO_CLANG:
        pytest.skip(_NO_CLANG)
    return fb.build_fixtures(tmp_path_factory.mktemp("bpf-fixtures"))


@pytest.fixture(scope="module")
def packet(tmp_path_factory) -> pathlib.Path:
    """64-byte Ethernet/IPv4/UDP-ish frame for BPF_PROG_TEST_RUN."""
    frame = (bytes.fromhex("020000000002020000000001" + "0800")
             + bytes.fromhex("4500002e00004000401100007f0000017f000001")
             + bytes.fromhex("303930390016") + bytes(64 - 40))
    assert len(frame) == 64
    path = tmp_path_factory.mktemp("pkt") / "pkt64.bin"
    path.write_bytes(frame)
    return path


def _runnable():
    for fix in fb.FIXTURES.values():
        for prog in fix.programs:
            if prog.kind in ("xdp", "tc"):
                yield pytest.param(fix.name, prog, id=f"{fix.name}:{prog.function}")


# --------------------------------------------------------------------------
# build tests (clang only)
# --------------------------------------------------------------------------

@needs_clang
def test_build_all(objs):
    assert list(objs) == list(fb.FIXTURES)
    for name, path in objs.items():
        assert path.name == f"{name}.o" and path.is_file(), name
        is_elf = path.read_bytes()[:4] == b"\x7fELF"
        assert is_elf == (name != "not_bpf"), name


@needs_clang
def test_build_is_cached(objs):
    outdir = next(iter(objs.values())).parent
    before = {n: p.stat().st_mtime_ns for n, p in objs.items()}
    again = fb.build_fixtures(outdir)
    assert again == objs
    assert {n: p.stat().st_mtime_ns for n, p in again.items()} == before


@needs_clang
def test_build_subset_and_unknown(tmp_path):
    got = fb.build_fixtures(tmp_path, ["xdp_drop", "not_bpf"])
    assert set(got) == {"xdp_drop", "not_bpf"}
    with pytest.raises(KeyError):
        fb.build_fixtures(tmp_path, ["no_such_fixture"])


def test_missing_clang_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("CLANG", "/nonexistent/clang")
    with pytest.raises(fb.ClangNotFoundError, match="CLANG"):
        fb.build_fixtures(tmp_path, ["xdp_pass"])
    # not_bpf needs no compiler
    assert fb.build_fixtures(tmp_path, ["not_bpf"])["not_bpf"].is_file()


@needs_clang
def test_btf_presence(objs):
    nobtf = _elf_section_names(objs["xdp_pass_nobtf"])
    assert "xdp" in nobtf
    assert not any(".BTF" in s for s in nobtf), nobtf
    withbtf = _elf_section_names(objs["xdp_pass"])
    assert ".BTF" in withbtf and ".BTF.ext" in withbtf
    assert "xdp.frags" in _elf_section_names(objs["xdp_frags"])


# --------------------------------------------------------------------------
# load + run tests (root, bpftool, bpffs)
# --------------------------------------------------------------------------

@needs_kernel
@pytest.mark.parametrize("name,prog", list(_runnable()))
def test_load_and_run(objs, packet, name, prog):
    fix = fb.FIXTURES[name]
    pin = BPFFS / f"{PIN_PREFIX}{name}"
    _unpin(pin)  # stale pin from an interrupted run
    try:
        if len(fix.programs) > 1:
            _bpftool("prog", "loadall", str(objs[name]), str(pin))
            prog_pin = pin / prog.function
        else:
            _bpftool("prog", "load", str(objs[name]), str(pin))
            prog_pin = pin
        info = _bpftool_json("prog", "show", "pinned", str(prog_pin))
        assert info["name"] == prog.function
        assert info["type"] == {"xdp": "xdp", "tc": "sched_cls"}[prog.kind]

        out = _bpftool_json("prog", "run", "pinned", str(prog_pin),
                            "data_in", str(packet), "repeat", "1")
        assert out["retval"] & 0xFFFFFFFF == prog.retval & 0xFFFFFFFF, out

        if "hits" in fix.maps:
            hits = _map_named(prog_pin, "hits")
            assert hits["type"] == "percpu_array"
            assert (hits["max_entries"], hits["bytes_key"], hits["bytes_value"]) == (1, 4, 8)
            assert _map_slot0_total(hits["id"]) == 1
    finally:
        _unpin(pin)
    assert not pin.exists()


@needs_kernel
def test_rodata_map(objs):
    pin = BPFFS / f"{PIN_PREFIX}xdp_rodata_verdict_map"
    _unpin(pin)
    try:
        _bpftool("prog", "load", str(objs["xdp_rodata_verdict"]), str(pin))
        rodata = _map_named(pin, ".rodata")
        assert rodata["frozen"] and rodata["bytes_value"] == 4
        assert _map_slot0_total(rodata["id"]) == fb.XDP_PASS
    finally:
        _unpin(pin)


@needs_kernel
def test_tracepoint_loads(objs):
    pin = BPFFS / f"{PIN_PREFIX}tracepoint_openat"
    _unpin(pin)
    try:
        _bpftool("prog", "load", str(objs["tracepoint_openat"]), str(pin))
        info = _bpftool_json("prog", "show", "pinned", str(pin))
        assert (info["type"], info["name"]) == ("tracepoint", "count_openat")
        hits = _map_named(pin, "hits")
        assert (hits["type"], hits["max_entries"]) == ("array", 1)
    finally:
        _unpin(pin)


@needs_kernel
def test_big_stack_depth(objs):
    pin = BPFFS / f"{PIN_PREFIX}big_stack_depth"
    _unpin(pin)
    try:
        res = _bpftool("-d", "prog", "load", str(objs["big_stack"]), str(pin))
        m = re.search(r"stack depth (\d+)", res.stdout + res.stderr)
        if m is None:
            pytest.skip("bpftool -d printed no verifier 'stack depth' line")
        assert 480 <= int(m.group(1)) <= 512, m.group(0)
    finally:
        _unpin(pin)


@needs_kernel
def test_not_bpf_is_rejected(objs):
    pin = BPFFS / f"{PIN_PREFIX}not_bpf"
    _unpin(pin)
    try:
        res = _bpftool("prog", "load", str(objs["not_bpf"]), str(pin), check=False)
        assert res.returncode != 0
        assert not pin.exists()
    finally:
        _unpin(pin)
