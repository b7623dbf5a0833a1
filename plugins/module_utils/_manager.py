# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The program manager: present / absent / list for dispatcher-chained programs.

One call per module run. Every mutation happens under the host lock, after a
reconcile of the recorded state with what the kernel and bpffs hold. Kernel
changes register an undo step as they go; if a later step fails the undo steps
run in reverse, so bad input leaves the host exactly as it was.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ansible_collections.bpfd.core.plugins.module_utils import _attach_tc
from ansible_collections.bpfd.core.plugins.module_utils import _attach_trace
from ansible_collections.bpfd.core.plugins.module_utils import _attach_xdp
from ansible_collections.bpfd.core.plugins.module_utils import _declared
from ansible_collections.bpfd.core.plugins.module_utils import _dispatcher
from ansible_collections.bpfd.core.plugins.module_utils import _facts
from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
from ansible_collections.bpfd.core.plugins.module_utils import _loader
from ansible_collections.bpfd.core.plugins.module_utils import _member
from ansible_collections.bpfd.core.plugins.module_utils import _netlink
from ansible_collections.bpfd.core.plugins.module_utils import _proceed_on
from ansible_collections.bpfd.core.plugins.module_utils._attach_link import Attachment
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._state import (
    Layout, StateStore, crash_point, ensure_bpffs, remove_pin, remove_pin_tree, write_json_atomic,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
HOOK_PROG_TYPES = {"xdp": (libbpf.PROG_TYPE_XDP,), "tc": (libbpf.PROG_TYPE_SCHED_CLS,)}
PROG_TYPES = dict(HOOK_PROG_TYPES, **_attach_trace.PROG_TYPES)
HOOK_MODES = {"xdp": tuple(_attach_xdp.MODES), "tc": _attach_tc.ATTACH_METHODS}
MODE_OPTION = {"xdp": "xdp_mode", "tc": "tc_attach"}
LONG_LOCK_WAIT = 1.0


@dataclass
class ProgramSpec:
    """What a task declares about one chained program."""

    name: str
    kind: str
    path: str
    interface: str
    priority: int
    proceed_on: list | None = None
    function: str | None = None
    mode: str | None = None
    metadata: dict = field(default_factory=dict)
    direction: str | None = None
    global_data: dict = field(default_factory=dict)
    map_owner: str | None = None
    netns: str | None = None
    image: dict | None = None
    attach: dict | None = None  # tracing kinds: where to attach (tracepoint, function, target, ...)
    bytecode: str | None = None  # the file to load when it is not `path` (restore: the store's copy)
    sha256: str | None = None  # identity when it is not the object's sha256 (programs from source)
    source: dict | None = None  # from C source: {"path", "cflags", "object_sha256"} (see _bcc)


def hook_key(kind: str, ifindex: int, direction: str | None = None, netns: str | None = None) -> str:
    """xdp_7, tc_7_ingress, xdp_ns4026532390_3 (an interface inside another namespace)."""
    parts = [kind] + ([_netlink.netns_id(netns)] if netns else []) + [str(ifindex)]
    return "_".join(parts + ([direction] if direction else []))


class _Undo:
    """Kernel steps taken so far, and how to take each back.

    `release` callbacks free what an undo step would have needed (open fds of
    the previous dispatcher); they run whichever way the operation ends.
    """

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []
        self._releases: list[Callable[[], None]] = []

    def add(self, step: Callable[[], None]) -> None:
        self._steps.append(step)

    def release(self, callback: Callable[[], None]) -> None:
        self._releases.append(callback)

    def run(self) -> None:
        while self._steps:
            with contextlib.suppress(Exception):
                self._steps.pop()()
        self._release_all()

    def forget(self) -> None:
        self._steps.clear()
        self._release_all()

    def _release_all(self) -> None:
        while self._releases:
            with contextlib.suppress(Exception):
                self._releases.pop()()


class _InNetns:
    """An undo log whose steps run in a namespace (they may run after the
    block that entered it has left)."""

    def __init__(self, undo: _Undo, netns: str | None) -> None:
        self._undo = undo
        self._netns = netns

    def add(self, step: Callable[[], None]) -> None:
        netns = self._netns

        def in_namespace() -> None:
            with _netlink.in_netns(netns):
                step()
        self._undo.add(in_namespace)

    def release(self, callback: Callable[[], None]) -> None:
        self._undo.release(callback)


class Manager:
    """`record_declaration=False`: runs change what runs, never what is declared
    (restore, and unload-all that keeps the declaration for the next boot)."""

    def __init__(self, layout: Layout | None = None, record_declaration: bool = True) -> None:
        self.layout = layout or Layout()
        self.record_declaration = record_declaration
        self._declare: dict = {}

    # --- public operations ------------------------------------------------

    def present(self, spec: ProgramSpec, check_mode: bool = False) -> dict:
        """One program as declared; its hook(s) swapped once."""
        return self.converge([spec], check_mode=check_mode)

    def chain(self, kind: str, interface: str, specs: list, direction: str | None = None,
              exclusive: bool = False, check_mode: bool = False, netns: str | None = None) -> dict:
        """A whole attach point as declared, with one dispatcher swap whatever changes.

        With `exclusive`, managed programs on the hook that are not listed are removed.
        """
        with _netlink.in_netns(netns):
            key = hook_key(kind, _netlink.interface_index(interface), direction, netns)
        for spec in specs:
            if (spec.kind, spec.interface, spec.direction, spec.netns) != (kind, interface, direction, netns):
                raise BpfdError("program %s of the chain must be a %s program on %s" % (spec.name, kind, interface))
        return self.converge(specs, check_mode=check_mode, exclusive_key=key if exclusive else None,
                             whole_chain=key)

    def converge(self, specs: list, check_mode: bool = False, exclusive_key: str | None = None,
                 whole_chain: str | None = None) -> dict:
        plans = [self._plan(spec) for spec in specs]
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise BpfdError("each program name may appear once: %s" % ", ".join(sorted(
                n for n in set(names) if names.count(n) > 1)))
        with self._session(check_mode) as (store, notes):
            programs = dict(store.programs)
            steps, changes, affected = [], {}, [] if whole_chain is None else [whole_chain]
            # owners before the programs that share their maps
            plans.sort(key=lambda plan: plan[0].map_owner in names)
            for spec, proceed_on, sha256, ifindex, key in plans:
                old = store.programs.get(spec.name)
                if old is not None and old["kind"] != spec.kind:
                    raise BpfdError("%s %s program named %s already exists; names are unique per host"
                                    % ("an" if old["kind"][0] in "aeiox" else "a", old["kind"], spec.name))
                self._check_map_owner(programs, spec)
                new = self._record(spec, proceed_on, sha256, ifindex, key, old)
                reload = old is None or old["sha256"] != sha256 or old.get("attach") != new.get("attach") or (
                    spec.function is not None and spec.function != old["bpf_function_name"]) or (
                    old.get("global_data", {}) != new["global_data"]) or old.get("map_owner") != spec.map_owner
                programs[spec.name] = new
                for hook in (key, old and old["hook"]):
                    if hook and hook not in affected:
                        affected.append(hook)
                spec_changes = self._changes(old, new, reload)
                if spec_changes:
                    steps.append((spec, new, old, reload))
                    changes[spec.name] = spec_changes
            # exclusive_key None is no hook at all: programs without a dispatcher also have hook None.
            removed = {n: r for n, r in store.programs.items()
                       if exclusive_key is not None and r["hook"] == exclusive_key and n not in names}
            for name in removed:
                del programs[name]
            modes = {key: self._hook_mode(store, key, [p[0] for p in plans if p[4] == key], programs)
                     for key in affected}
            before = self._chains(store, affected)
            if not check_mode:
                # Declared even when nothing changes: a run killed after its state save
                # left the declaration behind; this one catches it up.
                self._declare.update({spec.name: store.programs.get(spec.name) for spec in specs
                                      if spec.name in store.programs})
            if not steps and not removed:
                return self._converged(store, specs, whole_chain, False, before, before, notes, {}, [])
            for key in affected:
                self._check_capacity(programs, key)
            if check_mode:
                predicted = self._predicted(store, programs, affected, modes)
                return self._converged(predicted, specs, whole_chain, True, before,
                                       self._chains(predicted, affected), notes, changes, sorted(removed))
            warnings = self._apply(store, programs, steps, removed, affected, modes)
            self._declare.update({spec.name: programs[spec.name] for spec in specs})
            self._declare.update({name: None for name in removed})
            result = self._converged(store, specs, whole_chain, True, before, self._chains(store, affected),
                                     notes, changes, sorted(removed))
            if warnings:
                result["warnings"] = warnings
            return result

    def _plan(self, spec: ProgramSpec) -> tuple:
        """Everything about one spec that needs no lock: validation, file, interface."""
        source = spec.bytecode or spec.path
        if spec.kind in _attach_trace.KINDS:
            self._validate_name(spec.name)
            _loader.check_object_file(source)
            _attach_trace.check_spec(spec.kind, spec.attach or {})
            _attach_trace.probe_kernel(spec.kind, spec.attach or {})
            return spec, [], spec.sha256 or _loader.file_sha256(source), None, None
        proceed_on = self._validate(spec)
        _loader.check_object_file(source)
        with _netlink.in_netns(spec.netns):
            ifindex = _netlink.interface_index(spec.interface)
        key = hook_key(spec.kind, ifindex, spec.direction, spec.netns)
        return spec, proceed_on, spec.sha256 or _loader.file_sha256(source), ifindex, key

    def _converged(self, store: StateStore, specs: list, whole_chain: str | None, changed: bool,
                   before: dict, after: dict, notes: list, changes: dict, removed: list) -> dict:
        if whole_chain is None:
            name = specs[0].name
            return self._result(store, name, changed, before, after, notes, changes=changes.get(name))
        result = {"changed": changed, "reconciled": notes, "changes": changes, "removed": removed,
                  "diff": {"before": _facts.diff_text(before), "after": _facts.diff_text(after)}}
        hook = store.hooks.get(whole_chain)
        result["chain"] = [self._facts(store, m, i, hook, kernel="prog_id" in m)
                           for i, m in enumerate(self._members(store.programs, whole_chain))]
        return result

    def absent(self, name: str | None = None, prog_id: int | None = None,
               check_mode: bool = False) -> dict:
        with self._session(check_mode) as (store, notes):
            if name is None:
                name = next((n for n, r in store.programs.items() if r["prog_id"] == prog_id), None)
            record = store.programs.get(name) if name is not None else None
            if record is None and name is not None and not check_mode:
                self._declare[name] = None
                return {"changed": False, "program": None, "chain": [], "reconciled": notes,
                        "diff": {"before": {}, "after": {}}}
            before = self._chains(store, [record["hook"]])
            if not check_mode:
                self._remove(store, name)
                self._declare[name] = None
            after_store = store if not check_mode else self._without(store, name)
            result = self._result(after_store, None, True, before,
                                  self._chains(after_store, [record["hook"]]), notes)
            result["program"] = self._facts(store, record, None, None, kernel=False)
            return result

    def list(self, *, name: str | None = None, prog_id: int | None = None, kind: str | None = None,
             interface: str | None = None, metadata: dict | None = None,
             include_unmanaged: bool = False) -> dict:
        with self._session(check_mode=True) as (store, notes):
            programs = []
            for rec_name in sorted(store.programs):
                record = store.programs[rec_name]
                facts = self._facts(store, record, self._position(store, rec_name),
                                    store.hooks.get(record["hook"]))
                if _facts.matches(facts, name=name, prog_id=prog_id, kind=kind,
                                  interface=interface, metadata=metadata):
                    programs.append(facts)
            if include_unmanaged:
                programs.extend(_facts.unmanaged_programs(store, prog_id=prog_id, kind=kind,
                                                          filtered=bool(name or interface or metadata)))
            return {"changed": False, "programs": programs, "reconciled": notes}

    # --- the session: lock, reconcile, save -------------------------------

    @contextlib.contextmanager
    def _session(self, check_mode: bool) -> Iterator[tuple[StateStore, list]]:
        if not check_mode:
            ensure_bpffs(self.layout)
        store = StateStore(self.layout)
        self._declare = {}
        with store.locked():
            notes = self._reconcile(store, dry=check_mode)
            if store.lock_wait_seconds >= LONG_LOCK_WAIT:
                notes.append("waited %.1f s for another bpfd.core run to release the host lock"
                             % store.lock_wait_seconds)
            yield store, notes
            if not check_mode:
                store.save()
                _pending_update(self.layout, None, None)
                if self.record_declaration and self._declare:
                    # Only what this run named: programs a reconcile dropped (an interface
                    # not back yet after a reboot) stay declared for the next restore.
                    _declared.update(self.layout, self._declare)

    # --- planning -----------------------------------------------------------

    @staticmethod
    def _validate_name(name: str | None) -> None:
        if not NAME_RE.match(name or ""):
            raise BpfdError("name %r is not valid: use 1-63 letters, digits, '_', '.' or '-', "
                            "starting with a letter or digit" % name)

    def _validate(self, spec: ProgramSpec) -> list:
        self._validate_name(spec.name)
        _proceed_on.check_priority(spec.priority)
        if spec.mode is not None and spec.mode not in HOOK_MODES[spec.kind]:
            raise BpfdError("%s must be one of %s" % (MODE_OPTION[spec.kind], ", ".join(HOOK_MODES[spec.kind])))
        if spec.kind == "tc" and spec.direction not in _attach_tc.DIRECTIONS:
            raise BpfdError("direction must be one of %s" % ", ".join(_attach_tc.DIRECTIONS))
        return _proceed_on.normalize(spec.kind, spec.proceed_on)

    def _record(self, spec: ProgramSpec, proceed_on: list, sha256: str, ifindex: int, key: str,
                old: dict | None) -> dict:
        record = dict(old or {})
        record.update({
            "name": spec.name, "kind": spec.kind, "path": spec.path, "sha256": sha256,
            "interface": spec.interface, "ifindex": ifindex, "hook": key, "direction": spec.direction,
            "netns": spec.netns,
            "priority": spec.priority, "proceed_on": proceed_on,
            "metadata": dict(spec.metadata or {}),
            # an omitted mode keeps what was asked before (it joins the hook's mode)
            "requested_mode": spec.mode if spec.mode is not None else (old or {}).get("requested_mode"),
            "global_data": {k: _normal_hex(v) for k, v in (spec.global_data or {}).items()},
            "map_owner": spec.map_owner,
            "image": spec.image,
            "source": spec.source,
            "attach": spec.attach,
        })
        if spec.function is not None:
            record["bpf_function_name"] = spec.function
        return record

    @staticmethod
    def _changes(old: dict | None, new: dict, reload: bool) -> list:
        if old is None:
            return ["loaded"]
        changes = []
        if old["sha256"] != new["sha256"]:
            changes.append("bytecode")
        if new.get("bpf_function_name") != old.get("bpf_function_name"):
            changes.append("bpf_function_name")
        if old.get("global_data", {}) != new["global_data"]:
            changes.append("global_data")
        if old.get("attach") != new.get("attach"):
            changes.append("attach")
        if _image_identity(old) != _image_identity(new):
            changes.append("image")
        for key in ("interface", "direction", "netns", "priority", "proceed_on", "metadata", "path",
                    "requested_mode", "map_owner"):
            if old.get(key) != new.get(key) and not (key == "interface" and old["hook"] == new["hook"]):
                changes.append(key)
        return changes

    @staticmethod
    def _check_map_owner(programs: dict, spec: ProgramSpec) -> None:
        """The owner must be managed already or declared earlier in the same call."""
        owner = spec.map_owner
        if owner is None:
            return
        if owner == spec.name:
            raise BpfdError("map_owner of %s names the program itself" % spec.name)
        if owner not in programs:
            raise BpfdError("map_owner %s names no program managed on this host (managed: %s)"
                            % (owner, ", ".join(sorted(programs)) or "none"))
        if programs[owner].get("map_owner"):
            raise BpfdError("map_owner %s itself uses the maps of %s: name %s instead"
                            % (owner, programs[owner]["map_owner"], programs[owner]["map_owner"]))

    def _hook_mode(self, store: StateStore, key: str, specs: list, programs: dict) -> str | None:
        """The mode the hook runs in after this task (all its programs share it)."""
        hook = store.hooks.get(key)
        listed = {spec.name for spec in specs}
        others = [n for n in (hook or {}).get("members", []) if n not in listed and n in programs]
        explicit = sorted({spec.mode for spec in specs if spec.mode is not None})
        kind = hook["kind"] if hook else (specs[0].kind if specs else "xdp")
        if len(explicit) > 1:
            raise BpfdError("programs of one attach point ask for different %s values: %s"
                            % (MODE_OPTION[kind], ", ".join(explicit)))
        if hook is not None and others:
            if explicit and explicit[0] != hook["mode"]:
                spec = specs[0]
                where = spec.interface + ("" if kind == "xdp" else " " + str(spec.direction))
                raise BpfdError(
                    "interface %s already runs its %s dispatcher in %s mode (programs: %s); "
                    "all programs on one attach point share the mode: use %s: %s or omit it"
                    % (where, kind.upper(), hook["mode"], ", ".join(others), MODE_OPTION[kind], hook["mode"]))
            return hook["mode"]
        if explicit:
            return explicit[0]
        if hook is not None:
            return hook["mode"]
        if kind == "tc":
            return "tcx" if _attach_tc.kernel_has_tcx() else "cls_bpf"
        return None

    @staticmethod
    def _members(programs: dict, key: str) -> list:
        return _proceed_on.order([r for r in programs.values() if r["hook"] == key])

    def _check_capacity(self, programs: dict, key: str) -> None:
        members = self._members(programs, key)
        if len(members) > _proceed_on.MAX_MEMBERS:
            raise BpfdError("at most %d programs can share one attach point; %s would have %d (%s)"
                            % (_proceed_on.MAX_MEMBERS, members[0]["interface"], len(members),
                               ", ".join(m["name"] for m in members)))

    def _predicted(self, store: StateStore, programs: dict, affected: list, modes: dict) -> StateStore:
        predicted = copy.copy(store)
        predicted.data = copy.deepcopy(store.data)
        predicted.data["programs"] = programs
        for hook in filter(None, affected):
            members = self._members(programs, hook)
            if members:
                first = members[0]
                entry = predicted.hooks.setdefault(hook, {"kind": first["kind"], "ifindex": first["ifindex"],
                                                          "interface": first["interface"],
                                                          "direction": first.get("direction")})
                entry["mode"] = modes.get(hook) or entry.get("mode")
                entry["members"] = [m["name"] for m in members]
            else:
                predicted.hooks.pop(hook, None)
        return predicted

    def _without(self, store: StateStore, name: str) -> StateStore:
        programs = {n: r for n, r in store.programs.items() if n != name}
        return self._predicted(store, programs, [store.programs[name]["hook"]], {})

    # --- acting ----------------------------------------------------------------

    def _apply(self, store: StateStore, programs: dict, steps: list, removed: dict, affected: list,
               modes: dict) -> list:
        """Load what changed, swap every affected hook once, record; return warnings."""
        undo = _Undo()
        loaded: dict = {}
        try:
            for spec, new, _old, reload in steps:
                if reload:
                    loaded[spec.name] = self._load_member(spec, new, undo, loaded.get(spec.map_owner or ""))
            crash_point("after_load")
            by_id = {lp.prog_id: lp for lp in loaded.values()}
            for key in affected:
                self._sync_hook(store, programs, key, modes.get(key), by_id, undo)
            crash_point("after_swap")
            store.data["programs"] = programs
            store.save()
            _pending_update(self.layout, None, None)
            crash_point("after_save")
            undo.forget()
            for spec, _new, old, reload in steps:
                if reload and old:
                    remove_pin(old["prog_pin"])
                    if old.get("link_pin"):
                        remove_pin(old["link_pin"])
                if spec.name in loaded:
                    self._repin_maps(spec, loaded[spec.name])
            for name, record in removed.items():
                remove_pin_tree(self.layout.program_dir(name))
                self._release_maps(store, name, record)
            crash_point("after_cleanup")
        except BaseException:
            undo.run()
            raise
        finally:
            for each in loaded.values():
                each.close()
        return [note for each in loaded.values() for note in each.notes]

    def _load_member(self, spec: ProgramSpec, record: dict, undo: _Undo,
                     owner_loaded: _loader.LoadedProgram | None = None) -> _loader.LoadedProgram:
        map_dir = self.layout.map_dir(spec.name)
        maps_before = set(_listdir(map_dir)) if os.path.isdir(map_dir) else None
        undo.add(lambda: _remove_new_entries(map_dir, maps_before or set(), keep_dir=maps_before is not None))
        if owner_loaded is not None:
            # The owner was loaded by this same run: its maps are not pinned yet.
            reuse, strict = {m.name: m.fd for m in owner_loaded.obj.maps() if not m.is_internal}, True
        elif spec.map_owner:
            # The owner's maps, by name: the kernel objects are shared (bpfd's map_owner).
            owner_dir = self.layout.map_dir(spec.map_owner)
            reuse, strict = {m: os.path.join(owner_dir, m) for m in _listdir(owner_dir)}, True
        else:
            # A reload keeps the program's pinned maps when their definition still fits.
            reuse, strict = {m: os.path.join(map_dir, m) for m in maps_before or ()}, False
        loaded = _loader.load_program(spec.bytecode or spec.path, function=spec.function,
                                      prog_types=PROG_TYPES[spec.kind], kind=spec.kind,
                                      map_pin_dir=map_dir, global_data=record["global_data"],
                                      reuse=reuse, strict_reuse=strict)
        program_dir = self.layout.program_dir(spec.name)
        pins_before = set(_listdir(program_dir)) if os.path.isdir(program_dir) else None
        undo.add(lambda: _remove_new_entries(program_dir, pins_before or set(), keep_dir=pins_before is not None))
        try:
            pin = os.path.join(program_dir, "prog_%d" % loaded.prog_id)
            _loader.pin_program(loaded, pin)
            # Maps without a pin are pinned now, before anything commits (the undo above
            # removes them): a run killed after the state save leaves no map unpinned.
            shared = set(_listdir(self.layout.map_dir(spec.map_owner))) if spec.map_owner else set()
            _loader.pin_maps(loaded, map_dir, skip=shared | (maps_before or set()))
        except BaseException:
            loaded.close()
            raise
        kept = os.path.join(self.layout.bytecode_dir, "%s.o" % record["sha256"])
        if not os.path.exists(kept):  # a failed run leaves the bytecode store as it was
            undo.add(lambda: os.path.exists(kept) and os.unlink(kept))
        record.update({
            "bytecode": _declared.keep_bytecode(self.layout, spec.bytecode or spec.path, record["sha256"]),
            "bpf_function_name": loaded.function, "section": loaded.section,
            "prog_id": loaded.prog_id, "prog_pin": pin, "insns": _member.encode(loaded.insns),
            "relocs": loaded.relocs, "maps": loaded.maps, "frags": loaded.frags,
            "map_pin_path": self.layout.map_dir(spec.map_owner) if spec.map_owner else map_dir,
        })
        if spec.kind in _attach_trace.KINDS:
            # No dispatcher: the program gets its own link, pinned beside it.
            try:
                _attach_trace.check_spec(spec.kind, spec.attach or {}, loaded.section)
                link_pin = os.path.join(program_dir, "link_%d" % loaded.prog_id)
                record["link_id"] = _attach_trace.attach(loaded, spec.kind, spec.attach or {}, link_pin)
                record["link_pin"] = link_pin
            except BaseException:
                loaded.close()
                raise
        return loaded

    def _repin_maps(self, spec: ProgramSpec, loaded: _loader.LoadedProgram) -> None:
        map_dir = self.layout.map_dir(spec.name)
        for entry in os.listdir(map_dir) if os.path.isdir(map_dir) else []:
            if entry not in loaded.maps or not loaded.maps[entry]["pinned_by_object"]:
                remove_pin(os.path.join(map_dir, entry))
        # owners are re-pinned first, so a same-run owner's maps are pinned by now
        shared = set(_listdir(self.layout.map_dir(spec.map_owner))) if spec.map_owner else set()
        _loader.pin_maps(loaded, map_dir, skip=shared)

    def _sync_hook(self, store: StateStore, programs: dict, key: str, mode: str | None,
                   loaded: dict, undo: _Undo) -> None:
        """Make the kernel's hook match `programs`, inside the hook's namespace."""
        members = self._members(programs, key)
        netns = (store.hooks.get(key) or (members[0] if members else {})).get("netns")
        with _netlink.in_netns(netns):
            self._sync_hook_here(store, members, key, mode, loaded, _InNetns(undo, netns))

    def _sync_hook_here(self, store: StateStore, members: list, key: str, mode: str | None,
                        loaded: dict, undo) -> None:
        """Build, then attach or swap (the caller has entered the namespace)."""
        hook = store.hooks.get(key)
        if not members:
            if hook is not None:
                self._detach(store, key)
            return
        with self._dispatcher_fd(members, loaded) as disp_fd:
            crash_point("before_swap")
            if hook is not None and mode is not None and mode != hook["mode"]:
                # Only a sole member may change the mode (see _hook_mode); the
                # kernel cannot move a link between modes, so re-attach.
                self._detach(store, key, undo)
                hook = None
            if hook is None:
                hook = self._attach(store, key, members[0], disp_fd, mode, undo)
            else:
                self._swap(key, hook, disp_fd, undo)
            hook["dispatcher_id"] = libbpf.prog_info(disp_fd)["id"]
        hook["members"] = [m["name"] for m in members]
        hook["revision"] = hook.get("revision", 0) + 1

    @contextlib.contextmanager
    def _dispatcher_fd(self, members: list, loaded: dict) -> Iterator[int]:
        """The hook's new dispatcher; `loaded` (prog id -> LoadedProgram) gives
        the code of members loaded in this run, the record the others'."""
        with contextlib.ExitStack() as stack:
            codes = []
            for member in members:
                if member.get("prog_id") in loaded:
                    codes.append(loaded[member["prog_id"]].insns)
                else:
                    codes.append(stack.enter_context(_member.resolved(member)))
            masks = [_proceed_on.mask(m["kind"], m["proceed_on"]) for m in members]
            fd = _dispatcher.load(members[0]["kind"], codes, masks,
                                  frags=all(m.get("frags") for m in members),
                                  member_names=[m["name"] for m in members])
            stack.callback(libbpf.close_fd, fd)
            yield fd

    def _attachment(self, key: str, hook: dict) -> Attachment:
        if hook["kind"] == "xdp":
            return _attach_xdp.XdpAttachment(os.path.join(self.layout.hook_dir(key), "link"))
        if hook["mode"] == "cls_bpf":
            return _attach_tc.ClsBpfAttachment()
        return _attach_tc.TcxAttachment(os.path.join(self.layout.hook_dir(key), "link"))

    def _attach(self, store: StateStore, key: str, first: dict, disp_fd: int, mode: str | None,
                undo: _Undo) -> dict:
        hook = {"kind": first["kind"], "ifindex": first["ifindex"], "interface": first["interface"],
                "direction": first.get("direction"), "netns": first.get("netns"), "mode": mode, "revision": 0,
                # the caller has entered the hook's namespace
                "netns_cookie": _netlink.current_netns_cookie() if first.get("netns") else None}
        attachment = self._attachment(key, hook)
        foreign = attachment.foreign(hook)
        if foreign:
            raise BpfdError(foreign)
        # Journal first: an attachment the state does not yet record must be findable by
        # the next run's reconcile if this run dies (a cls_bpf filter leaves no pin).
        if hook["mode"] == "cls_bpf":
            hook["clsact_existed"] = "clsact" in _attach_tc.cls_bpf_state(hook["ifindex"], hook["direction"])["qdiscs"]
        _pending_update(self.layout, key, hook)
        undo.add(lambda: _pending_update(self.layout, key, None))
        attachment.attach(hook, disp_fd, undo)
        store.hooks[key] = hook
        undo.add(lambda: store.hooks.pop(key, None))
        return hook

    def _swap(self, key: str, hook: dict, disp_fd: int, undo: _Undo) -> None:
        self._attachment(key, hook).swap(hook, disp_fd, undo)

    def _detach(self, store: StateStore, key: str, undo: _Undo | None = None) -> None:
        hook = store.hooks.pop(key)
        if hook.get("clsact_created"):
            # We created the clsact qdisc: a hook of ours still using it inherits that.
            for other in store.hooks.values():
                if other.get("mode") == "cls_bpf" and (other["ifindex"], other.get("netns")) == (
                        hook["ifindex"], hook.get("netns")):
                    other["clsact_created"], hook["clsact_created"] = True, False
                    break
        self._attachment(key, hook).detach(hook, undo)
        if undo is not None:
            undo.add(lambda: store.hooks.__setitem__(key, hook))

    def _remove(self, store: StateStore, name: str) -> None:
        record = store.programs[name]
        programs = {n: r for n, r in store.programs.items() if n != name}
        undo = _Undo()
        try:
            if record["hook"] is not None:
                self._sync_hook(store, programs, record["hook"], None, {}, undo)
            crash_point("remove_after_swap")
            store.data["programs"] = programs
            store.save()
            undo.forget()
        except BaseException:
            undo.run()
            raise
        remove_pin_tree(self.layout.program_dir(name))
        self._release_maps(store, name, record)

    def _release_maps(self, store: StateStore, name: str, record: dict) -> None:
        """A removed owner's maps stay pinned while programs still use them (bpfd
        semantics); the last user's removal takes them away."""
        retained = store.data.setdefault("retained_maps", {})
        if any(r.get("map_owner") == name for r in store.programs.values()):
            retained[name] = self.layout.map_dir(name)
        else:
            remove_pin_tree(self.layout.map_dir(name))
        owner = record.get("map_owner")
        if owner in retained and not any(r.get("map_owner") == owner for r in store.programs.values()):
            path = retained.pop(owner)
            if owner not in store.programs:  # a new program of that name owns the directory now
                remove_pin_tree(path)
        store.save()

    def maps_used_by(self, store: StateStore, record: dict) -> list:
        owner = record.get("map_owner") or record["name"]
        users = [r for r in store.programs.values() if r["name"] == owner or r.get("map_owner") == owner]
        return sorted(r["prog_id"] for r in users if r.get("prog_id"))

    # --- reconcile ---------------------------------------------------------------

    def _reconcile(self, store: StateStore, dry: bool) -> list:
        """Converge the record with the kernel; say what was found."""
        notes: list = []
        for key, hook in _pending_read(self.layout).items():
            if key in store.hooks or not _netlink.netns_exists(hook.get("netns")):
                continue
            with _netlink.in_netns(hook.get("netns")):
                if hook.get("mode") == "cls_bpf":
                    live = _attach_tc.cls_bpf_state(hook["ifindex"], hook["direction"])["dispatcher_id"]
                    if live and not dry:
                        _attach_tc.detach_cls_bpf(hook["ifindex"], hook["direction"],
                                                  not hook.get("clsact_existed", True))
                else:
                    live = self._attachment(key, hook).live_prog_id(hook)
                    if live and not dry:
                        self._attachment(key, hook).detach(hook)
            if live:
                notes.append("%s: removed dispatcher %d that an interrupted run attached and did not record"
                             % (key, live))
        if not dry:
            _pending_update(self.layout, None, None)
        for name, record in list(store.programs.items()):
            if record.get("link_pin") and not _attach_trace.alive(record["link_pin"]):
                notes.append("program %s: its link %s vanished; dropped from the record"
                             % (name, record["link_pin"]))
                del store.programs[name]
                if not dry:
                    remove_pin_tree(self.layout.program_dir(name))
                continue
            if not os.path.exists(record.get("prog_pin", "")):
                notes.append("program %s: its pin %s vanished; dropped from the record"
                             % (name, record.get("prog_pin")))
                del store.programs[name]
        for key, hook in list(store.hooks.items()):
            netns = hook.get("netns")
            current = None
            same_netns = _netlink.netns_exists(netns) and (
                not hook.get("netns_cookie") or _netlink.netns_cookie(netns) == hook["netns_cookie"])
            if same_netns:
                with _netlink.in_netns(netns):
                    current = _netlink.interface_name(hook["ifindex"])
            if current is None:
                members = [n for n in hook["members"] if n in store.programs]
                where = "network namespace %s" % netns if not same_netns else \
                    "interface %s (ifindex %d)" % (hook["interface"], hook["ifindex"])
                notes.append("%s is gone; its programs were unloaded: %s" % (where, ", ".join(members) or "none"))
                for member in members:
                    del store.programs[member]
                    if not dry:
                        remove_pin_tree(self.layout.program_dir(member))
                        remove_pin_tree(self.layout.map_dir(member))
                store.hooks.pop(key)
                if not dry:
                    remove_pin_tree(self.layout.hook_dir(key))
                continue
            if current != hook["interface"]:
                hook["interface"] = current
                for member in hook["members"]:
                    if member in store.programs:
                        store.programs[member]["interface"] = current
            if not dry:
                self._repair_hook(store, key, hook, notes)
        if not dry:
            self._repair_map_pins(store, notes)
            self._remove_unrecorded_pins(store, notes)
        return notes

    def _repair_map_pins(self, store: StateStore, notes: list) -> None:
        """Every recorded map is pinned where the record says, holding the recorded map."""
        retained = store.data.get("retained_maps", {})
        for name, record in store.programs.items():
            owner = record.get("map_owner")
            owner_maps = (store.programs.get(owner) or {}).get("maps", {}) if owner else {}
            for map_name, info in (record.get("maps") or {}).items():
                if info.get("internal"):
                    continue
                if owner and (map_name in owner_maps or owner in retained):
                    directory = retained.get(owner) or self.layout.map_dir(owner)
                else:
                    directory = self.layout.map_dir(name)
                pin = os.path.join(directory, map_name)
                current = None
                with contextlib.suppress(BpfdError):
                    with libbpf.owned_fd(libbpf.obj_get(pin)) as fd:
                        current = libbpf.map_info(fd)["id"]
                if current == info["id"]:
                    continue
                try:
                    map_fd = libbpf.map_fd_by_id(info["id"])
                except BpfdError:
                    notes.append("program %s: map %s (id %d) is gone" % (name, map_name, info["id"]))
                    continue
                with libbpf.owned_fd(map_fd):
                    remove_pin(pin)
                    os.makedirs(directory, mode=0o750, exist_ok=True)
                    libbpf.obj_pin(map_fd, pin)
                    os.chmod(pin, _loader.MAP_PIN_MODE)
                notes.append("program %s: map pin %s %s; re-pinned map id %d" % (
                    name, pin, "was missing" if current is None else "held map %d" % current, info["id"]))

    def _repair_hook(self, store: StateStore, key: str, hook: dict, notes: list) -> None:
        members = [m["name"] for m in self._members(store.programs, key)]
        attachment = self._attachment(key, hook)
        with _netlink.in_netns(hook.get("netns")):
            live_prog_id = attachment.live_prog_id(hook)
        if members == hook["members"] and live_prog_id == hook.get("dispatcher_id"):
            return
        notes.append("%s: the kernel did not match the record (dispatcher %s, recorded %s, members "
                     "%s); rebuilt" % (key, live_prog_id, hook.get("dispatcher_id"), ", ".join(members)))
        if live_prog_id is None:
            store.hooks.pop(key)
            with _netlink.in_netns(hook.get("netns")):
                attachment.detach(hook)
        undo = _Undo()
        self._sync_hook(store, store.programs, key, hook.get("mode"), {}, undo)
        undo.forget()

    def _remove_unrecorded_pins(self, store: StateStore, notes: list) -> None:
        expected = {
            self.layout.programs_dir: {n: {os.path.basename(p) for p in (r["prog_pin"], r.get("link_pin")) if p}
                                       for n, r in store.programs.items()},
            self.layout.hooks_dir: {k: {"link"} for k in store.hooks},
        }
        for top, wanted in expected.items():
            for entry in _listdir(top):
                path = os.path.join(top, entry)
                if entry not in wanted:
                    notes.append("removed %s: no recorded program or hook owns it" % path)
                    remove_pin_tree(path)
                    continue
                for leaf in _listdir(path):
                    if leaf not in wanted[entry]:
                        notes.append("removed %s: a leftover of an interrupted run" % os.path.join(path, leaf))
                        remove_pin_tree(os.path.join(path, leaf))
        for entry in _listdir(self.layout.maps_dir):
            if entry not in store.programs and entry not in store.data.get("retained_maps", {}):
                notes.append("removed %s: no recorded program owns these maps"
                             % os.path.join(self.layout.maps_dir, entry))
                remove_pin_tree(os.path.join(self.layout.maps_dir, entry))

    # --- results -------------------------------------------------------------

    def _position(self, store: StateStore, name: str) -> int | None:
        record = store.programs[name]
        if record["hook"] is None:
            return None
        names = [m["name"] for m in self._members(store.programs, record["hook"])]
        return names.index(name) if name in names else None

    def _facts(self, store: StateStore, record: dict, position: int | None, hook: dict | None,
               kernel: bool = True) -> dict:
        facts = _facts.program_facts(record, position, hook, kernel=kernel)
        owner = store.programs.get(record.get("map_owner") or "")
        facts["map_owner"] = record.get("map_owner")
        facts["map_owner_id"] = owner.get("prog_id") if owner else None
        facts["maps_used_by"] = self.maps_used_by(store, record)
        return facts

    def _chains(self, store: StateStore, keys: list) -> dict:
        chains = {}
        for key in keys:
            if key is None:  # programs without a dispatcher have no chain
                continue
            hook = store.hooks.get(key)
            members = self._members(store.programs, key)
            if hook is None and not members:
                continue
            chains[key] = _facts.chain_view(hook, members)
        return chains

    def _result(self, store: StateStore, name: str | None, changed: bool, before: dict, after: dict,
                notes: list, changes: list | None = None) -> dict:
        result = {"changed": changed, "reconciled": notes,
                  "diff": {"before": _facts.diff_text(before), "after": _facts.diff_text(after)}}
        if changes:
            result["changes"] = changes
        if name is not None:
            record = store.programs[name]
            hook = store.hooks.get(record["hook"])
            result["program"] = self._facts(store, record, self._position(store, name), hook,
                                            kernel="prog_id" in record)
            result["chain"] = [self._facts(store, m, i, hook, kernel="prog_id" in m)
                               for i, m in enumerate(self._members(store.programs, record["hook"]))]
        return result


def _image_identity(record: dict) -> tuple:
    image = record.get("image") or {}
    return tuple(image.get(k) for k in ("url", "digest", "pull_policy", "verified"))


def _normal_hex(value):
    if not isinstance(value, str):
        return value  # refused with a hint by _elf.parse_hex
    text = str(value).strip().lower().replace(" ", "").replace(":", "")
    return text[2:] if text.startswith("0x") else text


def _remove_new_entries(directory: str, existing: set, keep_dir: bool) -> None:
    """Undo of a step that pinned into `directory`: remove what it added."""
    for entry in _listdir(directory):
        if entry not in existing:
            remove_pin_tree(os.path.join(directory, entry))
    if not keep_dir:
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def _pending_file(layout: Layout) -> str:
    return os.path.join(layout.run_dir, "pending.json")


def _pending_read(layout: Layout) -> dict:
    try:
        with open(_pending_file(layout)) as handle:
            return json.load(handle)
    except (FileNotFoundError, ValueError):
        return {}


def _pending_update(layout: Layout, key: str | None, hook: dict | None) -> None:
    """Journal of attachments not yet recorded: add (hook), drop (None), or clear (key None)."""
    if key is None:
        remove_pin(_pending_file(layout))
        return
    pending = _pending_read(layout)
    if hook is None:
        pending.pop(key, None)
    else:
        pending[key] = dict(hook)
    if pending:
        write_json_atomic(_pending_file(layout), pending)
    else:
        remove_pin(_pending_file(layout))


def _listdir(path: str) -> list:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
