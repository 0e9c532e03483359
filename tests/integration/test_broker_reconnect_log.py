"""A broker that goes away and comes back: the node's log says so once each way, not once per retry.

The node reaches the real RabbitMQ through a TCP proxy of the test's own, which the test cuts
(every connection dropped, new ones closed at once) and then restores: the shared broker itself is
never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
from urllib.parse import urlsplit, urlunsplit

import pytest

from exchange.devworld import AgencySpec, NodeSpec, build_world
from exchange.observability.logging import configure_logging
from tests.integration.conftest import World, wait_until

pytestmark = [pytest.mark.broker]


class Proxy:
    """Forwards TCP to RabbitMQ; ``down`` drops every connection and refuses the AMQP handshake of new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.down = False
        self.accepted_while_down = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            self.accepted_while_down += 1
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.down = True
        for w in self._writers:
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_broker_outage_logs_one_line_when_it_starts_and_one_broker_reconnected_when_it_ends(
    tmp_path, amqp_url: str, amqp_prefix: str
) -> None:
    parts = urlsplit(amqp_url)
    proxy = Proxy(parts.port or 5672)
    port = await proxy.start()
    proxied = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{port}"))
    world = World(
        tmp_path,
        build_world(
            tmp_path,
            [AgencySpec("000.00.00.G22", "VPCP", node="n1", adapter="pull")],
            [NodeSpec("n1", amqp_url=proxied, prefix=amqp_prefix, http_port=0)],
        ),
    )
    stream = io.StringIO()
    configure_logging("INFO", json=True, stream=stream)
    try:
        node = await world.start("n1")
        stream.truncate(0)
        stream.seek(0)
        proxy.cut()
        # Let the client try (and fail) to reconnect at least twice while the broker is "away".
        await wait_until(lambda: proxy.accepted_while_down >= 2, timeout=40, what="two reconnect attempts")
        proxy.down = False
        await node.wait_connected(40)
        await asyncio.sleep(0.5)
        lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    finally:
        await world.close()
        await proxy.close()
        configure_logging("INFO", json=True, stream=sys.stderr)
    events = [line.get("event", "") for line in lines]
    noisy = [line for line in lines if line.get("level") in ("warning", "error")]
    assert events.count("broker.reconnected") == 1, events
    assert events.count("broker.connection_lost") == 1, events
    # Nothing per attempt: the AMQP client's reconnect lines (a warning, and an error for a refused
    # TCP connect, per retry) are gone; what is left was logged once, when the connection dropped
    # (the node's warning, and aio_pika's note of each channel closing with it).
    per_attempt = [line for line in lines if line.get("logger") in ("aio_pika.robust_connection", "aiormq.connection")]
    assert per_attempt == [], per_attempt
    assert {line.get("logger") for line in noisy} <= {"exchange.node", "aio_pika.tools"}, noisy
    assert [line["event"] for line in noisy if line.get("logger") == "exchange.node"] == ["broker.connection_lost"]
