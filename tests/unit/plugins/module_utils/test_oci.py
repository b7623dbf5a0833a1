# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The image library without a registry: references, labels, platforms, layers,
ELF checks, signatures and the content-addressed cache (tmp dirs only)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import struct
import sys
import tarfile

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _oci
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._state import Layout

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


# --- helpers --------------------------------------------------------------------------------------


def elf(programs=(("xdp", "pass"),), *, machine=_oci.EM_BPF, order=sys.byteorder, bits=64,
        extra_functions=(("helper", "local"), ("glob", "global"))) -> bytes:
    """A minimal relocatable ELF64: one section per program, a .text, .symtab, .strtab."""
    end = "<" if order == "little" else ">"
    names = [""] + [p[0] for p in programs] + [".text", ".symtab", ".strtab", ".shstrtab"]
    shstr = b"\0"
    name_off = [0]
    for name in names[1:]:
        name_off.append(len(shstr))
        shstr += name.encode() + b"\0"
    strtab = b"\0"
    symbols = [struct.pack(end + "IBBHQQ", 0, 0, 0, 0, 0, 0)]
    for index, (_sec, func) in enumerate(programs, 1):
        symbols.append(struct.pack(end + "IBBHQQ", len(strtab), (1 << 4) | 2, 0, index, 0, 8))
        strtab += func.encode() + b"\0"
    text_index = len(programs) + 1
    for func, binding in extra_functions:
        symbols.append(struct.pack(end + "IBBHQQ", len(strtab),
                                   ((1 if binding == "global" else 0) << 4) | 2, 0, text_index, 0, 8))
        strtab += func.encode() + b"\0"
    symtab = b"".join(symbols)
    code = b"\xb7\x00\x00\x00\x02\x00\x00\x00\x95\x00\x00\x00\x00\x00\x00\x00"
    contents = [b""] + [code] * len(programs) + [code, symtab, strtab, shstr]
    body, offsets = b"", []
    for data in contents:
        offsets.append(64 + len(body))
        body += data
    shoff = 64 + len(body)
    headers = b""
    symtab_index, strtab_index = len(programs) + 2, len(programs) + 3
    for i, data in enumerate(contents):
        stype = {0: 0, symtab_index: 2, strtab_index: 3, len(contents) - 1: 3}.get(i, 1)
        link = strtab_index if i == symtab_index else 0
        headers += struct.pack(end + "IIQQQQIIQQ", name_off[i], stype, 6 if stype == 1 else 0, 0,
                               offsets[i] if i else 0, len(data), link, 0, 8,
                               24 if stype == 2 else 0)
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if order == "little" else 2, 1]) + b"\0" * 9
    header = ident + struct.pack(end + "HHIQQQIHHHHHH", 1, machine, 1, 0, 0, shoff, 0, 64, 0, 0, 64,
                                 len(contents), len(contents) - 1)
    return header + body + headers


def targz(entries) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if isinstance(content, tuple):
                kind = content[0]
                info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                             "dir": tarfile.DIRTYPE, "char": tarfile.CHRTYPE,
                             "fifo": tarfile.FIFOTYPE}[kind]
                if kind in ("symlink", "hardlink"):
                    info.linkname = content[1]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


@pytest.fixture
def layer_file(tmp_path):
    def write(entries, raw=None):
        path = tmp_path / "layer.tar.gz"
        path.write_bytes(raw if raw is not None else targz(entries))
        return str(path)
    return write


def image(programs, function=None, prog_type=None) -> _oci.ImageBytecode:
    return _oci.ImageBytecode(
        url="r.example/x:1", digest=DIGEST, manifest_digest=DIGEST, pull_policy="IfNotPresent",
        path="/x.o", filename="x.o", object_sha256=DIGEST, labels={}, label_format="v2",
        programs=programs, maps={}, bpf_function_name=function, program_type=prog_type)


@pytest.fixture
def layout(tmp_path):
    return Layout(bpffs=str(tmp_path / "bpffs"), run_dir=str(tmp_path / "run"),
                  lib_dir=str(tmp_path / "lib"))


