# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bytecode images against a real registry (Debian's docker-registry on 127.0.0.1).

Two registries per module: plain HTTP without auth, and HTTPS (throw-away CA) with
htpasswd basic auth; a third one is started and stopped to prove that IfNotPresent
works offline. Images are built here from compiled fixtures and pushed through the
library's oras client: v1 and v2 labels, OCI and Docker media types, a multi-arch
index, broken layers, and cosign-format signatures made with a throw-away key.
Every test has its own cache (``Layout(lib_dir=<tmp>)``); all of it is removed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _oci
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._state import Layout

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import helpers_oci as h  # noqa: E402

pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parents[2]
USER, PASSWORD = "bpfd-puller", "pw-Zq8!never-echo"


@pytest.fixture(scope="module")
def workdir():
    why = h.registry_env_ready()
    if why:
        pytest.skip(why)
    path = pathlib.Path(tempfile.mkdtemp(prefix="bpfd-oci-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def objects(workdir) -> dict:
    spec = importlib.util.spec_from_file_location("bpfd_fixture_build_oci",
                                                  REPO / "tests" / "fixtures" / "bpf" / "build.py")
    build = importlib.util.module_from_spec(spec)
    sys.modules["bpfd_fixture_build_oci"] = build
    spec.loader.exec_module(build)
    try:
        built = build.build_fixtures(workdir / "bpf", ["xdp_pass", "xdp_drop", "xdp_two_progs", "tc_pass"])
    except build.ClangNotFoundError as exc:
        pytest.skip(str(exc))
    return {name: str(path) for name, path in built.items()}


@pytest.fixture(scope="module")
def plain(workdir):
    registry = h.LocalRegistry(workdir / "plain").start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def secure(workdir):
    tls = h.make_tls(workdir / "tls")
    htpasswd = h.write_htpasswd(workdir / "htpasswd", {USER: PASSWORD})
    registry = h.LocalRegistry(workdir / "secure", tls=tls, htpasswd=htpasswd).start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def layout():
    base = tempfile.mkdtemp(prefix="bpfd-oci-cache-")
    try:
        yield Layout(bpffs=os.path.join(base, "bpffs"), run_dir=os.path.join(base, "run"),
                     lib_dir=os.path.join(base, "lib"))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def resolve(registry, repo, layout, **kwargs):
    args = dict(registry.client_args())
    args.update(kwargs)
    return _oci.resolve_image(registry.url(repo), layout=layout, **args)


def blob_path(layout, digest):
    return os.path.join(layout.lib_dir, "images", "blobs", "sha256", digest.split(":")[1])


def index_json(layout):
    with open(os.path.join(layout.lib_dir, "images", "index.json")) as handle:
        return json.load(handle)


# --- formats ----------------------------------------------------------------------------------


def test_v2_labels_oci_media_types(plain, objects, layout):
    digest = h.push_object(plain, plain.url("v2/xdp_pass:1.0"), objects["xdp_pass"])
    image = resolve(plain, "v2/xdp_pass:1.0", layout)
    assert image.digest == image.manifest_digest == digest
    assert image.label_format == "v2"
    assert image.programs == {"pass": "xdp"} and image.maps == {}
    assert image.bpf_function_name == "pass" and _oci.default_function(image, "xdp") == "pass"
    assert read(image.path) == read(objects["xdp_pass"])
    assert image.path.startswith(os.path.join(layout.lib_dir, "images", "objects") + os.sep)
    assert image.filename == "xdp_pass.o"
    assert image.pulled and image.contacted_registry and image.cache_changed
    assert image.url == plain.url("v2/xdp_pass:1.0")
    # content-addressed: each blob is stored under the hash of its content
    for name in os.listdir(os.path.join(layout.lib_dir, "images", "blobs", "sha256")):
        assert _oci._sha256_file(blob_path(layout, "sha256:" + name)) == "sha256:" + name
    assert index_json(layout)["images"][image.url]["digest"] == digest
    assert image.facts()["digest"] == digest and image.facts()["pull_policy"] == "IfNotPresent"


def test_v1_labels(plain, objects, layout):
    h.push_object(plain, plain.url("v1/xdp_pass:1.0"), objects["xdp_pass"], label_format="v1")
    image = resolve(plain, "v1/xdp_pass:1.0", layout)
    assert image.label_format == "v1"
    assert image.labels[_oci.LABEL_PROGRAM_TYPE] == "xdp"
    assert image.labels[_oci.LABEL_FILENAME] == "xdp_pass.o"
    assert image.programs == {"pass": "xdp"}
    assert image.bpf_function_name == "pass" and image.program_name == "pass"
    assert read(image.path) == read(objects["xdp_pass"])


def test_docker_media_types(plain, objects, layout):
    digest = h.push_object(plain, plain.url("docker/xdp_pass:1.0"), objects["xdp_pass"],
                           docker_media_types=True)
    image = resolve(plain, "docker/xdp_pass:1.0", layout)
    manifest = json.loads(read(blob_path(layout, digest)))
    assert manifest["mediaType"] == _oci.MT_DOCKER_MANIFEST
    assert manifest["layers"][0]["mediaType"] == _oci.MT_DOCKER_LAYER_GZIP
    assert read(image.path) == read(objects["xdp_pass"])


def test_multi_arch_index_picks_the_host_architecture(plain, objects, layout):
    cl = h.client(plain, "multi/xdp")
    amd = h.push_object(plain, plain.url("multi/xdp:amd64"), objects["xdp_pass"], machine="x86_64")
    arm = h.push_object(plain, plain.url("multi/xdp:arm64"), objects["xdp_drop"], machine="aarch64")
    index = h.push_index(cl, "1.0", [
        (arm, h.manifest_size(cl, arm), {"os": "linux", "architecture": "arm64", "variant": "v8"}),
        (amd, h.manifest_size(cl, amd), {"os": "linux", "architecture": "amd64"}),
    ])
    host = _oci.host_platform()["architecture"]
    image = resolve(plain, "multi/xdp:1.0", layout)
    assert image.digest == index
    if host in ("amd64", "arm64"):
        assert image.manifest_digest == (amd if host == "amd64" else arm)
        assert image.platform.startswith("linux/" + host)
    arm_image = resolve(plain, "multi/xdp:1.0", layout, machine="aarch64")
    assert arm_image.manifest_digest == arm and arm_image.platform == "linux/arm64/v8"
    assert read(arm_image.path) == read(objects["xdp_drop"])
    amd_image = resolve(plain, "multi/xdp:1.0", layout, machine="x86_64")
    assert read(amd_image.path) == read(objects["xdp_pass"])
    with pytest.raises(BpfdError, match=r"no manifest for this host's platform linux/s390x "
                                        r"\(it has: linux/amd64, linux/arm64/v8\)"):
        resolve(plain, "multi/xdp:1.0", layout, machine="s390x", pull_policy="Always")


def test_publish_object_with_two_programs_and_function_choice(plain, objects, layout):
    h.push_object(plain, plain.url("two/xdp:1.0"), objects["xdp_two_progs"])
    image = resolve(plain, "two/xdp:1.0", layout)
    assert image.programs == {"first": "xdp", "second": "xdp"}
    assert image.bpf_function_name is None
    with pytest.raises(BpfdError, match=r"several xdp programs \(first, second\): set bpf_function_name"):
        _oci.default_function(image, "xdp")
    assert _oci.select_function(image, "xdp", "second") == "second"
    with pytest.raises(BpfdError, match=r"has no program 'third' \(it has: first \(xdp\), second \(xdp\)\)"):
        _oci.select_function(image, "xdp", "third")
    with pytest.raises(BpfdError, match=r"program 'first' in image .* is of type xdp, not tc"):
        _oci.select_function(image, "tc", "first")
    h.push_object(plain, plain.url("tc/pass:1.0"), objects["tc_pass"])
    tc = resolve(plain, "tc/pass:1.0", layout)
    assert tc.programs == {"tc_pass": "tc"} and _oci.default_function(tc, "tcx") == "tc_pass"
    with pytest.raises(BpfdError, match=r"holds no xdp program \(it has: tc_pass \(tc\)\)"):
        _oci.default_function(tc, "xdp")


# --- pull policies and the cache -----------------------------------------------------------------


def test_pull_policies(plain, objects, layout):
    digest = h.push_object(plain, plain.url("policy/xdp:1.0"), objects["xdp_pass"])
    with pytest.raises(BpfdError, match=r"not in the host's image cache and pull_policy is Never"):
        resolve(plain, "policy/xdp:1.0", layout, pull_policy="Never")
    first = resolve(plain, "policy/xdp:1.0", layout, pull_policy="IfNotPresent")
    assert first.pulled and first.digest == digest
    never = resolve(plain, "policy/xdp:1.0", layout, pull_policy="Never")
    assert not never.contacted_registry and never.path == first.path and never.pull_policy == "Never"
    again = resolve(plain, "policy/xdp:1.0", layout, pull_policy="IfNotPresent")
    assert not again.contacted_registry and not again.cache_changed
    always = resolve(plain, "policy/xdp:1.0", layout, pull_policy="Always")
    assert always.contacted_registry and not always.pulled and not always.cache_changed
    assert always.digest == digest


def test_if_not_present_works_with_the_registry_stopped(workdir, objects, layout):
    registry = h.LocalRegistry(workdir / "offline").start()
    try:
        private, public = h.new_signing_key()
        digest = h.push_object(registry, registry.url("off/xdp:1.0"), objects["xdp_pass"])
        h.sign(h.client(registry, "off/xdp"), digest, private)
        first = resolve(registry, "off/xdp:1.0", layout, verify="required", verify_key=public)
        assert first.verified
    finally:
        registry.stop()
    cached = resolve(registry, "off/xdp:1.0", layout)
    assert cached.digest == digest and not cached.contacted_registry
    assert read(cached.path) == read(objects["xdp_pass"])
    signed = resolve(registry, "off/xdp:1.0", layout, verify="required", verify_key=public)
    assert signed.verified and not signed.contacted_registry
    assert resolve(registry, "off/xdp:1.0", layout, pull_policy="Never").digest == digest
    with pytest.raises(BpfdError, match=r"refused the connection"):
        resolve(registry, "off/xdp:1.0", layout, pull_policy="Always")


def test_moved_tag_seen_with_always_only(plain, objects, layout):
    old = h.push_object(plain, plain.url("moving/xdp:stable"), objects["xdp_pass"])
    assert resolve(plain, "moving/xdp:stable", layout).digest == old
    new = h.push_object(plain, plain.url("moving/xdp:stable"), objects["xdp_drop"])
    assert new != old
    kept = resolve(plain, "moving/xdp:stable", layout, pull_policy="IfNotPresent")
    assert kept.digest == old and not kept.contacted_registry
    assert read(kept.path) == read(objects["xdp_pass"])
    moved = resolve(plain, "moving/xdp:stable", layout, pull_policy="Always")
    assert moved.digest == new and moved.previous_digest == old and moved.cache_changed
    assert read(moved.path) == read(objects["xdp_drop"])
    assert resolve(plain, "moving/xdp:stable", layout).digest == new
    assert index_json(layout)["images"][moved.url]["digest"] == new


def test_digest_reference(plain, objects, layout):
    digest = h.push_object(plain, plain.url("bydigest/xdp:1.0"), objects["xdp_pass"])
    image = resolve(plain, "bydigest/xdp@" + digest, layout)
    assert image.digest == digest and image.url == plain.url("bydigest/xdp@" + digest)
    tagged_and_pinned = resolve(plain, "bydigest/xdp:whatever@" + digest, layout, pull_policy="Never")
    assert tagged_and_pinned.digest == digest
    with pytest.raises(BpfdError, match=r"repository bydigest/xdp on .* has no manifest sha256:0{64}"):
        resolve(plain, "bydigest/xdp@sha256:" + "0" * 64, layout)


def test_tampered_cache_is_detected_refused_and_repaired(plain, objects, layout):
    digest = h.push_object(plain, plain.url("tamper/xdp:1.0"), objects["xdp_pass"])
    image = resolve(plain, "tamper/xdp:1.0", layout)
    manifest = json.loads(read(blob_path(layout, digest)))
    layer = manifest["layers"][0]["digest"]
    with open(blob_path(layout, layer), "r+b") as handle:
        handle.seek(20)
        handle.write(b"\x00evil\x00")
    with pytest.raises(BpfdError, match=r"cached blob %s of image .* is corrupted.*refusing to load it"
                       % layer) as err:
        resolve(plain, "tamper/xdp:1.0", layout, pull_policy="Never")
    assert err.value.details["corrupted"] == layer
    assert not os.path.exists(blob_path(layout, layer))  # dropped, never loaded
    pulled = resolve(plain, "tamper/xdp:1.0", layout, pull_policy="IfNotPresent")
    assert pulled.pulled and read(pulled.path) == read(objects["xdp_pass"])
    with open(blob_path(layout, layer), "r+b") as handle:
        handle.seek(20)
        handle.write(b"\x00evil\x00")
    repaired = resolve(plain, "tamper/xdp:1.0", layout, pull_policy="IfNotPresent")
    assert layer in repaired.repaired and repaired.pulled
    assert _oci._sha256_file(blob_path(layout, layer)) == layer
    assert read(repaired.path) == read(objects["xdp_pass"])
    # the manifest itself
    with open(blob_path(layout, digest), "ab") as handle:
        handle.write(b" ")
    again = resolve(plain, "tamper/xdp:1.0", layout)
    assert digest in again.repaired and again.digest == digest
    # the extracted object is re-hashed too, and rebuilt from the verified layer
    with open(image.path, "r+b") as handle:
        handle.seek(64)
        handle.write(b"\xff" * 8)
    fixed = resolve(plain, "tamper/xdp:1.0", layout, pull_policy="Never")
    assert fixed.repaired and not fixed.contacted_registry
    assert read(fixed.path) == read(objects["xdp_pass"])


def test_check_mode_changes_nothing_in_the_cache(plain, objects, layout):
    h.push_object(plain, plain.url("check/xdp:1.0"), objects["xdp_pass"])
    preview = resolve(plain, "check/xdp:1.0", layout, check_mode=True)
    try:
        assert h.cache_files(layout.lib_dir) == []
        assert preview.temporary_dir and preview.path.startswith(preview.temporary_dir)
        assert read(preview.path) == read(objects["xdp_pass"]) and preview.cache_changed
    finally:
        preview.cleanup()
    assert not os.path.exists(preview.path)
    real = resolve(plain, "check/xdp:1.0", layout)
    before = h.cache_files(layout.lib_dir)
    again = resolve(plain, "check/xdp:1.0", layout, check_mode=True, pull_policy="Always")
    assert again.path == real.path and again.temporary_dir is None and not again.cache_changed
    assert h.cache_files(layout.lib_dir) == before


def test_remove_image_drops_only_unshared_content(plain, objects, layout):
    h.push_object(plain, plain.url("rm/a:1.0"), objects["xdp_pass"])
    h.push_object(plain, plain.url("rm/b:1.0"), objects["xdp_drop"])
    a = resolve(plain, "rm/a:1.0", layout)
    b = resolve(plain, "rm/b:1.0", layout)
    assert set(_oci.list_images(layout)) == {a.url, b.url}
    preview = _oci.remove_image(a.url, layout=layout, check_mode=True)
    assert preview["changed"] and os.path.exists(a.path)
    result = _oci.remove_image(a.url, layout=layout)
    assert result["changed"] and result["digest"] == a.digest and result["removed_blobs"] >= 2
    assert not os.path.exists(a.path) and not os.path.exists(blob_path(layout, a.digest))
    assert os.path.exists(b.path) and set(_oci.list_images(layout)) == {b.url}
    assert resolve(plain, "rm/b:1.0", layout, pull_policy="Never").digest == b.digest
    assert not _oci.remove_image(a.url, layout=layout)["changed"]


# --- registry errors ---------------------------------------------------------------------------


def test_unknown_registry_repository_and_tag(plain, objects, layout):
    with pytest.raises(BpfdError, match=r"cannot resolve the registry host bpfd-no-such-registry\.invalid"):
        _oci.resolve_image("bpfd-no-such-registry.invalid/x:1", layout=layout)
    with pytest.raises(BpfdError, match=r"not found: registry .* has no repository no/such"):
        resolve(plain, "no/such:1.0", layout)
    h.push_object(plain, plain.url("known/xdp:1.0"), objects["xdp_pass"])
    with pytest.raises(BpfdError, match=r"repository known/xdp on .* has no tag 2\.0 \(its tags: 1\.0\)"):
        resolve(plain, "known/xdp:2.0", layout)
    assert h.cache_files(layout.lib_dir) in ([], [".lock"])


def test_registry_that_never_answers_times_out(workdir, layout):
    import socket
    import time

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # connections complete in the backlog; nobody ever answers
        host = "127.0.0.1:%d" % silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(BpfdError, match=r"registry %s did not answer within 1 s" % host):
            _oci.resolve_image(host + "/x:1", layout=layout, insecure=True, timeout=0.8)
        assert time.monotonic() - started < 5


def test_plain_http_only_when_asked(plain, objects, layout):
    h.push_object(plain, plain.url("http/xdp:1.0"), objects["xdp_pass"])
    with pytest.raises(BpfdError, match=r"does not answer TLS .*set insecure_registry: true"):
        _oci.resolve_image(plain.url("http/xdp:1.0"), layout=layout)
    assert resolve(plain, "http/xdp:1.0", layout, insecure=True).programs == {"pass": "xdp"}


AUTH = {"username": USER, "password": PASSWORD}


def test_basic_auth_and_tls_with_the_ca(secure, objects, layout):
    digest = h.push_object(secure, secure.url("auth/xdp:1.0"), objects["xdp_pass"], auth=AUTH)
    image = resolve(secure, "auth/xdp:1.0", layout, auth=AUTH)
    assert image.digest == digest and read(image.path) == read(objects["xdp_pass"])


def test_auth_missing_or_wrong(secure, objects, layout):
    h.push_object(secure, secure.url("auth/xdp2:1.0"), objects["xdp_pass"], auth=AUTH)
    with pytest.raises(BpfdError, match=r"requires authentication to pull .*: set registry_auth"):
        resolve(secure, "auth/xdp2:1.0", layout)
    with pytest.raises(BpfdError, match=r"refused the credentials in registry_auth for user "
                                        r"'bpfd-puller' \(wrong username or password\)") as err:
        resolve(secure, "auth/xdp2:1.0", layout, auth={"username": USER, "password": "not-it-9"})
    assert "not-it-9" not in str(err.value) and "not-it-9" not in repr(err.value.details)
    with pytest.raises(BpfdError) as err:
        resolve(secure, "auth/xdp2:1.0", layout, auth={"username": "nobody", "password": PASSWORD})
    assert PASSWORD not in str(err.value) and PASSWORD not in repr(err.value.details)


def test_tls_verification(secure, objects, layout):
    h.push_object(secure, secure.url("tls/xdp:1.0"), objects["xdp_pass"], auth=AUTH)
    with pytest.raises(BpfdError, match=r"TLS verification of registry .* failed \(.*\): give the CA "
                                        r"bundle .* in ca_path, or set validate_certs: false"):
        _oci.resolve_image(secure.url("tls/xdp:1.0"), layout=layout, auth=AUTH)
    unverified = _oci.resolve_image(secure.url("tls/xdp:1.0"), layout=layout, auth=AUTH,
                                    validate_certs=False)
    assert read(unverified.path) == read(objects["xdp_pass"])
    with pytest.raises(BpfdError, match=r"speaks HTTPS: drop insecure_registry"):
        _oci.resolve_image(secure.url("tls/xdp:1.0"), layout=layout, auth=AUTH, insecure=True,
                           pull_policy="Always")
    with pytest.raises(BpfdError, match=r"ca_path /nonexistent/ca.pem is not a file"):
        _oci.resolve_image(secure.url("tls/xdp:1.0"), layout=layout, auth=AUTH,
                           ca_path="/nonexistent/ca.pem", pull_policy="Always")


# --- images that must be refused ------------------------------------------------------------------


BAD_IMAGES = {
    "no_labels": (lambda o: h.layer([("xdp_pass.o", o)]), None, None,
                  r"has no bpfd labels"),
    "bad_json_label": (lambda o: h.layer([("xdp_pass.o", o)]), {_oci.LABEL_PROGRAMS: "{not json"},
                       None, r"label io\.ebpf\.programs is not valid JSON"),
    "two_files": (lambda o: h.layer([("xdp_pass.o", o), ("other.o", o)]), "v2", None,
                  r"holds more than one file \(xdp_pass\.o, other\.o\)"),
    "traversal": (lambda o: h.layer([("../x", o)]), "v2", None, r"unsafe path \('\.\./x'\)"),
    "absolute": (lambda o: h.layer([("/etc/x.o", o)]), "v2", None, r"unsafe path"),
    "symlink": (lambda o: h.layer([("xdp_pass.o", ("symlink", "/etc/shadow"))]), "v2", None,
                r"holds a link \('xdp_pass\.o' -> '/etc/shadow'\)"),
    "nested": (lambda o: h.layer([("dir", ("dir",)), ("dir/xdp_pass.o", o)]), "v2", None,
               r"must be at the root of the layer"),
    "not_elf": (lambda o: h.layer([("xdp_pass.o", b"#!/bin/sh\necho hi\n")]), "v2", None,
                r"is not an ELF object file"),
    "not_gzip": (lambda o: o, "v2", None, r"not a valid gzip tar archive"),
    "no_bpfd_layer": (lambda o: h.layer([("xdp_pass.o", o)]), "v2",
                      "application/vnd.oci.image.layer.v1.tar", r"has 0 gzip tar layers"),
}


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_refused_images_leave_nothing_behind(plain, objects, layout, kind):
    make_layer, labels, layer_type, message = BAD_IMAGES[kind]
    obj = read(objects["xdp_pass"])
    if labels == "v2":
        labels = {_oci.LABEL_PROGRAMS: '{"pass": "xdp"}'}
    cl = h.client(plain, "bad/%s" % kind)
    h.push_raw(cl, "1.0", layer_bytes=make_layer(obj), labels=labels,
               layer_type=layer_type or _oci.MT_OCI_LAYER_GZIP)
    with pytest.raises(BpfdError, match=message):
        resolve(plain, "bad/%s:1.0" % kind, layout)
    files = h.cache_files(layout.lib_dir)
    assert not [f for f in files if f.startswith("objects/")], files
    assert "index.json" not in files
    assert not os.path.exists("/etc/x.o")


def test_oversized_object_refused(plain, objects, layout):
    h.push_object(plain, plain.url("big/xdp:1.0"), objects["xdp_pass"])
    size = os.path.getsize(objects["xdp_pass"])
    with pytest.raises(BpfdError, match=r"xdp_pass\.o in image .* is %d bytes, over the limit of 512"
                       % size):
        resolve(plain, "big/xdp:1.0", layout, max_object_bytes=512)
    assert not [f for f in h.cache_files(layout.lib_dir) if f.startswith("objects/")]


def test_gzip_bomb_stops_at_the_cap(plain, layout):
    bomb = h.layer([("xdp_pass.o", b"\x7fELF" + b"\0" * (3 << 20))])
    assert len(bomb) < 64 << 10
    cl = h.client(plain, "bad/bomb")
    h.push_raw(cl, "1.0", layer_bytes=bomb, labels={_oci.LABEL_PROGRAMS: '{"pass": "xdp"}'})
    with pytest.raises(BpfdError, match=r"over the limit of 4096|unpacks to more than"):
        resolve(plain, "bad/bomb:1.0", layout, max_object_bytes=4096)


# --- signatures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys():
    return {"good": h.new_signing_key(), "other": h.new_signing_key()}


def _no_layer_downloaded(layout, digest):
    manifest = json.loads(read(blob_path(layout, digest)))
    return not os.path.exists(blob_path(layout, manifest["layers"][0]["digest"]))


def test_signature_good(plain, objects, layout, keys):
    private, public = keys["good"]
    digest = h.push_object(plain, plain.url("signed/xdp:1.0"), objects["xdp_pass"])
    h.sign(h.client(plain, "signed/xdp"), digest, private)
    image = resolve(plain, "signed/xdp:1.0", layout, verify="required", verify_key=public)
    assert image.verified and image.signature["key"] == _oci.key_id(_oci.load_public_key(public))
    optional = resolve(plain, "signed/xdp:1.0", layout, verify="optional", verify_key=public,
                       pull_policy="Always")
    assert optional.verified
    assert not resolve(plain, "signed/xdp:1.0", layout).verified  # verify: none skips


def test_signature_key_from_a_file(plain, objects, layout, keys, tmp_path):
    private, public = keys["good"]
    digest = h.push_object(plain, plain.url("signed/file:1.0"), objects["xdp_pass"])
    h.sign(h.client(plain, "signed/file"), digest, private)
    key_file = tmp_path / "cosign.pub"
    key_file.write_text(public)
    assert resolve(plain, "signed/file:1.0", layout, verify="required", verify_key=str(key_file)).verified


def test_unsigned_image(plain, objects, layout, keys):
    _private, public = keys["good"]
    digest = h.push_object(plain, plain.url("unsigned/xdp:1.0"), objects["xdp_pass"])
    with pytest.raises(BpfdError, match=r"is not signed \(no signature at tag sha256-[0-9a-f]{64}\.sig\) "
                                        r"and verify is required: refusing to load it"):
        resolve(plain, "unsigned/xdp:1.0", layout, verify="required", verify_key=public)
    assert _no_layer_downloaded(layout, digest)
    assert not [f for f in h.cache_files(layout.lib_dir) if f.startswith("objects/")]
    optional = resolve(plain, "unsigned/xdp:1.0", layout, verify="optional", verify_key=public)
    assert not optional.verified and optional.path


def test_signature_from_another_key(plain, objects, layout, keys):
    other_private = keys["other"][0]
    public = keys["good"][1]
    digest = h.push_object(plain, plain.url("wrongkey/xdp:1.0"), objects["xdp_pass"])
    h.sign(h.client(plain, "wrongkey/xdp"), digest, other_private)
    for mode in ("required", "optional"):
        with pytest.raises(BpfdError, match=r"has 1 signature\(s\), none valid for verify_key: the "
                                            r"signature does not verify with verify_key; refusing"):
            resolve(plain, "wrongkey/xdp:1.0", layout, verify=mode, verify_key=public)
    assert _no_layer_downloaded(layout, digest)


def test_signature_payload_for_another_digest(plain, objects, layout, keys):
    private, public = keys["good"]
    target = h.push_object(plain, plain.url("replay/xdp:1.0"), objects["xdp_pass"])
    other = h.push_object(plain, plain.url("replay/xdp:other"), objects["xdp_drop"])
    h.sign(h.client(plain, "replay/xdp"), target, private, payload_digest=other)
    with pytest.raises(BpfdError, match=r"the signature is for %s, not for this image's digest %s"
                       % (other, target)):
        resolve(plain, "replay/xdp:1.0", layout, verify="required", verify_key=public)
