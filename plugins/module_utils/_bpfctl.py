# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""`bpfctl` on a managed host: bpfd's command line, with no daemon behind it.

    bpfctl list [--all]          the tutorial's table (+ attach point and position)
    bpfctl get ID|NAME           "Bpfd State" and "Kernel State", as bpfd prints them
    bpfctl unload ID|NAME        what `state: absent` does (root)
    bpfctl restore [--wait S]    rebuild the declared programs, e.g. at boot (root)
    bpfctl unload-all            every program bpfd.core manages, nothing else (root)
    bpfctl --json ...            the same data as the modules return

`files/bpfctl` is the executable; everything it does is here, on top of the
same Manager the modules use. As root, `list` and `get` read the state under
the host lock with the modules' reconcile (dry). Other users read the recorded
state as it is (writes are atomic renames, so it is never half written): members
of the group `bpfd` can, once the state directory and file are shared with it.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import stat
import sys
from typing import Iterator

from ansible_collections.bpfd.core.plugins.module_utils import _restore
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager
from ansible_collections.bpfd.core.plugins.module_utils._state import Layout, StateStore, read_state

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOPERM = 0, 1, 2, 77
CONFIG_NAME = "bpfctl.json"
DEFAULT_CONFIG = {"group": "bpfd", "restore_wait_seconds": 0}
ROOT_COMMANDS = ("unload", "restore", "unload-all")

LIST_HEADERS = ("Program ID", "Name", "Type", "Load Time", "Attach Point", "Position")
BPFD_LABEL_WIDTH = 15
KERNEL_LABEL_WIDTH = 34


# --- configuration (written by the role bpfd.core.bpfd_host) -------------------------------------

def config_path() -> str:
    return os.path.join(os.environ.get("BPFD_CONFIG_DIR", "/etc/bpfd"), CONFIG_NAME)


def load_config(path: str | None = None) -> dict:
    path = path or config_path()
    config = dict(DEFAULT_CONFIG)
    try:
        with open(path, encoding="utf-8") as handle:
            config.update(json.load(handle))
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        raise BpfdError("cannot read the configuration %s: %s" % (path, exc))
    return config


# --- text output -------------------------------------------------------------------------

def attach_point(facts: dict) -> str:
    if facts.get("managed") is False:
        return "-"
    if facts.get("interface"):
        text = facts["interface"]
        if facts.get("direction"):
            text += " " + facts["direction"]
        if facts.get("netns"):
            text += " (netns %s)" % facts["netns"]
        return text
    attach = facts.get("attach") or {}
    return " ".join(str(v) for v in attach.values() if v not in (None, "")) or "-"


def _cell(value) -> str:
    return "-" if value is None or value == "" else str(value)


def format_list(programs: list) -> str:
    """bpfctl list: the tutorial's columns (ID, name, type, load time) + attach point, position;
    by kernel id, as bpfctl lists them."""
    rows = [LIST_HEADERS]
    for facts in sorted(programs, key=lambda f: (f.get("id") is None, f.get("id") or 0, f.get("name") or "")):
        unmanaged = facts.get("managed") is False
        rows.append((
            _cell(facts.get("id")),
            _cell(facts.get("kernel_name") if unmanaged else facts.get("name")),
            _cell(facts.get("prog_type") if unmanaged else facts.get("type")),
            _cell(facts.get("loaded_at")),
            attach_point(facts),
            _cell(facts.get("position")),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(LIST_HEADERS))]
    return "\n".join((" " + "  ".join(c.ljust(w) for c, w in zip(row, widths))).rstrip() for row in rows) + "\n"


def _lines(label: str, values: list, width: int) -> list:
    """` Label:   first` then the other values under the first, as bpfctl prints lists."""
    values = values or ["None"]
    head = " " + (label + ":").ljust(width)
    return [(head + str(values[0])).rstrip()] + [" " * len(head) + str(v) for v in values[1:]]


def _pairs(mapping: dict | None) -> list:
    return ["%s=%s" % (k, v) for k, v in sorted((mapping or {}).items())]


def _yes(value) -> str:
    return "true" if value else "false"