# --- references -------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, registry, repository, tag, digest, name", [
    ("quay.io/bpfd-bytecode/xdp_pass:latest", "quay.io", "bpfd-bytecode/xdp_pass", "latest", None,
     "quay.io/bpfd-bytecode/xdp_pass:latest"),
    ("quay.io/bpfd-bytecode/xdp_pass", "quay.io", "bpfd-bytecode/xdp_pass", "latest", None,
     "quay.io/bpfd-bytecode/xdp_pass:latest"),
    ("xdp_pass", "docker.io", "library/xdp_pass", "latest", None, "docker.io/library/xdp_pass:latest"),
    ("someone/xdp:v1", "docker.io", "someone/xdp", "v1", None, "docker.io/someone/xdp:v1"),
    ("index.docker.io/someone/xdp:v1", "docker.io", "someone/xdp", "v1", None, "docker.io/someone/xdp:v1"),
    ("localhost/xdp", "localhost", "xdp", "latest", None, "localhost/xdp:latest"),
    ("127.0.0.1:5000/a/b/c:1.0-rc_1", "127.0.0.1:5000", "a/b/c", "1.0-rc_1", None,
     "127.0.0.1:5000/a/b/c:1.0-rc_1"),
    ("reg.example:443/x@" + DIGEST, "reg.example:443", "x", None, DIGEST, "reg.example:443/x@" + DIGEST),
    ("reg.example/x:v1@" + DIGEST, "reg.example", "x", "v1", DIGEST, "reg.example/x@" + DIGEST),
])
def test_parse_reference(url, registry, repository, tag, digest, name):
    ref = _oci.parse_reference(url)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.name == name == str(ref)
    assert ref.reference == (digest or tag)


def test_docker_hub_api_host():
    assert _oci.parse_reference("xdp_pass").api_host == "registry-1.docker.io"
    assert _oci.parse_reference("quay.io/a/b").api_host == "quay.io"


@pytest.mark.parametrize("url, message", [
    ("", "empty"),
    ("https://quay.io/x/y:1", "without a scheme"),
    ("quay.io/UPPER/case", "lowercase"),
    ("quay.io/x@sha256:abc", "64 lowercase hex"),
    ("quay.io/x@md5:" + "a" * 32, "64 lowercase hex"),
    ("quay.io/x:bad!tag", "not a valid tag"),
    ("quay.io//x", "lowercase"),
])
def test_parse_reference_refuses(url, message):
    with pytest.raises(BpfdError, match=message):
        _oci.parse_reference(url)


# --- labels and the function choice -----------------------------------------------------------------


def test_v2_labels():
    parsed = _oci.parse_labels({_oci.LABEL_PROGRAMS: '{"pass": "xdp"}',
                                _oci.LABEL_MAPS: '{"hits": "per_cpu_array"}'})
    assert parsed["format"] == "v2" and parsed["programs"] == {"pass": "xdp"}
    assert parsed["maps"] == {"hits": "per_cpu_array"} and parsed["bpf_function_name"] == "pass"


def test_v2_labels_several_programs_have_no_default_and_maps_are_optional():
    parsed = _oci.parse_labels({_oci.LABEL_PROGRAMS: '{"a": "xdp", "b": "tc"}'})
    assert parsed["bpf_function_name"] is None and parsed["maps"] == {}


def test_v1_labels():
    parsed = _oci.parse_labels({_oci.LABEL_PROGRAM_TYPE: "xdp", _oci.LABEL_FILENAME: "pass.bpf.o",
                                _oci.LABEL_PROGRAM_NAME: "xdp_counter", _oci.LABEL_FUNCTION: "pass"})
    assert parsed["format"] == "v1" and parsed["programs"] == {"pass": "xdp"}
    assert parsed["bpf_function_name"] == "pass" and parsed["program_name"] == "xdp_counter"
    assert parsed["filename"] == "pass.bpf.o"


def test_v1_labels_without_a_function_keep_the_type():
    parsed = _oci.parse_labels({_oci.LABEL_PROGRAM_TYPE: "tc", _oci.LABEL_SECTION: "classifier"})
    assert parsed["programs"] == {} and parsed["program_type"] == "tc"
    assert parsed["bpf_function_name"] is None


def test_v2_wins_over_v1():
    parsed = _oci.parse_labels({_oci.LABEL_PROGRAMS: '{"new": "xdp"}', _oci.LABEL_PROGRAM_TYPE: "tc",
                                _oci.LABEL_FUNCTION: "old"})
    assert parsed["format"] == "v2" and parsed["programs"] == {"new": "xdp"}


