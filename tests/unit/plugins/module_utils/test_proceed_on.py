# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""proceed-on values, dispatcher masks and chain order, checked against bpfd's numbers.

bpfd's dispatchers continue after a program when ``(1 << ret) & mask`` (XDP) or
``(1 << (ret + 1)) & mask`` (TC, whose TC_ACT_UNSPEC is -1) is set; the tables
below are bpfd's XdpProceedOn / TcProceedOn values, written out independently.
"""

from __future__ import annotations

import itertools

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _proceed_on as po
from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError

BPFD_XDP = {"aborted": 0, "drop": 1, "pass": 2, "tx": 3, "redirect": 4, "dispatcher_return": 31}
BPFD_TC = {"unspec": -1, "ok": 0, "reclassify": 1, "shot": 2, "pipe": 3, "stolen": 4, "queued": 5,
           "repeat": 6, "redirect": 7, "trap": 8, "dispatcher_return": 30}


def test_tables_are_bpfds():
    assert po.XDP_ACTIONS == BPFD_XDP
    assert po.TC_ACTIONS == BPFD_TC
    assert po.actions("xdp") == BPFD_XDP and po.actions("tc") == BPFD_TC
    assert (po.MIN_PRIORITY, po.MAX_PRIORITY, po.MAX_MEMBERS) == (0, 1000, 10)


@pytest.mark.parametrize("name,ret", sorted(BPFD_XDP.items()))
def test_xdp_mask_bit_is_one_shifted_by_the_return_code(name, ret):
    assert po.mask("xdp", [name]) == 1 << ret


@pytest.mark.parametrize("name,ret", sorted(BPFD_TC.items()))
def test_tc_mask_bit_is_one_shifted_by_the_return_code_plus_one(name, ret):
    assert po.mask("tc", [name]) == 1 << (ret + 1)


def test_tc_unspec_is_bit_zero_and_every_tc_bit_fits_32_bits():
    assert po.mask("tc", ["unspec"]) == 1
    assert po.mask("tc", list(BPFD_TC)) < 1 << 32
    assert po.mask("xdp", list(BPFD_XDP)) < 1 << 32


def test_default_masks():
    assert po.default_proceed_on("xdp") == ["pass", "dispatcher_return"]
    assert po.default_proceed_on("tc") == ["pipe", "dispatcher_return"]
    assert po.mask("xdp", po.default_proceed_on("xdp")) == (1 << 2) | (1 << 31) == 0x80000004
    assert po.mask("tc", po.default_proceed_on("tc")) == (1 << 4) | (1 << 31) == 0x80000010
    assert po.normalize("xdp", None) == ["pass", "dispatcher_return"]
    assert po.normalize("tc", None) == ["pipe", "dispatcher_return"]


def test_mask_combines_bits_and_ignores_duplicates():
    assert po.mask("xdp", ["drop", "pass", "pass"]) == (1 << 1) | (1 << 2)
    assert po.mask("xdp", []) == 0
    assert po.mask("tc", ["ok", "shot", "unspec"]) == 0b1011


def test_normalize_orders_by_table_dedupes_and_folds_case():
    assert po.normalize("xdp", ["dispatcher_return", "pass", "drop", "pass"]) == ["drop", "pass", "dispatcher_return"]
    assert po.normalize("xdp", [" PASS ", "Drop"]) == ["drop", "pass"]
    assert po.normalize("tc", ["trap", "unspec", "ok"]) == ["unspec", "ok", "trap"]
    # The same set, in any order, gives the same record (so a re-run is not a change).
    for perm in itertools.permutations(["tx", "aborted", "redirect"]):
        assert po.normalize("xdp", list(perm)) == ["aborted", "tx", "redirect"]


@pytest.mark.parametrize("kind,values,bad", [
    ("xdp", ["pass", "bogus"], "bogus"),
    ("xdp", ["ok"], "ok"),            # a TC value given to XDP
    ("tc", ["pass"], "pass"),         # an XDP value given to TC
    ("tc", ["pipe", "zzz", "aaa"], "aaa, zzz"),
])
def test_normalize_rejects_unknown_values_with_the_valid_ones(kind, values, bad):
    with pytest.raises(BpfdError) as err:
        po.normalize(kind, values)
    msg = err.value.msg
    assert "unknown %s proceed_on value(s): %s" % (kind.upper(), bad) in msg
    assert "valid values are: %s" % ", ".join(BPFD_XDP if kind == "xdp" else BPFD_TC) in msg


@pytest.mark.parametrize("priority", [0, 1, 500, 1000])
def test_priority_in_range(priority):
    assert po.check_priority(priority) == priority


@pytest.mark.parametrize("priority", [-1, 1001, -1000, 10 ** 6])
def test_priority_out_of_range(priority):
    with pytest.raises(BpfdError, match="priority must be between 0 and 1000, got %d" % priority):
        po.check_priority(priority)


def _m(name, priority):
    return {"name": name, "priority": priority}


def test_order_by_priority_then_name_whatever_the_input_order():
    members = [_m("c", 100), _m("a", 100), _m("b", 100), _m("z", 50), _m("early", 9), _m("late", 1000)]
    expected = ["early", "z", "a", "b", "c", "late"]
    for perm in itertools.permutations(members):
        assert [m["name"] for m in po.order(list(perm))] == expected


def test_order_compares_priorities_as_numbers_and_names_as_strings():
    members = [_m("x", 100), _m("y", 20), _m("b10", 5), _m("b9", 5)]
    assert [m["name"] for m in po.order(members)] == ["b10", "b9", "y", "x"]
    assert po.order([]) == []


def test_order_returns_a_new_list():
    members = [_m("b", 1), _m("a", 1)]
    ordered = po.order(members)
    assert [m["name"] for m in members] == ["b", "a"]
    assert ordered[0] is members[1]
