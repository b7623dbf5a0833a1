# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Role bpfd.core.bpfd_host, driven through ansible-playbook on localhost.

present: applied twice (the second run must report changed=0), then in check mode
(changed=0 again), and the layout, mounts, group, pyroute2, the host CLI with its
module_utils tree, the configuration, the boot-time files and the restore unit
(`systemd-analyze verify`) are checked directly.

absent on the real host only runs when it cannot destroy anything: nothing pinned under
/sys/fs/bpf/bpfd, no program or hook in /run/bpfd/state.json, nothing but our own
configuration in /etc/bpfd, no member in the bpfd group. It holds the state store's lock
(/run/bpfd/lock) meanwhile and always runs present again afterwards, so the host ends as
it began.

What absent does with programs loaded (unload them all, foreign ones untouched), and the
installed CLI restoring programs after a simulated reboot, are tested in a sandbox: the
role's private path variables point at a temporary tree (bpffs under
/sys/fs/bpf/bpfd-test-<rand>) with extra vars.

bpfd_host_bcc runs on the host as it is (whatever it adds is taken away again unless it was
there before), and in the sandbox with a virtualenv without bcc and an empty private modules
directory (_bpfd_host_modules_dir): the fallback headers are linked there, never in
/lib/modules, and bcc compiles with them in a mount namespace of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from conftest import Veth, kernel_ready
from test_host_restore import detach_and_unpin

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

BPFFS_DIR = pathlib.Path("/sys/fs/bpf/bpfd")
RUN_DIR = pathlib.Path("/run/bpfd")
STORE_DIR = pathlib.Path("/var/lib/bpfd")
CONFIG_DIR = pathlib.Path("/etc/bpfd")
CLI = pathlib.Path("/usr/local/bin/bpfctl")
CLI_LIB = pathlib.Path("/usr/local/lib/bpfd-core")
UNIT = pathlib.Path("/etc/systemd/system/bpfd-restore.service")
TMPFILES = pathlib.Path("/etc/tmpfiles.d/bpfd.conf")
FSTAB = pathlib.Path("/etc/fstab")
FSTAB_BEGIN = "# BEGIN bpfd.core bpfd_host: bpffs and tracefs at boot"
MODULE_UTILS = pathlib.Path(__file__).resolve().parents[2] / "plugins" / "module_utils"
GROUP = "bpfd"
# path -> (group, mode) as the role creates them
LAYOUT = {
    BPFFS_DIR: (GROUP, 0o750),
    BPFFS_DIR / "maps": (GROUP, 0o750),
    RUN_DIR: (GROUP, 0o750),
    STORE_DIR: (GROUP, 0o750),
    CONFIG_DIR: ("root", 0o755),
}

RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)",
    re.M,
)


class PlaybookRun:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.rc = proc.returncode
        self.output = proc.stdout
        match = RECAP.search(self.output.split("PLAY RECAP", 1)[-1])
        assert match, "no PLAY RECAP line in ansible-playbook output:\n" + self.output
        self.recap = {k: (v if k == "host" else int(v)) for k, v in match.groupdict().items()}

    def __getattr__(self, name: str) -> int:
        try:
            return self.recap[name]
        except KeyError:
            raise AttributeError(name) from None


@pytest.fixture
def run_role(tmp_path, collections_path):
    """Return run(extra_vars, check=False) -> PlaybookRun applying the role to localhost."""
    playbook = tmp_path / "role.yml"
    playbook.write_text(
        "- hosts: localhost\n"
        "  gather_facts: false\n"
        "  roles:\n"
        "    - role: bpfd.core.bpfd_host\n"
    )
    inventory = tmp_path / "inventory.ini"
    # The interpreter running the tests is the venv's: the modules must run with it
    # (pyenv shims break interpreter discovery).
    inventory.write_text(
        "localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable
    )
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(collections_path),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_STDOUT_CALLBACK="default",
    )
    ansible_playbook = pathlib.Path(sys.executable).with_name("ansible-playbook")

    def run(extra_vars: dict | None = None, check: bool = False) -> PlaybookRun:
        cmd = [str(ansible_playbook), "-i", str(inventory), str(playbook)]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        if check:
            cmd.append("--check")
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, check=False,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        return PlaybookRun(proc)

    return run


