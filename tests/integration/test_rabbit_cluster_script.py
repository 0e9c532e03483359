"""deploy/cluster/rabbit-cluster.sh really forms a cluster, and a quorum queue on it loses nothing
when a member stops in the middle of publishing.

Runs its own cluster (node names exchtest1..3, ports 5691-5693) in a temporary base dir so a
developer's cluster under var/cluster and the default node on 5672 are left alone; the cluster is
stopped in the fixture's teardown whatever happens.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from tests.integration.conftest import BrokerNodes, broker_nodes

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "cluster" / "rabbit-cluster.sh"
NAME = "exchtest"
PORT_BASE = 5690
MESSAGES = 500


class Cluster(BrokerNodes):
    script = SCRIPT

    def port(self, n: int) -> int:
        return PORT_BASE + n

    def url(self, n: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port(n)}/"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("rabbit-cluster")
    env = {
        "RABBIT_CLUSTER_BASE": str(base),
        "RABBIT_CLUSTER_NAME": NAME,
        "RABBIT_CLUSTER_PORT_BASE": str(PORT_BASE),
        "RABBIT_CLUSTER_DIST_BASE": str(25690),
        "RABBIT_CLUSTER_CTL_PORT_MIN": str(35760),
    }
    with broker_nodes(Cluster, base, env) as c:
        yield c


def test_start_is_idempotent_and_forms_a_three_node_cluster(cluster: Cluster) -> None:
    out = cluster.run("start")
    assert "already running" in out
    status = cluster.run("status")
    running = status.split("Running Nodes", 1)[1]
    for n in (1, 2, 3):
        assert f"{NAME}{n}@localhost  running" in status
        assert f"{NAME}{n}@localhost" in running


async def test_quorum_queue_loses_nothing_when_a_node_stops_midway(cluster: Cluster) -> None:
    started = time.monotonic()
    queue_name = f"cluster-test-{uuid.uuid4().hex[:8]}"
    ids = [f"{queue_name}-{i:04d}" for i in range(MESSAGES)]

    publisher = await aio_pika.connect(cluster.url(1), timeout=15)
    try:
        channel = await publisher.channel(publisher_confirms=True, on_return_raises=True)
        # Declared through node 1: with the default client-local locator its leader is there,
        # so stopping node 2 takes away a follower and the queue keeps its majority.
        await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})

        async def publish(batch: list[str], pause: float = 0.0) -> None:
            for start in range(0, len(batch), 25):
                await asyncio.gather(
                    *(
                        channel.default_exchange.publish(
                            aio_pika.Message(
                                mid.encode(), message_id=mid, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                            ),
                            routing_key=queue_name,
                            mandatory=True,
                            timeout=20,
                        )
                        for mid in batch[start : start + 25]
                    )
                )
                if pause:
                    await asyncio.sleep(pause)

        await publish(ids[:250])
        # Stop node 2 through the script while publishing goes on, then publish the rest with it down.
        stopper = await asyncio.create_subprocess_exec(
            str(SCRIPT),
            "stop-node",
            "2",
            env=cluster.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        await publish(ids[250:375], pause=0.3)
        out, _ = await asyncio.wait_for(stopper.communicate(), 60)
        assert stopper.returncode == 0, out.decode()
        status = cluster.run("status")
        assert f"{NAME}2@localhost  stopped" in status
        await publish(ids[375:])
    finally:
        await publisher.close()

    received: list[str] = []
    consumer = await aio_pika.connect(cluster.url(3), timeout=15)
    try:
        channel = await consumer.channel()
        await channel.set_qos(prefetch_count=100)
        queue = await channel.declare_queue(queue_name, passive=True)
        deadline = time.monotonic() + 30
        while len(received) < MESSAGES and time.monotonic() < deadline:
            message = await queue.get(timeout=5, fail=False)
            if message is None:
                await asyncio.sleep(0.1)
                continue
            received.append(message.message_id or "")
            await message.ack()
        # Nothing beyond the 500 either.
        assert await queue.get(timeout=5, fail=False) is None
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await consumer.close()

    assert len(received) == MESSAGES
    assert len(set(received)) == MESSAGES, "duplicates by message id"
    assert set(received) == set(ids)

    # The stopped member comes back through the script and rejoins on its own.
    cluster.run("start-node", "2")
    running = cluster.run("status").split("Running Nodes", 1)[1]
    assert f"{NAME}2@localhost" in running
    assert time.monotonic() - started < 90
