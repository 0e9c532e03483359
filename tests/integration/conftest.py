"""Fixtures for end-to-end tests: generated worlds of real nodes on the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from exchange.config import NodeConfig, load_config
from exchange.conformance.probe import EOfficeProbe, ProbeContext
from exchange.devworld import AgencySpec, NodeSpec, build_world
from exchange.node import Node


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll an async predicate until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Like wait_for, for a plain (synchronous) predicate."""

    async def check() -> bool:
        return predicate()

    await wait_for(check, timeout, what)


async def start_probe(probe: EOfficeProbe, agency: str, tmp_path: Path) -> dict[str, Any]:
    """Start ``probe`` as ``agency``'s E-Office in its own work dir; the adapter options it answers."""
    workdir = tmp_path / f"eoffice-{agency}"
    workdir.mkdir()
    return dict(await probe.start(ProbeContext(agency=agency, workdir=workdir, service=None)))


@dataclass
class BrokerNodes:
    """Extra RabbitMQ nodes run by one of deploy/'s node scripts from a base dir of their own.

    The script's environment names that base dir and the nodes' ports, so the shared broker on
    5672 (and a developer's own nodes) are never touched.
    """

    script: ClassVar[Path]
    timeout: ClassVar[float] = 180
    base: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float | None = None) -> str:
        proc = subprocess.run(
            [str(self.script), *args],
            check=False,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout or self.timeout,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"{self.script.name} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout + proc.stderr

    async def arun(self, *args: str) -> str:
        return await asyncio.to_thread(self.run, *args)

    def leftovers(self) -> list[int]:
        """Pids of any process still running from this base dir."""
        out = subprocess.run(["ps", "-eo", "pid=,args="], check=False, capture_output=True, text=True).stdout
        return [
            int(line.split(None, 1)[0]) for line in out.splitlines() if str(self.base) in line and "ps -eo" not in line
        ]


N = TypeVar("N", bound=BrokerNodes)


@contextlib.contextmanager
def broker_nodes(cls: type[N], base: Path, env: dict[str, str]) -> Iterator[N]:
    """Start ``cls``'s nodes in ``base``; stop them whatever happens, and fail if a process outlives the stop."""
    if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        pytest.skip("Debian's rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    nodes = cls(base, {**os.environ, **env})
    try:
        nodes.run("start")
        yield nodes
    finally:
        with contextlib.suppress(Exception):
            nodes.run("stop")
        left = nodes.leftovers()
        for pid in left:  # only processes started from this base dir
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        assert not left, f"{cls.script.name} stop left processes behind: {left}"


@dataclass
class World:
    root: Path
    configs: dict[str, Path]
    nodes: dict[str, Node] = field(default_factory=dict)

    def config(self, node: str) -> NodeConfig:
        return load_config(self.configs[node])

    async def start(self, name: str, *, http: bool = False, connected: bool = True) -> Node:
        node = Node(self.config(name), serve_http=http, workers=8)
        await node.start()
        self.nodes[name] = node
        if connected:
            await node.wait_connected(30)
        return node

    async def stop(self, name: str) -> None:
        node = self.nodes.pop(name)
        await node.stop()

    def service(self, name: str):
        return self.nodes[name].service

    async def close(self) -> None:
        for name in list(self.nodes):
            await self.stop(name)


@pytest.fixture
async def make_world(tmp_path: Path, amqp_url: str, amqp_prefix: str) -> AsyncIterator[Callable[..., World]]:
    """Build a world (PKI, directory, node TOMLs) whose nodes share this test's topology prefix."""
    worlds: list[World] = []

    def make(agencies: Sequence[AgencySpec], nodes: Sequence[str], **node_kw) -> World:
        specs = [NodeSpec(n, amqp_url=amqp_url, prefix=amqp_prefix, http_port=0, **node_kw) for n in nodes]
        world = World(tmp_path, build_world(tmp_path, agencies, specs))
        worlds.append(world)
        return world

    yield make
    for w in worlds:
        await w.close()
