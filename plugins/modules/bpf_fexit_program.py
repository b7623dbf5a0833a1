#!/usr/bin/python
# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: bpf_fexit_program
short_description: Manage BPF fexit programs on kernel functions
version_added: "0.1.0"
description:
  - Loads an fexit program from a BPF ELF object and attaches it, through a BPF trampoline, to
    the exit of a kernel function, as C(bpfman load file ... fexit --fn-name FUNCTION) does.
  - There is no dispatcher; each program has its own bpf_link, pinned with the program under
    C(/sys/fs/bpf/bpfd/programs/<name>) so both outlive the module; removing the program
    unpins both, which detaches it. Any number of programs may share one attach point.
  - Re-running a task with the same arguments changes nothing. Changing the attach point, the
    object content (by sha256), O(bpf_function_name), O(global_data) or O(map_owner) loads the
    program anew, attaches the new one, then removes the old link and program, so nothing
    stays attached at the old attach point. The program's maps are kept when their definitions
    still fit.
  - Needs a kernel with BTF (C(/sys/kernel/btf/vmlinux)) that accepts BPF trampolines. The
    module probes both before loading anything, and fails with a message saying which is missing.
extends_documentation_fragment:
  - bpfd.core._program
  - bpfd.core._attributes
  - bpfd.core._attributes.TRACE_PROGRAM
options:
  function:
    description:
      - Kernel function (with BTF, in vmlinux or a module) to attach to.
      - libbpf fixes the target of an fexit program when it loads it, from its section, so the
        object's function must be in section C(fexit/<function>) naming this function.
      - Required with O(state=present).
    type: str
    aliases: [fn_name]
seealso:
  - module: bpfd.core.bpf_program_info
  - module: bpfd.core.bpf_map_info
  - module: bpfd.core.bpf_fentry_program
  - module: bpfd.core.bpf_kprobe_program
author:
  - bpfd.core contributors (@bpfd-dev)
"""

EXAMPLES = r"""
- name: Run at the exit of do_unlinkat (bpfman load file ... fexit --fn-name do_unlinkat)
  become: true
  bpfd.core.bpf_fexit_program:
    name: unlinks
    path: /opt/bpf/fexit_count.o  # SEC("fexit/do_unlinkat")
    function: do_unlinkat

- name: Unload
  become: true
  bpfd.core.bpf_fexit_program:
    name: unlinks
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
      sample: unlinks
    type:
      description: Program type.
      type: str
      sample: fexit
    path:
      description:
        - Object file the program was loaded from.
        - For a program from O(source), the C source (the same as RV(program.source)).
      type: str
      sample: /opt/bpf/fexit_count.o
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
      sample: /opt/bpf/src/unlinks.c
    cflags:
      description: Compiler flags the source was compiled with (O(cflags)); null for other origins.
      type: list
      elements: str
      sample: ["-DMAX_ENTRIES=1024"]
    bpf_function_name:
      description: Function loaded from the object.
      type: str
      sample: count_fexit
    global_data:
      description: The O(global_data) given, as hex.
      type: dict
    metadata:
      description: The O(metadata) given.
      type: dict
    map_pin_path:
      description: Directory where the program's maps are pinned.
      type: str
      sample: /sys/fs/bpf/bpfd/maps/unlinks
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
    function:
      description: Kernel function the program is attached to.
      type: str
      sample: do_unlinkat
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
      sample: tracing
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
        function=dict(type="str", aliases=["fn_name"]),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           **_module.traced_program_rules(("function",)))
    params = module.params
    attach = {"function": params["function"]}
    _module.traced_program(module, "fexit", attach)


if __name__ == "__main__":
    main()
