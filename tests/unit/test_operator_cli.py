"""`exchange operator create|list|disable`: console accounts from the command line, password never in argv."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from exchange.cli.main import main
from exchange.console.security import check_password

CONFIG = """
[node]
name = "node-a"
data_dir = "data"

[pki]
ca_files = ["pki/ca.pem"]

[directory]
file = "directory.toml"
"""


@pytest.fixture
def config(tmp_path: Path) -> str:
    (tmp_path / "data").mkdir()
    path = tmp_path / "node.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return str(path)


def run(monkeypatch, *argv: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(list(argv))


def test_an_account_is_created_from_stdin_listed_and_disabled(config, monkeypatch, capsys, tmp_path) -> None:
    password = "a very long passphrase"
    assert (
        run(
            monkeypatch,
            "operator",
            "create",
            "--config",
            config,
            "--name",
            "lan",
            "--role",
            "operator",
            "--password-stdin",
            stdin=password + "\n",
        )
        == 0
    )
    assert run(monkeypatch, "operator", "list", "--config", config) == 0
    out = capsys.readouterr().out
    assert "lan" in out and "operator" in out and "active" in out and password not in out

    import sqlite3

    with sqlite3.connect(tmp_path / "data" / "exchange.db") as db:
        (stored,) = db.execute("SELECT password_hash FROM operators WHERE name = 'lan'").fetchone()
        journal = [r[0] for r in db.execute("SELECT event FROM journal")]
    assert stored.startswith("scrypt$") and check_password(password, stored) and password not in stored
    assert any('"operator_create"' in e for e in journal) and not any(password in e for e in journal)

    assert run(monkeypatch, "operator", "disable", "--config", config, "--name", "lan") == 0
    assert run(monkeypatch, "operator", "list", "--config", config) == 0
    assert "disabled" in capsys.readouterr().out


def test_a_taken_name_a_short_password_and_an_unknown_account_are_refused_in_one_line(
    config, monkeypatch, capsys
) -> None:
    args = ("operator", "create", "--config", config, "--name", "lan", "--role", "viewer", "--password-stdin")
    assert run(monkeypatch, *args, stdin="long enough password\n") == 0
    assert run(monkeypatch, *args, stdin="long enough password\n") == 1
    assert "[conflict]" in capsys.readouterr().err
    assert run(monkeypatch, *args[:5], "other", *args[6:], stdin="short\n") == 1
    assert "at least 12" in capsys.readouterr().err
    assert run(monkeypatch, "operator", "disable", "--config", config, "--name", "nobody") == 1
    assert "[not-found]" in capsys.readouterr().err


def test_there_is_no_way_to_give_the_password_on_the_command_line(config, monkeypatch) -> None:
    with pytest.raises(SystemExit):
        run(
            monkeypatch,
            "operator",
            "create",
            "--config",
            config,
            "--name",
            "x",
            "--role",
            "viewer",
            "--password",
            "in argv",
        )
