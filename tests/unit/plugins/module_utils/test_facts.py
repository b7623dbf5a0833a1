# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The pure parts of _facts: filters, the chain view and the --diff text."""

from __future__ import annotations

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _facts


def facts(**overrides) -> dict:
    base = {"name": "pass", "id": 6213, "type": "xdp", "interface": "veth0",
            "metadata": {"owner": "netops", "tier": "edge"}}
    base.update(overrides)
    return base


def match(f: dict, **filters) -> bool:
    given = {"name": None, "prog_id": None, "kind": None, "interface": None, "metadata": None}
    given.update(filters)
    return _facts.matches(f, **given)


def member(name: str, priority: int, proceed_on=("pass", "dispatcher_return"), prog_id=None,
           interface: str = "veth0") -> dict:
    record = {"name": name, "priority": priority, "proceed_on": list(proceed_on), "interface": interface}
    if prog_id is not None:
        record["prog_id"] = prog_id
    return record


# --- matches ---------------------------------------------------------------------


def test_no_filter_matches_everything():
    assert match(facts())
    assert match(facts(metadata={}))


@pytest.mark.parametrize("filters, expected", [
    ({"name": "pass"}, True),
    ({"name": "drop"}, False),
    ({"prog_id": 6213}, True),
    ({"prog_id": 1}, False),
    ({"kind": "xdp"}, True),
    ({"kind": "tc"}, False),
    ({"interface": "veth0"}, True),
    ({"interface": "veth1"}, False),
    ({"name": "pass", "interface": "veth1"}, False),  # every filter must hold
    ({"name": "pass", "kind": "xdp", "interface": "veth0", "prog_id": 6213}, True),
])
def test_scalar_filters(filters, expected):
    assert match(facts(), **filters) is expected


@pytest.mark.parametrize("wanted, expected", [
    ({}, True),
    ({"owner": "netops"}, True),
    ({"owner": "netops", "tier": "edge"}, True),  # all pairs
    ({"owner": "netops", "tier": "core"}, False),  # one pair wrong
    ({"owner": "netops", "zone": "a"}, False),  # a key the program lacks
    ({"owner": "NetOps"}, False),  # values compare exactly
])
def test_metadata_filter_needs_all_pairs(wanted, expected):
    assert match(facts(), metadata=wanted) is expected


def test_metadata_filter_on_program_without_metadata():
    assert not match(facts(metadata={}), metadata={"owner": "netops"})


def test_id_filter_does_not_match_a_program_without_kernel_id():
    assert not match(facts(id=None), prog_id=6213)


# --- chain_view ------------------------------------------------------------------


def test_chain_view_positions_follow_the_given_order():
    hook = {"interface": "veth0", "mode": "native", "dispatcher_id": 77}
    view = _facts.chain_view(hook, [member("a", 10, prog_id=5), member("b", 20, ["drop"], prog_id=6)])
    assert view == {
        "interface": "veth0", "direction": None, "mode": "native", "dispatcher_id": 77,
        "programs": [
            {"position": 0, "name": "a", "priority": 10, "proceed_on": ["pass", "dispatcher_return"], "id": 5,
             "digest": None, "sha256": None, "bpf_function_name": None, "global_data": {}},
            {"position": 1, "name": "b", "priority": 20, "proceed_on": ["drop"], "id": 6, "digest": None,
             "sha256": None, "bpf_function_name": None, "global_data": {}},
        ],
    }


def test_chain_view_without_hook_is_a_prediction():
    view = _facts.chain_view(None, [member("new", 5)])
    assert view["mode"] is None and view["dispatcher_id"] is None
    assert view["interface"] == "veth0"
    assert view["programs"][0]["id"] is None  # check mode: not loaded yet


def test_chain_view_interface_comes_from_members_then_hook():
    renamed = _facts.chain_view({"interface": "old-name", "mode": "skb"}, [member("a", 1, interface="new-name")])
    assert renamed["interface"] == "new-name"
    emptied = _facts.chain_view({"interface": "veth0", "mode": "skb", "dispatcher_id": 3}, [])
    assert emptied["interface"] == "veth0" and emptied["programs"] == []


# --- diff_text -------------------------------------------------------------------


def test_diff_text_of_nothing_is_empty():
    assert _facts.diff_text({}) == ""


def test_diff_text_one_line_per_program():
    chain = _facts.chain_view({"interface": "veth0", "mode": "native"},
                              [member("a", 10), member("b", 20, ["pass", "drop"])])
    assert _facts.diff_text({"xdp_7": chain}) == (
        "xdp_7 (veth0, native mode):\n"
        "  0: a priority=10 proceed_on=pass,dispatcher_return\n"
        "  1: b priority=20 proceed_on=pass,drop\n")


def test_diff_text_hooks_sorted_and_auto_mode():
    first = _facts.chain_view(None, [member("x", 1, interface="eth1")])
    second = _facts.chain_view({"interface": "eth0", "mode": "skb"}, [member("y", 2, interface="eth0")])
    text = _facts.diff_text({"xdp_9": first, "xdp_10": second})
    lines = text.splitlines()
    assert lines[0] == "xdp_10 (eth0, skb mode):"  # string order of keys, stable between runs
    assert lines[2] == "xdp_9 (eth1, auto mode):"
    assert text.endswith("\n")


def test_diff_text_empty_chain_keeps_its_header():
    emptied = _facts.chain_view({"interface": "veth0", "mode": "native"}, [])
    assert _facts.diff_text({"xdp_3": emptied}) == "xdp_3 (veth0, native mode):\n"
