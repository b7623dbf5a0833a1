# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""``image:`` in the program modules, through real ansible-playbook runs.

Images are pushed to Debian's docker-registry on 127.0.0.1 (helpers_oci: one plain
HTTP registry, one HTTPS registry with a throw-away CA and htpasswd auth, and a
private one a test stops and restarts) and loaded with bpfd.core.bpf_xdp_program
(once bpf_tc_program) on the test's own veth pair. What the modules say is checked
against the kernel (bpftool, BPF_PROG_TEST_RUN on the attached dispatcher, ping),
the state file, and the host's image cache.

Module runs use the host's real cache (/var/lib/bpfd/images). Every image pushed
here carries a per-run nonce label, so its manifest and config digests are this
run's own: the cache checks look for exactly those blobs, and every reference on
our registries is dropped from the cache (``_oci.remove_image``) at the end.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import tempfile
import uuid

import pytest

from conftest import kernel_snapshot

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import helpers_oci as h  # noqa: E402
import helpers_xdp as hx  # noqa: E402

from ansible_collections.bpfd.core.plugins.module_utils import _oci  # noqa: E402
from ansible_collections.bpfd.core.plugins.module_utils._state import Layout  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

XDP = "bpfd.core.bpf_xdp_program"
TC = "bpfd.core.bpf_tc_program"
INFO = "bpfd.core.bpf_program_info"
USER, PASSWORD = "bpfd-img-user", "pw-Kx7#image-never-shown"
WRONG_PASSWORD = "pw-Wq3#also-never-shown"
NONCE = uuid.uuid4().hex[:12]
CACHE_ROOT = pathlib.Path(Layout().lib_dir) / "images"


