#!/usr/bin/python
# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: bpf_image
short_description: Pre-pull or drop a bytecode image in the host's image cache
version_added: "0.1.0"
description:
  - Pulls a bpfd bytecode image (an OCI image holding one eBPF ELF object, in bpfd's image
    format) into the managed host's content-addressed image cache, or drops it from there,
    as bpfd's C(bpfctl pull-bytecode) does. The program modules load from that cache when
    given O(bpfd.core.bpf_xdp_program#module:image), so a play can pull images ahead of a
    maintenance window and load them later with O(bpfd.core.bpf_xdp_program#module:pull_policy=Never),
    with no registry needed then.
  - V(present) resolves the reference per O(pull_policy), checks every blob against its
    digest, checks the image's format and labels (and, with O(verify), its cosign
    signature) and extracts the object into the cache, exactly as a program module would
    before it loads; nothing is loaded into the kernel. C(changed) says whether the cache
    changed (something was downloaded, a corrupted blob was replaced, or the reference now
    points elsewhere).
  - V(absent) removes the reference from the cache, then every blob and extracted object no
    other cached reference uses. It refuses while a declared program (one a program module
    loaded and that C(bpfctl restore) would bring back, recorded in
    C(/var/lib/bpfd/declared.json)) comes from this image; unload that program first.
  - The cache lives in C(/var/lib/bpfd/images) (docs/images.md describes it).
extends_documentation_fragment:
  - bpfd.core._attributes
options:
  image:
    description:
      - The image reference, a tag or a digest (V(quay.io/bpfd-bytecode/xdp_pass:latest),
        V(registry.example/bpf/xdp_pass@sha256:...)). A name without a registry means Docker
        Hub; the default tag is V(latest).
      - Multi-arch indexes pick the host's architecture.
    type: str
    required: true
  state:
    description:
      - V(present) makes sure the image is in the cache (pulling it per O(pull_policy));
        V(absent) removes it from the cache.
    type: str
    choices: [present, absent]
    default: present
  pull_policy:
    description:
      - V(IfNotPresent) keeps a cached image (every blob re-hashed) and asks the registry only
        when the image is not cached; V(Always) asks the registry what the reference points at
        now (a moved tag is pulled, blobs already cached are reused); V(Never) only checks
        that the image is cached and intact, and fails otherwise.
      - Only with O(state=present).
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
    description: CA bundle (PEM) on the managed host to verify a private registry's certificate with.
    type: path
  insecure_registry:
    description: Talk plain HTTP to the registry. Only for registries on trusted networks.
    type: bool
    default: false
  verify:
    description:
      - Cosign key-pair signature check of the image (signature at tag C(sha256-<digest>.sig)),
        before the layer is downloaded.
      - V(required) refuses unsigned or badly signed images; V(optional) checks a signature when
        there is one; V(none) skips the check.
    type: str
    choices: [none, optional, required]
    default: none
  verify_key:
    description: Public key (PEM text or a path on the host) for O(verify).
    type: str
attributes:
  check_mode:
    support: full
    details: With O(state=present), what would have to be downloaded goes to a temporary directory that is removed again; the cache is read, never changed.
  diff_mode:
    support: full
    details: Shows the digest the reference pointed at before and after.
  platform:
    support: full
    platforms: Linux
  idempotent:
    description: A second run with the same arguments reports no change.
    support: full
    details: With O(pull_policy=Always) a tag that moved in between is pulled again (a change).
notes:
  - Runs as root on the managed host (use C(become)), as the cache is root's.
  - With O(state=absent) the registry is never contacted and oras is not needed.
requirements:
  - oras (and cryptography for O(verify)) for the Python interpreter running the module on
    the managed host, with O(state=present) (not for O(pull_policy=Never)). The role
    C(bpfd.core.bpfd_host) installs them.
seealso:
  - module: bpfd.core.bpf_xdp_program
  - module: bpfd.core.bpf_program_info
author:
  - bpfd.core contributors (@bpfd-dev)
"""

EXAMPLES = r"""
- name: Pre-pull the tutorial's image (bpfctl pull-bytecode)
  become: true
  bpfd.core.bpf_image:
    image: quay.io/bpfd-bytecode/xdp_pass:latest

- name: Pull a signed image from a private registry, refusing unsigned ones
  become: true
  bpfd.core.bpf_image:
    image: registry.example/bpf/xdp_stats:v3
    pull_policy: Always
    registry_auth:
      username: puller
      password: "{{ vault_registry_password }}"
    ca_path: /etc/pki/registry-ca.pem
    verify: required
    verify_key: "{{ lookup('ansible.builtin.file', 'cosign.pub') }}"
  register: pulled

- name: Later, load it from the cache only (no registry needed)
  become: true
  bpfd.core.bpf_xdp_program:
    name: stats
    image: "registry.example/bpf/xdp_stats@{{ pulled.image.digest }}"
    pull_policy: Never
    interface: eth0
    priority: 50

- name: Drop an image nobody loads any more
  become: true
  bpfd.core.bpf_image:
    image: registry.example/bpf/xdp_stats:v2
    state: absent
"""

RETURN = r"""
image:
  description:
    - What the image is (O(state=present)); the same facts a program loaded from it carries in
      its C(image) fact, and more.
    - Null with O(state=absent).
  returned: always
  type: dict
  contains:
    url:
      description: Canonical reference (the cache's key).
      type: str
      sample: quay.io/bpfd-bytecode/xdp_pass:latest
    digest:
      description: The digest the reference resolves to (the index's, for a multi-arch image).
      type: str
      sample: sha256:5d2ac8b0a3c8d7a8ee5c0e1b5a2f3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d
    manifest_digest:
      description: The image manifest used (the host platform's, for a multi-arch image).
      type: str
    previous_digest:
      description: What the cache held for this reference before, or null.
      type: str
    pull_policy:
      description: The pull policy used.
      type: str
      sample: IfNotPresent
    platform:
      description: The platform of the manifest used (C(linux/amd64)), or null when the image does not say.
      type: str
    verified:
      description: Whether a cosign signature was verified.
      type: bool
    programs:
      description: Functions in the image and their program types (from its labels).
      type: dict
      sample: {pass: xdp}
    maps:
      description: Maps in the image and their types (v2 labels), else empty.
      type: dict
    bpf_function_name:
      description: The function the labels name by default, or null.
      type: str
    label_format:
      description: V(v1) or V(v2) labels.
      type: str
    filename:
      description: The object's file name in the layer.
      type: str
      sample: xdp_pass.o
    object_sha256:
      description: sha256 of the ELF object.
      type: str
    path:
      description: The extracted object in the cache; null in check mode when it is not cached yet.
      type: str
      sample: /var/lib/bpfd/images/objects/3b1f.../xdp_pass.o
    pulled:
      description: Whether anything was downloaded (or would be, in check mode).
      type: bool
    contacted_registry:
      description: Whether the registry was asked.
      type: bool
    repaired:
      description: Cached blobs that no longer matched their digest and were replaced.
      type: list
      elements: str
removed:
  description: What O(state=absent) removed (or would remove, in check mode).
  returned: when O(state=absent)
  type: dict
  contains:
    digest:
      description: The digest the reference pointed at, or null when it was not cached.
      type: str
    removed_blobs:
      description: Blobs no other cached reference used.
      type: int
    freed_bytes:
      description: Bytes of those blobs and extracted objects.
      type: int
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.bpfd.core.plugins.module_utils import _declared, _module, _oci
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._state import Layout


def users_of(url: str, layout: Layout) -> list:
    """Declared programs whose bytecode comes from the cached reference ``url``.

    A program uses it when it was declared with that reference, or with another one to the
    same digest that nothing else in the cache keeps (its blobs would go with ``url``)."""
    ref = _oci.parse_reference(url)
    cached = _oci.list_images(layout)
    entry = cached.get(ref.name) or {}
    digests = {entry.get("digest"), entry.get("manifest_digest"), ref.digest} - {None}
    kept_elsewhere = {e.get(k) for name, e in cached.items() if name != ref.name
                      for k in ("digest", "manifest_digest")}
    users = []
    for name, program in sorted(_declared.read(layout).get("programs", {}).items()):
        image = program.get("image") or {}
        if not image:
            continue
        if image.get("url") == ref.name:
            users.append(name)
            continue
        theirs = {image.get("digest"), image.get("manifest_digest")} - {None}
        if theirs & digests and not theirs & kept_elsewhere:
            users.append(name)
    return users


def absent(params: dict, check_mode: bool) -> dict:
    layout = Layout()
    ref = _oci.parse_reference(params["image"])
    users = users_of(params["image"], layout)
    if users:
        raise BpfdError("image %s is still used by declared program%s %s: unload %s first "
                        "(state: absent on the program module, or bpfctl unload)"
                        % (ref.name, "s" if len(users) > 1 else "", ", ".join(users),
                           "them" if len(users) > 1 else "it"), url=ref.name, programs=users)
    removed = _oci.remove_image(params["image"], layout=layout, check_mode=check_mode)
    changed = removed.pop("changed")
    return {"changed": changed, "image": None, "removed": removed,
            "diff": {"before": "%s: %s\n" % (ref.name, removed["digest"]) if changed else "",
                     "after": ""}}


def present(params: dict, check_mode: bool) -> dict:
    image = _module.resolve_image(params, check_mode)
    try:
        facts = image.facts()
        facts.update(
            previous_digest=image.previous_digest, bpf_function_name=image.bpf_function_name,
            filename=image.filename, path=None if image.temporary_dir else image.path,
            pulled=image.pulled, contacted_registry=image.contacted_registry,
            repaired=list(image.repaired))
    finally:
        image.cleanup()
    changed = bool(image.cache_changed or image.pulled)
    before = "%s: %s\n" % (image.url, image.previous_digest) if image.previous_digest else ""
    return {"changed": changed, "image": facts,
            "diff": {"before": before, "after": "%s: %s\n" % (image.url, image.digest)}}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            **_module.REGISTRY_ARGS
        ),
        required_if=_module.REGISTRY_RULES,
        supports_check_mode=True,
    )
    params = module.params
    if params["state"] == "present":
        if not _oci.HAS_ORAS and params["pull_policy"] != "Never":
            module.fail_json(msg=missing_required_lib("oras"))
        if params["verify"] != "none" and not _oci.HAS_CRYPTOGRAPHY:
            module.fail_json(msg=missing_required_lib("cryptography"))
        _module.run(module, lambda: present(params, module.check_mode), needs_pyroute2=False)
    else:
        _module.run(module, lambda: absent(params, module.check_mode), needs_pyroute2=False)


if __name__ == "__main__":
    main()
