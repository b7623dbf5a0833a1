# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""bpfctl's text output against the bpfd tutorial (seed), its arguments and its config."""

from __future__ import annotations

import json

import pytest

from ansible_collections.bpfd.core.plugins.module_utils import _bpfctl

# `bpfctl get 6213` in the bpfd tutorial (an image-loaded program).
TUTORIAL_GET = """\
 Bpfd State
---------------
 Name:          pass
 Image URL:     quay.io/bpfd-bytecode/xdp_pass:latest
 Pull Policy:   IfNotPresent
 Global:        None
 Metadata:      None
 Map Pin Path:  /run/bpfd/fs/maps/6213
 Map Owner ID:  None
 Map Used By:   6213
 Priority:      100
 Iface:         vethff657c7
 Position:      0
 Proceed On:    pass, dispatcher_return

 Kernel State
----------------------------------
 ID:                               6213
 Name:                             pass
 Type:                             xdp
 Loaded At:                        2023-07-17T17:48:10-0400
 Tag:                              4b9d1b2c140e87ce
 GPL Compatible:                   true
 Map IDs:                          [2724]
 BTF ID:                           2834
 Size Translated (bytes):          96
 JITed:                            true
 Size JITed (bytes):               67
 Kernel Allocated Memory (bytes):  4096
 Verified Instruction Count:       9
"""

TUTORIAL_FACTS = {
    "name": "pass", "type": "xdp", "image_url": "quay.io/bpfd-bytecode/xdp_pass:latest",
    "pull_policy": "IfNotPresent", "global_data": {}, "metadata": {}, "map_pin_path": "/run/bpfd/fs/maps/6213",
    "map_owner_id": None, "maps_used_by": [6213], "priority": 100, "interface": "vethff657c7", "position": 0,
    "proceed_on": ["pass", "dispatcher_return"], "direction": None, "netns": None,
    "id": 6213, "kernel_name": "pass", "prog_type": "xdp", "loaded_at": "2023-07-17T17:48:10-0400",
    "tag": "4b9d1b2c140e87ce", "gpl_compatible": True, "map_ids": [2724], "btf_id": 2834,
    "size_translated_bytes": 96, "jited": True, "size_jited_bytes": 67, "kernel_allocated_memory_bytes": 4096,
    "verified_insns": 9,
}


def test_get_prints_the_tutorial_layout():
    assert _bpfctl.format_get(TUTORIAL_FACTS) == TUTORIAL_GET


def test_get_of_a_file_tc_program_with_globals_and_metadata():
    facts = dict(TUTORIAL_FACTS, image_url=None, path="/opt/bpf/tc.o", type="tc", direction="egress",
                 global_data={"b": "02", "a": "01"}, metadata={"owner": "netops"}, maps_used_by=[7, 9],
                 prog_type="sched_cls", btf_id=0)
    text = _bpfctl.format_get(facts)
    assert " Path:          /opt/bpf/tc.o\n" in text and "Image URL" not in text
    assert " Global:        a=01\n                b=02\n" in text
    assert " Metadata:      owner=netops\n" in text
    assert " Map Used By:   7\n                9\n" in text
    assert " Position:      0\n Direction:     egress\n Proceed On:" in text
    assert " Type:                             sched_cls\n" in text
    assert " BTF ID:                           None\n" in text


def test_get_of_a_program_from_source_shows_source_and_cflags():
    facts = dict(TUTORIAL_FACTS, image_url=None, path="/etc/bpfd/verdict.c", source="/etc/bpfd/verdict.c",
                 cflags=["-DVERDICT=1", "-I/opt/inc"])
    text = _bpfctl.format_get(facts)
    assert " Source:        /etc/bpfd/verdict.c\n Cflags:        -DVERDICT=1\n                -I/opt/inc\n" in text
    assert "\n Path:" not in text and "Image URL" not in text
    assert " Cflags:        None\n" in _bpfctl.format_get(dict(facts, cflags=[]))


