# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What modules return about programs: bpfd's "Bpfd State" + "Kernel State"."""

from __future__ import annotations

import datetime
import time

from ansible_collections.bpfd.core.plugins.module_utils import _libbpf as libbpf
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError


def loaded_at(load_time_ns: int) -> str:
    """Kernel load time (ns since boot) as local ISO time, as bpfctl prints it."""
    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    stamp = datetime.datetime.fromtimestamp(boot + load_time_ns / 1e9).astimezone()
    return stamp.strftime("%Y-%m-%dT%H:%M:%S%z")


def kernel_facts(prog_fd: int) -> dict:
    info = libbpf.prog_info(prog_fd)
    return {
        "id": info["id"],
        "kernel_name": info["name"],
        "prog_type": info["type"],
        "loaded_at": loaded_at(info["load_time_ns"]),
        "tag": info["tag"],
        "gpl_compatible": info["gpl_compatible"],
        "map_ids": info["map_ids"],
        "btf_id": info["btf_id"],
        "size_translated_bytes": info["xlated_prog_len"],
        "jited": info["jited_prog_len"] > 0,
        "size_jited_bytes": info["jited_prog_len"],
        "kernel_allocated_memory_bytes": libbpf.fdinfo_memlock(prog_fd),
        "verified_insns": info["verified_insns"],
    }


def _kernel_facts_of_pin(pin: str) -> dict:
    try:
        with libbpf.owned_fd(libbpf.obj_get(pin)) as fd:
            return kernel_facts(fd)
    except BpfdError:
        return {}


def program_facts(record: dict, position: int | None, hook: dict | None, kernel: bool = True) -> dict:
    facts = {
        "name": record["name"],
        "type": record["kind"],
        "path": record.get("path"),
        "sha256": record.get("sha256"),
        "bpf_function_name": record.get("bpf_function_name"),
        "image_url": (record.get("image") or {}).get("url"),
        "image_digest": (record.get("image") or {}).get("digest"),
        "pull_policy": (record.get("image") or {}).get("pull_policy"),
        "image_verified": (record.get("image") or {}).get("verified"),
        "source": (record.get("source") or {}).get("path"),
        "cflags": (record.get("source") or {}).get("cflags"),
        "global_data": record.get("global_data", {}),
        "metadata": record.get("metadata", {}),
        "map_pin_path": record.get("map_pin_path"),
        "map_owner_id": None,
        "maps_used_by": [record["prog_id"]] if record.get("prog_id") else [],
        "priority": record["priority"],
        "interface": record["interface"],
        "position": position,
        "proceed_on": record["proceed_on"],
        "direction": record.get("direction"),
        "netns": record.get("netns"),
        "xdp_mode": (hook or {}).get("mode") if record["kind"] == "xdp" else None,
        "tc_attach": (hook or {}).get("mode") if record["kind"] == "tc" else None,
        "dispatcher_id": (hook or {}).get("dispatcher_id"),
        "link_id": (hook or {}).get("link_id"),
        "id": record.get("prog_id"),
    }
    if record.get("attach") is not None:
        # Tracing kinds: no dispatcher; their own link and attach point.
        facts["link_id"] = record.get("link_id")
        facts.update(record["attach"])
    if kernel and record.get("prog_pin"):
        facts.update(_kernel_facts_of_pin(record["prog_pin"]))
    return facts


def matches(facts: dict, *, name: str | None, prog_id: int | None, kind: str | None,
            interface: str | None, metadata: dict | None) -> bool:
    """Every given filter must hold (metadata: all pairs)."""
    if name is not None and facts["name"] != name:
        return False
    if prog_id is not None and facts["id"] != prog_id:
        return False
    if kind is not None and facts["type"] != kind:
        return False
    if interface is not None and facts["interface"] != interface:
        return False
    return all(facts["metadata"].get(k) == v for k, v in (metadata or {}).items())


# Module type names -> the kernel's program type (uprobes are kprobe programs, fentry/fexit
# tracing ones): what an unmanaged program can be matched on.
KERNEL_TYPES = {"tc": "sched_cls", "uprobe": "kprobe", "fentry": "tracing", "fexit": "tracing"}


