"""Fixtures for end-to-end tests: generated worlds of real nodes on the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