def _mounted(fstype: str, path: str) -> bool:
    with open("/proc/mounts", encoding="utf-8") as mounts:
        return any(line.split()[1:3] == [path, fstype] for line in mounts)


def _has_fs(fstype: str) -> bool:
    with open("/proc/filesystems", encoding="utf-8") as filesystems:
        return any(line.split()[-1] == fstype for line in filesystems if line.strip())


def _assert_layout() -> None:
    gid = grp.getgrnam(GROUP).gr_gid
    for path, (group, mode) in LAYOUT.items():
        st = path.stat()
        assert stat.S_ISDIR(st.st_mode), path
        assert st.st_uid == 0, path
        assert st.st_gid == (gid if group == GROUP else 0), path
        assert stat.S_IMODE(st.st_mode) == mode, "%s has mode %o" % (path, stat.S_IMODE(st.st_mode))


def _assert_ok(run: PlaybookRun) -> None:
    assert run.rc == 0 and run.failed == 0 and run.unreachable == 0, run.output


def _apply_idempotently(run_role, extra: dict) -> PlaybookRun:
    """Apply the role, again (changes nothing), and in check mode (predicts nothing);
    returns the first run."""
    first = run_role(extra)
    _assert_ok(first)
    second = run_role(extra)
    _assert_ok(second)
    assert second.changed == 0, "second run changed something:\n" + second.output
    check = run_role(extra, check=True)
    _assert_ok(check)
    assert check.changed == 0, check.output
    return first


def test_present_is_idempotent(run_role):
    _apply_idempotently(run_role, {"bpfd_host_state": "present"})

    _assert_layout()
    assert _mounted("bpf", "/sys/fs/bpf")
    if _has_fs("tracefs"):
        assert _mounted("tracefs", "/sys/kernel/tracing")
    subprocess.run([sys.executable, "-c", "import pyroute2"], check=True)
    _assert_installed(CLI, CLI_LIB, UNIT, TMPFILES, CONFIG_DIR / "bpfctl.json", FSTAB)
    # The installed CLI runs from its own module_utils tree (read-only here: other tests'
    # programs may be listed).
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPFD_")}
    listing = subprocess.run([str(CLI), "--json", "list"], capture_output=True, text=True, env=env, check=False)
    assert listing.returncode == 0, listing.stderr
    assert "programs" in json.loads(listing.stdout)


def _assert_installed(cli, lib, unit, tmpfiles, config, fstab, group=GROUP, run_dir=RUN_DIR) -> None:
    """The host CLI, its module_utils tree, the configuration and the boot-time files."""
    first_line = cli.read_text().splitlines()[0]
    assert first_line.startswith("#!/") and os.access(cli, os.X_OK)
    subprocess.run([first_line[2:], "-c", "import pyroute2"], check=True)  # the checked interpreter
    assert 'BPFD_CORE_LIB = "%s"' % lib in cli.read_text()
    package = lib / "ansible_collections" / "bpfd" / "core" / "plugins" / "module_utils"
    for directory in [package] + list(package.parents)[:4]:
        assert (directory / "__init__.py").read_text() == "", directory
    installed = sorted(p.name for p in package.glob("*.py") if p.name != "__init__.py")
    assert installed == sorted(p.name for p in MODULE_UTILS.glob("*.py"))
    assert (package / "_bpfctl.py").read_bytes() == (MODULE_UTILS / "_bpfctl.py").read_bytes()
    assert json.loads(config.read_text())["group"] == group
    assert tmpfiles.read_text().splitlines()[-1] == "d %s 0750 root %s -" % (run_dir, group)
    text = unit.read_text()
    for line in ("Type=oneshot", "RemainAfterExit=yes", "ExecStart=%s restore" % cli,
                 "After=network-online.target local-fs.target systemd-tmpfiles-setup.service",
                 "Wants=network-online.target", "WantedBy=multi-user.target"):
        assert line in text.splitlines(), line
    _verify_unit(unit)
    if fstab.exists():
        lines = fstab.read_text().splitlines()
        ours = lines[lines.index(FSTAB_BEGIN) + 1:lines.index(FSTAB_BEGIN.replace("BEGIN", "END"))] \
            if FSTAB_BEGIN in lines else []
        others = [line.split()[1] for line in lines if line.strip() and not line.lstrip().startswith("#")
                  and line not in ours]
        for fstype, path in (("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing")):
            if path not in others and _has_fs(fstype):
                assert "%s %s %s defaults,nofail 0 0" % ("bpffs" if fstype == "bpf" else fstype, path, fstype) \
                    in ours, lines


