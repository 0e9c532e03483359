"""Node configuration: TOML, environment overrides, clear errors."""

from __future__ import annotations

import pytest

from exchange.config import load_config
from exchange.errors import ConfigError

BASE = """
[node]
name = "node-a"
data_dir = "data"

[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/"
retry_delays = [1, 2]

[pki]
ca_files = ["pki/ca.pem"]

[directory]
file = "directory.toml"

[[agencies]]
code = "000.00.00.G22"
key = "pki/g22.key"
cert = "pki/g22.pem"
adapter = "webhook"
[agencies.options]
url = "http://127.0.0.1:9000/hook"
"""


def test_paths_resolve_relative_to_the_file_and_env_overrides_win(tmp_path) -> None:
    path = tmp_path / "exchange.toml"
    path.write_text(BASE, encoding="utf-8")
    cfg = load_config(path, environ={"EXCHANGE__AMQP__URL": "amqp://u:secret@h/v", "EXCHANGE__HTTP__PORT": "9999"})
    assert cfg.amqp.url == "amqp://u:secret@h/v"
    assert cfg.http.port == 9999
    assert cfg.amqp.retry_delays == (1, 2)
    assert cfg.ca_files == (tmp_path / "pki/ca.pem",)
    assert cfg.store_url == f"sqlite:///{tmp_path / 'data' / 'exchange.db'}"
    assert cfg.agency("000.00.00.G22").options == {"url": "http://127.0.0.1:9000/hook"}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.replace('name = "node-a"', ""), r"\[node\] name is required"),
        (lambda s: s.replace('"000.00.00.G22"', '"G22"'), "QCVN 102"),
        (lambda s: s.replace('ca_files = ["pki/ca.pem"]', "ca_files = []"), "trust store"),
        (lambda s: s.replace("[amqp]", "[amqp]\nbogus = 1"), "unknown keys"),
        (lambda s: s + '\n[[agencies]]\ncode = "000.00.00.H41"\n', "lacks 'key'"),
        (lambda s: s.replace("[node]", "[node"), "not valid TOML"),
    ],
)
def test_invalid_configs_say_what_to_fix(tmp_path, edit, message) -> None:
    path = tmp_path / "exchange.toml"
    path.write_text(edit(BASE), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


def test_missing_file_points_to_the_dev_command(tmp_path) -> None:
    with pytest.raises(ConfigError, match="exchange serve --dev"):
        load_config(tmp_path / "nope.toml", environ={})


def test_the_replay_window_is_seven_days_and_can_be_set_in_limits_or_the_environment(tmp_path) -> None:
    path = tmp_path / "exchange.toml"
    path.write_text(BASE, encoding="utf-8")
    assert load_config(path, environ={}).limits.replay_window_seconds == 7 * 24 * 3600
    path.write_text(BASE + "\n[limits]\nreplay_window_seconds = 1209600\n", encoding="utf-8")
    assert load_config(path, environ={}).limits.replay_window_seconds == 1209600
    cfg = load_config(path, environ={"EXCHANGE__LIMITS__REPLAY_WINDOW_SECONDS": "86400"})
    assert cfg.limits.replay_window_seconds == 86400


def test_the_replay_windows_former_name_is_still_read_with_a_deprecation_warning(tmp_path) -> None:
    path = tmp_path / "exchange.toml"
    path.write_text(BASE + "\n[limits]\ncreated_window_seconds = 1209600\n", encoding="utf-8")
    with pytest.warns(DeprecationWarning, match="rename it to replay_window_seconds"):
        assert load_config(path, environ={}).limits.replay_window_seconds == 1209600
    with pytest.warns(DeprecationWarning):
        cfg = load_config(path, environ={"EXCHANGE__LIMITS__CREATED_WINDOW_SECONDS": "86400"})
    assert cfg.limits.replay_window_seconds == 86400
    path.write_text(BASE + "\n[limits]\ncreated_window_seconds = 1\nreplay_window_seconds = 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="sets both created_window_seconds"):
        load_config(path, environ={})


@pytest.mark.parametrize(
    "value, message",
    [
        ("0", "must be longer than the node's retry schedule"),
        ("-5", "must be longer than the node's retry schedule"),
        # BASE retries after 1 s and then 2 s (max_attempts 6 by default): 1 + 2 + 2 + 2 + 2 = 9 s.
        ("9", r"\(9 s by \[amqp\] retry_delays"),
        ("seven days", "is not a valid int"),
    ],
)
def test_a_replay_window_the_retries_would_outlast_is_refused_at_start(tmp_path, value, message) -> None:
    path = tmp_path / "exchange.toml"
    path.write_text(BASE, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={"EXCHANGE__LIMITS__REPLAY_WINDOW_SECONDS": value})
    load_config(path, environ={"EXCHANGE__LIMITS__REPLAY_WINDOW_SECONDS": "10"})  # just longer: fine