@pytest.mark.parametrize("labels, message", [
    ({}, "has no bpfd labels"),
    (None, "has no bpfd labels"),
    ({"org.opencontainers.image.title": "x"}, "it is not a bpfd bytecode image"),
    ({_oci.LABEL_PROGRAMS: "{oops"}, "is not valid JSON"),
    ({_oci.LABEL_PROGRAMS: '["pass"]'}, "must be a JSON object of strings"),
    ({_oci.LABEL_PROGRAMS: '{"pass": 3}'}, "must be a JSON object of strings"),
    ({_oci.LABEL_PROGRAMS: "{}"}, "lists no program"),
    ({_oci.LABEL_PROGRAMS: '{"a": "xdp"}', _oci.LABEL_MAPS: "nope"}, "io.ebpf.maps is not valid JSON"),
    ({_oci.LABEL_PROGRAM_TYPE: ""}, "is empty"),
])
def test_bad_labels(labels, message):
    with pytest.raises(BpfdError, match=message):
        _oci.parse_labels(labels, "r.example/x:1")


def test_type_families():
    assert _oci.type_family("TCX") == _oci.type_family("tc") == _oci.type_family("sched_cls")
    assert _oci.type_family("kretprobe") == _oci.type_family("kprobe")
    assert _oci.type_family("uretprobe") == _oci.type_family("uprobe")
    assert _oci.type_family("xdp") != _oci.type_family("tc")


def test_default_function():
    assert _oci.default_function(image({"pass": "xdp"}, "pass"), "xdp") == "pass"
    assert _oci.default_function(image({"a": "tc", "b": "xdp"}), "xdp") == "b"
    assert _oci.default_function(image({"a": "xdp", "b": "xdp"}, "b"), "xdp") == "b"
    assert _oci.default_function(image({"t": "tcx"}), "tc") == "t"
    assert _oci.default_function(image({}, None, "xdp"), "xdp") is None  # the loader chooses
    with pytest.raises(BpfdError, match=r"several xdp programs \(a, b\): set bpf_function_name"):
        _oci.default_function(image({"a": "xdp", "b": "xdp"}), "xdp")
    with pytest.raises(BpfdError, match=r"holds no xdp program \(it has: t \(tc\)\)"):
        _oci.default_function(image({"t": "tc"}, "t"), "xdp")
    with pytest.raises(BpfdError, match=r"holds a tc program, not xdp"):
        _oci.default_function(image({}, None, "tc"), "xdp")


def test_check_function():
    img = image({"a": "xdp", "b": "tc"})
    assert _oci.check_function(img, "a", "xdp") == "a"
    assert _oci.select_function(img, "tcx", "b") == "b"
    with pytest.raises(BpfdError, match=r"has no program 'c' \(it has: a \(xdp\), b \(tc\)\)"):
        _oci.check_function(img, "c", "xdp")
    with pytest.raises(BpfdError, match=r"program 'b' in image r.example/x:1 is of type tc, not xdp"):
        _oci.check_function(img, "b", "xdp")
    assert _oci.check_function(image({}, None, "xdp"), "anything", "xdp") == "anything"
    with pytest.raises(BpfdError, match="of type tc, not xdp"):
        _oci.check_function(image({}, None, "tc"), "f", "xdp")


# --- platforms -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("machine, arch, variant", [
    ("x86_64", "amd64", None), ("aarch64", "arm64", "v8"), ("armv7l", "arm", "v7"),
    ("armv6l", "arm", "v6"), ("i686", "386", None), ("ppc64le", "ppc64le", None),
    ("s390x", "s390x", None), ("riscv64", "riscv64", None), ("loongarch64", "loong64", None),
    ("mips64el", "mips64le", None), ("weird9", "weird9", None),
])
def test_host_platform(machine, arch, variant):
    assert _oci.host_platform(machine) == {"os": "linux", "architecture": arch, "variant": variant}


def _entry(digest, arch, variant=None, os_name="linux"):
    plat = {"os": os_name, "architecture": arch}
    if variant:
        plat["variant"] = variant
    return {"mediaType": _oci.MT_OCI_MANIFEST, "digest": digest, "size": 1, "platform": plat}


