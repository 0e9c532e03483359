"""The pull adapter and the registration of the built-in adapters and their probes."""

from __future__ import annotations

from exchange.adapters.base import Adapter, Outcome
from exchange.adapters.pull import PullAdapter
from exchange.adapters.registry import adapter_class
from exchange.conformance.probes import PROBES
from tests.unit.adapter_fakes import HOST, FakeBus, document_message, status_message


async def test_pull_handover_only_makes_the_message_visible() -> None:
    adapter = PullAdapter(HOST, {}, FakeBus())
    await adapter.start()
    assert (await adapter.deliver(document_message())).outcome is Outcome.DELIVERED
    assert (await adapter.deliver(status_message("6a0a4a48-28a8-4c5b-9d0b-2f5e0c4f1a11"))).outcome is Outcome.DELIVERED
    await adapter.stop()
    await adapter.stop()


def test_every_built_in_adapter_is_installed_under_its_kind_with_a_probe() -> None:
    for kind in ("pull", "webhook", "filedrop", "edxml"):
        cls = adapter_class(kind)
        assert issubclass(cls, Adapter) and cls.kind == kind
        assert PROBES[kind].kind == kind