# --- registries and images ----------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir():
    why = h.registry_env_ready()
    if why:
        pytest.skip(why)
    path = pathlib.Path(tempfile.mkdtemp(prefix="bpfd-img-module-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def registries(workdir):
    """Every registry this module starts; at the end, their images leave the host cache
    (and the cache directory itself, when this module created it and it is empty again)."""
    cache_existed = CACHE_ROOT.exists()
    started = []
    yield started
    for registry in started:
        registry.stop()
    for url in _oci.list_images():
        if any(url.startswith(r.host + "/") for r in started):
            _oci.remove_image(url)
    if not cache_existed:
        _drop_cache_dir_if_empty()


def _drop_cache_dir_if_empty() -> None:
    cache = _oci.ImageCache()
    with cache.locked():
        if cache.read_index()["images"] or cache.blob_paths() or any(
                (CACHE_ROOT / "objects").glob("*")):
            return  # someone else's images arrived meanwhile
        shutil.rmtree(CACHE_ROOT, ignore_errors=True)


@pytest.fixture(scope="module")
def plain(workdir, registries):
    registry = h.LocalRegistry(workdir / "plain")
    registries.append(registry)
    return registry.start()


@pytest.fixture(scope="module")
def secure(workdir, registries):
    tls = h.make_tls(workdir / "tls")
    htpasswd = h.write_htpasswd(workdir / "htpasswd", {USER: PASSWORD})
    registry = h.LocalRegistry(workdir / "secure", tls=tls, htpasswd=htpasswd)
    registries.append(registry)
    return registry.start()


@pytest.fixture
def private_registry(workdir, registries):
    """A registry of one test's own (it may stop and restart it)."""
    registry = h.LocalRegistry(workdir / ("own-%s" % uuid.uuid4().hex[:6]))
    registries.append(registry)
    return registry.start()


AUTH = {"username": USER, "password": PASSWORD}
CONFIGS: dict = {}  # manifest digest -> config digest of every image publish() pushed


def publish(registry, repo_tag: str, obj: str, *, label_format: str = "v2",
            auth: dict | None = None) -> str:
    """Push ``obj`` as a bpfd image (the library's publisher), with this run's nonce label.

    Returns the manifest digest; the manifest and config blobs are ours alone.
    """
    built = _oci.build_image(obj, label_format=label_format,
                             labels={"org.bpfd-core.test-nonce": "%s-%s" % (NONCE, repo_tag)})
    cl = h.client(registry, repo_tag.split(":")[0], auth=auth)
    manifest = json.loads(built["manifest"])
    cl.push_blob(built["config"], manifest["config"]["mediaType"])
    cl.push_blob(built["layer"], manifest["layers"][0]["mediaType"])
    ref = _oci.parse_reference(registry.url(repo_tag))
    digest = cl.push_manifest(built["manifest"], built["media_type"], ref.reference)
    CONFIGS[digest] = manifest["config"]["digest"]
    return digest


def own_blobs(digest: str) -> list:
    """The host-cache paths of an image's manifest and config that exist (both are ours alone)."""
    blobs = CACHE_ROOT / "blobs" / "sha256"
    return [str(blobs / d.split(":")[1]) for d in (digest, CONFIGS[digest])
            if (blobs / d.split(":")[1]).exists()]


def cached_refs(registry) -> dict:
    return {url: e for url, e in _oci.list_images().items() if url.startswith(registry.host + "/")}


# --- tasks and views --------------------------------------------------------------------------


def xdp(task: str, name: str, veth, priority: int, image: str, **extra) -> dict:
    args = {"name": name, "image": image, "interface": veth.name, "priority": priority}
    args.update(extra)
    return {"name": task, XDP: args}


def failing(task: dict) -> dict:
    return dict(task, ignore_errors=True)


def assert_clean_failure(result: dict, *phrases: str) -> None:
    assert result["_failed"], result
    msg = result.get("msg", "")
    for phrase in phrases:
        assert phrase.lower() in msg.lower(), (phrase, msg)
    for key in ("msg", "module_stderr", "module_stdout", "exception"):
        assert "Traceback" not in str(result.get(key, "")), (key, result.get(key))
    assert "unexpected error" not in msg, msg


def mine(veth) -> dict:
    """What of the host can be this test's: state, pins, attachment and links on the veth."""
    snap = kernel_snapshot()
    state = snap["state"] or {"programs": {}, "hooks": {}}
    programs = {n: r for n, r in state["programs"].items() if r.get("interface") == veth.name}
    hooks = {k: v for k, v in state["hooks"].items() if v.get("interface") == veth.name}
    attached = [p["id"] for p in hx.attached_xdp(veth.name)]
    ids = {r.get("prog_id") for r in programs.values()} | {v.get("dispatcher_id") for v in hooks.values()}
    return {"programs": programs, "hooks": hooks, "attached": attached,
            "links": sorted(link for i in attached for link in hx.xdp_links_running(i)),
            "pins": [p for p in snap["pins"] if veth.name in p],
            "alive": sorted(i for i in ids if i and hx.prog_exists(i))}


def test_run(prog_id: int) -> int:
    return hx.run_xdp(prog_id, hx.ipv4_udp_packet("10.1.1.1", "10.1.1.2"))


test_run.__test__ = False  # a helper, not a test


# =====================================================================================
# 1. The tutorial, with images
# =====================================================================================


def task_durations(tmp_path: pathlib.Path) -> dict:
    """{task name: seconds} of the successful tasks, from ansible-runner's job events."""
    found = {}
    for path in tmp_path.glob("runner-*/artifacts/*/job_events/*.json"):
        event = json.loads(path.read_text())
        if event.get("event") == "runner_on_ok":
            found[event["event_data"]["task"]] = event["event_data"]["duration"]
    return found


def test_tutorial_with_images(veth, bpf_objects, plain, playbook, tmp_path):
    v2 = publish(plain, "tutorial/xdp_pass:latest", bpf_objects["xdp_pass"])
    v1 = publish(plain, "tutorial/xdp_pass_v1:latest", bpf_objects["xdp_pass"], label_format="v1")
    url_v2, url_v1 = plain.url("tutorial/xdp_pass:latest"), plain.url("tutorial/xdp_pass_v1:latest")
    name = {p: "%s-img%d" % (veth.name, p) for p in (100, 50, 200, 150)}
    # bpfctl load-from-image --image-url ... xdp --priority 100, 50, 200, 150 (the last from an
    # image with v1 labels); then, for the timings only, one more from the cached image and
    # one from a file, each appended to the chain.
    tasks = [xdp("load %d" % p, name[p], veth, p, url_v1 if p == 150 else url_v2,
                 insecure_registry=True) for p in (100, 50, 200, 150)]
    timing = [xdp("load from cached image", veth.name + "-cached", veth, 300, url_v2,
                  insecure_registry=True),
              {"name": "load from file", XDP: {"name": veth.name + "-file", "interface": veth.name,
                                               "priority": 400, "path": bpf_objects["xdp_pass"]}}]
    results = playbook(tasks + [{"name": "info", INFO: {"interface": veth.name}}] + timing)

    expected = {100: {100: 0}, 50: {50: 0, 100: 1}, 200: {50: 0, 100: 1, 200: 2},
                150: {50: 0, 100: 1, 150: 2, 200: 3}}
    links = set()
    for prio in (100, 50, 200, 150):
        res = results["load %d" % prio]
        prog = res["program"]
        assert res["changed"] is True and res["changes"] == ["loaded"], res
        assert {p["priority"]: p["position"] for p in res["chain"]} == expected[prio]
        assert prog["position"] == expected[prio][prio]
        assert prog["image_url"] == (url_v1 if prio == 150 else url_v2)
        assert prog["image_digest"] == (v1 if prio == 150 else v2)
        assert prog["pull_policy"] == "IfNotPresent" and prog["image_verified"] is False
        # bpf_function_name comes from the labels (the task names none)
        assert prog["bpf_function_name"] == "pass" and prog["kernel_name"] == "pass"
        assert prog["path"].startswith(str(CACHE_ROOT / "objects") + os.sep), prog["path"]
        with open(prog["path"], "rb") as cached, open(bpf_objects["xdp_pass"], "rb") as built:
            assert cached.read() == built.read()
        kernel = hx.bpftool_json("prog", "show", "id", str(prog["id"]))
        assert kernel["type"] == "xdp" and kernel["tag"] == prog["tag"]
        links.add(prog["link_id"])
    assert len(links) == 1  # every step after the first was a swap on the same bpf_link
    listed = sorted(results["info"]["programs"], key=lambda p: p["position"])
    assert [(p["priority"], p["position"], p["image_url"], p["image_digest"]) for p in listed] == [
        (50, 0, url_v2, v2), (100, 1, url_v2, v2), (150, 2, url_v1, v1), (200, 3, url_v2, v2)]
    assert cached_refs(plain)[url_v2]["digest"] == v2 and cached_refs(plain)[url_v1]["digest"] == v1
    assert len(own_blobs(v2)) == len(own_blobs(v1)) == 2  # manifest and config, in the host cache
    # The kernel runs the chain: one dispatcher attached by our link, XDP_PASS, ping answers.
    dispatcher = hx.dispatcher_id(veth.name)
    assert dispatcher == results["load from file"]["program"]["dispatcher_id"]
    assert hx.xdp_links_running(dispatcher) == [listed[0]["link_id"]]
    assert test_run(dispatcher) == hx.XDP_PASS
    assert veth.ping()

    took = task_durations(tmp_path)
    print("\n[timing] task durations: first pull + load %.2f s (v1 image: %.2f s); cached image "
          "+ load %.2f / %.2f s; appended to a chain of 4 / 5: cached image %.2f s, file %.2f s"
          % (took["load 100"], took["load 150"], took["load 50"], took["load 200"],
             took["load from cached image"], took["load from file"]))


# =====================================================================================
# 2. Pull policies, a moved tag, digest references
# =====================================================================================


def test_pull_policies_moved_tag_and_digest_reference(veth, bpf_objects, private_registry, playbook):
    reg = private_registry
    url = reg.url("policy/xdp:stable")
    name = veth.name + "-pol"

    def load(task: str, policy: str) -> dict:
        return xdp(task, name, veth, 100, url, pull_policy=policy, insecure_registry=True)

    d1 = publish(reg, "policy/xdp:stable", bpf_objects["xdp_pass"])
    hx.pin_neighbour(veth)
    first = playbook([load("first", "IfNotPresent")])["first"]
    prog = first["program"]
    assert first["changed"] is True and first["changes"] == ["loaded"]
    assert (prog["image_url"], prog["image_digest"], prog["pull_policy"]) == (url, d1, "IfNotPresent")
    assert cached_refs(reg)[url]["digest"] == d1
    prog_id, link_id = prog["id"], prog["link_id"]

    # IfNotPresent with the image cached never asks the registry: stopped, the run still
    # succeeds, unchanged. Never with an uncached image fails and touches nothing.
    port = reg.port
    reg.stop()
    never_url = reg.url("policy/never:1.0")
    before = mine(veth)
    results = playbook([load("again", "IfNotPresent"),
                        failing(xdp("never", name + "-never", veth, 50, never_url, pull_policy="Never",
                                    insecure_registry=True))], expect_failure=True)
    again = results["again"]
    assert not again["_failed"], again.get("msg")
    assert again["changed"] is False and "changes" not in again
    assert again["program"]["id"] == prog_id and again["program"]["image_digest"] == d1
    assert_clean_failure(results["never"], "not in the host's image cache", "pull_policy is Never",
                         "policy/never:1.0")
    assert mine(veth) == before
    assert never_url not in cached_refs(reg)
    assert veth.ping()

    # The tag moves to a new digest (xdp_drop under the same tag).
    reg.start(port=port)
    d2 = publish(reg, "policy/xdp:stable", bpf_objects["xdp_drop"])
    assert d2 != d1
    results = playbook([load("kept", "IfNotPresent"), load("always", "Always")], diff=True)
    kept, always = results["kept"], results["always"]
    assert kept["changed"] is False and kept["program"]["id"] == prog_id
    assert kept["program"]["image_digest"] == d1
    assert always["changed"] is True and "bytecode" in always["changes"], always.get("changes")
    new = always["program"]
    assert new["image_digest"] == d2 and new["pull_policy"] == "Always"
    assert new["bpf_function_name"] == "drop" and new["kernel_name"] == "drop"
    assert new["id"] != prog_id and hx.wait_gone(hx.prog_exists, prog_id)
    assert new["link_id"] == link_id  # swapped on the same bpf_link
    line = "0: %s priority=100 proceed_on=pass,dispatcher_return image=%s"
    assert line % (name, d1) in always["diff"]["before"], always["diff"]
    assert line % (name, d2) in always["diff"]["after"], always["diff"]
    dispatcher = hx.dispatcher_id(veth.name)
    assert hx.xdp_links_running(dispatcher) == [link_id]
    assert test_run(dispatcher) == hx.XDP_DROP
    assert not hx.ping(veth.name, veth.peer_ip, count=2, timeout=0.5)
    assert cached_refs(reg)[url]["digest"] == d2

    # By digest: the old image, as a second program in front; the same task again is a no-op.
    by_digest = reg.url("policy/xdp@" + d1)
    task = xdp("by digest", name + "-dg", veth, 50, by_digest, insecure_registry=True)
    results = playbook([task, dict(task, name="by digest again")])
    first, second = results["by digest"], results["by digest again"]
    assert first["changed"] is True and first["changes"] == ["loaded"]
    assert (first["program"]["image_url"], first["program"]["image_digest"]) == (by_digest, d1)
    assert first["program"]["kernel_name"] == "pass" and first["program"]["position"] == 0
    assert second["changed"] is False and second["program"]["id"] == first["program"]["id"]
    assert [(p["name"], p["image_digest"]) for p in second["chain"]] == [
        (name + "-dg", d1), (name, d2)]
    assert test_run(hx.dispatcher_id(veth.name)) == hx.XDP_DROP  # pass proceeds, drop ends it


# =====================================================================================
# 3. Registry auth and TLS through the module; the password is never shown
# =====================================================================================


def runner_output(tmp_path: pathlib.Path) -> str:
    """Everything ansible-runner recorded of this test's plays: stdout, events, status."""
    texts = []
    for path in sorted(tmp_path.glob("runner-*/artifacts/**/*")):
        if path.is_file():
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


def test_registry_auth_and_tls(veth, bpf_objects, secure, plain, playbook, tmp_path):
    obj = bpf_objects["xdp_pass"]
    digest = publish(secure, "auth/xdp:1.0", obj, auth=AUTH)
    http_digest = publish(plain, "auth/plain:1.0", obj)
    url, http_url, ca = secure.url("auth/xdp:1.0"), plain.url("auth/plain:1.0"), secure.tls["ca"]
    n = {k: "%s-%s" % (veth.name, k) for k in ("noauth", "wrongpw", "noca", "ca", "nocheck",
                                               "http", "https")}
    tasks = [
        failing(xdp("no auth", n["noauth"], veth, 10, url, ca_path=ca)),
        failing(xdp("wrong password", n["wrongpw"], veth, 20, url, ca_path=ca,
                    registry_auth={"username": USER, "password": WRONG_PASSWORD})),
        failing(xdp("no ca", n["noca"], veth, 30, url, registry_auth=AUTH)),
        failing(xdp("plain without insecure", n["https"], veth, 40, http_url)),
        xdp("with ca", n["ca"], veth, 100, url, ca_path=ca, registry_auth=AUTH),
        xdp("no cert check", n["nocheck"], veth, 200, url, validate_certs=False,
            registry_auth=AUTH, pull_policy="Always"),
        xdp("plain insecure", n["http"], veth, 50, http_url, insecure_registry=True),
    ]
    results = playbook(tasks, expect_failure=True)

    assert_clean_failure(results["no auth"], "requires authentication", "set registry_auth")
    assert_clean_failure(results["wrong password"], "refused the credentials in registry_auth",
                         "user '%s'" % USER, "wrong username or password")
    assert_clean_failure(results["no ca"], "TLS verification of registry %s failed" % secure.host,
                         "ca_path", "validate_certs: false")
    assert_clean_failure(results["plain without insecure"], "does not answer TLS",
                         "insecure_registry: true")
    for task, expected in (("with ca", digest), ("no cert check", digest),
                           ("plain insecure", http_digest)):
        res = results[task]
        assert not res["_failed"], (task, res.get("msg"))
        assert res["changed"] is True and res["program"]["image_digest"] == expected, task
    assert results["no cert check"]["program"]["pull_policy"] == "Always"
    # Nothing of the failed tasks reached the host.
    state = mine(veth)["programs"]
    assert sorted(state) == sorted([n["ca"], n["nocheck"], n["http"]])
    assert test_run(hx.dispatcher_id(veth.name)) == hx.XDP_PASS

    # no_log: neither password appears anywhere in what the plays printed or recorded.
    output = runner_output(tmp_path)
    assert "wrong password" in output and "registry_auth" in output  # the search covers the run
    assert PASSWORD not in output, "the registry password leaked into the play output"
    assert WRONG_PASSWORD not in output, "the wrong password leaked into the play output"
    dumped = json.dumps(results)
    assert PASSWORD not in dumped and WRONG_PASSWORD not in dumped


# =====================================================================================
# 4. Signatures
# =====================================================================================


def test_signature_verification(veth, bpf_objects, plain, playbook):
    good_private, good_public = h.new_signing_key()
    other_private, _other_public = h.new_signing_key()
    obj = bpf_objects["xdp_pass"]
    signed = publish(plain, "sig/signed:1.0", obj)
    h.sign(h.client(plain, "sig/signed"), signed, good_private)
    unsigned_url = plain.url("sig/unsigned:1.0")
    unsigned = publish(plain, "sig/unsigned:1.0", obj)
    other_url = plain.url("sig/otherkey:1.0")
    other = publish(plain, "sig/otherkey:1.0", obj)
    h.sign(h.client(plain, "sig/otherkey"), other, other_private)
    verify = dict(verify="required", verify_key=good_public, insecure_registry=True)

    before = mine(veth)
    results = playbook([
        failing(xdp("unsigned", veth.name + "-unsigned", veth, 100, unsigned_url, **verify)),
        failing(xdp("wrong key", veth.name + "-wrongkey", veth, 100, other_url, **verify)),
    ], expect_failure=True)
    assert_clean_failure(results["unsigned"], "is not signed", "verify is required",
                         "refusing to load it", unsigned)
    assert_clean_failure(results["wrong key"], "none valid for verify_key",
                         "the signature does not verify with verify_key", "refusing to load it")
    assert mine(veth) == before and hx.attached_xdp(veth.name) == []
    cached = cached_refs(plain)
    assert unsigned_url not in cached and other_url not in cached

    res = playbook([xdp("signed", veth.name + "-signed", veth, 100, plain.url("sig/signed:1.0"),
                        **verify)])["signed"]
    assert res["changed"] is True and res["program"]["image_verified"] is True
    assert res["program"]["image_digest"] == signed
    assert test_run(hx.dispatcher_id(veth.name)) == hx.XDP_PASS


# =====================================================================================
# 5. Bytecode of the wrong type, a function the image does not hold; TC from an image
# =====================================================================================


def test_wrong_program_type_and_unknown_function(veth, bpf_objects, plain, playbook):
    tc_digest = publish(plain, "types/tc_pass:1.0", bpf_objects["tc_pass"])
    publish(plain, "types/tc_pass_v1:1.0", bpf_objects["tc_pass"], label_format="v1")
    publish(plain, "types/xdp_pass:1.0", bpf_objects["xdp_pass"])
    tc_url, tc_v1_url = plain.url("types/tc_pass:1.0"), plain.url("types/tc_pass_v1:1.0")
    http = dict(insecure_registry=True)
    tc_name = veth.name + "-tc"
    results = playbook([
        failing(xdp("tc image", veth.name + "-a", veth, 100, tc_url, **http)),
        failing(xdp("tc image v1", veth.name + "-b", veth, 100, tc_v1_url, **http)),
        failing(xdp("tc function", veth.name + "-c", veth, 100, tc_url, bpf_function_name="tc_pass",
                    **http)),
        failing(xdp("unknown function", veth.name + "-d", veth, 100, plain.url("types/xdp_pass:1.0"),
                    bpf_function_name="no_such_function", **http)),
        {"name": "tc module", TC: {"name": tc_name, "image": tc_url, "interface": veth.name,
                                   "direction": "ingress", "priority": 100, **http}},
    ], expect_failure=True)
    assert_clean_failure(results["tc image"], "holds no xdp program", "tc_pass (tc)")
    assert_clean_failure(results["tc image v1"], "holds no xdp program", "tc_pass (tc)")
    assert_clean_failure(results["tc function"], "program 'tc_pass'", "is of type tc, not xdp")
    assert_clean_failure(results["unknown function"], "has no program 'no_such_function'",
                         "it has: pass (xdp)")
    assert hx.attached_xdp(veth.name) == []
    tc = results["tc module"]
    assert not tc["_failed"], tc.get("msg")
    prog = tc["program"]
    assert tc["changed"] is True and prog["type"] == "tc" and prog["direction"] == "ingress"
    assert prog["image_digest"] == tc_digest and prog["bpf_function_name"] == "tc_pass"
    assert hx.bpftool_json("prog", "show", "id", str(prog["id"]))["type"] == "sched_cls"
    assert sorted(mine(veth)["programs"]) == [tc_name]


# =====================================================================================
# 6. Check mode with an uncached image
# =====================================================================================


def _spilled(digest: str) -> list:
    """Leftover check-mode downloads of this image in temp dirs."""
    hexdigest = digest.split(":")[1]
    return [str(p) for p in pathlib.Path(tempfile.gettempdir()).glob("bpfd-image-*/**/%s" % hexdigest)]


def test_check_mode_with_uncached_image(veth, bpf_objects, plain, playbook):
    url = plain.url("check/xdp:1.0")
    digest = publish(plain, "check/xdp:1.0", bpf_objects["xdp_pass"])
    name = veth.name + "-chk"
    before = mine(veth)
    res = playbook([xdp("check", name, veth, 100, url, insecure_registry=True)],
                   check=True, diff=True)["check"]
    assert res["changed"] is True and res["changes"] == ["loaded"]
    prog = res["program"]
    assert prog["id"] is None and prog["position"] == 0
    assert (prog["image_url"], prog["image_digest"], prog["bpf_function_name"]) == (url, digest, "pass")
    assert res["diff"]["before"] == ""
    assert "0: %s priority=100 proceed_on=pass,dispatcher_return image=%s" % (name, digest) \
        in res["diff"]["after"]
    # Nothing in the host cache, no temp download left, no kernel object, no state.
    assert url not in cached_refs(plain)
    assert own_blobs(digest) == []
    assert _spilled(digest) == []
    assert mine(veth) == before and hx.attached_xdp(veth.name) == []


# =====================================================================================
# 7. The facts describe the image options of the task that ran last
# =====================================================================================


def test_facts_follow_the_image_options_of_the_task(veth, bpf_objects, plain, playbook):
    """Same bytecode, new image options: no reload is needed, but the program's facts must
    say what the task asked for (pull_policy, image reference) and what was checked."""
    private, public = h.new_signing_key()
    url = plain.url("facts/xdp:1.0")
    digest = publish(plain, "facts/xdp:1.0", bpf_objects["xdp_pass"])
    h.sign(h.client(plain, "facts/xdp"), digest, private)
    name = veth.name + "-facts"
    results = playbook([
        xdp("tag", name, veth, 100, url, insecure_registry=True),
        xdp("always, verified", name, veth, 100, url, insecure_registry=True, pull_policy="Always",
            verify="required", verify_key=public),
        xdp("by digest", name, veth, 100, plain.url("facts/xdp@" + digest), insecure_registry=True),
    ])
    tag, verified, by_digest = (results[t] for t in ("tag", "always, verified", "by digest"))
    assert tag["changed"] is True and tag["program"]["pull_policy"] == "IfNotPresent"
    prog_id = tag["program"]["id"]
    # No reload for any of them: the bytecode is the same.
    assert verified["program"]["id"] == prog_id and by_digest["program"]["id"] == prog_id
    got = verified["program"]
    assert (got["pull_policy"], got["image_verified"]) == ("Always", True), \
        "facts after a pull_policy: Always + verify: required run say %r" % (
            {k: got[k] for k in ("image_url", "image_digest", "pull_policy", "image_verified")})
    assert by_digest["program"]["image_url"] == plain.url("facts/xdp@" + digest)