def test_select_manifest():
    index = {"manifests": [_entry("sha256:arm6", "arm", "v6"), _entry("sha256:arm7", "arm", "v7"),
                           _entry("sha256:amd", "amd64"), _entry("sha256:win", "amd64", os_name="windows"),
                           _entry("sha256:att", "unknown", os_name="unknown")]}
    assert _oci.select_manifest(index, _oci.host_platform("x86_64"))["digest"] == "sha256:amd"
    assert _oci.select_manifest(index, _oci.host_platform("armv7l"))["digest"] == "sha256:arm7"
    assert _oci.select_manifest(index, _oci.host_platform("armv6l"))["digest"] == "sha256:arm6"
    # no exact variant: an entry without variant, else any of the architecture
    assert _oci.select_manifest(index, _oci.host_platform("armv5tel"))["digest"] == "sha256:arm6"
    arm64 = {"manifests": [_entry("sha256:a64", "arm64")]}
    assert _oci.select_manifest(arm64, _oci.host_platform("aarch64"))["digest"] == "sha256:a64"
    with pytest.raises(BpfdError, match=r"no manifest for this host's platform linux/s390x \(it has: "
                                        r"linux/amd64, linux/arm/v6, linux/arm/v7, unknown/unknown, "
                                        r"windows/amd64\)"):
        _oci.select_manifest(index, _oci.host_platform("s390x"), "r.example/x:1")


def test_select_manifest_single_entry_without_platform():
    only = {"manifests": [{"digest": "sha256:one", "mediaType": _oci.MT_OCI_MANIFEST}]}
    assert _oci.select_manifest(only, _oci.host_platform("x86_64"))["digest"] == "sha256:one"


# --- layers and objects -----------------------------------------------------------------------------


def test_extract_object(layer_file):
    obj = elf()
    assert _oci.extract_object(layer_file([("./", ("dir",)), ("./xdp_pass.o", obj)])) == ("xdp_pass.o", obj)
    assert _oci.extract_object(layer_file([("xdp_pass.o", obj)])) == ("xdp_pass.o", obj)


@pytest.mark.parametrize("entries, message", [
    ([("a.o", b"1"), ("b.o", b"2")], r"more than one file \(a\.o, b\.o\)"),
    ([("../x", b"1")], r"unsafe path \('\.\./x'\)"),
    ([("./a/../../x", b"1")], r"unsafe path"),
    ([("/abs.o", b"1")], r"unsafe path \('/abs\.o'\)"),
    ([("link.o", ("symlink", "/etc/passwd"))], r"holds a link \('link\.o' -> '/etc/passwd'\)"),
    ([("a.o", b"1"), ("b.o", ("hardlink", "a.o"))], r"holds a link"),
    ([("dev", ("char",))], r"special file"),
    ([("fifo", ("fifo",))], r"special file"),
    ([("sub", ("dir",)), ("sub/x.o", b"1")], r"below its root"),
    ([], r"holds no file"),
    ([("d%d" % i, ("dir",)) for i in range(_oci.MAX_LAYER_ENTRIES + 1)], r"more than 64 entries"),
])
def test_extract_object_refuses(layer_file, entries, message):
    with pytest.raises(BpfdError, match=message):
        _oci.extract_object(layer_file(entries), url="r.example/x:1")


def test_extract_object_size_limits(layer_file):
    with pytest.raises(BpfdError, match=r"x\.o in image the image is 2048 bytes, over the limit of 1024"):
        _oci.extract_object(layer_file([("x.o", b"\0" * 2048)]), max_bytes=1024)
    # a pax header alone cannot inflate past the cap either
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x.o")
        info.pax_headers = {"comment": "A" * (3 << 20)}
        tar.addfile(info, io.BytesIO(b""))
    bomb = gzip.compress(raw.getvalue())
    with pytest.raises(BpfdError, match=r"unpacks to more than"):
        _oci.extract_object(layer_file(None, raw=bomb), max_bytes=1024)


@pytest.mark.parametrize("raw", [b"not gzip at all", gzip.compress(b"not a tar" * 100), b""])
def test_extract_object_not_a_tar_gz(layer_file, raw):
    with pytest.raises(BpfdError, match=r"not a valid gzip tar archive|holds no file"):
        _oci.extract_object(layer_file(None, raw=raw))


def test_check_elf():
    _oci.check_elf(elf())
    other = "big" if sys.byteorder == "little" else "little"
    with pytest.raises(BpfdError, match=r"built for %s-endian hosts; this host is %s-endian"
                       % (other, sys.byteorder)):
        _oci.check_elf(elf(order=other))
    with pytest.raises(BpfdError, match=r"not an eBPF object \(ELF machine 62, eBPF is 247\)"):
        _oci.check_elf(elf(machine=62))
    with pytest.raises(BpfdError, match=r"not a 64-bit ELF"):
        _oci.check_elf(elf(bits=32))
    with pytest.raises(BpfdError, match=r"not an ELF object file"):
        _oci.check_elf(b"#!/bin/sh\n")