def _verify_unit(unit: pathlib.Path) -> None:
    if shutil.which("systemd-analyze") is None:
        print("systemd-analyze is missing: %s not verified" % unit)
        return
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), "systemd-analyze verify %s:\n%s%s" % (
        unit, proc.stdout, proc.stderr)


def test_restore_unit_passes_systemd_analyze_verify(tmp_path, collections_path):
    """The unit as the role renders it, ExecStart pointing at files/bpfctl (executable)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing (package systemd): the unit cannot be verified here")
    role = pathlib.Path(__file__).resolve().parents[2] / "roles" / "bpfd_host"
    bpfctl = pathlib.Path(__file__).resolve().parents[2] / "files" / "bpfctl"
    import jinja2
    text = jinja2.Template((role / "templates" / "bpfd-restore.service.j2").read_text()).render(
        ansible_managed="test", _bpfd_host_bpffs_root="/sys/fs/bpf", _bpfd_host_store_dir="/var/lib/bpfd",
        _bpfd_host_cli_path=str(bpfctl))
    unit = tmp_path / "bpfd-restore.service"
    unit.write_text(text)
    _verify_unit(unit)
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("ExecStart=%s" % bpfctl, "ExecStart=/nonexistent/bpfctl"))
    proc = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "/nonexistent/bpfctl" in proc.stderr  # verify does check


# --- absent -------------------------------------------------------------------------

@contextlib.contextmanager
def _flock(path: pathlib.Path, timeout: float):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("%s stayed locked for %ds" % (path, timeout))
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


@pytest.fixture(scope="module", autouse=True)
def _one_role_test_at_a_time():
    """Serialise concurrent runs of this file (developers sharing one host): one run's
    absent must not pull the layout from under another's assertions. The lock lives
    outside the directories absent removes."""
    lock_dir = pathlib.Path("/run/lock")
    lock_dir.mkdir(exist_ok=True)
    with _flock(lock_dir / "bpfd-core-test-role-bpfd-host.lock", timeout=900):
        yield


@contextlib.contextmanager
def _store_lock():
    """Hold the run-time store's lock, as every bpfd.core mutation does."""
    RUN_DIR.mkdir(mode=0o750, exist_ok=True)
    with _flock(RUN_DIR / "lock", timeout=60):
        yield


def _why_absent_is_unsafe() -> str | None:
    """A reason not to run absent on this host, or None when it destroys nothing."""
    if BPFFS_DIR.exists():
        pins = [p for p in BPFFS_DIR.rglob("*") if not p.is_dir()]
        if pins:
            return "%s holds pins (%s)" % (BPFFS_DIR, pins[0])
    state_file = RUN_DIR / "state.json"
    if RUN_DIR.exists():
        others = [p for p in RUN_DIR.rglob("*") if not p.is_dir() and p.name not in ("lock", "state.json")]
        if others:
            return "%s holds %s" % (RUN_DIR, others[0])
    if state_file.exists():
        state = json.loads(state_file.read_text() or "{}")
        if state.get("programs") or state.get("hooks"):
            return "%s records programs or hooks" % state_file
    if CONFIG_DIR.exists() and any(p.name != "bpfctl.json" for p in CONFIG_DIR.iterdir()):
        return "%s holds files that are not ours" % CONFIG_DIR
    try:
        if grp.getgrnam(GROUP).gr_mem:
            return "group %s has members" % GROUP
    except KeyError:
        pass
    return None


