#!/usr/bin/python
# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: bpf_tc_program
short_description: Manage TC classifier programs chained on an interface's ingress or egress
version_added: "0.1.0"
description:
  - Loads a TC classifier (C(sched_cls)) program from a BPF ELF object and runs it on an
    interface's ingress or egress hook, chained with up to nine other programs by O(priority),
    as C(bpfctl load-from-file ... tc --direction D) does in bpfd.
  - All programs of one (interface, direction) run inside one dispatcher that bpfd.core links
    from their code. Every change builds a new dispatcher and swaps it in atomically.
  - Programs run in order of O(priority) (lower first), then O(name). After each program, the
    next runs only if its return code is listed in O(proceed_on); otherwise that code is the
    verdict. When every program proceeds, the dispatcher returns C(TC_ACT_OK) and the packet
    continues, as bpfd's TC dispatcher does.
  - "The dispatcher is attached with a tcx bpf_link on kernels 6.6 and later, and as a cls_bpf
    direct-action filter on a C(clsact) qdisc before that (see O(tc_attach))."
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
  direction:
    description:
      - The TC hook of the interface.
      - Required with O(state=present).
    type: str
    choices: [ingress, egress]
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
    choices: [unspec, ok, reclassify, shot, pipe, stolen, queued, repeat, redirect, trap, dispatcher_return]
    default: [pipe, dispatcher_return]
  tc_attach:
    description:
      - How the dispatcher is attached. All programs of one hook share it.
      - V(tcx) uses a bpf_link on the tcx hook (Linux 6.6 and later), updated atomically.
      - V(cls_bpf) adds one direct-action cls_bpf filter to a C(clsact) qdisc (created if absent,
        removed with the last program only if bpfd.core created it) and replaces it in place.
      - When omitted, a program joins the hook's current method; a new hook uses V(tcx) when the
        kernel has it, else V(cls_bpf).
      - Programs of other owners on the same hook (tcx links, or cls_bpf filters at the same
        parent) make the task fail with their names; bpfd.core never runs beside programs
        whose order it does not control, and never removes them.
    type: str
    choices: [tcx, cls_bpf]
seealso:
  - module: bpfd.core.bpf_xdp_program
  - module: bpfd.core.bpf_program_info
author:
  - bpfd.core contributors (@bpfd-dev)
"""

EXAMPLES = r"""
- name: Count packets leaving eth1 (bpfctl load-from-file ... tc --direction egress --priority 50)
  become: true
  bpfd.core.bpf_tc_program:
    name: egress-counter
    path: /opt/bpf/tc_counter.o
    interface: eth1
    direction: egress
    priority: 50
    proceed_on: [pipe, ok, dispatcher_return]

- name: Force the cls_bpf attachment (kernels before 6.6 use it anyway)
  become: true
  bpfd.core.bpf_tc_program:
    name: ingress-filter
    src: files/tc_filter.o
    interface: eth1
    direction: ingress
    priority: 10
    tc_attach: cls_bpf

- name: Remove it
  become: true
  bpfd.core.bpf_tc_program:
    name: ingress-filter
    state: absent
"""

RETURN = r"""
program:
  description:
    - The program's facts, as C(bpfctl get) shows them; the same keys as the RV(bpfd.core.bpf_xdp_program#module:program)
      return value of M(bpfd.core.bpf_xdp_program), with RV(program.direction) and RV(program.tc_attach) instead of C(xdp_mode).
  returned: success
  type: dict
  contains:
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
      sample: /opt/bpf/src/classify.c
    cflags:
      description: Compiler flags the source was compiled with (O(cflags)); null for other origins.
      type: list
      elements: str
      sample: ["-DMARK=7"]
    direction:
      description: The hook, V(ingress) or V(egress).
      type: str
      sample: egress
    tc_attach:
      description: How the hook's dispatcher is attached.
      type: str
      sample: tcx
    position:
      description: Position in the chain, from 0.
      type: int
      sample: 0
    id:
      description: Kernel program id.
      type: int
      sample: 6213
chain:
  description: Every program on the hook, in the order they run, with the same facts as RV(program).
  returned: when O(state=present)
  type: list
  elements: dict
changes:
  description: What this run changed (V(loaded), V(bytecode), V(priority), V(proceed_on), V(interface), V(direction), V(metadata), V(path)).
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
from ansible_collections.bpfd.core.plugins.module_utils._proceed_on import TC_ACTIONS, TC_DEFAULT_PROCEED_ON


def main() -> None:
    argument_spec = dict(
        _module.PROGRAM_ARGS,
        interface=dict(type="str"),
        direction=dict(type="str", choices=["ingress", "egress"]),
        priority=dict(type="int"),
        proceed_on=dict(type="list", elements="str", choices=list(TC_ACTIONS),
                        default=list(TC_DEFAULT_PROCEED_ON)),
        tc_attach=dict(type="str", choices=["tcx", "cls_bpf"]),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           **_module.chained_program_rules(required_if=[("state", "present", ("direction",))]))
    _module.chained_program(module, "tc", mode=module.params["tc_attach"], direction=module.params["direction"])


if __name__ == "__main__":
    main()
