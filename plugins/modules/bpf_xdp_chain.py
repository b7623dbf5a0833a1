#!/usr/bin/python
# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: bpf_xdp_chain
short_description: Converge the whole XDP chain of an interface in one task
version_added: "0.1.0"
description:
  - Declares every program of an interface's XDP hook at once. However many programs are added,
    changed or re-ordered, the interface gets exactly one new dispatcher and one atomic swap, so
    a play with ten programs costs one task and one swap instead of ten.
  - Each entry of O(programs) takes the options of M(bpfd.core.bpf_xdp_program) for one program.
    Programs not listed stay as they are unless O(exclusive=true), which removes the managed
    programs of the interface that are not listed.
extends_documentation_fragment:
  - bpfd.core._attributes
  - bpfd.core._attributes.PROGRAM
options:
  interface:
    description: Network interface whose XDP hook is declared.
    type: str
    required: true
  programs:
    description: The programs of the chain.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The program's identity on the host.
        type: str
        required: true
      path:
        description:
          - Path of the BPF ELF object on the managed host.
          - Exactly one of O(programs[].path) and O(programs[].source) is required.
        type: path
      source:
        description:
          - Path of C source on the managed host, compiled there with bcc, as O(bpfd.core.bpf_xdp_program#module:source)
            of M(bpfd.core.bpf_xdp_program).
        type: path
      cflags:
        description: Compiler flags for O(programs[].source), such as V(-DVERDICT=2).
        type: list
        elements: str
        default: []
      bpf_function_name:
        description: Function to load; defaults to the only XDP program of the object.
        type: str
      priority:
        description: 0 to 1000, lower runs first; ties order by name.
        type: int
        required: true
      proceed_on:
        description: Return codes after which the next program runs; default V(pass) and V(dispatcher_return).
        type: list
        elements: str
        choices: [aborted, drop, pass, tx, redirect, dispatcher_return]
      global_data:
        description: Global variables to set before load (C(NAME) to hex bytes).
        type: dict
        default: {}
      map_owner:
        description: Name of an already managed program whose maps this one shares.
        type: str
      metadata:
        description: Free-form key/value pairs kept with the program.
        type: dict
        default: {}
  netns:
    description:
      - Network namespace of O(interface), as a path (V(/run/netns/NAME) for C(ip netns) names).
        Omitted, the namespace the module runs in.
    type: path
  exclusive:
    description: Remove the interface's managed XDP programs that O(programs) does not list.
    type: bool
    default: false
  xdp_mode:
    description: XDP attach mode of the interface's dispatcher (see M(bpfd.core.bpf_xdp_program)).
    type: str
    choices: [native, skb, hw]
requirements:
  - libbpf 1.0 or later (C(libbpf.so.1)) and pyroute2 on the managed host.
seealso:
  - module: bpfd.core.bpf_xdp_program
author:
  - bpfd.core contributors (@bpfd-dev)
"""

EXAMPLES = r"""
- name: The firewall chain of eth1, exactly these programs, one swap
  become: true
  bpfd.core.bpf_xdp_chain:
    interface: eth1
    exclusive: true
    programs:
      - {name: ratelimit, path: /opt/bpf/ratelimit.o, priority: 10, proceed_on: [pass, dispatcher_return]}
      - {name: filter, path: /opt/bpf/xdp_filter.o, priority: 20}
      - {name: counter, path: /opt/bpf/counter.o, priority: 30}
"""

RETURN = r"""
chain:
  description: Every program of the hook in the order they run, each with the facts M(bpfd.core.bpf_xdp_program) returns.
  returned: always
  type: list
  elements: dict
changes:
  description: What changed, by program name.
  returned: always
  type: dict
  sample: {filter: [bytecode], counter: [loaded]}
removed:
  description: Programs removed because O(exclusive=true) and they were not listed.
  returned: always
  type: list
  elements: str
reconciled:
  description: Differences between the record and the kernel found at the start of the run.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bpfd.core.plugins.module_utils import _module


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            interface=dict(type="str", required=True),
            programs=_module.chain_programs_arg("xdp"),
            exclusive=dict(type="bool", default=False),
            netns=dict(type="path"),
            xdp_mode=dict(type="str", choices=["native", "skb", "hw"]),
        ),
        supports_check_mode=True,
    )
    _module.chain(module, "xdp", mode=module.params["xdp_mode"])


if __name__ == "__main__":
    main()