def test_absent_then_present_again(run_role):
    _assert_ok(run_role())
    with _store_lock():
        reason = _why_absent_is_unsafe()
        if reason:
            pytest.skip("absent would destroy this host's state: " + reason)
        # A store with declared programs is kept; an empty one is removed.
        keep_store = STORE_DIR.exists() and any(STORE_DIR.iterdir())
        try:
            absent = run_role({"bpfd_host_state": "absent", "bpfd_host_keep_store": keep_store})
            if absent.failed and "Nothing was removed" in absent.output:
                # On a shared development host another run can load programs without
                # this lock's help (e.g. after re-creating /run/bpfd); the role's own
                # guard then refuses, which is the behaviour under test elsewhere.
                assert absent.changed == 0 and BPFFS_DIR.exists() and RUN_DIR.exists(), absent.output
                pytest.skip("programs were loaded meanwhile; absent refused and removed nothing")
            _assert_ok(absent)
            assert absent.changed > 0
            for path in (BPFFS_DIR, RUN_DIR, CONFIG_DIR, CLI, CLI_LIB, UNIT, TMPFILES):
                assert not path.exists(), path
            assert not FSTAB.exists() or FSTAB_BEGIN not in FSTAB.read_text()
            assert STORE_DIR.exists() == keep_store
            with pytest.raises(KeyError):
                grp.getgrnam(GROUP)

            again = run_role({"bpfd_host_state": "absent", "bpfd_host_keep_store": keep_store})
            _assert_ok(again)
            assert again.changed == 0, again.output

            # Check mode predicts the work and does none of it.
            check = run_role({"bpfd_host_state": "present"}, check=True)
            _assert_ok(check)
            assert check.changed > 0, check.output
            assert not BPFFS_DIR.exists() and not CONFIG_DIR.exists()
            with pytest.raises(KeyError):
                grp.getgrnam(GROUP)
        finally:
            restored = run_role({"bpfd_host_state": "present"})
        _assert_ok(restored)
        assert restored.changed > 0
        _assert_layout()
        _assert_installed(CLI, CLI_LIB, UNIT, TMPFILES, CONFIG_DIR / "bpfctl.json", FSTAB)


@pytest.fixture
def sandbox():
    """The role's private paths in a temporary tree (bpffs: /sys/fs/bpf/bpfd-test-<rand>),
    and the environment that points module_utils' Layout at it."""
    tag = uuid.uuid4().hex[:6]
    root = pathlib.Path(tempfile.mkdtemp(prefix="bpfd-role-", dir="/tmp"))
    (root / "fstab").write_text("# sandbox fstab\nproc /proc proc defaults 0 0\n")
    paths = {
        "_bpfd_host_bpffs_dir": "/sys/fs/bpf/bpfd-test-%s" % tag,
        "_bpfd_host_run_dir": str(root / "run" / "bpfd"),
        "_bpfd_host_store_dir": str(root / "lib" / "bpfd"),
        "_bpfd_host_config_dir": str(root / "etc" / "bpfd"),
        "_bpfd_host_cli_path": str(root / "bin" / "bpfctl"),
        "_bpfd_host_lib_dir": str(root / "lib" / "bpfd-core"),
        "_bpfd_host_unit_dir": str(root / "systemd"),
        "_bpfd_host_tmpfiles_file": str(root / "tmpfiles.d" / "bpfd.conf"),
        "_bpfd_host_fstab": str(root / "fstab"),
    }
    env = {"BPFD_BPFFS_DIR": paths["_bpfd_host_bpffs_dir"], "BPFD_RUN_DIR": paths["_bpfd_host_run_dir"],
           "BPFD_LIB_DIR": paths["_bpfd_host_store_dir"], "BPFD_CONFIG_DIR": paths["_bpfd_host_config_dir"]}
    box = {"root": root, "tag": tag, "vars": dict(paths, bpfd_host_remove_group=False), "env": env,
           "paths": {k: pathlib.Path(v) for k, v in paths.items()}, "veths": []}
    try:
        yield box
    finally:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            from ansible_collections.bpfd.core.plugins.module_utils import _restore
            from ansible_collections.bpfd.core.plugins.module_utils._state import Layout
            with contextlib.suppress(Exception):
                _restore.unload_all(Layout())
            detach_and_unpin(Layout())
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        for pair in box["veths"]:
            pair.destroy()
        shutil.rmtree(root, ignore_errors=True)


