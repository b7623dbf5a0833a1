# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What every bpfd.core module shares: argument specs and the one place where
library errors become ``fail_json`` (modules stay thin shells)."""

from __future__ import annotations

import contextlib
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ansible_collections.bpfd.core.plugins.module_utils import _netlink
from ansible_collections.bpfd.core.plugins.module_utils._declared import keep_bytecode
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
from ansible_collections.bpfd.core.plugins.module_utils._loader import check_object_file, file_sha256
from ansible_collections.bpfd.core.plugins.module_utils._state import Layout

# How an image is pulled and checked: the program modules and bpf_image share these.
REGISTRY_ARGS = dict(
    pull_policy=dict(type="str", default="IfNotPresent", choices=["Always", "IfNotPresent", "Never"]),
    registry_auth=dict(type="dict", no_log=False, options=dict(
        username=dict(type="str", required=True),
        password=dict(type="str", required=True, no_log=True),
    )),
    validate_certs=dict(type="bool", default=True),
    ca_path=dict(type="path"),
    insecure_registry=dict(type="bool", default=False),
    verify=dict(type="str", default="none", choices=["none", "optional", "required"]),
    # a public key: not secret, though its name says "key"
    verify_key=dict(type="str", no_log=False),
)
REGISTRY_RULES = [("verify", "optional", ("verify_key",)), ("verify", "required", ("verify_key",))]

PROGRAM_ARGS = dict(
    name=dict(type="str"),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    id=dict(type="int"),
    path=dict(type="path"),
    src=dict(type="path"),
    bpf_function_name=dict(type="str"),
    metadata=dict(type="dict", default={}),
    global_data=dict(type="dict", default={}),
    map_owner=dict(type="str"),
    netns=dict(type="path"),
    image=dict(type="str"),
    source=dict(type="path"),
    cflags=dict(type="list", elements="str", default=[]),
    **REGISTRY_ARGS
)
ORIGINS = ("path", "src", "image", "source")

PROGRAM_ARG_RULES = dict(
    mutually_exclusive=[ORIGINS, ("name", "id")],
    required_one_of=[("name", "id")],
    required_if=[("state", "present", ("name",)), ("state", "present", ORIGINS, True)]
    + REGISTRY_RULES,
)


@dataclass
class Origin:
    """Where a task's bytecode comes from, as a ProgramSpec takes it."""

    path: str  # what the operator declared: the object, or the C source
    function: str | None
    bytecode: str | None = None  # the object to load when it is not `path`
    image: dict | None = None
    sha256: str | None = None  # identity when it is not the object's sha256
    source: dict | None = None

    def spec_fields(self) -> dict:
        return dict(path=self.path, function=self.function, bytecode=self.bytecode, image=self.image,
                    sha256=self.sha256, source=self.source)


def run(module: Any, operation: Callable[[], dict], needs_pyroute2: bool = True) -> None:
    """Call into module_utils once; turn its errors into a clean failure."""
    if needs_pyroute2 and not _netlink.HAS_PYROUTE2:
        from ansible.module_utils.basic import missing_required_lib
        module.fail_json(msg=missing_required_lib("pyroute2"))
    try:
        result = operation()
    except BpfdError as exc:
        module.fail_json(msg=exc.msg, **exc.details)
    except Exception as exc:  # a bug of ours: say so, with the traceback
        module.fail_json(msg="unexpected error in bpfd.core: %s" % exc, exception=traceback.format_exc())
    if not module._diff:
        result.pop("diff", None)
    for warning in result.pop("warnings", None) or []:
        module.warn(warning)  # a `warnings` key in the result is deprecated in ansible-core 2.19
    module.exit_json(**result)


def bytecode_path(params: dict, check_mode: bool, layout: Layout | None = None) -> str:
    """The host path to load: `path` as given, or `src` kept in the bytecode store."""
    if params.get("path"):
        return params["path"]
    shipped = params["src"]
    check_object_file(shipped)
    if check_mode:
        return shipped
    return keep_bytecode(layout or Layout(), shipped, file_sha256(shipped))


