#!/usr/bin/python
# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: bpf_uprobe_program
short_description: Manage BPF uprobe and uretprobe programs on user-space functions
version_added: "0.1.0"
description:
  - Loads a uprobe (or uretprobe) program from a BPF ELF object and attaches it to a function
    of a user-space binary or library, as C(bpfctl load-from-file ... uprobe --target TARGET
    --fn-name FUNCTION [--offset N] [--pid PID] [--retprobe]) does in bpfd.
  - There is no dispatcher; each program has its own bpf_link, pinned with the program under
    C(/sys/fs/bpf/bpfd/programs/<name>) so both outlive the module; removing the program
    unpins both, which detaches it. Any number of programs may share one attach point.
  - Re-running a task with the same arguments changes nothing. Changing the attach point, the
    object content (by sha256), O(bpf_function_name), O(global_data) or O(map_owner) loads the
    program anew, attaches the new one, then removes the old link and program, so nothing
    stays attached at the old attach point. The program's maps are kept when their definitions
    still fit.
  - The probe is placed in the target file (its inode), so every process mapping it hits the
    probe, unless O(pid) limits it to one process.
extends_documentation_fragment:
  - bpfd.core._program
  - bpfd.core._attributes
  - bpfd.core._attributes.TRACE_PROGRAM
options:
  target:
    description:
      - The binary or library to probe, on the managed host.
      - An absolute path (V(/usr/bin/bash)), or a library name (V(libc), V(libc.so.6),
        V(libssl)) found through the dynamic linker's cache C(/etc/ld.so.cache), then the
        standard library directories. A name without C(.so) matches the libraries whose file
        name starts with C(<name>.so) (V(libc) finds C(libc.so.6)).
      - Required with O(state=present).
    type: str
  function:
    description:
      - Function (ELF symbol) of O(target) to attach to. A versioned name (V(malloc@GLIBC_2.2.5))
        selects one version.
      - At least one of O(function) and O(offset) is needed.
    type: str
    aliases: [fn_name]
  offset:
    description:
      - Offset added to the address of O(function), or, without O(function), the offset in
        O(target)'s file where the probe fires.
    type: int
    default: 0
  pid:
    description: Only fire in this process; V(0) fires in every process.
    type: int
    default: 0
  retprobe:
    description:
      - Fire when the function returns (a uretprobe) instead of when it is entered.
      - Must match the program; a C(uretprobe/...) section needs V(true), a C(uprobe/...)
        section V(false), as bpfd requires.
    type: bool
    default: false
seealso:
  - module: bpfd.core.bpf_program_info
  - module: bpfd.core.bpf_map_info
  - module: bpfd.core.bpf_kprobe_program
author:
  - bpfd.core contributors (@bpfd-dev)
"""

EXAMPLES = r"""
- name: Count malloc() calls in every process (bpfctl ... uprobe --target libc --fn-name malloc)
  become: true
  bpfd.core.bpf_uprobe_program:
    name: mallocs
    path: /opt/bpf/uprobe_count.o
    target: libc
    function: malloc

- name: Only in one process, on function return
  become: true
  bpfd.core.bpf_uprobe_program:
    name: app-requests
    path: /opt/bpf/uretprobe_count.o
    target: /usr/local/bin/app
    function: handle_request
    pid: "{{ app_pid }}"
    retprobe: true

- name: Unload
  become: true
  bpfd.core.bpf_uprobe_program:
    name: mallocs
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
      sample: mallocs
    type:
      description: Program type.
      type: str
      sample: uprobe
    path:
      description:
        - Object file the program was loaded from.
        - For a program from O(source), the C source (the same as RV(program.source)).
      type: str
      sample: /opt/bpf/uprobe_count.o
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
      sample: /opt/bpf/src/mallocs.c
    cflags:
      description: Compiler flags the source was compiled with (O(cflags)); null for other origins.
      type: list
      elements: str
      sample: ["-DMAX_ENTRIES=1024"]
    bpf_function_name:
      description: Function loaded from the object.
      type: str
      sample: count_uprobe
    global_data:
      description: The O(global_data) given, as hex.
      type: dict
    metadata:
      description: The O(metadata) given.
      type: dict
    map_pin_path:
      description: Directory where the program's maps are pinned.
      type: str
      sample: /sys/fs/bpf/bpfd/maps/mallocs
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
    target:
      description: The O(target) given (a path or a library name).
      type: str
      sample: libc
    function:
      description: Function of the target the program is attached to.
      type: str
      sample: malloc
    offset:
      description: Offset from the function (or the start of the file).
      type: int
      sample: 0
    pid:
      description: Process the probe is limited to; 0 for every process.
      type: int
      sample: 0
    retprobe:
      description: Whether the program runs when the function returns.
      type: bool
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
      sample: kprobe
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
        target=dict(type="str"),
        function=dict(type="str", aliases=["fn_name"]),
        offset=dict(type="int", default=0),
        pid=dict(type="int", default=0),
        retprobe=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           **_module.traced_program_rules(("target",)))
    params = module.params
    attach = {"target": params["target"], "function": params["function"], "offset": params["offset"],
              "pid": params["pid"], "retprobe": params["retprobe"]}
    _module.traced_program(module, "uprobe", attach)


if __name__ == "__main__":
    main()