def test_get_without_the_kernel_view_says_why():
    facts = {k: v for k, v in TUTORIAL_FACTS.items()
             if k not in ("tag", "kernel_name", "prog_type", "loaded_at", "map_ids", "btf_id")}
    text = _bpfctl.format_get(facts)
    assert text.endswith(" ID:                               6213\n"
                         " (the kernel's view of this program needs root, or read access to its pin)\n")


def test_list_has_the_tutorial_columns_plus_attach_point_and_position():
    programs = [
        dict(TUTORIAL_FACTS, id=6215, priority=50, position=0, loaded_at="2023-07-17T17:52:46-0400"),
        dict(TUTORIAL_FACTS, position=1),
        {"name": "egress", "type": "tc", "id": 12, "interface": "eth1", "direction": "egress", "position": 0,
         "loaded_at": None},
        {"managed": False, "id": 3, "kernel_name": "hid_tail_call", "prog_type": "tracing",
         "loaded_at": "2023-07-17T17:00:00-0400"},
    ]
    assert _bpfctl.format_list(programs) == (
        " Program ID  Name           Type     Load Time                 Attach Point  Position\n"
        " 3           hid_tail_call  tracing  2023-07-17T17:00:00-0400  -             -\n"
        " 12          egress         tc       -                         eth1 egress   0\n"
        " 6213        pass           xdp      2023-07-17T17:48:10-0400  vethff657c7   1\n"
        " 6215        pass           xdp      2023-07-17T17:52:46-0400  vethff657c7   0\n")


def test_empty_list_is_the_header():
    assert _bpfctl.format_list([]) == " Program ID  Name  Type  Load Time  Attach Point  Position\n"


def test_find_program_by_id_then_name():
    programs = [{"name": "42", "id": 7}, {"name": "web", "id": 42}]
    assert _bpfctl.find_program(programs, "42")["name"] == "web"
    assert _bpfctl.find_program(programs, "web")["id"] == 42
    assert _bpfctl.find_program([{"name": "42", "id": 7}], "42")["id"] == 7
    assert _bpfctl.find_program(programs, "nope") is None


@pytest.mark.parametrize("argv", [["--json", "list"], ["list", "--json"]])
def test_json_flag_before_or_after_the_command(argv):
    args = _bpfctl.build_parser().parse_args(argv)
    assert args.command == "list" and args.json is True


def test_parser_commands():
    parser = _bpfctl.build_parser()
    assert parser.parse_args(["get", "6213"]).program == "6213"
    assert parser.parse_args(["unload-all", "--keep-declaration", "--check"]).keep_declaration is True
    assert parser.parse_args(["restore", "--wait", "2.5"]).wait == 2.5
    assert getattr(parser.parse_args(["list"]), "json", False) is False
    with pytest.raises(SystemExit):
        parser.parse_args([])


def test_changing_commands_need_root(monkeypatch, capsys):
    monkeypatch.setattr(_bpfctl.os, "geteuid", lambda: 1000)
    assert _bpfctl.main(["restore"]) == _bpfctl.EXIT_NOPERM
    assert "run it as root (sudo bpfctl restore)" in capsys.readouterr().err
    assert _bpfctl.main(["--json", "unload-all"]) == _bpfctl.EXIT_NOPERM
    assert json.loads(capsys.readouterr().out)["failed"] is True


def test_config_defaults_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("BPFD_CONFIG_DIR", str(tmp_path))
    assert _bpfctl.load_config() == _bpfctl.DEFAULT_CONFIG
    (tmp_path / "bpfctl.json").write_text(json.dumps({"restore_wait_seconds": 5, "group": "ops"}))
    assert _bpfctl.load_config() == {"group": "ops", "restore_wait_seconds": 5}
    (tmp_path / "bpfctl.json").write_text("{nope")
    with pytest.raises(Exception, match="cannot read the configuration"):
        _bpfctl.load_config()