def chained_program(module: Any, kind: str, mode: str | None, direction: str | None = None) -> None:
    """The whole body of a dispatcher-chained program module (XDP, TC)."""
    from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager, ProgramSpec

    params = module.params
    manager = Manager()

    def operation() -> dict:
        if params["state"] == "absent":
            return manager.absent(name=params["name"], prog_id=params["id"], check_mode=module.check_mode)
        with bytecode(module, kind) as origin:
            spec = ProgramSpec(
                name=params["name"], kind=kind,
                interface=params["interface"], priority=params["priority"], direction=direction,
                proceed_on=params["proceed_on"],
                mode=mode, metadata=metadata(params), global_data=params["global_data"],
                map_owner=params["map_owner"], netns=params["netns"], **origin.spec_fields())
            return manager.present(spec, check_mode=module.check_mode)

    run(module, operation)


def traced_program(module: Any, kind: str, attach: dict) -> None:
    """The whole body of a program module without a dispatcher (tracepoint, k/uprobe,
    fentry/fexit): `attach` says where (see _attach_trace)."""
    from ansible_collections.bpfd.core.plugins.module_utils import _facts
    from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager, ProgramSpec

    params = module.params
    manager = Manager()

    def before() -> dict | None:
        found = manager.list(name=params["name"], prog_id=params["id"])["programs"]
        return found[0] if found and found[0]["type"] == kind else None

    def operation() -> dict:
        old = before() if module._diff else None
        if params["state"] == "absent":
            result = manager.absent(name=params["name"], prog_id=params["id"], check_mode=module.check_mode)
            after = None
        else:
            with bytecode(module, kind, attach) as origin:
                spec = ProgramSpec(
                    name=params["name"], kind=kind, interface=None, priority=None,
                    metadata=metadata(params), global_data=params["global_data"],
                    map_owner=params["map_owner"], attach=dict(attach), **origin.spec_fields())
                result = manager.present(spec, check_mode=module.check_mode)
            after = result.get("program")
        result.pop("chain", None)  # no dispatcher, no chain
        result["diff"] = {"before": _facts.program_diff_text(old), "after": _facts.program_diff_text(after)}
        return result

    run(module, operation)


@contextlib.contextmanager
def bytecode(module: Any, kind: str, attach: dict | None = None) -> Iterator[Origin]:
    """The Origin of a task's program: path, src, image or source (`attach`: where a
    tracing program attaches, which shapes an object compiled from source)."""
    params = module.params
    if params.get("source"):
        with compiled_source(module, params, kind, attach) as origin:
            yield origin
        return
    if not params.get("image"):
        yield Origin(bytecode_path(params, module.check_mode), params["bpf_function_name"])
        return
    from ansible.module_utils.basic import missing_required_lib
    from ansible_collections.bpfd.core.plugins.module_utils import _oci

    if not _oci.HAS_ORAS:
        module.fail_json(msg=missing_required_lib("oras"))
    if params["verify"] != "none" and not _oci.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"))
    image = resolve_image(params, module.check_mode)
    try:
        function = _oci.select_function(image, kind, params["bpf_function_name"])
        yield Origin(image.path, function, image=image.facts())
    finally:
        image.cleanup()


@contextlib.contextmanager
def compiled_source(module: Any, params: dict, kind: str, attach: dict | None = None) -> Iterator[Origin]:
    """`params["source"]` compiled with bcc, or found compiled in the bytecode store.
    bcc is imported only here: modules given path, src or image never need it."""
    from ansible.module_utils.basic import missing_required_lib
    from ansible_collections.bpfd.core.plugins.module_utils import _bcc

    if params.get("global_data"):
        raise BpfdError("global_data needs an object with global variables; a program from source takes "
                        "its settings as cflags (e.g. -DVERDICT=2)")
    with contextlib.ExitStack() as stack:
        try:
            compiled = stack.enter_context(_bcc.compiled_source(
                params["source"], params["cflags"], kind=kind, attach=attach, function=params["bpf_function_name"]))
        except _bcc.BccMissing as exc:
            module.fail_json(msg=missing_required_lib(_bcc.BCC_LIBRARY, reason="to compile source", url=_bcc.BCC_URL),
                             exception=exc.import_error)
        try:
            yield Origin(params["source"], params["bpf_function_name"], bytecode=compiled.object_path,
                         sha256=compiled.sha256, source=compiled.facts)
        except BpfdError as exc:
            # The kernel's refusal names the object; the operator knows the source.
            if compiled.object_path not in exc.msg:
                raise
            raise BpfdError(exc.msg.replace(compiled.object_path, "%s (compiled by bcc)" % params["source"]),
                            **dict({k: v for k, v in exc.details.items() if k != "path"}, source=params["source"]))


