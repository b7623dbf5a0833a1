# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Programs that survive a reboot, and a host emptied of ours.

`restore()` rebuilds every program the declaration (/var/lib/bpfd/declared.json)
records, from the bytecode store, through the Manager: one `Manager.chain()` per
XDP/TC attach point (kind, interface, direction, namespace), so the chain, its
order, every proceed-on mask and every map pin path come back as declared. It
is what the boot-time unit runs (`bpfctl restore`), and it may run at any time:
an attach point that already runs what is declared is a no-op. An interface or
namespace that does not exist (yet) is reported as pending, never fatal; the
next run picks it up.

`unload_all()` takes every program bpfd.core manages off the host (the role's
`bpfd_host_state: absent`, `bpfctl unload-all`); programs it does not manage are
never touched.

Both only change what runs: their Manager does not record the declaration
(`record_declaration=False`), and objects load from the bytecode store
(`ProgramSpec.bytecode`) while records keep the path the operator declared.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Iterable

from ansible_collections.bpfd.core.plugins.module_utils import _declared
from ansible_collections.bpfd.core.plugins.module_utils import _netlink
from ansible_collections.bpfd.core.plugins.module_utils._attach_link import LinkAttachment
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._loader import check_object_file, file_sha256
from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager, ProgramSpec
from ansible_collections.bpfd.core.plugins.module_utils._state import (
    Layout, StateStore, read_state, remove_pin, remove_pin_tree,
)

# Kinds whose programs share an attach point through a dispatcher.
CHAINED = ("xdp", "tc")
PENDING, FAILED = "pending", "failed"


@dataclasses.dataclass(frozen=True)
class Hook:
    """Where declared programs attach: one dispatcher (XDP/TC), or one program of its own."""

    kind: str
    interface: str | None = None
    direction: str | None = None
    netns: str | None = None
    program: str | None = None  # kinds without a dispatcher: the program itself

    def describe(self) -> str:
        if self.kind not in CHAINED:
            return "%s %s" % (self.kind, self.program)
        text = "%s %s" % (self.kind, self.interface)
        if self.direction:
            text += " " + self.direction
        if self.netns:
            text += " (netns %s)" % self.netns
        return text

    def sort_key(self) -> tuple:
        return (CHAINED.index(self.kind) if self.kind in CHAINED else len(CHAINED), self.kind,
                self.netns or "", self.interface or "", self.direction or "", self.program or "")


@dataclasses.dataclass(frozen=True)
class Step:
    """One Manager call: these programs of this hook."""

    hook: Hook
    names: tuple


def hook_of(name: str, entry: dict) -> Hook:
    if entry.get("kind") in CHAINED:
        return Hook(entry["kind"], entry.get("interface"), entry.get("direction"), entry.get("netns"))
    return Hook(entry.get("kind") or "?", program=name)


def _chain_order(declared: dict, names: Iterable[str]) -> tuple:
    return tuple(sorted(names, key=lambda n: (declared[n].get("priority") or 0, n)))


def plan(declared: dict, live: Iterable[str] = ()) -> tuple[list, dict]:
    """The Manager calls that rebuild `declared` ({name: declared entry}), in order.

    A program that uses another's maps (`map_owner`) can only load once its owner
    is in the run-time state, so a hook waits for the hooks of the owners it needs,
    and a hook holding both an owner and its user is restored in two calls (the
    Manager checks the owner before anything of the call is loaded). Every other
    hook is one call. `live` names programs already in the run-time state.

    Returns (steps, {name: reason} for programs no step can restore).
    """
    done = set(live)
    waiting: dict = {}
    for name in declared:
        waiting.setdefault(hook_of(name, declared[name]), []).append(name)
    waiting = {hook: list(_chain_order(declared, waiting[hook]))
               for hook in sorted(waiting, key=Hook.sort_key)}

    def ready(name: str) -> bool:
        owner = declared[name].get("map_owner")
        return not owner or owner in done

    steps: list = []
    while waiting:
        progressed = False
        for hook in list(waiting):  # whole hooks first: one call each
            if all(ready(n) for n in waiting[hook]):
                steps.append(Step(hook, tuple(waiting.pop(hook))))
                done.update(steps[-1].names)
                progressed = True
        if progressed:
            continue
        for hook, names in waiting.items():  # else split the first hook that can move
            first = [n for n in names if ready(n)]
            if first:
                steps.append(Step(hook, tuple(first)))
                done.update(first)
                waiting[hook] = [n for n in names if n not in first]
                progressed = True
                break
        if not progressed:
            break
    blocked = {}
    for names in waiting.values():
        for name in names:
            owner = declared[name].get("map_owner")
            blocked[name] = ("its map owner %s is not declared" % owner if owner not in declared
                             else "its map owner %s cannot be restored" % owner)
    return steps, blocked