def test_object_programs():
    data = elf(programs=(("xdp", "pass"), ("tc", "tc_prog"), ("tcx/ingress", "tcx_prog"),
                         ("xdp.frags", "frags"), ("tracepoint/syscalls/sys_enter_openat", "tp"),
                         ("kretprobe/do_unlinkat", "kret"), ("uprobe.s/bin:f", "up"),
                         ("fentry/f", "fe"), ("license", "not_a_program")))
    assert _oci.object_programs(data) == {
        "pass": "xdp", "tc_prog": "tc", "tcx_prog": "tcx", "frags": "xdp", "tp": "tracepoint",
        "kret": "kretprobe", "up": "uprobe", "fe": "fentry"}
    big = "big" if sys.byteorder == "little" else "little"
    assert _oci.object_programs(elf(order=big)) == {"pass": "xdp"}
    with pytest.raises(BpfdError, match="cannot read the ELF sections"):
        _oci.object_programs(elf()[:200])
    with pytest.raises(BpfdError, match="not a 64-bit ELF object file"):
        _oci.object_programs(b"nope")


# --- signatures ---------------------------------------------------------------------------------------


def _payload(digest=DIGEST, kind=_oci.COSIGN_PAYLOAD_TYPE) -> bytes:
    return json.dumps({"critical": {"identity": {"docker-reference": "r.example/x"},
                                    "image": {"docker-manifest-digest": digest}, "type": kind},
                       "optional": None}).encode()


@pytest.fixture(scope="module")
def p256():
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, pem


