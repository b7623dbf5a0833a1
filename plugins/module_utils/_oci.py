# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""eBPF bytecode from OCI images: pull, verify, cache, publish.

bpfd's image format (docs/images.md): one gzip tar layer (OCI
``application/vnd.oci.image.layer.v1.tar+gzip`` or Docker
``application/vnd.docker.image.rootfs.diff.tar.gzip``) holding one ELF object at
its root, and labels in the image config: v1 ``io.ebpf.program_type``,
``io.ebpf.filename``, ``io.ebpf.program_name``, ``io.ebpf.bpf_function_name``;
v2 ``io.ebpf.programs`` (JSON ``{function: type}``) and ``io.ebpf.maps``.

The host cache is content-addressed under ``<lib_dir>/images``::

    blobs/sha256/<hex>        manifests, configs, layers, signature artifacts
    objects/<sha256>/<file>   the ELF object extracted from a layer
    index.json                reference -> digest (+ signature records)
    .lock                     flock held while the cache is used

Every use re-hashes each blob it reads (and the extracted object); content
that no longer matches its digest is dropped and pulled again
(``IfNotPresent``/``Always``) or refused (``Never``) -- never loaded.

Registry access goes through the ``oras`` library (``oras.provider.Registry``:
its requests session, TLS settings, token-auth backend, blob upload); the few
places that go around it say why. ``cryptography`` is needed only to verify
cosign signatures. Both are imported on first use only (a cached image with
``pull_policy: Never`` needs neither): modules report ``missing_required_lib``
from ``HAS_ORAS`` / ``HAS_CRYPTOGRAPHY``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import gzip
import hashlib
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import struct
import sys
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._state import Layout, write_json_atomic


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# oras (with requests) and cryptography are imported only when an image is pulled or a
# signature checked (importing oras.provider alone takes ~0.15 s); modules test these flags
# and report missing_required_lib("oras") / missing_required_lib("cryptography").
HAS_ORAS = _installed("oras")
HAS_CRYPTOGRAPHY = _installed("cryptography")

# --- constants --------------------------------------------------------------------------

PULL_POLICIES = ("Always", "IfNotPresent", "Never")
VERIFY_MODES = ("optional", "required")

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
BYTECODE_LAYER_TYPES = (MT_OCI_LAYER_GZIP, MT_DOCKER_LAYER_GZIP)

LABEL_PROGRAMS = "io.ebpf.programs"
LABEL_MAPS = "io.ebpf.maps"
LABEL_PROGRAM_TYPE = "io.ebpf.program_type"
LABEL_FILENAME = "io.ebpf.filename"
LABEL_PROGRAM_NAME = "io.ebpf.program_name"
LABEL_FUNCTION = "io.ebpf.bpf_function_name"
LABEL_SECTION = "io.ebpf.section_name"  # the oldest bpfd images: a section, no function

COSIGN_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_PAYLOAD_TYPE = "cosign container image signature"

MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 4 << 20
MAX_LAYER_BYTES = 64 << 20  # compressed
MAX_OBJECT_BYTES = 64 << 20
MAX_LAYER_ENTRIES = 64
MAX_INDEX_DEPTH = 2
DEFAULT_TIMEOUT = 30.0

EM_BPF = 247
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPO_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?$")
_SAFE_FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")

# platform.machine() -> (GOARCH, variant) as OCI platforms spell them.
_GOARCH = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None),
    "i386": ("386", None), "i486": ("386", None), "i586": ("386", None), "i686": ("386", None),
    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"), "aarch64_be": ("arm64", "v8"),
    "armv8l": ("arm", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "armv5tel": ("arm", "v5"),
    "ppc64le": ("ppc64le", None), "ppc64": ("ppc64", None), "s390x": ("s390x", None),
    "riscv64": ("riscv64", None), "mips64": ("mips64", None), "mips64el": ("mips64le", None),
    "mips": ("mips", None), "mipsel": ("mipsle", None), "loongarch64": ("loong64", None),
}

# Program type spellings that name the same kind of program (bpfman writes "tc" and "tcx"
# for sched_cls programs, kretprobes are kprobes, ...).
_TYPE_FAMILY = {
    "tc": "tc", "tcx": "tc", "sched_cls": "tc", "classifier": "tc",
    "kprobe": "kprobe", "kretprobe": "kprobe", "uprobe": "uprobe", "uretprobe": "uprobe",
    "tracepoint": "tracepoint", "tp": "tracepoint",
}

# ELF section name (libbpf SEC()) -> program type, for labels made from an object.
_SECTION_TYPES = (
    ("xdp", "xdp"), ("tcx", "tcx"), ("tc", "tc"), ("classifier", "tc"),
    ("tracepoint", "tracepoint"), ("tp", "tracepoint"),
    ("kretprobe", "kretprobe"), ("kprobe", "kprobe"),
    ("uretprobe", "uretprobe"), ("uprobe", "uprobe"),
    ("fentry", "fentry"), ("fexit", "fexit"),
)


