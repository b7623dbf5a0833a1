# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Publish an eBPF ELF object as a bpfd bytecode image (docs/images.md).

    python3 tools/bpfd_image.py push xdp_pass.o registry.example/bpf/xdp_pass:v1
    python3 tools/bpfd_image.py push xdp_pass.o 127.0.0.1:5000/xdp_pass:v1 --insecure
    echo "$TOKEN" | python3 tools/bpfd_image.py push xdp_pass.o registry.example/bpf/xdp_pass:v1 \\
        --username me --password-stdin --ca-path ca.pem
    python3 tools/bpfd_image.py build xdp_pass.o ./xdp_pass-oci --tag v1   # an OCI image layout

``push`` prints the image's digest (sha256:...) on stdout, ``build`` the manifest's digest.
The image is what ``bpfd.core`` modules (``image:``) and bpfd/bpfman load: one
reproducible gzip tar layer with the object, v2 labels (``io.ebpf.programs``,
``io.ebpf.maps``) or v1 labels, OCI or Docker media types. Both commands run over the
collection's own ``plugins/module_utils/_oci.py`` (``push_image`` / ``build_image``);
``push`` needs the Python library oras, ``build`` nothing beyond the standard library.

Runs from a checkout without installing the collection: when ``ansible_collections.bpfd.core``
is not importable, the checkout is made importable under that name (its parent tree when it
already sits at ``.../ansible_collections/bpfd/core``, else a temporary symlink).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import pathlib
import shutil
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]


def _importable() -> None:
    """Make ``ansible_collections.bpfd.core`` importable from this checkout."""
    try:
        import ansible_collections.bpfd.core.plugins.module_utils._oci  # noqa: F401
        return
    except ImportError:
        pass
    if REPO.parent.name == "bpfd" and REPO.parent.parent.name == "ansible_collections":
        sys.path.insert(0, str(REPO.parents[2]))
    else:  # a plain checkout: as bench/dispatcher_bench.py does, through a symlink
        root = pathlib.Path(tempfile.mkdtemp(prefix="bpfd-image-tool-"))
        link = root / "ansible_collections" / "bpfd" / "core"
        link.parent.mkdir(parents=True)
        link.symlink_to(REPO, target_is_directory=True)

        def cleanup() -> None:
            link.unlink(missing_ok=True)  # the link first: never walk into the checkout
            shutil.rmtree(root, ignore_errors=True)

        atexit.register(cleanup)
        sys.path.insert(0, str(root))
    for name in [m for m in sys.modules if m == "ansible_collections" or m.startswith("ansible_collections.")]:
        del sys.modules[name]  # a failed namespace lookup may be cached


_importable()

from ansible_collections.bpfd.core.plugins.module_utils import _oci  # noqa: E402
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError  # noqa: E402

OCI_LAYOUT_VERSION = "1.0.0"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


def _program(text: str) -> tuple:
    function, sep, prog_type = text.partition("=")
    if not sep or not function or not prog_type:
        raise argparse.ArgumentTypeError("%r: write FUNCTION=TYPE (pass=xdp)" % text)
    return function, prog_type


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="bpfd_image.py",
        description="Publish an eBPF ELF object as a bpfd bytecode image (push it to a registry, "
                    "or build an OCI image layout on disk).")
    commands = top.add_subparsers(dest="command", metavar="{push,build}")
    commands.required = True

    def image_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("object", metavar="OBJ", help="the BPF ELF object (clang -target bpf)")
        sub.add_argument("--label-format", choices=["v1", "v2"], default="v2",
                         help="v2 JSON labels io.ebpf.programs/io.ebpf.maps (default), or v1 "
                              "io.ebpf.* labels (one program) for older bpfd")
        sub.add_argument("--docker-media-types", action="store_true",
                         help="Docker v2 manifest/config/layer media types instead of OCI's")
        sub.add_argument("--program", dest="programs", action="append", type=_program, default=None,
                         metavar="FUNCTION=TYPE",
                         help="a program of the image and its type (repeat); default: from the "
                              "object's SEC() names")

    push = commands.add_parser("push", help="push OBJ to a registry as URL")
    image_options(push)
    push.add_argument("url", metavar="URL", help="registry/repository[:tag] to push to")
    push.add_argument("--username", "-u", help="registry user (with --password-stdin)")
    push.add_argument("--password-stdin", action="store_true",
                      help="read the registry password or token from stdin")
    push.add_argument("--insecure", action="store_true", help="plain HTTP (trusted networks only)")
    push.add_argument("--ca-path", metavar="P", help="CA bundle (PEM) to verify the registry with")
    push.add_argument("--no-verify-tls", dest="validate_certs", action="store_false",
                      help="do not verify the registry's TLS certificate")
    push.add_argument("--timeout", type=float, default=_oci.DEFAULT_TIMEOUT,
                      help="seconds per request (default %(default)s)")

    build = commands.add_parser("build", help="write OBJ as an OCI image layout into OUTDIR")
    image_options(build)
    build.add_argument("outdir", metavar="OUTDIR",
                       help="OCI image layout directory (created; an existing layout gets the tag added)")
    build.add_argument("--tag", default="latest",
                       help="its org.opencontainers.image.ref.name (default %(default)s)")
    return top


