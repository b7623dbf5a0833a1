# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # Options every program module shares (identity, bytecode origin, metadata).
    DOCUMENTATION = r"""
options:
  name:
    description:
      - The program's identity on the managed host, unique per host.
      - Required with O(state=present). With O(state=absent) give O(name) or O(id).
    type: str
  state:
    description:
      - V(present) loads the program (or updates it in place); V(absent) unloads it.
    type: str
    choices: [present, absent]
    default: present
  id:
    description:
      - Kernel program id of a managed program to unload, as C(bpfctl unload ID) takes it.
      - Only with O(state=absent).
    type: int
  path:
    description:
      - Path of the BPF ELF object on the managed host.
      - Mutually exclusive with O(src), O(image) and O(source).
    type: path
  src:
    description:
      - Path of the BPF ELF object on the controller. The action plugin ships it to the host,
        where it is kept in the bytecode store C(/var/lib/bpfd/bytecode/<sha256>.o).
      - Mutually exclusive with O(path), O(image) and O(source).
    type: path
  image:
    description:
      - OCI image holding the bytecode in bpfd's image format (one gzip tar layer with the ELF
        object; v1 C(io.ebpf.*) or v2 C(io.ebpf.programs) labels), as C(bpfctl load-from-image
        --image-url). Pulled on the managed host with oras into a content-addressed cache in
        C(/var/lib/bpfd/images); digests are re-checked on every use.
      - A tag or a digest reference (V(quay.io/bpfd-bytecode/xdp_pass:latest),
        V(registry.example/xdp@sha256:...)). Multi-arch indexes pick the host's architecture.
      - Mutually exclusive with O(path), O(src) and O(source).
    type: str
  source:
    description:
      - Path of a C source file on the managed host (typically written by M(ansible.builtin.template)),
        compiled there with bcc (C(BPF(text=..., cflags=...))) in the bcc dialect (C(BPF_HASH), C(BPF_ARRAY),
        C(TRACEPOINT_PROBE), ...). bcc needs the kernel headers of the host; see the role
        C(bpfd.core.bpfd_host) option C(bpfd_host_bcc).
      - The compiled function becomes an ordinary object kept in the bytecode store, so reloads, dispatcher
        rebuilds and restores at boot never compile again; its maps are pinned like every program's.
      - The program's identity (RV(program.sha256)) is the SHA-256 of the source and how it is compiled
        (O(cflags), O(bpf_function_name), the program's section). An unchanged source is not compiled again;
        a changed one is compiled and swapped in atomically, its maps kept when compatible.
        Headers the source includes are not part of the identity.
      - The source's directory is on the include path. Global variables (O(global_data)) do not exist in
        bcc programs; pass settings as O(cflags).
      - Mutually exclusive with O(path), O(src) and O(image).
    type: path
  cflags:
    description:
      - Compiler flags for O(source), such as V(-DVERDICT=2) or V(-I/opt/include).
    type: list
    elements: str
    default: []
  pull_policy:
    description:
      - V(IfNotPresent) uses the cached image when there is one; V(Always) asks the registry
        every run (a tag that moved reloads the program and swaps it in); V(Never) fails when the
        image is not cached.
    type: str
    choices: [Always, IfNotPresent, Never]
    default: IfNotPresent
  registry_auth:
    description: Credentials for the registry (basic auth or a token exchange).
    type: dict
    suboptions:
      username:
        description: Registry user.
        type: str
        required: true
      password:
        description: Registry password or token; never logged.
        type: str
        required: true
  validate_certs:
    description: Verify the registry's TLS certificate.
    type: bool
    default: true
  ca_path:
    description: CA bundle (PEM) to verify a private registry's certificate with.
    type: path
  insecure_registry:
    description: Talk plain HTTP to the registry. Only for registries on trusted networks.
    type: bool
    default: false
  verify:
    description:
      - Cosign key-pair signature check of the image (signature at tag C(sha256-<digest>.sig)).
      - V(required) refuses unsigned or badly signed images; V(optional) checks a signature when
        there is one; V(none) skips the check.
    type: str
    choices: [none, optional, required]
    default: none
  verify_key:
    description: Public key (PEM text or a path on the host) for O(verify).
    type: str
  bpf_function_name:
    description:
      - Name of the function inside the object to load.
      - Defaults to the only program of the right type in the object; an object with several
        needs this option.
    type: str
  global_data:
    description:
      - Values written over global variables of the object before it is loaded, as bpfd's
        C(--global NAME=HEX). Keys are variable names (in C(.rodata), C(.data) or C(.bss)),
        values hex bytes in the object's byte order, exactly the variable's size
        (V(01000000) is a little-endian 32-bit 1).
      - Changing a value reloads the program and swaps it in atomically; its maps are kept.
    type: dict
    default: {}
  map_owner:
    description:
      - Name of another managed program whose maps this program uses instead of creating its
        own (matched by map name; definitions must be compatible), as bpfd's C(--map-owner-id).
      - Both programs' facts list the sharers in C(maps_used_by). Removing the owner
        while others still use its maps keeps the maps pinned for them.
    type: str
  netns:
    description:
      - Network namespace of the interface, as a path (V(/run/netns/NAME) for C(ip netns) names),
        as bpfman's C(--netns). Omitted, the namespace the module runs in.
      - The namespace is part of the attach point's identity; a namespace that disappears is
        reconciled away on the next run, with its programs unloaded.
      - Ignored by modules without an interface.
    type: path
  metadata:
    description:
      - Free-form key/value pairs stored with the program and usable as a filter by
        M(bpfd.core.bpf_program_info).
    type: dict
    default: {}
requirements:
  - Linux with BPF, bpffs and bpf_link support (kernel 5.9 or later).
  - libbpf 1.0 or later (C(libbpf.so.1)) on the managed host.
  - pyroute2 for the Python interpreter running the module on the managed host.
  - oras (and cryptography for O(verify)) on the managed host when O(image) is used.
  - bcc's Python module (Debian/Ubuntu C(python3-bpfcc), Fedora/RHEL C(python3-bcc)) and the running
    kernel's headers on the managed host when O(source) is used.
notes:
  - Modules run as root on the managed host (use C(become)).
  - Run-time state is kept in C(/run/bpfd), pins in C(/sys/fs/bpf/bpfd); both last until reboot.
"""
