"""The operator's numbers come from the store: a document sent with `exchange send` (another process) counts."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from prometheus_client import generate_latest

from exchange.config import load_config
from exchange.devworld import AgencySpec, NodeSpec, build_world
from exchange.node import Node
from exchange.observability.metrics import Metrics
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.broker]

A, B = "000.00.00.G22", "000.00.00.H41"


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


async def test_a_document_sent_by_exchange_send_shows_in_the_unreceipted_and_per_state_gauges(
    tmp_path, amqp_url: str, amqp_prefix: str
) -> None:
    # B's node is not running: what central publishes to it (its queue exists) waits for its receipt.
    configs = build_world(
        tmp_path,
        [AgencySpec(A, "VPCP", node="central", adapter="pull"), AgencySpec(B, "Nghệ An", node="local", adapter="pull")],
        [NodeSpec(n, amqp_url=amqp_url, prefix=amqp_prefix, http_port=0) for n in ("central", "local")],
    )
    local = Node(load_config(configs["local"]), serve_http=False)  # declares B's queues, then goes away
    await local.start()
    await local.wait_connected(30)
    await local.stop()
    metrics = Metrics()
    node = Node(load_config(configs["central"]), serve_http=False, metrics=metrics)
    await node.start()
    try:
        await node.wait_connected(30)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "exchange.cli.main",
            "send",
            "--config",
            str(configs["central"]),
            "--from",
            A,
            "--to",
            B,
            "--subject",
            "Công văn gửi bằng exchange send",
            "--number",
            "9",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out.decode()
        node.service.outbox_event.set()  # the node's relay publishes what the other process stored

        async def counted() -> bool:
            age = sample(metrics, "exchange_unreceipted_oldest_age_by_agency_seconds", agency=B)
            return age is not None and age > 0

        await wait_for(counted, timeout=30, what="the unreceipted gauge for B")
        assert sample(metrics, "exchange_unreceipted_oldest_age_seconds") > 0
        assert sample(metrics, "exchange_deliveries_by_state", state="queued") == 1
        assert sample(metrics, "exchange_dead_letters_waiting") == 0
        # The counter of this process never saw the document: the gauges are what the alert reads.
        assert b'exchange_documents_submitted_total{agency="000.00.00.G22"' not in generate_latest(metrics.registry)
    finally:
        await node.stop()