def parse_args(argv: list | None = None, stdin=None) -> argparse.Namespace:
    """Parsed and checked arguments; the password (from stdin) in ``args.password``."""
    top = parser()
    args = top.parse_args(argv)
    args.password = None
    if args.command == "push":
        if args.password_stdin and not args.username:
            top.error("--password-stdin needs --username")
        if args.username and not args.password_stdin:
            top.error("--username needs --password-stdin (the password is never an argument)")
        if args.insecure and (args.ca_path or not args.validate_certs):
            top.error("--insecure is plain HTTP: --ca-path and --no-verify-tls do not apply")
        if args.password_stdin:
            args.password = (stdin or sys.stdin).read().rstrip("\r\n")
            if not args.password:
                top.error("--password-stdin: stdin was empty")
    elif not _oci._TAG_RE.match(args.tag):
        top.error("--tag %r is not a valid tag" % args.tag)
    if args.programs is not None:
        args.programs = dict(args.programs)
    return args


def push(args: argparse.Namespace) -> str:
    auth = {"username": args.username, "password": args.password} if args.username else None
    return _oci.push_image(args.object, args.url, programs=args.programs,
                           label_format=args.label_format,
                           docker_media_types=args.docker_media_types, auth=auth,
                           validate_certs=args.validate_certs, ca_path=args.ca_path,
                           insecure=args.insecure, timeout=args.timeout)


def _write_blob(outdir: pathlib.Path, digest: str, data: bytes) -> None:
    path = outdir / "blobs" / "sha256" / digest.split(":", 1)[1]
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp-%d" % os.getpid())
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build(args: argparse.Namespace) -> str:
    """An OCI image layout (image-layout spec 1.0): oci-layout, index.json, blobs/sha256/."""
    built = _oci.build_image(args.object, programs=args.programs, label_format=args.label_format,
                             docker_media_types=args.docker_media_types)
    outdir = pathlib.Path(args.outdir)
    index_file = outdir / "index.json"
    if outdir.exists() and any(outdir.iterdir()) and not (outdir / "oci-layout").exists():
        raise BpfdError("%s exists and is not an OCI image layout: give a new or empty directory"
                        % outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(built["manifest"])
    _write_blob(outdir, manifest["config"]["digest"], built["config"])
    _write_blob(outdir, manifest["layers"][0]["digest"], built["layer"])
    _write_blob(outdir, built["digest"], built["manifest"])
    (outdir / "oci-layout").write_text(json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}) + "\n")
    index = {"schemaVersion": 2, "mediaType": _oci.MT_OCI_INDEX, "manifests": []}
    if index_file.exists():
        index = json.loads(index_file.read_text())
    index["manifests"] = [m for m in index.get("manifests", [])
                          if (m.get("annotations") or {}).get(REF_NAME_ANNOTATION) != args.tag]
    index["manifests"].append({
        "mediaType": built["media_type"], "digest": built["digest"], "size": len(built["manifest"]),
        "platform": {k: v for k, v in built["platform"].items() if v},
        "annotations": {REF_NAME_ANNOTATION: args.tag}})
    tmp = index_file.with_name("index.json.tmp-%d" % os.getpid())
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, index_file)
    return built["digest"]


def main(argv: list | None = None) -> int:
    args = parse_args(argv)
    try:
        digest = push(args) if args.command == "push" else build(args)
    except BpfdError as exc:
        print("bpfd_image.py: error: %s" % exc.msg, file=sys.stderr)
        return 1
    except OSError as exc:
        print("bpfd_image.py: error: %s" % exc, file=sys.stderr)
        return 1
    where = args.url if args.command == "push" else "%s (tag %s)" % (args.outdir, args.tag)
    print("%s: %s -> %s" % (args.command, args.object, where), file=sys.stderr)
    print(digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
