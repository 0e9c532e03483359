"""The node's processes as an operator meets them: a taken port, a silent broker, signals.

Each test runs the real command as a subprocess. "Broker unreachable" is a closed port or a
silent TCP server started here (it accepts connections and never says a word of AMQP): the
shared RabbitMQ is never touched, except by the test of a running node, which only uses it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.devworld import AgencySpec, NodeSpec, build_world

ROOT = Path(__file__).resolve().parents[2]
A = "000.00.00.G22"
#: A hang guard, not a measurement: the old code ignored the signal for 70 s and more.
HANG = 60


def exchange(*args: str) -> list[str]:
    return [sys.executable, "-m", "exchange.cli.main", *args]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE")}


def node_config(tmp_path: Path, amqp_url: str, **kw) -> Path:
    spec = AgencySpec(A, "Văn phòng Chính phủ", node="n", adapter="pull")
    return build_world(tmp_path / "world", [spec], [NodeSpec("n", amqp_url=amqp_url, http_port=0, **kw)])["n"]


@contextlib.contextmanager
def held_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


class SilentServer:
    """Accepts TCP connections and never answers: a broker that is up but says nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)

    def close(self) -> None:
        for c in self.accepted:
            c.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens on it once closed


def one_error_line(stderr: str, code: str) -> str:
    """The command's error: exactly one line ``exchange: error [code]: …`` and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("exchange: error")]
    assert len(lines) == 1 and f"[{code}]" in lines[0], stderr
    return lines[0]


# -- 12: a taken HTTP port -----------------------------------------------------------------


def test_serve_on_a_taken_port_says_which_port_and_how_to_choose_another_and_exits(tmp_path: Path) -> None:
    config = node_config(tmp_path, f"amqp://guest:guest@127.0.0.1:{closed_port()}/")
    with held_port() as port:
        proc = subprocess.run(
            exchange("serve", "--config", str(config), "--port", str(port)),
            capture_output=True,
            text=True,
            timeout=HANG,
            env=clean_env(),
        )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = one_error_line(proc.stderr, "port-in-use")
    assert f"port {port}" in line and "--port" in line and "EXCHANGE__HTTP__PORT" in line


def test_demo_on_a_taken_port_says_which_port_and_exits(tmp_path: Path) -> None:
    with held_port() as port:
        proc = subprocess.run(
            exchange(
                "demo",
                "--once",
                "--dir",
                str(tmp_path / "demo"),
                "--port",
                str(port),
                "--amqp-url",
                f"amqp://guest:guest@127.0.0.1:{closed_port()}/",
                "--timeout",
                "30",
            ),
            capture_output=True,
            text=True,
            timeout=HANG * 2,
            env=clean_env(),
        )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"port {port}" in one_error_line(proc.stderr, "port-in-use")


def test_run_sh_on_a_taken_port_says_which_port_and_exits(tmp_path: Path) -> None:
    with held_port() as port:
        proc = subprocess.run(
            [str(ROOT / "deploy/run.sh"), "--port", str(port), "--dev-dir", str(tmp_path / "dev")],
            capture_output=True,
            text=True,
            timeout=HANG * 5,
            env=clean_env(),
        )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"port {port}" in one_error_line(proc.stderr, "port-in-use")


# -- 13: SIGTERM / SIGINT end the process in every state ----------------------------------


def start_serving(config: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """``exchange serve`` in the background, once it printed that it serves."""
    proc = subprocess.Popen(
        exchange("serve", "--config", str(config), "--port", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    assert proc.stdout is not None
    out = []
    deadline = time.monotonic() + HANG
    while not any("serving" in ln for ln in out):
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"exchange serve did not start: {''.join(out)}{proc.communicate()[1]}")
        out.append(line)
    return proc, out


def stop_with(proc: subprocess.Popen[str], sig: signal.Signals) -> str:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"exchange serve ignored {sig.name}: {proc.communicate()[1][-3000:]}") from None
    assert proc.returncode == 0, err[-3000:]
    assert "process.stopping" in err and sig.name in err  # the operator sees why it stops
    assert "process.exit_forced" not in err, err[-3000:]  # it stopped by itself, not by the watchdog
    assert "node.stopped" in err
    return err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_on_a_signal_while_the_broker_accepts_tcp_but_never_answers(
    tmp_path: Path, silent: SilentServer, sig: signal.Signals
) -> None:
    proc, _ = start_serving(node_config(tmp_path, f"amqp://guest:guest@127.0.0.1:{silent.port}/"))
    deadline = time.monotonic() + HANG
    while not silent.accepted:  # the node is connecting: TCP is up, the AMQP handshake never comes
        assert time.monotonic() < deadline and proc.poll() is None, "the node never connected"
        time.sleep(0.05)
    time.sleep(0.5)
    stop_with(proc, sig)


def test_serve_stops_on_sigterm_while_the_broker_is_unreachable(tmp_path: Path) -> None:
    proc, _ = start_serving(node_config(tmp_path, f"amqp://guest:guest@127.0.0.1:{closed_port()}/"))
    time.sleep(1.0)  # a connection attempt or two has failed; the supervisor is backing off
    stop_with(proc, signal.SIGTERM)


@pytest.mark.broker
def test_serve_connected_to_the_broker_stops_on_sigterm(tmp_path: Path, amqp_url: str, amqp_prefix: str) -> None:
    proc, _ = start_serving(node_config(tmp_path, amqp_url, prefix=amqp_prefix))
    assert proc.stderr is not None
    deadline = time.monotonic() + HANG
    seen = ""
    while "broker.connected" not in seen:  # running: topology declared, consumers on
        assert time.monotonic() < deadline and proc.poll() is None, seen[-2000:]
        seen += proc.stderr.readline()
    stop_with(proc, signal.SIGTERM)


# -- 14: dlq commands without a broker ------------------------------------------------------


@pytest.mark.parametrize("action", [["list"], ["replay", "--all", "--reason", "test"]])
def test_dlq_commands_without_a_broker_say_so_in_one_line(tmp_path: Path, action: list[str]) -> None:
    config = node_config(tmp_path, f"amqp://guest:guest@127.0.0.1:{closed_port()}/")
    proc = subprocess.run(
        exchange("dlq", *action, "--config", str(config)), capture_output=True, text=True, timeout=HANG, env=clean_env()
    )
    assert proc.returncode == 1
    line = one_error_line(proc.stderr, "broker-unavailable")
    assert "RabbitMQ" in line and "[amqp] url" in line and "guest:guest" not in line


def test_dlq_list_against_a_broker_that_never_answers_gives_up_in_one_line(
    tmp_path: Path, silent: SilentServer
) -> None:
    config = node_config(tmp_path, f"amqp://guest:guest@127.0.0.1:{silent.port}/")
    proc = subprocess.run(
        exchange("dlq", "list", "--config", str(config)), capture_output=True, text=True, timeout=HANG, env=clean_env()
    )
    assert proc.returncode == 1
    one_error_line(proc.stderr, "broker-unavailable")