def test_sandbox_restore_with_the_installed_cli_then_absent_unloads_everything(
        run_role, sandbox, bpf_objects, monkeypatch):
    """present installs the CLI; it restores programs after a simulated reboot; absent
    (check mode first) unloads them all, leaves a foreign program alone, keeps the store
    when asked, and removes everything else; a second absent changes nothing."""
    kernel_ready()
    p = sandbox["paths"]
    _assert_ok(run_role(dict(sandbox["vars"], bpfd_host_restore_wait=3)))
    _assert_installed(p["_bpfd_host_cli_path"], p["_bpfd_host_lib_dir"],
                      p["_bpfd_host_unit_dir"] / "bpfd-restore.service", p["_bpfd_host_tmpfiles_file"],
                      p["_bpfd_host_config_dir"] / "bpfctl.json", p["_bpfd_host_fstab"],
                      run_dir=p["_bpfd_host_run_dir"])
    assert json.loads((p["_bpfd_host_config_dir"] / "bpfctl.json").read_text())["restore_wait_seconds"] == 3

    # Programs in the sandbox layout, through the Manager.
    for key, value in sandbox["env"].items():
        monkeypatch.setenv(key, value)
    from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager, ProgramSpec
    from ansible_collections.bpfd.core.plugins.module_utils._state import Layout
    veth = Veth(240)
    veth.create()
    sandbox["veths"].append(veth)
    tag = sandbox["tag"]
    Manager().chain("xdp", veth.name, [
        ProgramSpec(name="%s-a" % tag, kind="xdp", path=bpf_objects["xdp_count_pass"], interface=veth.name, priority=1),
        ProgramSpec(name="%s-b" % tag, kind="xdp", path=bpf_objects["xdp_pass"], interface=veth.name, priority=2)])
    Manager().present(ProgramSpec(name="%s-t" % tag, kind="tc", path=bpf_objects["tc_pass"], interface=veth.name,
                                  direction="egress", priority=5))
    names = sorted("%s-%s" % (tag, n) for n in "abt")

    # A simulated reboot, then the installed CLI (its own interpreter and module_utils tree).
    detach_and_unpin(Layout())
    env = {k: v for k, v in os.environ.items() if k != "BPFD_CORE_LIB"}
    proc = subprocess.run([str(p["_bpfd_host_cli_path"]), "--json", "restore"], capture_output=True, text=True,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(proc.stdout)["restored"]) == names
    ids = [prog["id"] for prog in Manager().list()["programs"]]
    assert len(ids) == 3 and len(_xdp_on(veth.name)) == 1

    foreign_pin = "/sys/fs/bpf/bpfd_test_foreign_%s" % tag
    subprocess.run(["bpftool", "prog", "load", bpf_objects["xdp_pass"], foreign_pin], check=True)
    try:
        foreign_id = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "pinned", foreign_pin],
                                               capture_output=True, text=True, check=True).stdout)["id"]
        absent = dict(sandbox["vars"], bpfd_host_state="absent", bpfd_host_keep_store=True)
        check = run_role(absent, check=True)
        _assert_ok(check)
        assert check.changed > 0 and "Would unload" in check.output
        assert sorted(prog["id"] for prog in Manager().list()["programs"]) == sorted(ids)
        assert p["_bpfd_host_cli_path"].exists()

        removed = run_role(absent)
        _assert_ok(removed)
        assert removed.changed > 0
        for prog_id in ids:
            assert _gone(prog_id), "program %d is still loaded" % prog_id
        assert _xdp_on(veth.name) == []
        tcx = json.loads(subprocess.run(["bpftool", "-j", "net", "show", "dev", veth.name], capture_output=True,
                                        text=True, check=True).stdout or "[{}]")[0].get("tc", [])
        assert tcx == []
        assert not pathlib.Path(sandbox["env"]["BPFD_BPFFS_DIR"]).exists()
        for key in ("_bpfd_host_run_dir", "_bpfd_host_config_dir", "_bpfd_host_cli_path", "_bpfd_host_lib_dir",
                    "_bpfd_host_tmpfiles_file"):
            assert not p[key].exists(), p[key]
        assert not (p["_bpfd_host_unit_dir"] / "bpfd-restore.service").exists()
        assert FSTAB_BEGIN not in p["_bpfd_host_fstab"].read_text()
        declared = json.loads((p["_bpfd_host_store_dir"] / "declared.json").read_text())["programs"]
        assert sorted(declared) == names  # bpfd_host_keep_store: what a later restore brings back
        assert subprocess.run(["bpftool", "prog", "show", "id", str(foreign_id)], capture_output=True,
                              check=False).returncode == 0  # not ours: untouched

        again = run_role(absent)
        _assert_ok(again)
        assert again.changed == 0, again.output
    finally:
        os.unlink(foreign_pin)


