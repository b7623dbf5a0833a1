#!/usr/bin/python
# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: bpf_xdp_program
short_description: Manage XDP programs chained on a network interface
version_added: "0.1.0"
description:
  - Loads an XDP program from a BPF ELF object and runs it on an interface, chained with up to
    nine other programs by O(priority), as C(bpfctl load-from-file ... xdp) does in bpfd.
  - All programs of an interface run inside one dispatcher that bpfd.core links from their
    code and attaches with a bpf_link. Every change (add, remove, re-order, new bytecode) builds
    a new dispatcher and swaps it in atomically, so no packet ever sees a half-built chain.
  - Programs run in order of O(priority) (lower first), then O(name). After each program, the
    next runs only if its return code is listed in O(proceed_on); otherwise that code is the
    verdict. When every program proceeds, the packet passes.
  - Re-running a task with the same arguments changes nothing. Changing O(priority) or
    O(proceed_on) re-orders the chain with one swap; new object content (by sha256) or another
    O(bpf_function_name) reloads the program and swaps.
extends_documentation_fragment:
  - bpfd.core._program
  - bpfd.core._attributes
  - bpfd.core._attributes.PROGRAM
options:
  interface:
    description:
      - Network interface to attach to, in the network namespace the module runs in.
      - Required with O(state=present).
    type: str
  priority:
    description:
      - Position key in the chain, 0 to 1000; lower runs first. Equal priorities order by O(name).
      - Required with O(state=present).
    type: int
  proceed_on:
    description:
      - Return codes after which the next program of the chain runs.
      - V(dispatcher_return) is what a program returns to always continue.
    type: list
    elements: str
    choices: [aborted, drop, pass, tx, redirect, dispatcher_return]
    default: [pass, dispatcher_return]
  xdp_mode:
    description:
      - XDP attach mode of the interface's dispatcher. All programs of an interface share it.
      - When omitted, a program joins the interface's current mode; the first program of an
        interface tries V(native) and falls back to V(skb) (generic XDP) when the driver has no
        native support.
    type: str
    choices: [native, skb, hw]
seealso:
  - module: bpfd.core.bpf_program_info
  - name: bpfd tutorial
    description: The bpfctl workflow this module reproduces.
    link: https://github.com/bpfd-dev/bpfd/blob/main/docs/getting-started/tutorial.md
author:
  - bpfd.core contributors (@bpfd-dev)
"""

EXAMPLES = r"""
- name: Load xdp_pass on a veth at priority 100 (bpfctl load-from-file ... --priority 100)
  become: true
  bpfd.core.bpf_xdp_program:
    name: pass
    path: /opt/bpf/xdp_pass_kern.o
    interface: vethff657c7
    priority: 100
  register: pass_prog

- name: Ship an object from the controller and run it first, continuing on pass or drop
  become: true
  bpfd.core.bpf_xdp_program:
    name: firewall
    src: files/xdp_firewall.o
    bpf_function_name: xdp_filter
    interface: eth1
    priority: 10
    proceed_on: [pass, drop, dispatcher_return]
    metadata:
      owner: netops

# templates/verdict.c.j2, C in bcc's dialect, the verdict from a host variable:
#   BPF_ARRAY(seen, u64, 1);
#   int verdict(struct xdp_md *ctx)
#   {
#       int key = 0;
#       u64 *count = seen.lookup(&key);
#       if (count)
#           __sync_fetch_and_add(count, 1);
#       return {{ 'XDP_PASS' if xdp_verdict == 'pass' else 'XDP_DROP' }};
#   }
- name: Write the verdict program's C source on the host
  become: true
  ansible.builtin.template:
    src: verdict.c.j2
    dest: /opt/bpf/src/verdict.c
    mode: "0644"

- name: Compile it there with bcc and run it at priority 20 (compiled and swapped in again only when the source changes)
  become: true
  bpfd.core.bpf_xdp_program:
    name: verdict
    source: /opt/bpf/src/verdict.c
    interface: eth1
    priority: 20
  register: verdict  # verdict.program.source, .cflags; .sha256 identifies the source as compiled

