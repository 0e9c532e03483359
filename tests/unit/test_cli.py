"""The `exchange` command's habits: results on stdout, logs on stderr; every --help says what and how."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.cli.main import build_parser, main
from exchange.devworld import AgencySpec, NodeSpec, build_world

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and sub-action of the parser tree, as argv prefixes: (), ("pki",), ("pki", "init"), …"""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from command_paths(child, (*path, name))


def examples(help_text: str) -> list[str]:
    """The example command lines of a --help text (after "examples:", continuation lines joined)."""
    _, _, tail = help_text.partition("\nexamples:\n")
    commands: list[str] = []
    pending = ""
    for line in tail.splitlines():
        if not line.strip():
            break
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        commands.append(pending)
        pending = ""
    return commands


ALL_PATHS = list(command_paths(build_parser()))


def test_the_walk_covers_every_command_and_action() -> None:
    # Guards the walk itself: if it stopped seeing subparsers, the help test below would pass vacuously.
    names = {" ".join(p) for p in ALL_PATHS}
    assert {
        "serve",
        "send",
        "sign",
        "verify",
        "pki init",
        "pki issue",
        "dlq replay",
        "journal verify",
        "token create",
        "bench",
    } <= names
    assert len(ALL_PATHS) >= 20


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: " ".join(p) or "exchange")
def test_every_command_help_has_a_description_and_a_working_example(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith("usage: exchange"), text
    description = rest.split("\n\n", 1)[0]
    assert not description.startswith(("positional arguments:", "options:")), f"no description:\n{text}"
    assert len(description.split()) >= 5, f"description too thin:\n{text}"

    prefix = " ".join(("exchange", *path))
    mine = [e for e in examples(text) if e == prefix or e.startswith(prefix + " ")]
    assert mine, f"no example of `{prefix} …` under 'examples:' in:\n{text}"
    for example in mine:
        # An example that does not parse would teach the wrong thing.
        build_parser().parse_args(shlex.split(example)[1:])


def make_node(tmp_path: Path) -> Path:
    agencies = [
        AgencySpec("000.00.00.G22", "Văn phòng Chính phủ", "n1", ec=True),
        AgencySpec("000.00.00.H41", "UBND tỉnh Nghệ An", "n1", ec=True),
    ]
    # `send` only writes the outbox; no broker is contacted, so the URL is never used.
    return build_world(tmp_path, agencies, [NodeSpec("n1", amqp_url="amqp://guest:guest@127.0.0.1:1/unused")])["n1"]


def test_send_prints_only_the_message_id_on_stdout_and_logs_on_stderr(tmp_path: Path) -> None:
    config = make_node(tmp_path)
    (tmp_path / "qd.txt").write_text("Quyết định số 12\n", encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "exchange.cli.main",
            "send",
            "--config",
            str(config),
            "--from",
            "000.00.00.G22",
            "--to",
            "000.00.00.H41",
            "--number",
            "12",
            "--notation",
            "CT-TTg",
            "--subject",
            "Chỉ thị về chuyển đổi số",
            "--attach",
            str(tmp_path / "qd.txt"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and UUID.match(lines[0]), f"stdout must be the message id alone: {proc.stdout!r}"
    # The log line about the submission is still written, on stderr, and names the same message.
    submitted = [line for line in proc.stderr.splitlines() if "document.submitted" in line]
    assert submitted and lines[0] in submitted[0], proc.stderr


def test_send_log_level_follows_the_log_override(tmp_path: Path) -> None:
    config = make_node(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "exchange.cli.main",
            "send",
            "--config",
            str(config),
            "--from",
            "000.00.00.G22",
            "--to",
            "000.00.00.H41",
            "--number",
            "1",
            "--subject",
            "Báo cáo",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "EXCHANGE__LOG__LEVEL": "WARNING"},
    )
    assert proc.returncode == 0, proc.stderr
    assert UUID.match(proc.stdout.strip())
    assert "document.submitted" not in proc.stderr
