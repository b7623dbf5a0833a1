# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared pytest setup for bpfd.core.

At import time, before any test module is collected, this makes the repository
importable as ``ansible_collections.bpfd.core``: a temporary directory holds
``ansible_collections/bpfd/core`` as a symlink to the repository root, goes to the
front of ``sys.path`` (so unit tests can ``import
ansible_collections.bpfd.core.plugins.module_utils._x``) and to the front of
``ANSIBLE_COLLECTIONS_PATH`` (so ``ansible-playbook`` / ``ansible-doc`` run as
subprocesses find ``bpfd.core`` there). More fixtures live in their own files.
"""

from __future__ import annotations

import atexit
import glob
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _make_collections_path() -> pathlib.Path:
    base = pathlib.Path(tempfile.mkdtemp(prefix="bpfd-core-collections-"))
    link = base / "ansible_collections" / "bpfd" / "core"
    link.parent.mkdir(parents=True)
    link.symlink_to(REPO_ROOT, target_is_directory=True)

    def _cleanup() -> None:
        link.unlink(missing_ok=True)  # the link first: never walk into the repository
        shutil.rmtree(base, ignore_errors=True)

    atexit.register(_cleanup)
    return base


COLLECTIONS_PATH = _make_collections_path()
sys.path.insert(0, str(COLLECTIONS_PATH))
os.environ["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join(
    p for p in (str(COLLECTIONS_PATH), os.environ.get("ANSIBLE_COLLECTIONS_PATH", "")) if p
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: drives Ansible or the kernel for real (slower, may change host state)")
    config.addinivalue_line(
        "markers", "needs_root: needs uid 0 (bpf(), mounts, packages); skipped otherwise")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if item.get_closest_marker("needs_root"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def collections_path() -> pathlib.Path:
    """Directory holding ``ansible_collections/bpfd/core`` (-> repository root).

    Already first in ``ANSIBLE_COLLECTIONS_PATH`` for every subprocess.
    """
    return COLLECTIONS_PATH


# --- bcc (programs from C source) ---------------------------------------------------------


def bcc_importable() -> str | None:
    try:
        import bcc  # noqa: F401  pylint: disable=unused-import
    except Exception as exc:  # ImportError, or OSError without libbcc
        return "%s: %s" % (type(exc).__name__, exc)
    return None


@pytest.fixture(scope="module")
def kernel_headers():
    """Headers bcc finds at /lib/modules/$(uname -r)/build: when the running kernel has none
    (a custom build, as here), Debian's linux-headers tree is linked there for the module's
    tests; what this creates goes again. Skips when bcc is not importable."""
    problem = bcc_importable()
    if problem:
        pytest.skip("bcc is not importable by %s (apt-get install python3-bpfcc; scripts/bootstrap.sh links "
                    "it into the venv): %s" % (sys.executable, problem))
    release = os.uname().release
    modules = pathlib.Path("/lib/modules") / release
    build = modules / "build"
    created = []
    if not build.exists():
        trees = sorted(glob.glob("/usr/src/linux-headers-*-amd64")) or sorted(glob.glob("/usr/src/linux-headers-*"))
        trees = [t for t in trees if not t.endswith("-common") and os.path.isdir(t)]
        if not trees:
            pytest.skip("no kernel headers for bcc (apt-get install linux-headers-amd64)")
        if build.is_symlink():
            pytest.skip("%s is a dangling link (to %s): not replaced by a test" % (build, os.readlink(build)))
        if not modules.exists():
            modules.mkdir(parents=True)
            created.append(modules)
        build.symlink_to(trees[-1])
        created.append(build)
        common = trees[-1].rsplit("-", 1)[0] + "-common"
        if os.path.isdir(common) and not (modules / "source").exists():
            (modules / "source").symlink_to(common)
            created.append(modules / "source")
    try:
        yield str(build)
    finally:
        for path in reversed(created):
            if path.is_symlink():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)