- name: Unload by name
  become: true
  bpfd.core.bpf_xdp_program:
    name: pass
    state: absent

- name: Unload by kernel id (bpfctl unload 6213)
  become: true
  bpfd.core.bpf_xdp_program:
    id: "{{ pass_prog.program.id }}"
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
      sample: pass
    type:
      description: Program type.
      type: str
      sample: xdp
    path:
      description:
        - Object file the program was loaded from.
        - For a program from O(source), the C source (the same as RV(program.source)).
      type: str
      sample: /opt/bpf/xdp_pass_kern.o
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
      sample: /opt/bpf/src/verdict.c
    cflags:
      description: Compiler flags the source was compiled with (O(cflags)); null for other origins.
      type: list
      elements: str
      sample: ["-DVERDICT=XDP_DROP"]
    bpf_function_name:
      description: Function loaded from the object.
      type: str
      sample: pass
    metadata:
      description: The O(metadata) given.
      type: dict
    map_pin_path:
      description: Directory where the program's maps are pinned.
      type: str
      sample: /sys/fs/bpf/bpfd/maps/pass
    maps_used_by:
      description: Kernel ids of the programs using these maps.
      type: list
      elements: int
    priority:
      description: Priority in the chain.
      type: int
      sample: 100
    interface:
      description: Interface the program runs on.
      type: str
      sample: vethff657c7
    position:
      description: "Position in the chain, from 0; null in check mode for a program that would be removed."
      type: int
      sample: 0
    proceed_on:
      description: Return codes that continue the chain.
      type: list
      elements: str
      sample: [pass, dispatcher_return]
    xdp_mode:
      description: Attach mode of the interface's dispatcher.
      type: str
      sample: native
    dispatcher_id:
      description: Kernel id of the interface's dispatcher program.
      type: int
    link_id:
      description: Kernel id of the bpf_link holding the dispatcher on the interface.
      type: int
    id:
      description: Kernel program id (stable while the program stays loaded); null in check mode for a new program.
      type: int
      sample: 6213
    kernel_name:
      description: Program name as the kernel stores it (16 bytes at most).
      type: str
    loaded_at:
      description: "Load time, local ISO 8601."
      type: str
      sample: "2023-07-17T17:48:10-0400"
    tag:
      description: Program tag (hash of its instructions).
      type: str
      sample: 4b9d1b2c140e87ce
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
      sample: 96
    jited:
      description: Whether the program is JIT-compiled.
      type: bool
    size_jited_bytes:
      description: Size of the JIT-compiled program.
      type: int
      sample: 67
    kernel_allocated_memory_bytes:
      description: Memory the kernel charged for the program.
      type: int
      sample: 4096
    verified_insns:
      description: Instructions the verifier processed.
      type: int
      sample: 9
chain:
  description: Every program on the interface, in the order they run, with the same facts as RV(program).
  returned: when O(state=present)
  type: list
  elements: dict
changes:
  description: What this run changed (V(loaded), V(bytecode), V(priority), V(proceed_on), V(interface), V(metadata), V(path)).
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
from ansible_collections.bpfd.core.plugins.module_utils._proceed_on import XDP_ACTIONS, XDP_DEFAULT_PROCEED_ON


def main() -> None:
    argument_spec = dict(
        _module.PROGRAM_ARGS,
        interface=dict(type="str"),
        priority=dict(type="int"),
        proceed_on=dict(type="list", elements="str", choices=list(XDP_ACTIONS),
                        default=list(XDP_DEFAULT_PROCEED_ON)),
        xdp_mode=dict(type="str", choices=["native", "skb", "hw"]),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           **_module.chained_program_rules())
    _module.chained_program(module, "xdp", mode=module.params["xdp_mode"])


if __name__ == "__main__":
    main()
