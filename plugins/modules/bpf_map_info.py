#!/usr/bin/python
# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: bpf_map_info
short_description: Read the maps of a BPF program managed by bpfd.core
version_added: "0.1.0"
description:
  - Reads one map of a program that bpfd.core manages, from its pin under the program's
    C(map_pin_path) (C(/sys/fs/bpf/bpfd/maps/PROGRAM/MAP)), every entry or the entries of the
    keys given in O(keys). It is C(bpftool map dump pinned PATH) and C(bpftool map lookup)
    for a play, so a play can gather counters across a fleet.
  - When the kernel holds BTF for the map (programs compiled with C(clang -g) and maps declared
    with C(__type(key, ...)) / C(__type(value, ...))), keys and values are decoded through it
    as bpftool does; integers as numbers, structs and unions as dicts of their fields
    (bitfields included), arrays as lists, C(char) arrays as strings when printable, enums as
    the enumerator's name, pointers as hex strings. Otherwise keys and values are raw bytes in
    hex, in the map's byte order (V(0a 00 00 01)).
  - Per-CPU maps (C(percpu_array), C(percpu_hash), C(lru_percpu_hash)) give one value per
    possible CPU in RV(entries[].per_cpu) and their sum in RV(entries[].value). Integers are
    added, structs and arrays field by field; fields that are not numbers are kept when every CPU
    holds the same.
  - The pin is opened read-only; the module never changes a map or anything else.
extends_documentation_fragment:
  - bpfd.core._attributes
  - bpfd.core._attributes.INFO_MODULE
options:
  program:
    description: Name of the managed program whose map to read (its O(bpfd.core.bpf_xdp_program#module:name)).
    type: str
    required: true
  map:
    description:
      - Name of the map, as in the program's source (the name of its pin).
      - May be omitted when the program has exactly one pinned map. Global-data maps
        (C(.rodata), C(.data), C(.bss)) are not pinned and cannot be read.
    type: str
  keys:
    description:
      - Read only these keys, in this order; RV(entries) then has one entry per key, with
        RV(entries[].found).
      - A key is a number (integer keys; also for maps without BTF whose key has at most 8
        bytes), a dict of field values (struct keys; fields left out are zero), a string for a
        C(char) array key or an enum key (the enumerator's name), or raw bytes in hex, in the
        map's byte order, as V(0x0a000001) or V(0a 00 00 01) (exactly the key's size).
      - When omitted, every entry is read.
    type: list
    elements: raw
  max_entries:
    description:
      - Return at most this many entries; V(0) returns them all. RV(truncated) says when entries
        were left out, and a warning is shown.
    type: int
    default: 1000
notes:
  - Reads need root (C(become)), as every bpfd.core module does. Members of the C(bpfd) group
    can open the pins themselves (C(bpftool map dump pinned PATH)) but the kernel lets only
    C(CAP_SYS_ADMIN) fetch a map's BTF, so without root they see raw bytes.
  - A hash map that changes while it is read may show an entry twice or miss one, as with
    C(bpftool map dump); each entry itself is read atomically.
requirements:
  - libbpf 1.0 or later (C(libbpf.so.1)) and pyroute2 on the managed host.
seealso:
  - module: bpfd.core.bpf_program_info
  - module: bpfd.core.bpf_xdp_program
author:
  - bpfd.core contributors (@bpfd-dev)
"""

EXAMPLES = r"""
- name: Read the per-CPU packet counter of xdp-stats (its only map)
  become: true
  bpfd.core.bpf_map_info:
    program: xdp-stats
  register: stats

- name: Show the total over all CPUs
  ansible.builtin.debug:
    msg: "{{ stats.entries[0].value }} packets"

- name: Look up two flows of a hash map keyed by a struct
  become: true
  bpfd.core.bpf_map_info:
    program: flow-counter
    map: flows
    keys:
      - {saddr: 16777226, daddr: 33554442, proto: 1}
      - "0x0a0000010a0000020000000001000000"  # the same struct as raw bytes (10.0.0.1 -> 10.0.0.2, ICMP)
  register: flows

- name: Sum a counter across the fleet
  ansible.builtin.debug:
    msg: "{{ ansible_play_hosts | map('extract', hostvars, ['stats', 'entries', 0, 'value']) | sum }}"
  run_once: true
"""

RETURN = r"""
map:
  description: Facts about the map that was read.
  returned: always
  type: dict
  contains:
    program:
      description: The program whose map this is.
      type: str
      sample: xdp-stats
    name:
      description: The map's kernel name (at most 15 characters).
      type: str
      sample: hits
    pin_name:
      description: The map's name in the pin directory (the full name from the source).
      type: str
      sample: hits
    id:
      description: Kernel map id.
      type: int
      sample: 25802
    type:
      description: Map type, as bpftool names it.
      type: str
      sample: percpu_array
    key_size:
      description: Key size in bytes.
      type: int
      sample: 4
    value_size:
      description: Value size in bytes (of one CPU's value for per-CPU maps).
      type: int
      sample: 8
    max_entries:
      description: The map's capacity.
      type: int
      sample: 1
    flags:
      description: The map's creation flags.
      type: int
      sample: 0
    pin_path:
      description: Path of the pin that was read.
      type: str
      sample: /sys/fs/bpf/bpfd/maps/xdp-stats/hits
    btf:
      description: Whether keys or values were decoded through the map's BTF.
      type: bool
      sample: true
    btf_id:
      description: Kernel id of the map's BTF, or null.
      type: int
      sample: 38339
    key_type:
      description: C type of the keys when known through BTF, else null.
      type: str
      sample: __u32
    value_type:
      description: C type of the values when known through BTF, else null.
      type: str
      sample: __u64
    per_cpu:
      description: Whether the map holds one value per CPU.
      type: bool
      sample: true
    possible_cpus:
      description: Number of values per key of a per-CPU map (possible CPUs), else null.
      type: int
      sample: 2
entries:
  description:
    - The entries read, in the kernel's order (all entries) or in the order of O(keys).
  returned: always
  type: list
  elements: dict
  contains:
    key:
      description: The key, decoded through BTF or as hex bytes.
      type: raw
      sample: 0
    value:
      description:
        - The value, decoded through BTF or as hex bytes.
        - For per-CPU maps, the sum over CPUs; null when the values cannot be summed (no BTF,
          or fields that differ between CPUs and are not numbers).
        - Null for a key of O(keys) that the map does not hold.
      type: raw
      sample: 1234
    per_cpu:
      description: Per-CPU maps only; one value per possible CPU, index = CPU number.
      type: list
      elements: raw
      returned: for per-CPU maps
      sample: [1200, 34]
    found:
      description: Whether the map holds the key.
      type: bool
      returned: when O(keys) is given
      sample: true
  sample:
    - key: {saddr: 50462986, daddr: 100992010, sport: 40000, dport: 5353, proto: 17}
      value: {packets: 5, bytes: 320}
truncated:
  description: Whether entries were left out because of O(max_entries).
  returned: always
  type: bool
  sample: false
reconciled:
  description: Differences between the recorded state and the kernel noticed while reading.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bpfd.core.plugins.module_utils import _module
from ansible_collections.bpfd.core.plugins.module_utils._map_reader import read_program_map


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            program=dict(type="str", required=True),
            map=dict(type="str"),
            keys=dict(type="list", elements="raw", no_log=False),
            max_entries=dict(type="int", default=1000),
        ),
        supports_check_mode=True,
    )
    params = module.params
    _module.run(module, lambda: read_program_map(
        params["program"], map_name=params["map"], keys=params["keys"], max_entries=params["max_entries"]))


if __name__ == "__main__":
    main()