def format_get(facts: dict) -> str:
    """bpfctl get: the "Bpfd State" and "Kernel State" blocks of the bpfd tutorial."""
    w = BPFD_LABEL_WIDTH
    out = [" Bpfd State", "-" * w]
    out += _lines("Name", [facts["name"]], w)
    if facts.get("image_url"):
        out += _lines("Image URL", [facts["image_url"]], w)
        out += _lines("Pull Policy", [facts.get("pull_policy")], w)
    elif facts.get("source"):
        out += _lines("Source", [facts["source"]], w)
        out += _lines("Cflags", list(facts.get("cflags") or []), w)
    else:
        out += _lines("Path", [facts.get("path")], w)
    out += _lines("Global", _pairs(facts.get("global_data")), w)
    out += _lines("Metadata", _pairs(facts.get("metadata")), w)
    out += _lines("Map Pin Path", [facts.get("map_pin_path")], w)
    out += _lines("Map Owner ID", [facts.get("map_owner_id")], w)
    out += _lines("Map Used By", list(facts.get("maps_used_by") or []), w)
    if facts.get("type") in _restore.CHAINED:
        out += _lines("Priority", [facts.get("priority")], w)
        out += _lines("Iface", [facts.get("interface")], w)
        if facts.get("netns"):
            out += _lines("Netns", [facts["netns"]], w)
        out += _lines("Position", [facts.get("position")], w)
        if facts.get("type") == "tc":
            out += _lines("Direction", [facts.get("direction")], w)
        out += _lines("Proceed On", [", ".join(facts.get("proceed_on") or [])], w)
    else:
        for key, value in sorted((facts.get("attach") or {}).items()):
            out += _lines(key.replace("_", " ").title(), [value], w)
    w = KERNEL_LABEL_WIDTH
    out += ["", " Kernel State", "-" * w]
    out += _lines("ID", [facts.get("id")], w)
    if "tag" not in facts:  # the kernel's view was not readable
        out.append(" (the kernel's view of this program needs root, or read access to its pin)")
        return "\n".join(out) + "\n"
    out += _lines("Name", [facts.get("kernel_name")], w)
    out += _lines("Type", [facts.get("prog_type")], w)
    out += _lines("Loaded At", [facts.get("loaded_at")], w)
    out += _lines("Tag", [facts.get("tag")], w)
    out += _lines("GPL Compatible", [_yes(facts.get("gpl_compatible"))], w)
    out += _lines("Map IDs", [str(list(facts.get("map_ids") or []))], w)
    out += _lines("BTF ID", [facts.get("btf_id") or None], w)
    out += _lines("Size Translated (bytes)", [facts.get("size_translated_bytes")], w)
    out += _lines("JITed", [_yes(facts.get("jited"))], w)
    out += _lines("Size JITed (bytes)", [facts.get("size_jited_bytes")], w)
    out += _lines("Kernel Allocated Memory (bytes)", [facts.get("kernel_allocated_memory_bytes")], w)
    out += _lines("Verified Instruction Count", [facts.get("verified_insns")], w)
    return "\n".join(out) + "\n"


def format_restore(result: dict) -> str:
    out = ["restored %d, unchanged %d, pending %d, failed %d of %d declared program(s) in %.2f s"
           % (len(result["restored"]), len(result["unchanged"]), len(result["pending"]),
              len(result["failed"]), result.get("declared", 0), result.get("seconds", 0.0))]
    for step in result["steps"]:
        out.append("  %s: %s (%s)" % (step["hook"], ", ".join(step["programs"]),
                                      "restored" if step["changed"] else "unchanged"))
    for outcome, title in (("pending", "pending (run `bpfctl restore` again once they exist)"),
                           ("failed", "failed")):
        if result[outcome]:
            out.append(title + ":")
            out += ["  %s: %s" % (p["name"], p["reason"]) for p in result[outcome]]
    return "\n".join(out) + "\n"


def format_unload_all(result: dict, check_mode: bool) -> str:
    verb = "would unload" if check_mode else "unloaded"
    out = ["%s %d program(s)" % (verb, len(result["unloaded"]))]
    for prog in result["unloaded"]:
        where = " on %s" % prog["interface"] if prog.get("interface") else ""
        out.append("  %s (id %s, %s%s)" % (prog["name"], prog["id"], prog["type"], where))
    if result["removed_pins"]:
        verb = "would remove" if check_mode else "removed"
        out.append("%s %d leftover pin(s) of ours" % (verb, len(result["removed_pins"])))
    if result["forgotten"]:
        out.append("%s the declaration of %s (a reboot brings nothing back)"
                   % ("would forget" if check_mode else "forgot", ", ".join(result["forgotten"])))
    for failure in result.get("failed", []):
        out.append("failed: %s: %s" % (failure["name"], failure["reason"]))
    return "\n".join(out) + "\n"


# --- the state, as this user may read it -----------------------------------------------------

class _RecordedState(Manager):
    """Manager.list() for a user who may read the state but not take the host lock:
    the recorded state as it is, without the reconcile (that needs root)."""

    @contextlib.contextmanager
    def _session(self, check_mode: bool) -> Iterator[tuple]:
        store = StateStore(self.layout)
        store.data = read_state(self.layout)
        yield store, ["read as uid %d: the recorded state, not reconciled with the kernel" % os.geteuid()]


def _manager(layout: Layout) -> Manager:
    return Manager(layout) if os.geteuid() == 0 else _RecordedState(layout)


def share_state(layout: Layout, group: str) -> None:
    """Root: let `group` read the run-time state (directory 0750, state file 0640)."""
    if os.geteuid() != 0:
        return
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return
    for path, mode in ((layout.run_dir, 0o750), (layout.state_file, 0o640)):
        try:
            st = os.stat(path)
            if st.st_gid != gid:
                os.chown(path, st.st_uid, gid)
            if stat.S_IMODE(st.st_mode) != mode:
                os.chmod(path, mode)
        except FileNotFoundError:
            continue