def unmanaged_programs(store, *, prog_id: int | None, kind: str | None, filtered: bool) -> list:
    """Kernel programs bpfd.core does not manage (Kernel State only)."""
    if filtered:
        return []
    ours = {r.get("prog_id") for r in store.programs.values()}
    dispatchers = {h.get("dispatcher_id") for h in store.hooks.values()}
    found = []
    for kernel_id in libbpf.prog_ids():
        if kernel_id in ours or (prog_id is not None and kernel_id != prog_id):
            continue
        try:
            with libbpf.owned_fd(libbpf.prog_fd_by_id(kernel_id)) as fd:
                facts = kernel_facts(fd)
        except BpfdError:
            continue  # unloaded meanwhile
        if kind is not None and facts["prog_type"] != KERNEL_TYPES.get(kind, kind):
            continue
        facts["managed"] = False
        facts["owner"] = "bpfd.core dispatcher" if kernel_id in dispatchers else None
        found.append(facts)
    return found


def chain_view(hook: dict | None, members: list) -> dict:
    hook = hook or {}
    return {
        "interface": members[0]["interface"] if members else hook.get("interface"),
        "direction": members[0].get("direction") if members else hook.get("direction"),
        "mode": hook.get("mode"),
        "dispatcher_id": hook.get("dispatcher_id"),
        "programs": [{"position": i, "name": m["name"], "priority": m["priority"],
                      "proceed_on": m["proceed_on"], "id": m.get("prog_id"),
                      "digest": (m.get("image") or {}).get("digest"),
                      "sha256": m.get("sha256"), "bpf_function_name": m.get("bpf_function_name"),
                      "global_data": m.get("global_data") or {}}
                     for i, m in enumerate(members)],
    }


def diff_text(chains: dict) -> str:
    """The chain on each hook, one line per program, for Ansible's --diff."""
    lines = []
    for key in sorted(chains):
        chain = chains[key]
        where = chain["interface"] + (" " + chain["direction"] if chain.get("direction") else "")
        lines.append("%s (%s, %s mode):" % (key, where, chain["mode"] or "auto"))
        for prog in chain["programs"]:
            lines.append("  %d: %s priority=%d proceed_on=%s%s" % (
                prog["position"], prog["name"], prog["priority"], ",".join(prog["proceed_on"]),
                _bytecode_text(prog)))
    return "\n".join(lines) + ("\n" if lines else "")


def attach_text(kind: str, attach: dict | None) -> str:
    """Where a tracing program attaches, as one phrase (bpfctl's spelling of the options)."""
    attach = attach or {}
    if kind == "tracepoint":
        return "tracepoint %s" % attach.get("tracepoint")
    if kind in ("fentry", "fexit"):
        return "%s %s" % (kind, attach.get("function"))
    where = attach.get("function") or ""
    if attach.get("offset"):
        where += "+%d" % attach["offset"]
    probe = kind.replace("probe", "retprobe") if attach.get("retprobe") else kind
    if kind == "uprobe":
        where = "%s:%s" % (attach.get("target"), where)
        if attach.get("pid"):
            where += " pid %d" % attach["pid"]
    return "%s %s" % (probe, where)


def program_diff_text(facts: dict | None) -> str:
    """A program without a dispatcher, for Ansible's --diff: where it attaches and what it runs."""
    if not facts:
        return ""
    lines = ["%s (%s):" % (facts["name"], attach_text(facts["type"], {
        k: facts.get(k) for k in ("tracepoint", "function", "offset", "retprobe", "target", "pid")}))]
    lines.append("  " + " ".join("%s=%s" % (key, facts[key]) for key in ("bpf_function_name", "sha256")
                                 if facts.get(key)))
    if facts.get("image_digest"):
        lines.append("  image=%s" % facts["image_digest"])
    for key in ("global_data", "metadata"):
        if facts.get(key):
            lines.append("  %s: %s" % (key, ", ".join("%s=%s" % kv for kv in sorted(facts[key].items()))))
    if facts.get("map_owner"):
        lines.append("  map_owner=%s" % facts["map_owner"])
    return "\n".join(lines) + "\n"


def _bytecode_text(prog: dict) -> str:
    """What the program runs, so a reload shows in the diff."""
    parts = []
    if prog.get("digest"):
        parts.append("image=%s" % prog["digest"])
    elif prog.get("sha256"):
        parts.append("sha256=%s" % prog["sha256"][:12])
    if prog.get("bpf_function_name"):
        parts.append("function=%s" % prog["bpf_function_name"])
    for name, value in sorted((prog.get("global_data") or {}).items()):
        parts.append("%s=%s" % (name, value))
    return "".join(" " + part for part in parts)
