"""Shared fixtures: a private RabbitMQ vhost per test run, broker restarts that always heal, adapters stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import pytest

from tests.factories import Adapters


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


# rabbitmqctl commands that take the shared broker away from every other test running at the time.
BROKER_STOPPING = frozenset({"stop_app", "stop", "reset", "force_reset", "shutdown"})


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    """Run rabbitmqctl; raise with its output if it fails.

    Under pytest-xdist (PYTEST_XDIST_WORKER set) other workers' tests use the broker at the same
    time, so stopping it is refused: such a test is marked ``serial`` and deploy/test.sh runs it
    alone, in a second pytest run without ``-n`` (CONTRIBUTING.md, "Running the tests").
    """
    if args and args[0] in BROKER_STOPPING and os.environ.get("PYTEST_XDIST_WORKER"):
        raise RuntimeError(
            f"rabbitmqctl {args[0]} on worker {os.environ['PYTEST_XDIST_WORKER']}: it would stop the broker under "
            "the other workers' tests; mark the test serial and run it without -n"
        )
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    proc = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
    return proc.stdout


def wait_for_broker(timeout: float = 120) -> None:
    rabbitmqctl("await_startup", timeout=timeout)
    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", 5672):
        if time.monotonic() > deadline:
            raise RuntimeError("RabbitMQ did not reopen port 5672")
        time.sleep(0.2)


@contextlib.contextmanager
def broker_stopped() -> Iterator[None]:
    """Stop the RabbitMQ application and ALWAYS start it again, even if the test fails.

    CI runs next on the same machine: a test must never leave the broker down. A test using it is
    marked ``serial`` (rabbitmqctl refuses stop_app under pytest-xdist).
    """
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        wait_for_broker()


@pytest.fixture(scope="session")
def amqp_vhost() -> Iterator[str]:
    """A private vhost for this test run, deleted afterwards (under pytest-xdist: one per worker)."""
    if not port_open("127.0.0.1", 5672):
        pytest.fail("RabbitMQ does not answer on 127.0.0.1:5672; run ./deploy/test.sh, which starts it")
    vhost = f"exchange-test-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield vhost
    finally:
        with contextlib.suppress(Exception):
            if not port_open("127.0.0.1", 5672):
                rabbitmqctl("start_app")
                wait_for_broker()
        with contextlib.suppress(Exception):
            rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def amqp_url(amqp_vhost: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:5672/{quote(amqp_vhost, safe='')}"


@pytest.fixture
def amqp_prefix() -> str:
    """Unique topology names per test inside the run's vhost."""
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def start_adapter() -> AsyncIterator[Adapters]:
    """``await start_adapter(adapter)`` starts it and returns it; every adapter so started stops after the test."""
    adapters = Adapters()
    try:
        yield adapters
    finally:
        await adapters.stop()