def _sign(private, payload: bytes) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return base64.b64encode(private.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def test_signature_tag():
    assert _oci.signature_tag(DIGEST) == "sha256-" + "ab" * 32 + ".sig"


def test_check_signature_payload():
    assert _oci.check_signature_payload(_payload(), DIGEST)["critical"]["image"]
    with pytest.raises(BpfdError, match=r"the signature is for %s, not for this image's digest %s"
                       % (OTHER, DIGEST)):
        _oci.check_signature_payload(_payload(OTHER), DIGEST)
    with pytest.raises(BpfdError, match=r"has type 'atomic container signature'"):
        _oci.check_signature_payload(_payload(kind="atomic container signature"), DIGEST)
    for bad in (b"not json", b"{}", b'{"critical": {"image": {}}}', b"[1]"):
        with pytest.raises(BpfdError, match=r"not a cosign simple-signing document"):
            _oci.check_signature_payload(bad, DIGEST)


def test_verify_signature(p256):
    private, pem = p256
    public = _oci.load_public_key(pem)
    payload = _payload()
    signature = _sign(private, payload)
    assert _oci.verify_signature(payload, signature, public)
    assert not _oci.verify_signature(payload + b" ", signature, public)
    assert not _oci.verify_signature(payload, "!!not base64!!", public)
    assert not _oci.verify_signature(payload, base64.b64encode(b"short").decode(), public)
    from cryptography.hazmat.primitives.asymmetric import ec
    stranger = ec.generate_private_key(ec.SECP256R1())
    assert not _oci.verify_signature(payload, _sign(stranger, payload), public)


def test_load_public_key(p256, tmp_path):
    _private, pem = p256
    path = tmp_path / "cosign.pub"
    path.write_text(pem)
    assert _oci.key_id(_oci.load_public_key(str(path))) == _oci.key_id(_oci.load_public_key(pem))
    assert _oci.key_id(_oci.load_public_key(pem)).startswith("sha256:")
    with pytest.raises(BpfdError, match=r"verify_key /nonexistent/key.pub cannot be read"):
        _oci.load_public_key("/nonexistent/key.pub")
    with pytest.raises(BpfdError, match=r"not a PEM public key"):
        _oci.load_public_key("-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n")
    with pytest.raises(BpfdError, match=r"verify_key is empty"):
        _oci.load_public_key("")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    for key in (ec.generate_private_key(ec.SECP384R1()),
                rsa.generate_private_key(public_exponent=65537, key_size=2048)):
        text = key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        with pytest.raises(BpfdError, match=r"must be an ECDSA P-256 public key"):
            _oci.load_public_key(text)


# --- the cache -----------------------------------------------------------------------------------------


def test_cache_stores_by_digest_and_detects_tampering(layout):
    cache = _oci.ImageCache(layout)
    data = b'{"hello": "world"}'
    digest = _oci._sha256(data)
    path = cache.store_bytes(digest, data)
    assert path == os.path.join(layout.lib_dir, "images", "blobs", "sha256", digest.split(":")[1])
    assert cache.verified(digest) == path
    with open(path, "ab") as handle:
        handle.write(b"x")
    with pytest.raises(_oci._Corrupt) as err:
        cache.verified(digest)
    assert err.value.digest == digest and not os.path.exists(path)
    assert cache.corrupted == [digest]
    assert cache.verified(digest) is None  # known bad: treated as absent from now on


def test_cache_refuses_content_that_does_not_match(layout):
    cache = _oci.ImageCache(layout)
    with pytest.raises(BpfdError, match=r"does not match its digest \(expected %s" % DIGEST):
        cache.store_bytes(DIGEST, b"something else")
    with pytest.raises(BpfdError, match=r"does not match its digest"):
        cache.store_stream(DIGEST, [b"a", b"b"], size=None, max_bytes=100)
    with pytest.raises(BpfdError, match=r"more than 4 bytes"):
        cache.store_stream(DIGEST, [b"abc", b"def"], size=4, max_bytes=100)
    with pytest.raises(BpfdError, match=r"more than 5 bytes"):
        cache.store_stream(DIGEST, [b"abc", b"def"], size=None, max_bytes=5)
    assert os.listdir(os.path.join(layout.lib_dir, "images", "tmp")) == []
    with pytest.raises(BpfdError, match="is not a sha256 digest"):
        cache.find("sha256:../../etc/passwd")


def test_cache_index_is_rebuilt_when_unreadable(layout):
    cache = _oci.ImageCache(layout)
    assert cache.read_index() == _oci.empty_index()
    os.makedirs(cache.root)
    with open(cache.index_file, "w") as handle:
        handle.write("{broken")
    assert cache.read_index() == _oci.empty_index()
    with open(cache.index_file, "w") as handle:
        json.dump({"version": 99}, handle)
    assert cache.read_index() == _oci.empty_index()


def test_cache_objects_are_rehashed(layout):
    cache = _oci.ImageCache(layout)
    obj = elf()
    path, written = cache.store_object(obj, "xdp_pass.o")
    assert written and path.endswith(os.path.join(_oci._sha256(obj).split(":")[1], "xdp_pass.o"))
    assert cache.store_object(obj, "xdp_pass.o") == (path, False)
    with open(path, "r+b") as handle:
        handle.write(b"\0\0\0\0")
    assert cache.store_object(obj, "xdp_pass.o") == (path, True)
    assert open(path, "rb").read() == obj and cache.corrupted
    assert cache.store_object(obj, "../../evil name")[0].endswith("bytecode.o")


def test_cache_spill_reads_the_cache_and_writes_elsewhere(layout, tmp_path):
    real = _oci.ImageCache(layout)
    data = b"payload"
    real.store_bytes(_oci._sha256(data), data)
    spill = tmp_path / "spill"
    spill.mkdir()
    preview = _oci.ImageCache(layout, spill=str(spill))
    assert preview.verified(_oci._sha256(data)).startswith(real.root)
    other = b"other"
    assert preview.store_bytes(_oci._sha256(other), other).startswith(str(spill))
    assert real.find(_oci._sha256(other)) is None
    preview.write_index({"version": 1, "images": {"x": {}}, "signatures": {}})
    assert not os.path.exists(real.index_file)


# --- resolving from a cache filled by hand (no registry) ------------------------------------------------


def _fill_cache(layout, tmp_path, url="r.example/bpf/xdp:1.0", **build_args):
    obj_path = tmp_path / "xdp_pass.o"
    obj_path.write_bytes(elf())
    built = _oci.build_image(str(obj_path), **build_args)
    cache = _oci.ImageCache(layout)
    manifest = json.loads(built["manifest"])
    cache.store_bytes(built["digest"], built["manifest"])
    cache.store_bytes(manifest["config"]["digest"], built["config"])
    cache.store_bytes(manifest["layers"][0]["digest"], built["layer"])
    index = _oci.empty_index()
    index["images"][_oci.parse_reference(url).name] = {"digest": built["digest"]}
    cache.write_index(index)
    return built, manifest


def test_build_image_is_reproducible(tmp_path):
    path = tmp_path / "xdp_pass.o"
    path.write_bytes(elf())
    first = _oci.build_image(str(path), machine="x86_64")
    assert first == _oci.build_image(str(path), machine="x86_64")
    assert first["labels"] == {_oci.LABEL_PROGRAMS: '{"pass": "xdp"}', _oci.LABEL_MAPS: "{}"}
    config = json.loads(first["config"])
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    v1 = _oci.build_image(str(path), label_format="v1", docker_media_types=True)
    assert v1["labels"][_oci.LABEL_FUNCTION] == "pass" and v1["media_type"] == _oci.MT_DOCKER_MANIFEST
    two = tmp_path / "two.o"
    two.write_bytes(elf(programs=(("xdp", "a"), ("xdp", "b"))))
    with pytest.raises(BpfdError, match=r"v1 labels describe exactly one program; this object has 2"):
        _oci.build_image(str(two), label_format="v1")
    none = tmp_path / "none.o"
    none.write_bytes(elf(programs=()))
    with pytest.raises(BpfdError, match=r"holds no program with a known SEC\(\) name"):
        _oci.build_image(str(none))


def test_resolve_never_from_a_cache_filled_by_hand(layout, tmp_path):
    built, manifest = _fill_cache(layout, tmp_path)
    got = _oci.resolve_image("r.example/bpf/xdp:1.0", pull_policy="Never", layout=layout)
    assert got.digest == built["digest"] and got.programs == {"pass": "xdp"}
    assert open(got.path, "rb").read() == elf() and not got.contacted_registry
    by_digest = _oci.resolve_image("r.example/bpf/xdp@" + built["digest"], pull_policy="Never",
                                   layout=layout)
    assert by_digest.path == got.path
    layer = manifest["layers"][0]["digest"]
    with open(os.path.join(layout.lib_dir, "images", _oci.ImageCache.blob_rel(layer)), "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BpfdError, match=r"cached blob %s .* is corrupted" % layer):
        _oci.resolve_image("r.example/bpf/xdp:1.0", pull_policy="Never", layout=layout)
    with pytest.raises(BpfdError, match=r"not in the host's image cache and pull_policy is Never"):
        _oci.resolve_image("r.example/bpf/xdp:1.0", pull_policy="Never", layout=layout)


def test_resolve_check_mode_on_an_empty_host_creates_nothing(layout):
    with pytest.raises(BpfdError, match="not in the host's image cache"):
        _oci.resolve_image("r.example/bpf/xdp:1.0", pull_policy="Never", layout=layout, check_mode=True)
    assert not os.path.exists(layout.lib_dir)


@pytest.mark.parametrize("kwargs, message", [
    ({"pull_policy": "Sometimes"}, "pull_policy must be one of Always, IfNotPresent, Never"),
    ({"verify": "always"}, "verify must be none, optional or required"),
    ({"verify": "required"}, "needs verify_key"),
    ({"auth": {"username": "u"}}, "registry_auth needs both username and password"),
])
def test_resolve_argument_errors(layout, kwargs, message):
    if "auth" in kwargs and not _oci.HAS_ORAS:
        pytest.skip("needs oras")
    with pytest.raises(BpfdError, match=message):
        _oci.resolve_image("r.example/bpf/xdp:1.0", layout=layout, **kwargs)


def test_remove_image_from_a_cache_filled_by_hand(layout, tmp_path):
    _fill_cache(layout, tmp_path)
    got = _oci.resolve_image("r.example/bpf/xdp:1.0", pull_policy="Never", layout=layout)
    result = _oci.remove_image("r.example/bpf/xdp:1.0", layout=layout)
    assert result["changed"] and result["removed_blobs"] == 3 and result["freed_bytes"] > 0
    assert not os.path.exists(got.path) and _oci.list_images(layout) == {}
    assert not _oci.remove_image("r.example/bpf/xdp:1.0", layout=layout)["changed"]


def test_oras_and_cryptography_are_imported_only_when_used():
    import subprocess

    code = ("import sys\n"
            "from ansible_collections.bpfd.core.plugins.module_utils import _oci\n"
            "print(sorted(m for m in ('oras', 'requests', 'cryptography') if m in sys.modules))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert out.strip() == "[]"
