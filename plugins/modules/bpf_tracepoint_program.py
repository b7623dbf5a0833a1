#!/usr/bin/python
# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: bpf_tracepoint_program
short_description: Manage BPF programs attached to kernel tracepoints
version_added: "0.1.0"
description:
  - Loads a tracepoint program from a BPF ELF object and attaches it to a kernel tracepoint,
    as C(bpfctl load-from-file ... tracepoint --tracepoint CATEGORY/NAME) does in bpfd.
  - There is no dispatcher; each program has its own bpf_link, pinned with the program under
    C(/sys/fs/bpf/bpfd/programs/<name>) so both outlive the module; removing the program
    unpins both, which detaches it. Any number of programs may share one attach point.
  - Re-running a task with the same arguments changes nothing. Changing the attach point, the
    object content (by sha256), O(bpf_function_name), O(global_data) or O(map_owner) loads the
    program anew, attaches the new one, then removes the old link and program, so nothing
    stays attached at the old attach point. The program's maps are kept when their definitions
    still fit.
  - Tracepoints are read from tracefs (C(/sys/kernel/tracing/events)); when tracefs is not
    mounted the module mounts it at C(/sys/kernel/tracing) (the C(bpfd_host) role makes that
    mount permanent).
extends_documentation_fragment:
  - bpfd.core._program
  - bpfd.core._attributes
  - bpfd.core._attributes.TRACE_PROGRAM
options:
  tracepoint:
    description:
      - The tracepoint as C(category/name), with exactly one C(/), as tracefs lists it under
        C(events/) (V(syscalls/sys_enter_openat), V(sched/sched_switch)).
      - It must exist on the running kernel; it is checked before anything is loaded.
      - The object's function must be a tracepoint program (libbpf section C(tracepoint/...) or
        C(tp/...)); the tracepoint named in its section is not used, this option decides.
      - Required with O(state=present).
    type: str
seealso:
  - module: bpfd.core.bpf_program_info
  - module: bpfd.core.bpf_map_info
author:
  - bpfd.core contributors (@bpfd-dev)
"""

EXAMPLES = r"""
- name: Count openat() calls (bpfctl load-from-file ... tracepoint --tracepoint syscalls/sys_enter_openat)
  become: true
  bpfd.core.bpf_tracepoint_program:
    name: count-openat
    path: /opt/bpf/tracepoint_openat.o
    tracepoint: syscalls/sys_enter_openat
  register: tp

- name: Count only in one process, through a global variable of the object
  become: true
  bpfd.core.bpf_tracepoint_program:
    name: count-openat
    src: files/tracepoint_count.o
    tracepoint: syscalls/sys_enter_openat
    global_data:
      target_tgid: d2040000  # process 1234, as a little-endian __u32
    metadata:
      owner: observability

- name: Move it to another tracepoint (nothing stays attached at the old one)
  become: true
  bpfd.core.bpf_tracepoint_program:
    name: count-openat
    path: /opt/bpf/tracepoint_openat.o
    tracepoint: syscalls/sys_enter_close

# templates/openat.c.j2, C in bcc's dialect: openat() calls per process, optionally of one user only:
#   BPF_HASH(opens, u32, u64, MAX_PROCESSES);
#   TRACEPOINT_PROBE(syscalls, sys_enter_openat)
#   {
#       u32 tgid = bpf_get_current_pid_tgid() >> 32;
#       u64 zero = 0, *count;
#   {% if openat_uid is defined %}
#       if ((u32)bpf_get_current_uid_gid() != {{ openat_uid }})
#           return 0;
#   {% endif %}
#       count = opens.lookup_or_try_init(&tgid, &zero);
#       if (count)
#           __sync_fetch_and_add(count, 1);
#       return 0;
#   }
- name: Write the openat counter's C source on the host
  become: true
  ansible.builtin.template:
    src: openat.c.j2
    dest: /opt/bpf/src/openat.c
    mode: "0644"

- name: Compile it there with bcc and attach it; settings go in cflags (no global_data with source)
  become: true
  bpfd.core.bpf_tracepoint_program:
    name: openat-by-process
    source: /opt/bpf/src/openat.c
    cflags: ["-DMAX_PROCESSES={{ openat_max_processes | default(4096) }}"]
    tracepoint: syscalls/sys_enter_openat
  register: openat  # openat.program.bpf_function_name is bcc's tracepoint__syscalls__sys_enter_openat