def resolve_image(params: dict, check_mode: bool):
    """The image of `params["image"]`, pulled and checked as REGISTRY_ARGS say."""
    from ansible_collections.bpfd.core.plugins.module_utils import _oci

    return _oci.resolve_image(
        params["image"], pull_policy=params["pull_policy"], auth=params["registry_auth"],
        validate_certs=params["validate_certs"], ca_path=params["ca_path"],
        insecure=params["insecure_registry"], verify=params["verify"], verify_key=params["verify_key"],
        check_mode=check_mode)


def chain_member_options(kind: str) -> dict:
    """The per-program suboptions of bpf_xdp_chain / bpf_tc_chain."""
    from ansible_collections.bpfd.core.plugins.module_utils import _proceed_on

    return dict(
        name=dict(type="str", required=True),
        path=dict(type="path"),
        source=dict(type="path"),
        cflags=dict(type="list", elements="str", default=[]),
        bpf_function_name=dict(type="str"),
        priority=dict(type="int", required=True),
        proceed_on=dict(type="list", elements="str", choices=list(_proceed_on.actions(kind))),
        global_data=dict(type="dict", default={}),
        map_owner=dict(type="str"),
        metadata=dict(type="dict", default={}),
    )


def chain_programs_arg(kind: str) -> dict:
    """The `programs` option of bpf_xdp_chain / bpf_tc_chain."""
    return dict(type="list", elements="dict", required=True, options=chain_member_options(kind),
                mutually_exclusive=[("path", "source")], required_one_of=[("path", "source")])


def chain(module: Any, kind: str, mode: str | None, direction: str | None = None) -> None:
    """The whole body of bpf_xdp_chain / bpf_tc_chain: one swap for the hook."""
    from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager, ProgramSpec

    params = module.params

    def origin(item: dict, stack: contextlib.ExitStack) -> Origin:
        if item["source"]:
            return stack.enter_context(compiled_source(module, item, kind))
        return Origin(item["path"], item["bpf_function_name"])

    def operation() -> dict:
        with contextlib.ExitStack() as stack:
            specs = [ProgramSpec(
                name=item["name"], kind=kind, interface=params["interface"],
                priority=item["priority"], direction=direction, proceed_on=item["proceed_on"],
                mode=mode, metadata=metadata(item), global_data=item["global_data"],
                map_owner=item["map_owner"], netns=params["netns"], **origin(item, stack).spec_fields())
                for item in params["programs"]]
            return Manager().chain(kind, params["interface"], specs, direction=direction,
                                   exclusive=params["exclusive"], check_mode=module.check_mode,
                                   netns=params["netns"])

    run(module, operation)


def chained_program_rules(**extra: Any) -> dict:
    """mutually_exclusive / required_if for chained program modules."""
    rules = dict(PROGRAM_ARG_RULES)
    rules["required_if"] = rules["required_if"] + [("state", "present", ("interface", "priority"))] + \
        extra.pop("required_if", [])
    rules.update(extra)
    return rules


def metadata(params: dict) -> dict:
    return {str(k): str(v) for k, v in (params.get("metadata") or {}).items()}


def traced_program_rules(required: tuple) -> dict:
    """mutually_exclusive / required_if for program modules without a dispatcher: `required`
    are the attach options a present program needs."""
    rules = dict(PROGRAM_ARG_RULES)
    rules["required_if"] = rules["required_if"] + ([("state", "present", required)] if required else [])
    return rules