def _xdp_on(ifname: str) -> list:
    out = subprocess.run(["bpftool", "-j", "net", "show", "dev", ifname], capture_output=True, text=True, check=True)
    return (json.loads(out.stdout or "[{}]") or [{}])[0].get("xdp", [])


def _gone(prog_id: int, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True,
                         check=False).returncode == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- bpfd_host_bcc --------------------------------------------------------------------

KERNEL = os.uname().release
SYSTEM_PYTHON = "/usr/bin/python3"
TINY_PROGRAM = 'from bcc import BPF; BPF(text="int f(void *ctx){return 0;}"); print("compiled")'


def _resolve(path: pathlib.Path) -> str | None:
    """What a path resolves to, or None when it does not (a dangling link)."""
    return os.path.realpath(path) if path.exists() else None


def _assert_headers_tree(build: pathlib.Path, source: pathlib.Path | None = None) -> str:
    """build (and source) resolve to a kernel headers tree; returns build's target."""
    tree = _resolve(build)
    assert tree, "%s does not resolve" % build
    tree_path = pathlib.Path(tree)
    assert (tree_path / "Makefile").is_file(), tree
    assert (tree_path / "include" / "generated" / "autoconf.h").is_file(), tree
    if source is not None and (source.exists() or source.is_symlink()):
        source_tree = _resolve(source)
        assert source_tree and (pathlib.Path(source_tree) / "include" / "uapi" / "linux" / "bpf.h").is_file(), source
    return tree


def _compile_with_bcc(python: str, modules_dir: pathlib.Path | None = None) -> None:
    """Compile a tiny program with bcc through `python`; with modules_dir, in a private mount
    namespace where modules_dir is /lib/modules (the host's view is not touched)."""
    argv = [python, "-c", TINY_PROGRAM]
    if modules_dir is not None:
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$1" /lib/modules && shift && exec "$@"', "sh", str(modules_dir)] + argv
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0 and "compiled" in proc.stdout, "bcc did not compile:\n%s%s" % (
        proc.stdout, proc.stderr)


def _bcc_available() -> None:
    if subprocess.run([SYSTEM_PYTHON, "-c", "import bcc"], capture_output=True, check=False).returncode:
        pytest.skip("%s does not import bcc (python3-bpfcc/python3-bcc): the role would install it" % SYSTEM_PYTHON)


def test_bcc_on_this_host(run_role):
    """bpfd_host_bcc (with the fallback) on the host as it is, twice: the module interpreter
    imports bcc, /lib/modules/<release>/build resolves to a headers tree, bcc compiles. What
    the role adds (headers links, the venv's bcc link) is removed again unless it was there."""
    _bcc_available()
    modules = pathlib.Path("/lib/modules") / KERNEL
    links = [modules / "build", modules / "source"]
    venv_link = pathlib.Path(subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip()) / "bcc"
    before = {path: path.is_symlink() or path.exists() for path in links + [venv_link]}
    modules_existed = modules.exists()
    try:
        extra = {"bpfd_host_bcc": True, "bpfd_host_bcc_headers_fallback": True}
        _apply_idempotently(run_role, extra)

        proc = subprocess.run([sys.executable, "-c", "import bcc; print(bcc.__file__)"], capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        if not pathlib.Path("/sys/kernel/kheaders.tar.xz").exists():
            _assert_headers_tree(modules / "build", modules / "source")
        _compile_with_bcc(sys.executable)
    finally:
        for path, existed in before.items():
            if not existed and path.is_symlink():
                path.unlink()
        if not modules_existed and modules.is_dir() and not any(modules.iterdir()):
            modules.rmdir()


def _apt_has(package: str) -> bool:
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", package], capture_output=True, text=True,
                          check=False)
    return proc.returncode == 0 and ("Package: %s" % package) in proc.stdout