def find_program(programs: list, token: str) -> dict | None:
    """ID or NAME: a number is a kernel id first, then a name (names may be numbers)."""
    if token.isdigit():
        for facts in programs:
            if facts.get("id") == int(token):
                return facts
    for facts in programs:
        if facts.get("name") == token:
            return facts
    return None


# --- commands ----------------------------------------------------------------------------------

def _cmd_list(args, layout: Layout, config: dict) -> tuple:
    if args.all and os.geteuid() != 0:
        raise PermissionError("bpfctl list --all reads every kernel program: run it as root")
    result = _manager(layout).list(include_unmanaged=args.all)
    return {"programs": result["programs"], "reconciled": result["reconciled"]}, format_list(result["programs"]), EXIT_OK


def _cmd_get(args, layout: Layout, config: dict) -> tuple:
    facts = find_program(_manager(layout).list()["programs"], args.program)
    if facts is None:
        raise BpfdError("no program with id or name %s is managed by bpfd.core on this host" % args.program)
    return facts, format_get(facts), EXIT_OK


def _cmd_unload(args, layout: Layout, config: dict) -> tuple:
    manager = Manager(layout)
    facts = find_program(manager.list()["programs"], args.program)
    if facts is None:
        raise BpfdError("no program with id or name %s is managed by bpfd.core on this host" % args.program)
    result = manager.absent(name=facts["name"])
    text = "unloaded %s (id %s)\n" % (facts["name"], facts.get("id"))
    return result, text, EXIT_OK


def _cmd_restore(args, layout: Layout, config: dict) -> tuple:
    wait = args.wait if args.wait is not None else float(config.get("restore_wait_seconds") or 0)
    result = _restore.restore(layout, wait=wait)
    return result, format_restore(result), EXIT_FAILED if result["failed"] else EXIT_OK


def _cmd_unload_all(args, layout: Layout, config: dict) -> tuple:
    result = _restore.unload_all(layout, keep_declaration=args.keep_declaration, check_mode=args.check)
    return result, format_unload_all(result, args.check), EXIT_FAILED if result["failed"] else EXIT_OK


COMMANDS = {"list": _cmd_list, "get": _cmd_get, "unload": _cmd_unload, "restore": _cmd_restore,
            "unload-all": _cmd_unload_all}


def build_parser() -> argparse.ArgumentParser:
    # --json is accepted before and after the command.
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                           help="print JSON (the data the bpfd.core modules return)")
    parser = argparse.ArgumentParser(
        prog="bpfctl", parents=[json_flag],
        description="Inspect and restore the eBPF programs bpfd.core manages on this host.",
        epilog="list and get work for members of the group bpfd; the other commands need root.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    listing = commands.add_parser("list", parents=[json_flag], help="list the managed programs")
    listing.add_argument("--all", "-a", action="store_true",
                         help="also the kernel's other BPF programs (root)")
    get = commands.add_parser("get", parents=[json_flag], help="show one program (Bpfd and Kernel State)")
    get.add_argument("program", metavar="ID|NAME")
    unload = commands.add_parser("unload", parents=[json_flag], help="unload one program (root)")
    unload.add_argument("program", metavar="ID|NAME")
    restore = commands.add_parser("restore", parents=[json_flag],
                                  help="rebuild every declared program, e.g. at boot (root)")
    restore.add_argument("--wait", type=float, metavar="SECONDS",
                         help="wait this long for missing interfaces (default: restore_wait_seconds "
                              "of %s, else 0)" % config_path())
    unload_all = commands.add_parser("unload-all", parents=[json_flag],
                                     help="unload every program bpfd.core manages (root)")
    unload_all.add_argument("--keep-declaration", action="store_true",
                            help="keep the declaration, so that `bpfctl restore` brings them back")
    unload_all.add_argument("--check", action="store_true", help="only say what would be done")
    return parser


def main(argv: list | None = None) -> int:
    args = build_parser().parse_args(argv)
    as_json = getattr(args, "json", False)
    if args.command in ROOT_COMMANDS and os.geteuid() != 0:
        return _fail("bpfctl %s changes the host: run it as root (sudo bpfctl %s)"
                     % (args.command, args.command), EXIT_NOPERM, as_json)
    layout = Layout()
    try:
        config = load_config()
        data, text, code = COMMANDS[args.command](args, layout, config)
    except BpfdError as exc:
        return _fail(exc.msg, EXIT_FAILED, as_json, exc.details)
    except PermissionError as exc:
        return _fail("%s; members of the group bpfd may run list and get once the role "
                     "bpfd.core.bpfd_host prepared this host; other commands need root" % exc,
                     EXIT_NOPERM, as_json)
    share_state(layout, str(config.get("group") or DEFAULT_CONFIG["group"]))
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write(text)
    return code


def _fail(msg: str, code: int, as_json: bool, details: dict | None = None) -> int:
    if as_json:
        sys.stdout.write(json.dumps(dict(details or {}, failed=True, msg=msg), default=str) + "\n")
    sys.stderr.write("bpfctl: %s\n" % msg)
    return code