- name: Unload
  become: true
  bpfd.core.bpf_tracepoint_program:
    name: count-openat
    state: absent
"""

RETURN = r"""
program:
  description:
    - The program's facts, as C(bpfctl get) shows them ("Bpfd State" and "Kernel State").
    - With O(state=absent), the facts of the removed program without the kernel part.
  returned: success
  type: dict
  contains:
    name:
      description: The program's name (its identity).
      type: str
      sample: count-openat
    type:
      description: Program type.
      type: str
      sample: tracepoint
    path:
      description:
        - Object file the program was loaded from.
        - For a program from O(source), the C source (the same as RV(program.source)).
      type: str
      sample: /opt/bpf/tracepoint_openat.o
    sha256:
      description:
        - SHA-256 of the object file (the program's bytecode identity).
        - For a program from O(source), the SHA-256 of the source and of how it was compiled (O(cflags),
          the function, the program's section), not of a file; the compiled object is kept as
          C(/var/lib/bpfd/bytecode/<sha256>.o). Headers the source includes are not part of it.
      type: str
      sample: 16e1dcc5b8006136278d48f531c24d39d6eb0c0c5a61dc3d5263fd505276a00e
    source:
      description: C source the program was compiled from (O(source)); null for other origins.
      type: str
      sample: /opt/bpf/src/openat.c
    cflags:
      description: Compiler flags the source was compiled with (O(cflags)); null for other origins.
      type: list
      elements: str
      sample: ["-DMAX_PROCESSES=4096"]
    bpf_function_name:
      description: Function loaded from the object.
      type: str
      sample: count_openat
    global_data:
      description: The O(global_data) given, as hex.
      type: dict
    metadata:
      description: The O(metadata) given.
      type: dict
    map_pin_path:
      description: Directory where the program's maps are pinned.
      type: str
      sample: /sys/fs/bpf/bpfd/maps/count-openat
    map_owner:
      description: The O(map_owner) given.
      type: str
    map_owner_id:
      description: Kernel id of the map owner's program.
      type: int
    maps_used_by:
      description: Kernel ids of the programs using these maps.
      type: list
      elements: int
    link_id:
      description: Kernel id of the program's bpf_link (null in check mode for a new program).
      type: int
    tracepoint:
      description: The tracepoint the program is attached to.
      type: str
      sample: syscalls/sys_enter_openat
    id:
      description: Kernel program id (stable while the program stays loaded); null in check mode for a new program.
      type: int
      sample: 6213
    kernel_name:
      description: Program name as the kernel stores it (16 bytes at most).
      type: str
    prog_type:
      description: Program type as the kernel names it.
      type: str
      sample: tracepoint
    loaded_at:
      description: "Load time, local ISO 8601."
      type: str
      sample: "2023-07-17T17:48:10-0400"
    tag:
      description: Program tag (hash of its instructions).
      type: str
    gpl_compatible:
      description: Whether the program's license is GPL compatible.
      type: bool
    map_ids:
      description: Kernel ids of the program's maps.
      type: list
      elements: int
    btf_id:
      description: Kernel id of the program's BTF (0 without BTF).
      type: int
    size_translated_bytes:
      description: "Size of the verified, translated program."
      type: int
    jited:
      description: Whether the program is JIT-compiled.
      type: bool
    size_jited_bytes:
      description: Size of the JIT-compiled program.
      type: int
    kernel_allocated_memory_bytes:
      description: Memory the kernel charged for the program.
      type: int
    verified_insns:
      description: Instructions the verifier processed.
      type: int

changes:
  description: What this run changed (V(loaded), V(bytecode), V(bpf_function_name), V(global_data), V(attach), V(image), V(metadata), V(path), V(map_owner)).
  returned: when changed
  type: list
  elements: str
reconciled:
  description: Differences between the recorded state and the kernel found at the start of the run, and how they were resolved.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bpfd.core.plugins.module_utils import _module


def main() -> None:
    argument_spec = dict(
        _module.PROGRAM_ARGS,
        tracepoint=dict(type="str"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           **_module.traced_program_rules(("tracepoint",)))
    params = module.params
    attach = {"tracepoint": params["tracepoint"]}
    _module.traced_program(module, "tracepoint", attach)


if __name__ == "__main__":
    main()
