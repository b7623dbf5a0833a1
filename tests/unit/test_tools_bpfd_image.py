# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""tools/bpfd_image.py: argument parsing (no registry, no object needed)."""

from __future__ import annotations

import importlib.util
import io
import pathlib

import pytest

TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / "bpfd_image.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("bpfd_image_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_push_defaults(tool):
    args = tool.parse_args(["push", "xdp_pass.o", "registry.example/bpf/xdp_pass:v1"])
    assert (args.command, args.object, args.url) == ("push", "xdp_pass.o", "registry.example/bpf/xdp_pass:v1")
    assert args.label_format == "v2" and args.docker_media_types is False
    assert args.username is None and args.password is None
    assert args.insecure is False and args.ca_path is None and args.validate_certs is True
    assert args.programs is None


def test_push_every_option(tool):
    args = tool.parse_args(
        ["push", "o.o", "r.example/x:1", "--label-format", "v1", "--docker-media-types",
         "--username", "me", "--password-stdin", "--ca-path", "/ca.pem", "--no-verify-tls",
         "--program", "pass=xdp", "--program", "count=tc", "--timeout", "5"],
        stdin=io.StringIO("s3cret\n"))
    assert args.label_format == "v1" and args.docker_media_types is True
    assert (args.username, args.password) == ("me", "s3cret")
    assert args.ca_path == "/ca.pem" and args.validate_certs is False and args.timeout == 5.0
    assert args.programs == {"pass": "xdp", "count": "tc"}


@pytest.mark.parametrize("argv, message", [
    (["push", "o.o", "r/x"], None),  # sane: no error
    (["push", "o.o", "r/x", "--password-stdin"], "--password-stdin needs --username"),
    (["push", "o.o", "r/x", "--username", "me"], "--username needs --password-stdin"),
    (["push", "o.o", "r/x", "--insecure", "--ca-path", "c"], "--insecure is plain HTTP"),
    (["push", "o.o", "r/x", "--insecure", "--no-verify-tls"], "--insecure is plain HTTP"),
    (["push", "o.o", "r/x", "--label-format", "v3"], "invalid choice"),
    (["push", "o.o", "r/x", "--program", "pass"], "FUNCTION=TYPE"),
    (["push", "o.o"], "required: URL"),
    (["build", "o.o", "out", "--tag", "bad tag"], "not a valid tag"),
    (["build", "o.o"], "required: OUTDIR"),
    ([], "required: {push,build}"),
    (["pull", "x"], "invalid choice"),
])
def test_bad_arguments(tool, capsys, argv, message):
    if message is None:
        tool.parse_args(argv)
        return
    with pytest.raises(SystemExit) as exc:
        tool.parse_args(argv, stdin=io.StringIO(""))
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_empty_password_on_stdin(tool, capsys):
    with pytest.raises(SystemExit):
        tool.parse_args(["push", "o.o", "r/x", "-u", "me", "--password-stdin"], stdin=io.StringIO("\n"))
    assert "stdin was empty" in capsys.readouterr().err


def test_build_defaults(tool):
    args = tool.parse_args(["build", "o.o", "outdir"])
    assert (args.command, args.object, args.outdir, args.tag) == ("build", "o.o", "outdir", "latest")
    assert args.label_format == "v2"


def test_missing_object_is_a_clean_error(tool, tmp_path, capsys):
    assert tool.main(["build", str(tmp_path / "none.o"), str(tmp_path / "out")]) == 1
    assert "bpfd_image.py: error:" in capsys.readouterr().err
