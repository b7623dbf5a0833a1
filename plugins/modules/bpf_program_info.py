#!/usr/bin/python
# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: bpf_program_info
short_description: List and inspect BPF programs managed by bpfd.core
version_added: "0.1.0"
description:
  - Returns the programs bpfd.core manages on the host, with the facts C(bpfctl get) shows
    (its "Bpfd State" and "Kernel State"). It is C(bpfctl list) and C(bpfctl get ID) in one module.
  - Filters combine; every given filter must match.
  - With O(all=true), also lists the kernel's other BPF programs (Kernel State only), as
    C(bpfctl list --all) does.
extends_documentation_fragment:
  - bpfd.core._attributes
  - bpfd.core._attributes.INFO_MODULE
options:
  name:
    description: Only the program with this name.
    type: str
  id:
    description: Only the program with this kernel id (C(bpfctl get ID)).
    type: int
  type:
    description: Only programs of this type.
    type: str
    choices: [xdp, tc, tracepoint, kprobe, uprobe, fentry, fexit]
  interface:
    description: Only programs attached to this interface.
    type: str
  metadata:
    description: Only programs whose metadata holds every one of these key/value pairs.
    type: dict
    default: {}
  all:
    description:
      - Also list kernel programs that bpfd.core does not manage (with O(id) or O(type) filters
        only; name, interface and metadata are bpfd.core's notions).
    type: bool
    default: false
requirements:
  - libbpf 1.0 or later (C(libbpf.so.1)) and pyroute2 on the managed host.
seealso:
  - module: bpfd.core.bpf_xdp_program
author:
  - bpfd.core contributors (@bpfd-dev)
"""

EXAMPLES = r"""
- name: List every managed program (bpfctl list)
  become: true
  bpfd.core.bpf_program_info:
  register: bpf

- name: Show one program by kernel id (bpfctl get 6213)
  become: true
  bpfd.core.bpf_program_info:
    id: 6213
  register: one

- name: Programs on an interface that belong to a team
  become: true
  bpfd.core.bpf_program_info:
    interface: eth1
    metadata:
      owner: netops

- name: Everything the kernel runs, managed or not
  become: true
  bpfd.core.bpf_program_info:
    all: true
"""

RETURN = r"""
programs:
  description:
    - Matching programs, managed ones first (sorted by name), with the same facts as the
      RV(bpfd.core.bpf_xdp_program#module:program) return value.
    - Programs without a dispatcher (V(tracepoint), V(kprobe), V(uprobe), V(fentry), V(fexit)) carry
      their attach point instead of chain facts (C(tracepoint); C(function), C(offset), C(retprobe);
      C(target), C(pid)) and the C(link_id) of their own bpf_link, as their modules return them.
    - Unmanaged kernel programs (O(all=true)) carry only kernel facts, C(managed=false), and
      C(owner=bpfd.core dispatcher) for our dispatchers. O(type) matches them by the kernel's program
      type, so V(uprobe) finds kprobe programs, V(fentry) and V(fexit) tracing ones, V(tc) sched_cls ones.
  returned: always
  type: list
  elements: dict
  sample:
    - name: pass
      type: xdp
      priority: 100
      interface: vethff657c7
      position: 0
      proceed_on: [pass, dispatcher_return]
      id: 6213
      tag: 4b9d1b2c140e87ce
reconciled:
  description: Differences between the recorded state and the kernel noticed during the read.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bpfd.core.plugins.module_utils import _module
from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str"),
            id=dict(type="int"),
            type=dict(type="str", choices=["xdp", "tc", "tracepoint", "kprobe", "uprobe", "fentry", "fexit"]),
            interface=dict(type="str"),
            metadata=dict(type="dict", default={}),
            all=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    _module.run(module, lambda: Manager().list(
        name=params["name"], prog_id=params["id"], kind=params["type"], interface=params["interface"],
        metadata=_module.metadata(params), include_unmanaged=params["all"]))


if __name__ == "__main__":
    main()