def _venv_without_bcc(root: pathlib.Path) -> str:
    """A virtualenv of the system interpreter that imports pyroute2 (through a .pth that
    names a directory holding only a link to the test venv's pyroute2) but not bcc, so the
    role must link bcc into it and installs nothing with pip."""
    venv = root / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = pathlib.Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                          capture_output=True, text=True, check=True).stdout.strip())
    import pyroute2
    deps = root / "deps"
    deps.mkdir()
    (deps / "pyroute2").symlink_to(pathlib.Path(pyroute2.__file__).parent, target_is_directory=True)
    (purelib / "bpfd-test-deps.pth").write_text(str(deps) + "\n")
    subprocess.run([python, "-c", "import pyroute2"], check=True)
    assert subprocess.run([python, "-c", "import bcc"], capture_output=True, check=False).returncode != 0
    return python


def test_bcc_sandbox_links_bcc_into_a_venv_and_falls_back_to_other_headers(run_role, sandbox):
    """A virtualenv without bcc and a kernel without headers (the role's private modules
    directory is a temporary one): without the fallback the role says what to do; a dangling
    build link is never replaced; with the fallback it links the distribution's bcc into the
    venv and build/source to linux-headers-<arch>, idempotently and check-mode safe, and bcc
    compiles with them (in a mount namespace where that directory is /lib/modules)."""
    _bcc_available()
    if shutil.which("apt-cache") is None or shutil.which("unshare") is None:
        pytest.skip("needs a Debian-family host (apt-cache) and unshare")
    if _apt_has("linux-headers-%s" % KERNEL):
        pytest.skip("the archive has linux-headers-%s: the fallback path is not taken here" % KERNEL)
    generic = subprocess.run(["dpkg-query", "--show", "--showformat=${Status}", "linux-headers-amd64"],
                             capture_output=True, text=True, check=False)
    if os.uname().machine != "x86_64" or "install ok installed" not in generic.stdout:
        pytest.skip("the fallback headers (linux-headers-amd64) are not installed: the role would download them")
    root = sandbox["root"]
    python = _venv_without_bcc(root)
    modules = root / "modules"
    kernel_dir = modules / KERNEL
    extra = dict(sandbox["vars"], bpfd_host_python=python, bpfd_host_install_oras=False, bpfd_host_pip_packages=[],
                 bpfd_host_bcc=True, _bpfd_host_modules_dir=str(modules),
                 _bpfd_host_kheaders=str(root / "no-kheaders.tar.xz"))

    refused = run_role(extra)
    assert refused.rc != 0 and refused.failed == 1
    assert "bcc finds no headers for kernel %s" % KERNEL in refused.output
    assert "bpfd_host_bcc_headers_fallback=true" in refused.output
    assert not kernel_dir.exists()

    kernel_dir.mkdir(parents=True)
    (kernel_dir / "build").symlink_to("/nonexistent/headers")
    with_fallback = dict(extra, bpfd_host_bcc_headers_fallback=True)
    dangling = run_role(with_fallback)
    assert dangling.rc != 0 and dangling.failed == 1
    assert "The role never replaces it" in dangling.output, dangling.output
    assert os.readlink(kernel_dir / "build") == "/nonexistent/headers"
    shutil.rmtree(kernel_dir)

    first = _apply_idempotently(run_role, with_fallback)
    assert "now compiles with the headers of" in first.output

    # The venv imports the distribution's bcc through a link in its site-packages.
    system_bcc = subprocess.run([SYSTEM_PYTHON, "-c", "import bcc, os; print(os.path.dirname(bcc.__file__))"],
                                capture_output=True, text=True, check=True).stdout.strip()
    found = subprocess.run([python, "-c", "import bcc, os; print(os.path.dirname(os.path.realpath(bcc.__file__)))"],
                           capture_output=True, text=True, check=False)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == os.path.realpath(system_bcc)
    # build and source: links to the generic package's trees.
    tree = _assert_headers_tree(kernel_dir / "build", kernel_dir / "source")
    assert (kernel_dir / "build").is_symlink() and (kernel_dir / "source").is_symlink()
    assert tree == _resolve(pathlib.Path("/lib/modules") / _generic_release("linux-headers-amd64") / "build")
    _compile_with_bcc(python, modules)


def _generic_release(meta: str) -> str:
    depends = subprocess.run(["dpkg-query", "--show", "--showformat=${Depends}", meta], capture_output=True,
                             text=True, check=True).stdout
    match = re.search(r"linux-headers-(\S+)", depends)
    assert match, depends
    return match.group(1)