def spec_for(name: str, entry: dict) -> ProgramSpec:
    """The ProgramSpec of a declared program, loading from the bytecode store."""
    values = dict(
        name=name, kind=entry["kind"], path=entry.get("path") or entry.get("bytecode"),
        bytecode=bytecode_of(name, entry), interface=entry.get("interface"),
        priority=entry.get("priority"), proceed_on=entry.get("proceed_on"),
        function=entry.get("bpf_function_name"), mode=entry.get("requested_mode"),
        metadata=dict(entry.get("metadata") or {}), direction=entry.get("direction"),
        global_data=dict(entry.get("global_data") or {}), map_owner=entry.get("map_owner"),
        netns=entry.get("netns"), image=entry.get("image"), attach=entry.get("attach"),
        source=entry.get("source"), sha256=entry.get("sha256") if entry.get("source") else None)
    known = {f.name for f in dataclasses.fields(ProgramSpec)}
    return ProgramSpec(**{k: v for k, v in values.items() if k in known})


def bytecode_of(name: str, entry: dict) -> str:
    """The stored object of a declared program, checked against its recorded sha256
    (a program from source: its compiled object's; its path is C source, never a candidate)."""
    source = entry.get("source")
    expected = source.get("object_sha256") if source else entry.get("sha256")
    for candidate in (entry.get("bytecode"),) + (() if source else (entry.get("path"),)):
        if candidate and os.path.isfile(candidate) and (not expected or file_sha256(candidate) == expected):
            check_object_file(candidate)
            return candidate
    raise BpfdError("program %s: its bytecode (sha256 %s) is neither in the store (%s) nor at %s"
                    % (name, entry.get("sha256"), entry.get("bytecode"), entry.get("path")), program=name)


def where_missing(hook: Hook) -> str | None:
    """Why the hook cannot be attached now (its namespace or interface is missing), or None."""
    if hook.kind not in CHAINED:
        return None
    if not _netlink.netns_exists(hook.netns):
        return "network namespace %s does not exist" % hook.netns
    try:
        with _netlink.in_netns(hook.netns):
            _netlink.interface_index(hook.interface)
    except BpfdError as exc:
        return exc.msg
    return None


def execute(steps: list, declared: dict, manager: Manager, blocked: dict | None = None,
            missing: Callable[[Hook], str | None] = where_missing) -> dict:
    """Run the planned Manager calls; a failed or pending hook never stops the others."""
    result: dict = {"changed": False, "restored": [], "unchanged": [], "pending": [], "failed": [],
                    "steps": []}
    unavailable: dict = {}  # name -> PENDING | FAILED

    def report(name: str, outcome: str, reason: str) -> None:
        entry = declared[name]
        result[outcome].append({"name": name, "kind": entry.get("kind"), "interface": entry.get("interface"),
                                "direction": entry.get("direction"), "netns": entry.get("netns"),
                                "reason": reason})
        unavailable[name] = outcome

    for name, reason in sorted((blocked or {}).items()):
        report(name, FAILED, reason)
    for step in steps:
        names = []
        for name in step.names:
            owner = declared[name].get("map_owner")
            if owner in unavailable:
                report(name, unavailable[owner], "waits for its map owner %s (%s)" % (owner, unavailable[owner]))
            else:
                names.append(name)
        if not names:
            continue
        why = missing(step.hook)
        if why:
            for name in names:
                report(name, PENDING, why)
            continue
        specs = []
        for name in names:
            try:
                specs.append(spec_for(name, declared[name]))
            except BpfdError as exc:
                report(name, FAILED, exc.msg)
        if not specs:
            continue
        hook = step.hook
        try:
            if hook.kind in CHAINED:
                out = manager.chain(hook.kind, hook.interface, specs, direction=hook.direction, netns=hook.netns)
            else:
                out = manager.converge(specs)
        except BpfdError as exc:
            for spec in specs:
                report(spec.name, FAILED, exc.msg)
            continue
        changed_names = (set(out["changes"]) if isinstance(out.get("changes"), dict)
                         else {s.name for s in specs} if out.get("changed") else set())
        for spec in specs:
            result["restored" if spec.name in changed_names else "unchanged"].append(spec.name)
        result["changed"] = result["changed"] or bool(out.get("changed"))
        result["steps"].append({"hook": hook.describe(), "programs": [s.name for s in specs],
                                "changed": bool(out.get("changed")), "reconciled": out.get("reconciled", [])})
    return result