# --- references ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: ``registry/repository[:tag][@sha256:...]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """Canonical form, the cache index key (a digest wins over a tag)."""
        if self.digest:
            return "%s/%s@%s" % (self.registry, self.repository, self.digest)
        return "%s/%s:%s" % (self.registry, self.repository, self.tag or "latest")

    @property
    def api_host(self) -> str:
        """Where the distribution API lives (Docker Hub's differs from its name)."""
        return "registry-1.docker.io" if self.registry == "docker.io" else self.registry

    @property
    def reference(self) -> str:
        """What goes after /manifests/ to resolve the image."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return self.name


def parse_reference(url: str) -> Reference:
    """Parse an image reference the way docker does; BpfdError when it is not one."""
    if not isinstance(url, str) or not url.strip():
        raise BpfdError("the image reference is empty")
    text = url.strip()
    if "://" in text:
        raise BpfdError("image %r: write the reference without a scheme "
                        "(registry/repository:tag); use insecure_registry for plain HTTP" % url)
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise BpfdError("image %r: the digest must be sha256: followed by 64 lowercase hex "
                            "digits" % url)
    tag = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise BpfdError("image %r: %r is not a valid tag" % (url, tag))
    parts = text.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry, parts = parts[0], parts[1:]
        if not _HOST_RE.match(registry):
            raise BpfdError("image %r: %r is not a valid registry host" % (url, registry))
    else:
        registry = "docker.io"
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = "docker.io"
    if registry == "docker.io" and len(parts) == 1:
        parts = ["library"] + parts
    if not parts or not all(_REPO_COMPONENT_RE.match(p) for p in parts):
        raise BpfdError("image %r: the repository must be lowercase letters, digits and "
                        "separators (registry/repository:tag or registry/repository@sha256:...)"
                        % url)
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry=registry, repository="/".join(parts), tag=tag, digest=digest)


# --- labels and function choice -----------------------------------------------------------


def _json_label(labels: dict, key: str, url: str) -> dict:
    raw = labels.get(key)
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise BpfdError("image %s: label %s is not valid JSON (%s)" % (url, key, exc))
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise BpfdError("image %s: label %s must be a JSON object of strings, like "
                        '{"function": "xdp"}' % (url, key))
    return value


def parse_labels(labels: dict | None, url: str = "the image") -> dict:
    """bpfd's labels -> {format, programs, maps, bpf_function_name, program_type, ...}.

    v2 (``io.ebpf.programs``) wins when both generations are present, as in bpfman.
    """
    labels = labels or {}
    if LABEL_PROGRAMS in labels:
        programs = _json_label(labels, LABEL_PROGRAMS, url)
        if not programs:
            raise BpfdError("image %s: label %s lists no program" % (url, LABEL_PROGRAMS))
        maps = _json_label(labels, LABEL_MAPS, url) if LABEL_MAPS in labels else {}
        only = next(iter(programs)) if len(programs) == 1 else None
        return {"format": "v2", "programs": programs, "maps": maps, "bpf_function_name": only,
                "program_type": programs[only] if only else None,
                "program_name": None, "filename": None}
    if LABEL_PROGRAM_TYPE in labels:
        prog_type = labels[LABEL_PROGRAM_TYPE]
        function = labels.get(LABEL_FUNCTION) or None
        if not isinstance(prog_type, str) or not prog_type:
            raise BpfdError("image %s: label %s is empty" % (url, LABEL_PROGRAM_TYPE))
        return {"format": "v1", "programs": {function: prog_type} if function else {},
                "maps": {}, "bpf_function_name": function, "program_type": prog_type,
                "program_name": labels.get(LABEL_PROGRAM_NAME),
                "filename": labels.get(LABEL_FILENAME), "section_name": labels.get(LABEL_SECTION)}
    raise BpfdError("image %s has no bpfd labels (%s, or %s and %s) in its config: it is not a "
                    "bpfd bytecode image (see docs/images.md)"
                    % (url, LABEL_PROGRAMS, LABEL_PROGRAM_TYPE, LABEL_FUNCTION))


def type_family(prog_type: str | None) -> str:
    text = (prog_type or "").strip().lower()
    return _TYPE_FAMILY.get(text, text)


def _describe_programs(programs: dict) -> str:
    return ", ".join("%s (%s)" % (k, v) for k, v in sorted(programs.items())) or "none"


def check_function(image: "ImageBytecode", function: str, prog_type: str) -> str:
    """Refuse a function the image does not hold, or one of another program type."""
    if image.programs:
        if function not in image.programs:
            raise BpfdError("image %s has no program %r (it has: %s)"
                            % (image.url, function, _describe_programs(image.programs)))
        found = image.programs[function]
    else:
        found = image.program_type
    if found and type_family(found) != type_family(prog_type):
        raise BpfdError("program %r in image %s is of type %s, not %s"
                        % (function, image.url, found, prog_type))
    return function


def default_function(image: "ImageBytecode", prog_type: str) -> str | None:
    """The function to load for a module of ``prog_type`` when the task names none.

    The labelled function if it is of that type, else the only program of that type;
    None when the labels list no function (the loader then picks from the object).
    """
    if not image.programs:
        if image.program_type and type_family(image.program_type) != type_family(prog_type):
            raise BpfdError("image %s holds a %s program, not %s"
                            % (image.url, image.program_type, prog_type))
        return None
    matches = sorted(f for f, t in image.programs.items() if type_family(t) == type_family(prog_type))
    if image.bpf_function_name in matches:
        return image.bpf_function_name
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise BpfdError("image %s holds no %s program (it has: %s)"
                        % (image.url, prog_type, _describe_programs(image.programs)))
    raise BpfdError("image %s holds several %s programs (%s): set bpf_function_name"
                    % (image.url, prog_type, ", ".join(matches)))


def select_function(image: "ImageBytecode", prog_type: str, requested: str | None = None) -> str | None:
    """``check_function`` when the task names one, else ``default_function``."""
    if requested:
        return check_function(image, requested, prog_type)
    return default_function(image, prog_type)


# --- platforms ------------------------------------------------------------------------------


def host_platform(machine: str | None = None) -> dict:
    """{"os", "architecture", "variant"} of this host, in OCI (GOARCH) spelling."""
    machine = (machine or platform.machine() or "").lower()
    arch, variant = _GOARCH.get(machine, (machine, None))
    return {"os": "linux", "architecture": arch, "variant": variant}


def platform_string(plat: dict | None) -> str:
    if not plat:
        return "unknown"
    text = "%s/%s" % (plat.get("os") or "?", plat.get("architecture") or "?")
    return text + ("/%s" % plat["variant"] if plat.get("variant") else "")


def select_manifest(index: dict, plat: dict, url: str = "the image") -> dict:
    """The descriptor of an index (manifest list) entry for ``plat``."""
    entries = [m for m in index.get("manifests") or [] if isinstance(m, dict) and m.get("digest")]
    with_platform = [m for m in entries if isinstance(m.get("platform"), dict)]
    if not with_platform and len(entries) == 1:
        return entries[0]
    same = [m for m in with_platform
            if m["platform"].get("os", "linux") == plat["os"]
            and m["platform"].get("architecture") == plat["architecture"]]
    for rank in (lambda m: m["platform"].get("variant") == plat.get("variant"),
                 lambda m: not m["platform"].get("variant"),
                 lambda m: True):
        picked = [m for m in same if rank(m)]
        if picked:
            return picked[0]
    have = sorted({platform_string(m.get("platform")) for m in entries})
    raise BpfdError("image %s has no manifest for this host's platform %s (it has: %s)"
                    % (url, platform_string(plat), ", ".join(have) or "none"))


# --- the layer and the object ---------------------------------------------------------------


class _CappedReader(io.RawIOBase):
    """Reads at most ``cap`` bytes from a stream, then fails (a gzip bomb stops here)."""

    def __init__(self, stream: Any, cap: int, what: str) -> None:
        super().__init__()
        self._stream, self._left, self._what = stream, cap, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(min(len(buffer), self._left + 1))
        if len(data) > self._left:
            raise BpfdError(self._what)
        self._left -= len(data)
        buffer[:len(data)] = data
        return len(data)


def extract_object(layer_path: str, *, url: str = "the image",
                   max_bytes: int = MAX_OBJECT_BYTES) -> tuple:
    """(file name, bytes) of the one regular file at the root of a gzip tar layer.

    Refused: a second file, an absolute or ``..`` path, links, devices, a file below the
    root, a file over ``max_bytes``, more than MAX_LAYER_ENTRIES entries. Nothing is
    written anywhere: the caller stores the bytes.
    """
    cap = max_bytes + (1 << 20)  # room for tar headers
    found: list = []
    try:
        with open(layer_path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            capped = io.BufferedReader(_CappedReader(
                gz, cap, "the bytecode layer of image %s unpacks to more than %d bytes" % (url, cap)))
            with tarfile.open(fileobj=capped, mode="r|") as tar:
                for count, member in enumerate(tar, 1):
                    if count > MAX_LAYER_ENTRIES:
                        raise BpfdError("the bytecode layer of image %s has more than %d entries"
                                        % (url, MAX_LAYER_ENTRIES))
                    name = member.name
                    parts = [p for p in name.split("/") if p not in ("", ".")]
                    if name.startswith("/") or ".." in parts:
                        raise BpfdError("the bytecode layer of image %s holds an entry with an "
                                        "unsafe path (%r): refused" % (url, name))
                    if member.isdir():
                        continue
                    if member.issym() or member.islnk():
                        raise BpfdError("the bytecode layer of image %s holds a link (%r -> %r): "
                                        "refused, it must hold one regular file"
                                        % (url, name, member.linkname))
                    if not member.isreg():
                        raise BpfdError("the bytecode layer of image %s holds a special file "
                                        "(%r): refused" % (url, name))
                    if len(parts) != 1:
                        raise BpfdError("the bytecode layer of image %s holds %r below its root: "
                                        "the object file must be at the root of the layer"
                                        % (url, name))
                    if found:
                        raise BpfdError("the bytecode layer of image %s holds more than one file "
                                        "(%s, %s): refused, it must hold exactly one object file"
                                        % (url, found[0][0], parts[0]))
                    if member.size > max_bytes:
                        raise BpfdError("the object %s in image %s is %d bytes, over the limit "
                                        "of %d" % (parts[0], url, member.size, max_bytes))
                    handle = tar.extractfile(member)
                    found.append((parts[0], handle.read() if handle else b""))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BpfdError("the bytecode layer of image %s is not a valid gzip tar archive (%s)"
                        % (url, exc))
    if not found:
        raise BpfdError("the bytecode layer of image %s holds no file" % url)
    return found[0]


def check_elf(data: bytes, url: str | None = None, name: str = "the object") -> None:
    """An eBPF ELF object for this host's byte order, or a sentence why not."""
    what = "%s in image %s" % (name, url) if url else name
    if data[:4] != b"\x7fELF":
        raise BpfdError("%s is not an ELF object file" % what)
    if len(data) < 64 or data[4] != 2:
        raise BpfdError("%s is not a 64-bit ELF object" % what)
    order = {1: "little", 2: "big"}.get(data[5])
    if order != sys.byteorder:
        raise BpfdError("%s is built for %s-endian hosts; this host is %s-endian "
                        "(build it with clang -target bpf%s)"
                        % (what, order or "unknown", sys.byteorder,
                           "el" if sys.byteorder == "little" else "eb"))
    machine = struct.unpack_from("<H" if order == "little" else ">H", data, 18)[0]
    if machine != EM_BPF:
        raise BpfdError("%s is not an eBPF object (ELF machine %d, eBPF is %d)"
                        % (what, machine, EM_BPF))


