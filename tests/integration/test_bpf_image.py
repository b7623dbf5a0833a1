# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""bpfd.core.bpf_image (pre-pull / drop a cached image) and tools/bpfd_image.py (publish).

Everything here stays in the test's own places: Debian's docker-registry on 127.0.0.1
(plain HTTP, storage in a temp dir, helpers_oci.LocalRegistry), and a private lib dir
per test passed to the module as BPFD_LIB_DIR (the task's ``environment:``), so the
host's /var/lib/bpfd, /run/bpfd and /sys/fs/bpf are never read or written. No program
is loaded. Images are published with the CLI the README documents, run as a plain
subprocess from outside the collection tree (it makes itself importable).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import helpers_oci as h  # noqa: E402

from ansible_collections.bpfd.core.plugins.module_utils import _declared, _oci  # noqa: E402
from ansible_collections.bpfd.core.plugins.module_utils._state import Layout  # noqa: E402
from ansible_collections.bpfd.core.plugins.modules.bpf_image import users_of  # noqa: E402

pytestmark = [pytest.mark.integration]

REPO = pathlib.Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "bpfd_image.py"
IMAGE = "bpfd.core.bpf_image"


@pytest.fixture(scope="module")
def workdir():
    why = h.registry_env_ready()
    if why:
        pytest.skip(why)
    path = pathlib.Path(tempfile.mkdtemp(prefix="bpfd-image-module-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def registry(workdir):
    reg = h.LocalRegistry(workdir / "plain")
    try:
        yield reg.start()
    finally:
        reg.stop()


@pytest.fixture
def lib_dir(tmp_path):
    path = tmp_path / "lib"
    path.mkdir()
    yield str(path)
    shutil.rmtree(path, ignore_errors=True)


def cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """tools/bpfd_image.py as a user runs it: outside the tree, no collection on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ANSIBLE_COLLECTIONS_PATH")}
    return subprocess.run([sys.executable, str(TOOL), *argv], input=stdin, capture_output=True,
                          text=True, check=False, cwd=tempfile.gettempdir(), env=env, timeout=60)


@pytest.fixture(scope="module")
def published(registry, bpf_objects):
    """xdp_pass pushed by the CLI to a per-run repository: (url, digest)."""
    url = registry.url("bpf-image-%s/xdp_pass:v1" % uuid.uuid4().hex[:8])
    proc = cli("push", bpf_objects["xdp_pass"], url, "--insecure")
    assert proc.returncode == 0, proc.stderr
    digest = proc.stdout.strip()
    assert digest.startswith("sha256:") and len(digest) == 71, proc.stdout
    return url, digest


def task(name: str, lib_dir: str, **args) -> dict:
    args.setdefault("insecure_registry", True)
    return {"name": name, IMAGE: args, "environment": {"BPFD_LIB_DIR": lib_dir}}


def test_publish_pull_again_and_drop(playbook, published, bpf_objects, lib_dir):
    url, digest = published

    # check mode: the pull is predicted, nothing is cached
    res = playbook([task("predict", lib_dir, image=url)], check=True)["predict"]
    assert res["changed"] is True
    assert res["image"]["digest"] == digest and res["image"]["pulled"] is True
    assert res["image"]["path"] is None
    assert h.cache_files(lib_dir) == []

    res = playbook([
        task("pull", lib_dir, image=url),
        task("pull again", lib_dir, image=url),
        task("pull again, cache only", lib_dir, image=url, pull_policy="Never"),
    ], diff=True)
    first, again, never = res["pull"], res["pull again"], res["pull again, cache only"]
    assert first["changed"] is True and first["image"]["pulled"] is True
    assert first["image"]["digest"] == digest  # what the CLI pushed is what the host pulls
    assert first["image"]["programs"] == {"pass": "xdp"}  # from the object's SEC() names
    assert first["image"]["bpf_function_name"] == "pass"
    assert first["image"]["label_format"] == "v2"
    assert first["diff"] == {"before": "", "after": "%s: %s\n" % (url, digest)}
    path = pathlib.Path(first["image"]["path"])
    assert path.is_relative_to(lib_dir)
    with open(bpf_objects["xdp_pass"], "rb") as obj:
        assert path.read_bytes() == obj.read()
    assert first["image"]["object_sha256"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    for later in (again, never):
        assert later["changed"] is False and later["image"]["pulled"] is False
        assert later["image"]["contacted_registry"] is False
        assert later["image"]["digest"] == digest
    cached = h.cache_files(lib_dir)
    assert "index.json" in cached and any(f.startswith("blobs/sha256/") for f in cached)

    # check mode of absent: reported, nothing removed
    res = playbook([task("predict drop", lib_dir, image=url, state="absent")], check=True)
    assert res["predict drop"]["changed"] is True
    assert h.cache_files(lib_dir) == cached

    res = playbook([
        task("drop", lib_dir, image=url, state="absent"),
        task("drop again", lib_dir, image=url, state="absent"),
    ])
    assert res["drop"]["changed"] is True and res["drop"]["image"] is None
    assert res["drop"]["removed"]["digest"] == digest
    assert res["drop"]["removed"]["removed_blobs"] == 3  # manifest, config, layer
    assert res["drop again"]["changed"] is False
    assert [f for f in h.cache_files(lib_dir) if f not in ("index.json", ".lock")] == []
    assert not path.exists()


def test_absent_refused_while_declared(playbook, published, lib_dir):
    url, digest = published
    layout = Layout(lib_dir=lib_dir)
    image = _oci.resolve_image(url, insecure=True, layout=layout)
    name = _oci.parse_reference(url).name
    record = {"kind": "xdp", "interface": "eth0", "priority": 50, "path": image.path,
              "sha256": image.object_sha256, "image": image.facts()}
    _declared.write(layout, {"from-image": record})
    before = h.cache_files(lib_dir)

    res = playbook([task("drop", lib_dir, image=url, state="absent")], expect_failure=True)["drop"]
    assert res["_failed"] is True
    assert "still used by declared program from-image" in res["msg"], res["msg"]
    assert res["programs"] == ["from-image"]
    assert h.cache_files(lib_dir) == before
    assert _oci.list_images(layout)[name]["digest"] == digest

    # the digest reference is not cached itself: dropping it removes nothing, refuses nothing
    by_digest = "%s@%s" % (name.rsplit(":", 1)[0], digest)
    assert users_of(by_digest, layout) == []
    # ... and a program declared by digest keeps a tag that points there, unless the digest
    # reference itself is cached (then that keeps the blobs)
    record["image"] = dict(record["image"], url=by_digest)
    _declared.write(layout, {"from-image": record})
    assert users_of(url, layout) == ["from-image"]
    _oci.resolve_image(by_digest, insecure=True, layout=layout)
    assert users_of(url, layout) == []
    assert users_of(by_digest, layout) == ["from-image"]

    # forgotten: the drop goes through
    _declared.write(layout, {})
    res = playbook([task("drop", lib_dir, image=url, state="absent"),
                    task("drop digest", lib_dir, image=by_digest, state="absent")])
    assert res["drop"]["changed"] is True and res["drop digest"]["changed"] is True
    assert [f for f in h.cache_files(lib_dir) if f not in ("index.json", ".lock")] == []


def test_pull_errors_are_clean(playbook, registry, lib_dir):
    missing = registry.url("bpf-image-missing-%s/none:v1" % uuid.uuid4().hex[:8])
    res = playbook([task("pull", lib_dir, image=missing),
                    ], expect_failure=True)["pull"]
    assert res["_failed"] is True and missing.split("/")[1].split(":")[0] in res["msg"], res["msg"]
    res = playbook([task("never", lib_dir, image=missing, pull_policy="Never")],
                   expect_failure=True)["never"]
    assert "not in the host's image cache" in res["msg"], res["msg"]
    assert [f for f in h.cache_files(lib_dir) if f not in ("index.json", ".lock")] == []


def test_cli_build_writes_an_oci_layout(bpf_objects, tmp_path):
    out = tmp_path / "layout"
    proc = cli("build", bpf_objects["xdp_pass"], str(out), "--tag", "v1", "--label-format", "v1")
    assert proc.returncode == 0, proc.stderr
    digest = proc.stdout.strip()
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((out / "index.json").read_text())
    [entry] = index["manifests"]
    assert entry["digest"] == digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    for blob in (out / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    manifest = json.loads((out / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
    config = json.loads((out / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_bytes())
    assert config["config"]["Labels"][_oci.LABEL_FILENAME] == "xdp_pass.o"
    # the same object again: same digest (reproducible); another tag is added beside it
    again = cli("build", bpf_objects["xdp_pass"], str(out), "--tag", "v2", "--label-format", "v1")
    assert again.returncode == 0 and again.stdout.strip() == digest
    assert len(json.loads((out / "index.json").read_text())["manifests"]) == 2
    # not a layout: refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    bad = cli("build", bpf_objects["xdp_pass"], str(tmp_path / "other"))
    assert bad.returncode == 1 and "not an OCI image layout" in bad.stderr