def restore(layout: Layout | None = None, wait: float = 0.0, poll: float = 0.5) -> dict:
    """Rebuild every declared program; wait up to `wait` seconds for missing interfaces."""
    layout = layout or Layout()
    started = time.monotonic()
    declared = _declared.read(layout).get("programs", {})
    # Restore changes what runs, never what is declared; objects load from the store
    # (ProgramSpec.bytecode) while the records keep the path the operator declared.
    manager = Manager(layout, record_declaration=False)
    steps, blocked = plan(declared, live=set(read_state(layout)["programs"]) & set(declared))
    result = execute(steps, declared, manager, blocked)
    restored, changed = list(result["restored"]), result["changed"]
    while result["pending"] and time.monotonic() - started < wait:
        time.sleep(poll)
        result = execute(steps, declared, manager, blocked)
        restored += [n for n in result["restored"] if n not in restored]
        changed = changed or result["changed"]
    result["restored"] = restored
    result["unchanged"] = [n for n in result["unchanged"] if n not in restored]
    result["changed"] = changed
    result["declared"] = len(declared)
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def unload_all(layout: Layout | None = None, keep_declaration: bool = False, check_mode: bool = False) -> dict:
    """Take every program bpfd.core manages off the host, and whatever else of ours is
    pinned in its bpffs tree. Programs it does not manage are never touched.

    Unless `keep_declaration`, the declaration is emptied too (a reboot brings nothing
    back); with it, `restore()` brings everything back later.
    """
    layout = layout or Layout()
    manager = Manager(layout, record_declaration=not keep_declaration)
    forgotten = [] if keep_declaration else sorted(_declared.read(layout).get("programs", {}))
    listed = manager.list()
    unloaded, failed = [], []
    for program in listed["programs"]:
        try:
            out = manager.absent(name=program["name"], check_mode=check_mode)
        except BpfdError as exc:
            failed.append({"name": program["name"], "reason": exc.msg})
            continue
        if out["changed"]:
            unloaded.append({"name": program["name"], "id": program.get("id"), "type": program.get("type"),
                             "interface": program.get("interface")})
    # In check mode the pins of the programs above are still there: they are no leftovers.
    leftovers = [] if check_mode and unloaded else _pins_below(layout)
    if failed:  # what is still pinned belongs (also) to them: leave it, say so
        leftovers = []
        forgotten = [n for n in forgotten if n not in {f["name"] for f in failed}]
    if not check_mode:
        for pin in leftovers:
            _remove_leftover(layout, pin)
        if forgotten and not failed and _declared.read(layout).get("programs"):
            store = StateStore(layout)
            with store.locked():
                _declared.write(layout, store.programs)
    return {"changed": bool(unloaded or leftovers or forgotten), "unloaded": unloaded, "failed": failed,
            "removed_pins": leftovers, "forgotten": forgotten, "reconciled": listed.get("reconciled", [])}


def _pins_below(layout: Layout) -> list:
    """Everything pinned in our bpffs tree (directories are not pins)."""
    found = []
    for top in (layout.programs_dir, layout.maps_dir, layout.hooks_dir):
        for root, _dirs, files in os.walk(top):
            found += [os.path.join(root, f) for f in files]
    return sorted(found)


def _remove_leftover(layout: Layout, pin: str) -> None:
    if os.path.dirname(os.path.dirname(pin)) == layout.hooks_dir and os.path.basename(pin) == "link":
        LinkAttachment(pin).detach({})  # detach explicitly, then unpin
    else:
        remove_pin(pin)
    for top in (layout.programs_dir, layout.maps_dir, layout.hooks_dir):
        if pin.startswith(top + os.sep):
            parent = os.path.dirname(pin)
            while parent != top and os.path.isdir(parent) and not os.listdir(parent):
                remove_pin_tree(parent)
                parent = os.path.dirname(parent)
