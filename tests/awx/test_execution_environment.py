# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""An AWX execution environment with bpfd.core: ``ansible-builder create`` on a user's EE
definition that installs the collection tarball, then the steps the image build would run
(``ansible-galaxy collection install`` of the context's requirements, the context's own
``introspect.py``), which turn the collection's meta/execution-environment.yml, bindep.txt
and requirements.txt into the system and Python packages of the image. No container
runtime is needed: the build context and its scripts are checked, not built."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import yaml

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
VENV_BIN = pathlib.Path(sys.executable).parent


def run(*argv, cwd=None) -> subprocess.CompletedProcess:
    # Without the test session's ANSIBLE_COLLECTIONS_PATH: only what the steps install counts.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_COLLECTIONS_PATH")}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), os.environ["PATH"]])
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, "%s failed:\n%s\n%s" % (argv, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def ee_definition(tarball: str) -> dict:
    """What a user writes (docs/awx.md shows the same file)."""
    return {
        "version": 3,
        "images": {"base_image": {"name": "quay.io/fedora/fedora:41"}},
        "dependencies": {
            "python_interpreter": {"package_system": "python3", "python_path": "/usr/bin/python3"},
            "ansible_core": {"package_pip": "ansible-core>=2.18,<2.20"},
            "ansible_runner": {"package_pip": "ansible-runner"},
            "galaxy": {"collections": [{"name": "/build/collections/%s" % tarball, "type": "file"}]},
        },
        "additional_build_files": [{"src": tarball, "dest": "collections"}],
    }


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> pathlib.Path:
    if not (VENV_BIN / "ansible-builder").exists():
        pytest.skip("ansible-builder is not installed (tests/requirements.txt)")
    project = tmp_path_factory.mktemp("ee-project")
    run(VENV_BIN / "ansible-galaxy", "collection", "build", "--output-path", project, REPO)
    (tarball,) = [p.name for p in project.glob("bpfd-core-*.tar.gz")]
    (project / "execution-environment.yml").write_text(yaml.safe_dump(ee_definition(tarball)))
    run(VENV_BIN / "ansible-builder", "create", "-f", "execution-environment.yml", "-c", "context",
        "--output-filename", "Containerfile", cwd=project)
    return project / "context"


def test_context_is_complete(context):
    containerfile = (context / "Containerfile").read_text()
    # The galaxy stage installs the requirements, the builder stage introspects and assembles.
    assert "ansible-galaxy collection install" in containerfile
    assert "introspect" in containerfile and "assemble" in containerfile
    assert 'ARG EE_BASE_IMAGE="quay.io/fedora/fedora:41"' in containerfile
    requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    (entry,) = requirements["collections"]
    assert re.match(r"^/build/collections/bpfd-core-\d+\.\d+\.\d+\.tar\.gz$", entry["name"])
    assert (context / "_build" / "collections" / pathlib.Path(entry["name"]).name).is_file()
    assert (context / "_build" / "scripts" / "introspect.py").is_file()


def test_context_resolves_the_collection_dependencies(context, tmp_path):
    """Emulate the image build: install the collection as the galaxy stage does, then run the
    context's introspect.py as the builder stage does; the outputs are what bindep and pip
    install into the image."""
    requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    local = tmp_path / "requirements.yml"
    for entry in requirements["collections"]:
        entry["name"] = entry["name"].replace("/build/", str(context / "_build") + "/", 1)
    local.write_text(yaml.safe_dump(requirements))
    collections = tmp_path / "collections"
    run(VENV_BIN / "ansible-galaxy", "collection", "install", "--offline", "-r", local, "-p", collections)
    installed = collections / "ansible_collections" / "bpfd" / "core"
    assert (installed / "meta" / "execution-environment.yml").is_file()
    assert (installed / "bindep.txt").is_file() and (installed / "requirements.txt").is_file()

    out = tmp_path / "out"
    run(sys.executable, context / "_build" / "scripts" / "introspect.py", "introspect", "--sanitize",
        collections, "--write-bindep", out / "bindep.txt", "--write-pip", out / "requirements.txt")
    bindep = (out / "bindep.txt").read_text()
    pip = (out / "requirements.txt").read_text()
    for line in ("libbpf1 [platform:dpkg]", "bpftool [platform:dpkg]", "libbpf [platform:rpm]",
                 "bpftool [platform:rpm]"):
        assert line in bindep, bindep
    assert "bpfd.core" in bindep  # introspect names the collection each line comes from
    names = {re.split(r"[<>=!\[ #;]", line.strip(), maxsplit=1)[0].lower() for line in pip.splitlines()
             if line.strip() and not line.startswith("#")}
    assert {"pyroute2", "oras"} <= names, pip


def test_builder_introspect_command(context):
    """`ansible-builder introspect` - the command collection maintainers check with."""
    if shutil.which("ansible-builder", path=str(VENV_BIN)) is None:
        pytest.skip("no ansible-builder")
    tmp = context.parent / "introspect"
    tarball = next((context / "_build" / "collections").glob("*.tar.gz"))
    run(VENV_BIN / "ansible-galaxy", "collection", "install", "--offline", "-p", tmp, tarball)
    out = run(VENV_BIN / "ansible-builder", "introspect", "--sanitize", tmp).stdout
    data = yaml.safe_load(out)  # {python: [...], system: [...]}, each "REQ  # from collection X"
    assert "pyroute2>=0.7  # from collection bpfd.core" in data["python"], out
    assert any(line.startswith("oras") for line in data["python"]), out
    assert "libbpf1 [platform:dpkg]  # from collection bpfd.core" in data["system"], out
    assert "bpftool [platform:dpkg]  # from collection bpfd.core" in data["system"], out