def _section_type(section: str) -> str | None:
    for prefix, prog_type in _SECTION_TYPES:
        if section == prefix or section.startswith(prefix + "/") or section.startswith(prefix + "."):
            return prog_type
    return None


def object_programs(data: bytes, name: str = "object") -> dict:
    """{function: program type} of an eBPF ELF object, from its SEC() names.

    What ``push_image`` writes into ``io.ebpf.programs`` when it is not given.
    """
    if data[:4] != b"\x7fELF" or len(data) < 64 or data[4] != 2:
        raise BpfdError("%s is not a 64-bit ELF object file" % name)
    end = "<" if data[5] == 1 else ">"
    try:
        shoff = struct.unpack_from(end + "Q", data, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
        sections = [struct.unpack_from(end + "IIQQQQIIQQ", data, shoff + i * shentsize)
                    for i in range(shnum)]

        def cstr(offset: int) -> str:
            return data[offset:data.index(b"\0", offset)].decode("utf-8", "replace")

        shstr_off = sections[shstrndx][4]
        names = [cstr(shstr_off + s[0]) for s in sections]
        programs = {}
        for sec in sections:
            if sec[1] != 2:  # SHT_SYMTAB
                continue
            str_off = sections[sec[6]][4]
            for i in range(sec[5] // 24):
                st_name, st_info, _other, st_shndx, _value, _size = struct.unpack_from(
                    end + "IBBHQQ", data, sec[4] + i * 24)
                if st_info & 0xF != 2 or st_info >> 4 != 1 or not 0 < st_shndx < 0xFF00:
                    continue  # global functions only (static ones are subprograms)
                prog_type = _section_type(names[st_shndx])
                if prog_type:
                    programs[cstr(str_off + st_name)] = prog_type
        return programs
    except (struct.error, IndexError, ValueError) as exc:
        raise BpfdError("cannot read the ELF sections of %s (%s)" % (name, exc))


# --- signatures (cosign key-pair format) ----------------------------------------------------


def signature_tag(digest: str) -> str:
    """Where cosign stores the signatures of ``digest``: tag ``sha256-<hex>.sig``."""
    return digest.replace(":", "-") + ".sig"


def _crypto() -> Any:
    """The cryptography modules signature checks use, imported on first use."""
    try:
        from cryptography import exceptions
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError as exc:
        raise BpfdError("verifying image signatures needs the Python library cryptography on "
                        "the managed host (pip install cryptography): %s" % exc)
    return exceptions, hashes, serialization, ec


def load_public_key(key: str) -> Any:
    """A cosign public key from PEM text or a path to a PEM file (ECDSA P-256)."""
    _exceptions, _hashes, serialization, ec = _crypto()
    if not key or not isinstance(key, str):
        raise BpfdError("verify_key is empty: give the cosign public key (PEM text or a path)")
    text = key
    if "-----BEGIN" not in key:
        try:
            with open(key, "rb") as handle:
                text = handle.read().decode("utf-8", "replace")
        except OSError as exc:
            raise BpfdError("verify_key %s cannot be read (%s)" % (key, exc.strerror or exc))
    try:
        public = serialization.load_pem_public_key(text.encode("utf-8"))
    except ValueError as exc:
        raise BpfdError("verify_key is not a PEM public key (%s)" % exc)
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise BpfdError("verify_key must be an ECDSA P-256 public key (cosign generate-key-pair "
                        "writes one)")
    return public


def key_id(public: Any) -> str:
    """sha256 of the key's DER form: which key verified (safe to show)."""
    serialization = _crypto()[2]
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def check_signature_payload(payload: bytes, digest: str) -> dict:
    """A simple-signing payload that names ``digest``, else BpfdError saying what it names."""
    try:
        doc = json.loads(payload)
        critical = doc["critical"]
        signed = critical["image"]["docker-manifest-digest"]
        kind = critical.get("type")
    except (ValueError, KeyError, TypeError) as exc:
        raise BpfdError("the signature payload is not a cosign simple-signing document (%s)" % exc)
    if kind != COSIGN_PAYLOAD_TYPE:
        raise BpfdError("the signature payload has type %r, not %r" % (kind, COSIGN_PAYLOAD_TYPE))
    if signed != digest:
        raise BpfdError("the signature is for %s, not for this image's digest %s" % (signed, digest))
    return doc


def verify_signature(payload: bytes, signature_b64: str, public: Any) -> bool:
    """ECDSA P-256 / SHA-256 over the payload bytes (cosign's key-pair signatures)."""
    exceptions, hashes, _serialization, ec = _crypto()
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, TypeError):
        return False
    try:
        public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except (exceptions.InvalidSignature, ValueError):
        return False
    return True


# --- the cache ------------------------------------------------------------------------------


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _NotCached(Exception):
    """Something the image needs is not in the cache (and the network is not allowed)."""


class _Corrupt(Exception):
    def __init__(self, digest: str, path: str, actual: str) -> None:
        super().__init__(digest)
        self.digest, self.path, self.actual = digest, path, actual


def empty_index() -> dict:
    return {"version": 1, "images": {}, "signatures": {}}


class ImageCache:
    """The content-addressed store under ``<lib_dir>/images``.

    ``spill`` (check mode) sends every write to a throw-away directory: the real
    cache is read, never changed.
    """

    def __init__(self, layout: Layout | None = None, spill: str | None = None) -> None:
        self.root = os.path.join((layout or Layout()).lib_dir, "images")
        self.spill = spill
        self.corrupted: list = []
        self._bad: set = set()

    @property
    def index_file(self) -> str:
        return os.path.join(self.root, "index.json")

    @property
    def write_root(self) -> str:
        return self.spill or self.root

    def _roots(self) -> list:
        return [r for r in (self.spill, self.root) if r]

    @staticmethod
    def blob_rel(digest: str) -> str:
        if not _DIGEST_RE.match(digest or ""):
            raise BpfdError("%r is not a sha256 digest" % (digest,))
        return os.path.join("blobs", "sha256", digest.split(":", 1)[1])

    @contextlib.contextmanager
    def locked(self, shared: bool = False) -> Iterator["ImageCache"]:
        """Exclusive flock on the cache (shared for check mode, which only reads it)."""
        shared = shared or bool(self.spill)
        if shared and not os.path.isdir(self.root):
            yield self  # check mode on a host without a cache: nothing to read, nothing to lock
            return
        os.makedirs(self.root, mode=0o750, exist_ok=True)
        fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            if not shared:  # leftovers of an interrupted download
                shutil.rmtree(os.path.join(self.root, "tmp"), ignore_errors=True)
            yield self
        finally:
            os.close(fd)

    # index ------------------------------------------------------------------------------

    def read_index(self) -> dict:
        """The index; a missing or unreadable one is empty (blobs are re-checked anyway)."""
        try:
            with open(self.index_file) as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return empty_index()
        if not isinstance(data, dict) or data.get("version") != 1:
            return empty_index()
        data.setdefault("images", {})
        data.setdefault("signatures", {})
        return data

    def write_index(self, data: dict) -> None:
        if self.spill:
            return
        write_json_atomic(self.index_file, data)

    # blobs ------------------------------------------------------------------------------

    def find(self, digest: str) -> str | None:
        if digest in self._bad:
            return None
        rel = self.blob_rel(digest)
        for root in self._roots():
            path = os.path.join(root, rel)
            if os.path.isfile(path):
                return path
        return None

    def verified(self, digest: str) -> str | None:
        """The path of a cached blob whose content hashes to ``digest``; None if absent.

        Raises _Corrupt (after dropping the blob, outside check mode) when it does not.
        """
        path = self.find(digest)
        if path is None:
            return None
        actual = _sha256_file(path)
        if actual == digest:
            return path
        self._bad.add(digest)
        self.corrupted.append(digest)
        if not self.spill or path.startswith(self.spill + os.sep):
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise _Corrupt(digest, path, actual)

    def _tmp_dir(self) -> str:
        path = os.path.join(self.write_root, "tmp")
        os.makedirs(path, mode=0o750, exist_ok=True)
        return path

    def _commit(self, tmp: str, rel: str) -> str:
        final = os.path.join(self.write_root, rel)
        os.makedirs(os.path.dirname(final), mode=0o750, exist_ok=True)
        os.rename(tmp, final)
        if rel.startswith("blobs"):
            self._bad.discard("sha256:" + os.path.basename(rel))
        return final

    def store_bytes(self, digest: str, data: bytes, what: str = "blob") -> str:
        actual = _sha256(data)
        if actual != digest:
            raise BpfdError("the registry sent a %s whose content does not match its digest "
                            "(expected %s, got %s)" % (what, digest, actual))
        existing = self.find(digest)
        if existing and _sha256_file(existing) == digest:
            return existing
        return self._write(data, self.blob_rel(digest))

    def _write(self, data: bytes, rel: str, mode: int = 0o600) -> str:
        fd, tmp = tempfile.mkstemp(prefix="new-", dir=self._tmp_dir())
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            return self._commit(tmp, rel)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def store_stream(self, digest: str, chunks: Iterable, *, size: int | None,
                     max_bytes: int, what: str = "blob") -> str:
        rel = self.blob_rel(digest)
        fd, tmp = tempfile.mkstemp(prefix="new-", dir=self._tmp_dir())
        hasher = hashlib.sha256()
        total = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    total += len(chunk)
                    if total > max_bytes or (size is not None and total > size):
                        raise BpfdError("the registry sent more than %d bytes for %s %s"
                                        % (size if size is not None and size < max_bytes
                                           else max_bytes, what, digest))
                    hasher.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest:
                raise BpfdError("the registry sent a %s whose content does not match its digest "
                                "(expected %s, got %s)" % (what, digest, actual))
            return self._commit(tmp, rel)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # objects ----------------------------------------------------------------------------

    def object_rel(self, data_sha: str, filename: str) -> str:
        safe = filename if _SAFE_FILENAME_RE.match(filename or "") else "bytecode.o"
        return os.path.join("objects", data_sha.split(":", 1)[1], safe)

    def store_object(self, data: bytes, filename: str) -> tuple:
        """(path, changed): the object in the cache, re-hashed; rewritten when it differs."""
        data_sha = _sha256(data)
        rel = self.object_rel(data_sha, filename)
        for root in self._roots():
            path = os.path.join(root, rel)
            if os.path.isfile(path):
                if _sha256_file(path) == data_sha:
                    return path, False
                self.corrupted.append(rel)  # re-extracted below from the verified layer
        return self._write(data, rel, 0o640), True

    def blob_paths(self) -> dict:
        """digest -> path of every blob in the real cache."""
        found = {}
        base = os.path.join(self.root, "blobs", "sha256")
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(base):
                found["sha256:" + name] = os.path.join(base, name)
        return found


# --- registry transport ---------------------------------------------------------------------


class _AuthFailure(Exception):
    def __init__(self, had_credentials: bool, status: int) -> None:
        super().__init__("authentication failed")
        self.had_credentials, self.status = had_credentials, status


class _TransportFailure(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


_REGISTRY_CLASS: list = []


def _oras() -> tuple:
    """(requests, oras.container, _BpfdRegistry), imported on first use."""
    if _REGISTRY_CLASS:
        return _REGISTRY_CLASS[0]
    try:
        import requests
        import oras.container
        import oras.provider
    except ImportError as exc:
        raise BpfdError("pulling images needs the Python library oras on the managed host "
                        "(pip install oras, or run the bpfd.core.bpfd_host role): %s" % exc)

    class _BpfdRegistry(oras.provider.Registry):
        """oras' Registry with an explicit request loop.

        oras' own ``do_request`` retries every failure five times with sleeps of
        3..83 s (a mistyped host would hang a task for two minutes), has no timeout,
        and answers a ``Basic`` challenge with its token flow (which then fetches the
        realm string as a URL). This override keeps oras' session, TLS settings and
        token backend, and adds: a timeout, Basic auth when the registry asks for it,
        no blind retries, and failures the caller can turn into sentences.
        """

        timeout: float = DEFAULT_TIMEOUT
        _preemptive: dict | None = None

        def _send(self, method: str, url: str, **kwargs: Any) -> Any:
            try:
                return self.session.request(method, url, verify=self._tls_verify, **kwargs)
            except requests.exceptions.SSLError as exc:
                raise _TransportFailure("tls", str(exc))
            except requests.exceptions.Timeout as exc:
                raise _TransportFailure("timeout", str(exc))
            except requests.exceptions.ConnectionError as exc:
                raise _TransportFailure("connect", str(exc))
            except requests.exceptions.RequestException as exc:
                raise _TransportFailure("request", str(exc))

        def do_request(self, url: str, method: str = "GET", data: Any = None,
                       headers: dict | None = None, json: Any = None, stream: bool = False) -> Any:
            headers = dict(headers or {})
            if self._preemptive:
                headers.update(self._preemptive)
            elif getattr(self.auth, "token", None):
                headers.update(self.auth.get_auth_header())
            has_creds = bool(getattr(self.auth, "_basic_auth", None))
            response = self._send(method, url, data=data, json=json, headers=headers, stream=stream)
            if response.status_code != 401:
                return response
            challenge = response.headers.get("Www-Authenticate", "")
            scheme = challenge.split(" ", 1)[0].strip().lower()
            if scheme == "basic":
                if not has_creds:
                    raise _AuthFailure(False, 401)
                self._preemptive = {"Authorization": "Basic %s" % self.auth._basic_auth}
                headers.update(self._preemptive)
            elif scheme == "bearer":
                headers, retry = self.auth.authenticate_request(
                    response, headers, refresh=bool(getattr(self.auth, "token", None)))
                if not retry:
                    raise _AuthFailure(has_creds, 401)
            else:
                raise _AuthFailure(has_creds, 401)
            response.close()
            response = self._send(method, url, data=data, json=json, headers=headers, stream=stream)
            if response.status_code == 401:
                raise _AuthFailure(has_creds, 401)
            return response

    _REGISTRY_CLASS.append((requests, oras.container, _BpfdRegistry))
    return _REGISTRY_CLASS[0]


def _auth_pair(auth: Any) -> tuple | None:
    if not auth:
        return None
    if isinstance(auth, dict):
        user, password = auth.get("username"), auth.get("password")
    else:
        try:
            user, password = auth
        except (TypeError, ValueError):
            raise BpfdError("registry_auth must be a dict with username and password")
    if not user or password is None:
        raise BpfdError("registry_auth needs both username and password")
    return str(user), str(password)


def _short_reason(text: str) -> str:
    ssl = re.search(r"\[SSL: [A-Z0-9_]+\] ([^'\"()]+?)(?: \(_ssl\.c:\d+\))?['\")]", text)
    if ssl:
        return ssl.group(1).strip()
    inner = re.search(r"Caused by \w+\((?:<[^>]*>|[^,:]*)[,:] ?['\"]?([^'\")]+)", text)
    return (inner.group(1) if inner else text).strip()[:300]


class RegistryClient:
    """One repository on one registry, through oras; every failure a BpfdError sentence."""

    def __init__(self, ref: Reference, *, auth: Any = None, validate_certs: bool = True,
                 ca_path: str | None = None, insecure: bool = False,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        _requests, oras_container, registry_class = _oras()
        self.ref = ref
        self.insecure = bool(insecure)
        self.validate_certs = bool(validate_certs)
        self.ca_path = ca_path
        if ca_path and not os.path.isfile(ca_path):
            raise BpfdError("ca_path %s is not a file on the managed host" % ca_path)
        tls_verify: Any = (ca_path or True) if validate_certs else False
        self.registry = registry_class(hostname=ref.api_host, insecure=self.insecure,
                                       tls_verify=tls_verify, auth_backend="token")
        self.registry.timeout = float(timeout)
        # A default timeout for every request of the session, oras' token requests too
        # (requests has none: a registry that accepts and never answers would hang a task).
        session = self.registry.session
        session.request = functools.partial(session.request,
                                            timeout=(min(10.0, float(timeout)), float(timeout)))
        pair = _auth_pair(auth)
        self.username = pair[0] if pair else None
        if pair:
            self.registry.auth.set_basic_auth(*pair)
        self.container = oras_container.Container(
            "%s/%s:%s" % (ref.api_host, ref.repository, ref.tag or "latest"))
        # oras' name regex does not know every host form (a bare "localhost"): set the parts.
        self.container.registry = ref.api_host
        namespace, repository = ref.repository.rpartition("/")[::2]
        self.container.namespace, self.container.repository = namespace or None, repository
        self.scheme = "http" if self.insecure else "https"
        self.requests = 0

    # errors -----------------------------------------------------------------------------

    def _transport_error(self, exc: _TransportFailure) -> BpfdError:
        host, reason = self.ref.api_host, _short_reason(exc.reason)
        low = exc.reason.lower()
        if exc.kind == "tls":
            if "wrong_version_number" in low or "wrong version number" in low or \
                    "record layer failure" in low or "packet length too long" in low:
                return BpfdError("registry %s does not answer TLS (%s): if it serves plain HTTP, "
                                 "set insecure_registry: true" % (host, reason), registry=host)
            return BpfdError("TLS verification of registry %s failed (%s): give the CA bundle "
                             "that signed its certificate in ca_path, or set validate_certs: "
                             "false to skip verification" % (host, reason), registry=host)
        if exc.kind == "connect":
            if any(s in low for s in ("name or service not known", "nameresolutionerror",
                                      "temporary failure in name resolution", "no address",
                                      "nodename nor servname", "getaddrinfo failed")):
                return BpfdError("cannot resolve the registry host %s (DNS lookup failed): check "
                                 "the image reference %s" % (self.ref.registry, self.ref.name),
                                 registry=host)
            if "connection refused" in low:
                return BpfdError("registry %s refused the connection (nothing listens there)"
                                 % host, registry=host)
            return BpfdError("cannot connect to registry %s: %s" % (host, reason), registry=host)
        if exc.kind == "timeout":
            return BpfdError("registry %s did not answer within %.0f s" % (host, self.registry.timeout),
                             registry=host)
        return BpfdError("request to registry %s failed: %s" % (host, reason), registry=host)

    def _auth_error(self, exc: _AuthFailure) -> BpfdError:
        host = self.ref.api_host
        if not exc.had_credentials:
            return BpfdError("registry %s requires authentication to pull %s: set registry_auth "
                             "(username and password)" % (host, self.ref.name), registry=host)
        return BpfdError("registry %s refused the credentials in registry_auth for user %r "
                         "(wrong username or password)" % (host, self.username), registry=host)

    def _http_error(self, response: Any, what: str) -> BpfdError:
        host = self.ref.api_host
        codes = []
        with contextlib.suppress(Exception):
            codes = [e.get("code") for e in response.json().get("errors", []) if isinstance(e, dict)]
        status = response.status_code
        if status == 404:
            if "NAME_UNKNOWN" in codes:
                msg = "image %s not found: registry %s has no repository %s" % (
                    self.ref.name, host, self.ref.repository)
            elif what == "manifest":
                msg = "image %s not found: %s" % (self.ref.name, self._what_is_missing())
            else:
                msg = "image %s not found: registry %s has no %s there (HTTP 404)" % (
                    self.ref.name, host, what)
            return BpfdError(msg, registry=host, status=404)
        if status == 403:
            return BpfdError("registry %s denied access to %s (HTTP 403)%s" % (
                host, self.ref.repository,
                ": the account in registry_auth may not pull it" if self.username else
                ": set registry_auth"), registry=host, status=403)
        if status == 400 and self.insecure and "https" in (response.text or "").lower():
            return BpfdError("registry %s speaks HTTPS: drop insecure_registry" % host,
                             registry=host, status=400)
        return BpfdError("registry %s answered HTTP %d %s for the %s of %s" % (
            host, status, response.reason or "", what, self.ref.name), registry=host, status=status)

    def _what_is_missing(self) -> str:
        """Tag or repository? (distribution says MANIFEST_UNKNOWN for both.)"""
        host, repo = self.ref.api_host, self.ref.repository
        kind = "manifest" if self.ref.digest else "tag"
        tags = None
        with contextlib.suppress(Exception):
            response = self.registry.do_request(self._url("tags", "list"), "GET")
            with contextlib.closing(response):
                if response.status_code == 404:
                    return "registry %s has no repository %s" % (host, repo)
                if response.status_code == 200:
                    tags = sorted(response.json().get("tags") or [])
        text = "repository %s on %s has no %s %s" % (repo, host, kind, self.ref.reference)
        if tags is not None:
            names = [t for t in tags if not t.endswith(".sig")]  # not cosign's signature tags
            text += " (its tags: %s%s)" % (", ".join(names[:10]) or "none",
                                           ", ..." if len(names) > 10 else "")
        return text

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except _TransportFailure as exc:
            raise self._transport_error(exc)
        except _AuthFailure as exc:
            raise self._auth_error(exc)

    # requests ---------------------------------------------------------------------------

    def _url(self, kind: str, reference: str) -> str:
        return "%s://%s/v2/%s/%s/%s" % (
            self.scheme, self.ref.api_host, self.ref.repository, kind, reference)

    def get_manifest(self, reference: str, *, allow_missing: bool = False) -> tuple | None:
        """(bytes, content type, Docker-Content-Digest header) of a manifest or index.

        Fetched as raw bytes through oras' session rather than ``Registry.get_manifest``:
        that returns parsed JSON (the digest must be computed over the exact bytes), drops
        the HTTP status (404 vs 401 vs 500 need different sentences) and reads
        ~/.docker/config.json behind our back.
        """
        headers = {"Accept": ", ".join(MANIFEST_TYPES + INDEX_TYPES)}
        with self._errors():
            self.requests += 1
            response = self.registry.do_request(self._url("manifests", reference), "GET",
                                                headers=headers, stream=True)
            with contextlib.closing(response):
                if response.status_code == 404 and allow_missing:
                    return None
                if response.status_code != 200:
                    raise self._http_error(response, "manifest")
                data = b""
                for chunk in response.iter_content(1 << 16):
                    data += chunk
                    if len(data) > MAX_MANIFEST_BYTES:
                        raise BpfdError("the manifest %s of %s is larger than %d bytes"
                                        % (reference, self.ref.name, MAX_MANIFEST_BYTES))
                ctype = (response.headers.get("Content-Type") or "").split(";")[0].strip()
                return data, ctype, response.headers.get("Docker-Content-Digest")

    def fetch_blob(self, digest: str, size: int | None, cache: ImageCache, *,
                   max_bytes: int, what: str) -> str:
        """Stream a blob (oras ``get_blob``) into the cache; its digest is checked."""
        with self._errors():
            self.requests += 1
            response = self.registry.get_blob(self.container, digest, stream=True)
            with contextlib.closing(response):
                if response.status_code != 200:
                    raise self._http_error(response, what)
                return cache.store_stream(digest, response.iter_content(1 << 16), size=size,
                                          max_bytes=max_bytes, what=what)

    def push_blob(self, data: bytes, media_type: str = "application/octet-stream") -> dict:
        """Upload a blob (oras ``upload_blob``); returns its descriptor."""
        desc = {"mediaType": media_type, "digest": _sha256(data), "size": len(data)}
        with tempfile.NamedTemporaryFile(prefix="bpfd-blob-") as handle:
            handle.write(data)
            handle.flush()
            with self._errors():
                self.requests += 1
                response = self.registry.upload_blob(handle.name, self.container, desc)
            if response.status_code not in (200, 201, 202):
                raise self._http_error(response, "blob upload")
        return desc

    def push_manifest(self, data: bytes, media_type: str, reference: str | None = None) -> str:
        """PUT a manifest or index under a tag (or its digest); returns its digest.

        Not oras' ``upload_manifest``: it always sends the OCI manifest type and
        re-serialises the JSON, and an index or a Docker manifest needs its own type.
        """
        digest = _sha256(data)
        with self._errors():
            self.requests += 1
            response = self.registry.do_request(
                self._url("manifests", reference or digest), "PUT",
                headers={"Content-Type": media_type}, data=data)
        if response.status_code not in (200, 201, 202):
            detail = ""
            with contextlib.suppress(Exception):
                detail = ": " + "; ".join(e.get("message", "") for e in response.json()["errors"])
            raise BpfdError("registry %s refused the manifest for %s (HTTP %d%s)" % (
                self.ref.api_host, self.ref.name, response.status_code, detail))
        return digest


# --- resolving an image ---------------------------------------------------------------------


@dataclass
class ImageBytecode:
    """An image resolved to an ELF object in the host cache."""

    url: str                      # canonical reference (index key)
    digest: str                   # what the reference resolves to (tag -> this; index digest)
    manifest_digest: str          # the image manifest used (the platform's, for an index)
    pull_policy: str
    path: str                     # the ELF object, extracted into the cache
    filename: str
    object_sha256: str
    labels: dict
    label_format: str             # "v1" | "v2"
    programs: dict                # function -> program type
    maps: dict
    bpf_function_name: str | None
    program_type: str | None = None
    program_name: str | None = None
    platform: str | None = None
    verified: bool = False
    signature: dict | None = None
    pulled: bool = False          # the registry was asked and something was downloaded
    contacted_registry: bool = False
    cache_changed: bool = False   # the host cache changed (or would, in check mode)
    previous_digest: str | None = None  # what the cache index held for this reference before
    repaired: list = field(default_factory=list)  # corrupted cached blobs that were replaced
    temporary_dir: str | None = None  # check mode: holds `path`; remove with cleanup()

    def facts(self) -> dict:
        """What a program's facts carry about its image."""
        return {"url": self.url, "digest": self.digest, "manifest_digest": self.manifest_digest,
                "pull_policy": self.pull_policy, "platform": self.platform,
                "verified": self.verified, "programs": dict(self.programs), "maps": dict(self.maps),
                "object_sha256": self.object_sha256, "label_format": self.label_format}

    def cleanup(self) -> None:
        if self.temporary_dir:
            shutil.rmtree(self.temporary_dir, ignore_errors=True)
            self.temporary_dir = None


def _media_type(doc: dict, ctype: str | None = None) -> str:
    mt = doc.get("mediaType") or ctype or ""
    if mt in MANIFEST_TYPES + INDEX_TYPES:
        return mt
    if "manifests" in doc:
        return MT_OCI_INDEX
    if "layers" in doc or "config" in doc:
        return MT_OCI_MANIFEST
    return mt


class _Resolver:
    """One resolve_image call: walks an image from its top digest, cache first."""

    def __init__(self, ref: Reference, cache: ImageCache, policy: str, client_args: dict,
                 plat: dict) -> None:
        self.ref, self.cache, self.policy, self.plat = ref, cache, policy, plat
        self._client_args = client_args
        self._client: RegistryClient | None = None
        self.downloaded: list = []

    @property
    def client(self) -> RegistryClient:
        if self._client is None:
            self._client = RegistryClient(self.ref, **self._client_args)
        return self._client

    @property
    def contacted(self) -> bool:
        return self._client is not None and self._client.requests > 0

    def _corrupt_error(self, exc: _Corrupt) -> BpfdError:
        return BpfdError("the cached blob %s of image %s is corrupted (its content hashes to %s): "
                         "refusing to load it; pull the image again (pull_policy IfNotPresent or "
                         "Always)" % (exc.digest, self.ref.name, exc.actual),
                         corrupted=exc.digest)

    def _cached(self, digest: str) -> str | None:
        try:
            return self.cache.verified(digest)
        except _Corrupt as exc:
            if self.policy == "Never":
                raise self._corrupt_error(exc)
            return None

    def manifest(self, digest: str, network: bool) -> bytes:
        path = self._cached(digest)
        if path is None:
            if not network:
                raise _NotCached(digest)
            got = self.client.get_manifest(digest)
            self.cache.store_bytes(digest, got[0], "manifest")
            self.downloaded.append(digest)
            path = self.cache.verified(digest)
        with open(path, "rb") as handle:
            return handle.read()

    def blob(self, desc: dict, network: bool, *, max_bytes: int, what: str) -> str:
        digest = desc["digest"]
        path = self._cached(digest)
        if path is None:
            if not network:
                raise _NotCached(digest)
            self.client.fetch_blob(digest, desc.get("size"), self.cache, max_bytes=max_bytes,
                                   what=what)
            self.downloaded.append(digest)
            path = self.cache.verified(digest)
        return path

    def fetch_top(self) -> str:
        """Ask the registry what the reference resolves to now; keep that manifest."""
        data, _ctype, header = self.client.get_manifest(self.ref.reference)
        digest = _sha256(data)
        if self.ref.digest and digest != self.ref.digest:
            raise BpfdError("registry %s sent a manifest whose digest %s is not the requested %s"
                            % (self.ref.api_host, digest, self.ref.digest))
        if header and header != digest:
            raise BpfdError("registry %s sent a manifest whose content (%s) does not match its "
                            "Docker-Content-Digest %s" % (self.ref.api_host, digest, header))
        if self._cached(digest) is None:
            self.cache.store_bytes(digest, data, "manifest")
            self.downloaded.append(digest)
        return digest

    def walk_manifests(self, top: str, network: bool) -> dict:
        """top digest -> {manifest_digest, manifest, platform} (an index picks the platform)."""
        digest, chosen = top, None
        for _depth in range(MAX_INDEX_DEPTH + 1):
            doc = _load_json(self.manifest(digest, network), "manifest %s" % digest, self.ref)
            if doc.get("schemaVersion") == 1:
                raise BpfdError("image %s uses a Docker schema 1 manifest, which is not supported"
                                % self.ref.name)
            mt = _media_type(doc)
            if mt in INDEX_TYPES:
                chosen = select_manifest(doc, self.plat, self.ref.name)
                digest = chosen["digest"]
                if not _DIGEST_RE.match(digest):
                    raise BpfdError("image %s: index entry %r is not a sha256 digest"
                                    % (self.ref.name, digest))
                continue
            if mt not in MANIFEST_TYPES:
                raise BpfdError("image %s: %r is not an image manifest type this collection reads"
                                % (self.ref.name, mt))
            return {"manifest_digest": digest, "manifest": doc,
                    "platform": platform_string(chosen.get("platform")) if chosen else None}
        raise BpfdError("image %s: indexes nested deeper than %d levels"
                        % (self.ref.name, MAX_INDEX_DEPTH))

    def walk_content(self, manifest: dict, network: bool, max_object_bytes: int) -> dict:
        """manifest -> config (labels) and the bytecode layer, both in the cache."""
        config_desc = manifest.get("config") or {}
        if not _DIGEST_RE.match(str(config_desc.get("digest", ""))):
            raise BpfdError("image %s has no config: it is not a bpfd bytecode image" % self.ref.name)
        layers = [d for d in manifest.get("layers") or [] if isinstance(d, dict)]
        bytecode = [d for d in layers if d.get("mediaType") in BYTECODE_LAYER_TYPES]
        if len(bytecode) != 1 or not _DIGEST_RE.match(str(bytecode[0].get("digest", ""))):
            raise BpfdError("image %s has %d gzip tar layers (%s): a bpfd bytecode image has "
                            "exactly one" % (self.ref.name, len(bytecode),
                                             ", ".join(str(d.get("mediaType")) for d in layers)
                                             or "no layers"))
        config_path = self.blob(config_desc, network, max_bytes=MAX_CONFIG_BYTES, what="config")
        with open(config_path, "rb") as handle:
            config = _load_json(handle.read(), "config", self.ref)
        labels = (config.get("config") or {}).get("Labels") or {}
        if not isinstance(labels, dict):
            labels = {}
        parsed = parse_labels(labels, self.ref.name)
        layer_path = self.blob(bytecode[0], network, max_bytes=max(MAX_LAYER_BYTES, max_object_bytes),
                               what="bytecode layer")
        return {"labels": labels, "parsed": parsed, "config_digest": config_desc["digest"],
                "layer_digest": bytecode[0]["digest"], "layer_path": layer_path}

    # signatures -------------------------------------------------------------------------

    def signature_record(self, index: dict, digest: str, fresh: bool) -> dict:
        """{"manifest": digest | None, "checked_at"}: where the cosign signatures of
        ``digest`` are. ``fresh`` asks the registry; else the cached record (its blobs
        re-hashed), _NotCached when there is none."""
        if not fresh:
            record = (index.get("signatures") or {}).get(digest)
            if record is None:
                raise _NotCached(digest)
            if record.get("manifest"):
                self._signature_blobs(record["manifest"], network=False)
            return record
        got = self.client.get_manifest(signature_tag(digest), allow_missing=True)
        record = {"manifest": None, "checked_at": _now()}
        if got is not None:
            sig_digest = _sha256(got[0])
            if self._cached(sig_digest) is None:
                self.cache.store_bytes(sig_digest, got[0], "signature manifest")
                self.downloaded.append(sig_digest)
            self._signature_blobs(sig_digest, network=True)
            record["manifest"] = sig_digest
        return record

    def _signature_blobs(self, sig_digest: str, network: bool) -> list:
        doc = _load_json(self.manifest(sig_digest, network), "signature manifest", self.ref)
        found = []
        for layer in doc.get("layers") or []:
            if not isinstance(layer, dict) or layer.get("mediaType") != COSIGN_MEDIA_TYPE:
                continue
            sig = (layer.get("annotations") or {}).get(COSIGN_ANNOTATION)
            if not sig or not _DIGEST_RE.match(str(layer.get("digest", ""))):
                continue
            path = self.blob(layer, network, max_bytes=MAX_CONFIG_BYTES, what="signature payload")
            with open(path, "rb") as handle:
                found.append((handle.read(), sig))
        return found

    def verify(self, record: dict, digest: str, public: Any, mode: str) -> tuple:
        """(verified, details) for ``digest``; BpfdError when it must be refused."""
        if not record.get("manifest"):
            if mode == "required":
                raise BpfdError("image %s (%s) is not signed (no signature at tag %s) and verify "
                                "is required: refusing to load it"
                                % (self.ref.name, digest, signature_tag(digest)),
                                digest=digest)
            return False, None
        pairs = self._signature_blobs(record["manifest"], network=False)
        reasons = []
        for payload, sig in pairs:
            try:
                check_signature_payload(payload, digest)
            except BpfdError as exc:
                reasons.append(exc.msg)
                continue
            if verify_signature(payload, sig, public):
                return True, {"signature_manifest": record["manifest"], "key": key_id(public)}
            reasons.append("the signature does not verify with verify_key")
        if not pairs:
            reasons.append("the signature artifact holds no cosign signature")
        raise BpfdError("image %s (%s) has %d signature(s), none valid for verify_key: %s; "
                        "refusing to load it"
                        % (self.ref.name, digest, len(pairs), "; ".join(sorted(set(reasons)))),
                        digest=digest)


def _load_json(data: bytes, what: str, ref: Reference) -> dict:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise BpfdError("image %s: the %s is not valid JSON (%s)" % (ref.name, what, exc))
    if not isinstance(doc, dict):
        raise BpfdError("image %s: the %s is not a JSON object" % (ref.name, what))
    return doc


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def resolve_image(url: str, *, pull_policy: str = "IfNotPresent", auth: Any = None,
                  validate_certs: bool = True, ca_path: str | None = None, insecure: bool = False,
                  layout: Layout | None = None, verify: str | None = None,
                  verify_key: str | None = None, check_mode: bool = False,
                  max_object_bytes: int = MAX_OBJECT_BYTES, timeout: float = DEFAULT_TIMEOUT,
                  machine: str | None = None) -> ImageBytecode:
    """The ELF object of a bpfd bytecode image, pulled per ``pull_policy`` and cached.

    ``auth``: {"username", "password"} (or a pair). ``validate_certs``/``ca_path``: TLS
    verification and the CA bundle used instead of the system's. ``insecure``: plain
    HTTP (only then). ``verify``: None (skip), "optional" (verify when a signature
    exists), "required" (refuse unsigned); ``verify_key`` is the cosign public key (PEM
    text or path). ``check_mode``: nothing under ``layout.lib_dir`` changes; what must be
    downloaded goes to ``temporary_dir`` (call ``cleanup()``). Raises BpfdError.
    """
    if pull_policy not in PULL_POLICIES:
        raise BpfdError("pull_policy must be one of %s, not %r" % (", ".join(PULL_POLICIES),
                                                                   pull_policy))
    if verify not in (None, "none") + VERIFY_MODES:
        raise BpfdError("verify must be none, optional or required, not %r" % (verify,))
    verify = None if verify == "none" else verify
    public = None
    if verify:
        if not verify_key:
            raise BpfdError("verify: %s needs verify_key (the cosign public key)" % verify)
        public = load_public_key(verify_key)
    ref = parse_reference(url)
    spill = tempfile.mkdtemp(prefix="bpfd-image-") if check_mode else None
    cache = ImageCache(layout, spill=spill)
    client_args = dict(auth=auth, validate_certs=validate_certs, ca_path=ca_path,
                       insecure=insecure, timeout=timeout)
    resolver = _Resolver(ref, cache, pull_policy, client_args, host_platform(machine))
    try:
        with cache.locked():
            image = _resolve_locked(resolver, ref, cache, pull_policy, verify, public,
                                    max_object_bytes)
    except BaseException:
        if spill:
            shutil.rmtree(spill, ignore_errors=True)
        raise
    if spill:
        if image.path.startswith(spill + os.sep):
            image.temporary_dir = spill
        else:
            shutil.rmtree(spill, ignore_errors=True)
    return image


def _resolve_locked(resolver: _Resolver, ref: Reference, cache: ImageCache, policy: str,
                    verify: str | None, public: Any, max_object_bytes: int) -> ImageBytecode:
    index = cache.read_index()
    entry = index["images"].get(ref.name) or {}
    previous = entry.get("digest")
    top = ref.digest or previous
    walked = None
    network = False
    if policy != "Always" and top:
        try:
            walked = resolver.walk_manifests(top, network=False)
            walked.update(resolver.walk_content(walked["manifest"], False, max_object_bytes))
        except _NotCached:
            walked = None
    if walked is None:
        if policy == "Never":
            raise BpfdError("image %s is not in the host's image cache and pull_policy is "
                            "Never: pull it first (pull_policy IfNotPresent or Always, or "
                            "bpfd.core.bpf_image)" % ref.name, url=ref.name)
        network = True
        top = resolver.fetch_top()
        walked = resolver.walk_manifests(top, network=True)

    record = None
    verified, signature = False, None
    if verify:
        # Checked before the layer is downloaded. Fresh from the registry whenever it was
        # asked for the image; else the cached record. IfNotPresent asks the registry when
        # no record is cached, or when `required` meets an image unsigned at pull time.
        if not network:
            with contextlib.suppress(_NotCached):
                record = resolver.signature_record(index, top, fresh=False)
        if network or (policy == "IfNotPresent" and (
                record is None or (verify == "required" and not record.get("manifest")))):
            record = resolver.signature_record(index, top, fresh=True)
        verified, signature = resolver.verify(record or {"manifest": None}, top, public, verify)

    if "layer_path" not in walked:
        walked.update(resolver.walk_content(walked["manifest"], network, max_object_bytes))
    filename, data = extract_object(walked["layer_path"], url=ref.name, max_bytes=max_object_bytes)
    check_elf(data, ref.name, filename)
    obj_path, obj_written = cache.store_object(data, filename)
    parsed = walked["parsed"]

    new_entry = {"digest": top, "manifest_digest": walked["manifest_digest"],
                 "config_digest": walked["config_digest"], "layer_digest": walked["layer_digest"],
                 "object": cache.object_rel(_sha256(data), filename),
                 "platform": walked["platform"], "pulled_at": entry.get("pulled_at")}
    if previous != top or resolver.downloaded or not new_entry["pulled_at"]:
        new_entry["pulled_at"] = _now()
    index_changed = new_entry != entry
    if index_changed:
        index["images"][ref.name] = new_entry
    known = index["signatures"].get(top)
    if record is not None and (known is None or known.get("manifest") != record.get("manifest")):
        index["signatures"][top] = record
        index_changed = True
    if index_changed:
        cache.write_index(index)

    return ImageBytecode(
        url=ref.name, digest=top, manifest_digest=walked["manifest_digest"],
        pull_policy=policy, path=obj_path, filename=filename, object_sha256=_sha256(data),
        labels={k: v for k, v in walked["labels"].items() if isinstance(v, str)},
        label_format=parsed["format"], programs=dict(parsed["programs"]), maps=dict(parsed["maps"]),
        bpf_function_name=parsed["bpf_function_name"], program_type=parsed.get("program_type"),
        program_name=parsed.get("program_name"), platform=walked["platform"],
        verified=verified, signature=signature, pulled=bool(resolver.downloaded),
        contacted_registry=resolver.contacted,
        cache_changed=bool(index_changed or resolver.downloaded or obj_written),
        previous_digest=previous, repaired=list(cache.corrupted))


# --- cache maintenance ------------------------------------------------------------------------


def list_images(layout: Layout | None = None) -> dict:
    """reference -> index entry of every cached image."""
    return dict(ImageCache(layout).read_index()["images"])


def _reachable(cache: ImageCache, index: dict) -> tuple:
    blobs, objects = set(), set()

    def manifest_refs(digest: str, depth: int = 0) -> None:
        if digest in blobs or depth > MAX_INDEX_DEPTH + 1:
            return
        blobs.add(digest)
        path = cache.find(digest)
        if not path:
            return
        try:
            with open(path, "rb") as handle:
                doc = json.load(handle)
        except (OSError, ValueError):
            return
        if not isinstance(doc, dict):
            return
        for desc in doc.get("manifests") or []:
            if isinstance(desc, dict) and _DIGEST_RE.match(str(desc.get("digest", ""))):
                manifest_refs(desc["digest"], depth + 1)
        for desc in [doc.get("config")] + list(doc.get("layers") or []):
            if isinstance(desc, dict) and _DIGEST_RE.match(str(desc.get("digest", ""))):
                blobs.add(desc["digest"])

    for entry in index["images"].values():
        if _DIGEST_RE.match(str(entry.get("digest", ""))):
            manifest_refs(entry["digest"])
            record = index["signatures"].get(entry["digest"]) or {}
            if record.get("manifest"):
                manifest_refs(record["manifest"])
        if entry.get("object"):
            objects.add(os.path.dirname(entry["object"]))
    return blobs, objects


def remove_image(url: str, *, layout: Layout | None = None, check_mode: bool = False) -> dict:
    """Drop a reference from the cache and every blob/object nothing else uses.

    Returns {"changed", "digest" (what it pointed at), "removed_blobs", "freed_bytes"}.
    """
    ref = parse_reference(url)
    cache = ImageCache(layout)
    if not os.path.isdir(cache.root):
        return {"changed": False, "digest": None, "removed_blobs": 0, "freed_bytes": 0}
    with cache.locked(shared=check_mode):
        index = cache.read_index()
        entry = index["images"].pop(ref.name, None)
        if entry is None:
            return {"changed": False, "digest": None, "removed_blobs": 0, "freed_bytes": 0}
        still = {e.get("digest") for e in index["images"].values()}
        for digest in list(index["signatures"]):
            if digest not in still:
                del index["signatures"][digest]
        keep_blobs, keep_objects = _reachable(cache, index)
        removed, freed = 0, 0
        for digest, path in cache.blob_paths().items():
            if digest not in keep_blobs:
                removed += 1
                with contextlib.suppress(OSError):
                    freed += os.path.getsize(path)
                    if not check_mode:
                        os.unlink(path)
        objects_dir = os.path.join(cache.root, "objects")
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(objects_dir):
                rel = os.path.join("objects", name)
                if rel not in keep_objects:
                    for sub in os.listdir(os.path.join(objects_dir, name)):
                        with contextlib.suppress(OSError):
                            freed += os.path.getsize(os.path.join(objects_dir, name, sub))
                    if not check_mode:
                        shutil.rmtree(os.path.join(objects_dir, name), ignore_errors=True)
        if not check_mode:
            cache.write_index(index)
    return {"changed": True, "digest": entry.get("digest"), "removed_blobs": removed,
            "freed_bytes": freed}


# --- publishing -------------------------------------------------------------------------------


def _tar_gz_one(filename: str, data: bytes) -> tuple:
    """(gzip bytes, uncompressed tar digest): a reproducible layer holding one file."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(filename)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue(), _sha256(raw.getvalue())


def bytecode_labels(filename: str, programs: dict, maps: dict | None = None,
                    label_format: str = "v2", program_name: str | None = None) -> dict:
    """The config labels of a bpfd image (v2 JSON labels, or v1 for one program)."""
    if label_format == "v2":
        return {LABEL_PROGRAMS: json.dumps(programs, sort_keys=True),
                LABEL_MAPS: json.dumps(maps or {}, sort_keys=True)}
    if label_format != "v1":
        raise BpfdError("label_format must be v1 or v2, not %r" % (label_format,))
    if len(programs) != 1:
        raise BpfdError("v1 labels describe exactly one program; this object has %d (%s): use v2"
                        % (len(programs), ", ".join(sorted(programs)) or "none"))
    function, prog_type = next(iter(programs.items()))
    return {LABEL_PROGRAM_TYPE: prog_type, LABEL_FILENAME: filename,
            LABEL_PROGRAM_NAME: program_name or function, LABEL_FUNCTION: function}


def build_image(object_path: str, *, programs: dict | None = None, maps: dict | None = None,
                label_format: str = "v2", docker_media_types: bool = False,
                machine: str | None = None, labels: dict | None = None) -> dict:
    """A bpfd image for one object, in memory: {config, layer, manifest, media_type, digest}.

    ``programs`` defaults to what the object's SEC() names say. Reproducible: the same
    object and labels give the same digest.
    """
    with open(object_path, "rb") as handle:
        data = handle.read()
    filename = os.path.basename(object_path)
    if not _SAFE_FILENAME_RE.match(filename):
        raise BpfdError("object file name %r: use letters, digits, '.', '_', '-'" % filename)
    check_elf(data, None, object_path)
    if programs is None:
        programs = object_programs(data, object_path)
        if not programs:
            raise BpfdError("%s holds no program with a known SEC() name: give programs "
                            "({function: type})" % object_path)
    all_labels = bytecode_labels(filename, programs, maps, label_format)
    all_labels.update(labels or {})
    layer, diff_id = _tar_gz_one(filename, data)
    plat = host_platform(machine)
    config = {"architecture": plat["architecture"], "os": "linux",
              "config": {"Labels": all_labels}, "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    if plat.get("variant") and plat["architecture"] == "arm":
        config["variant"] = plat["variant"]
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    media_type = MT_DOCKER_MANIFEST if docker_media_types else MT_OCI_MANIFEST
    manifest = {
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": MT_DOCKER_CONFIG if docker_media_types else MT_OCI_CONFIG,
                   "digest": _sha256(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": MT_DOCKER_LAYER_GZIP if docker_media_types else MT_OCI_LAYER_GZIP,
                    "digest": _sha256(layer), "size": len(layer)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return {"config": config_bytes, "layer": layer, "manifest": manifest_bytes,
            "media_type": media_type, "digest": _sha256(manifest_bytes), "labels": all_labels,
            "platform": plat}


def push_image(object_path: str, url: str, *, programs: dict | None = None,
               maps: dict | None = None, label_format: str = "v2",
               docker_media_types: bool = False, auth: Any = None, validate_certs: bool = True,
               ca_path: str | None = None, insecure: bool = False, machine: str | None = None,
               timeout: float = DEFAULT_TIMEOUT) -> str:
    """Publish an ELF object as a bpfd bytecode image at ``url``; returns its digest."""
    ref = parse_reference(url)
    built = build_image(object_path, programs=programs, maps=maps, label_format=label_format,
                        docker_media_types=docker_media_types, machine=machine)
    client = RegistryClient(ref, auth=auth, validate_certs=validate_certs, ca_path=ca_path,
                            insecure=insecure, timeout=timeout)
    manifest = json.loads(built["manifest"])
    client.push_blob(built["config"], manifest["config"]["mediaType"])
    client.push_blob(built["layer"], manifest["layers"][0]["mediaType"])
    return client.push_manifest(built["manifest"], built["media_type"], ref.reference)
