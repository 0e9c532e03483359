"""Shared test factories: worlds of real services (keys, certificates, stores) without a broker.

``ServiceWorld`` builds the same configuration a deployment has (devworld: a CA,
one key and certificate per agency, the directory, one TOML per node) and opens
each node's :class:`~exchange.service.ExchangeService` with ``build_service``, the
function ``exchange serve`` uses. ``carry`` plays the broker: it takes what one
node's outbox would publish and hands each frame to the node hosting its
recipient, so use cases can be tested end to end on SQLite in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from exchange.adapters.base import Adapter, DeliveryResult, Incoming
from exchange.adapters.pull import PullAdapter
from exchange.config import load_config
from exchange.devworld import AgencySpec, NodeSpec, build_world
from exchange.envelope.model import DocumentCode, DocumentInfo, Priority, Promulgation
from exchange.node import build_service
from exchange.routing import frame
from exchange.service import ExchangeService

GOVERNMENT_OFFICE, NGHE_AN, HCMC, NGHI_LOC = "000.00.00.G22", "000.00.00.H41", "000.00.00.H29", "000.00.31.H41"


def document(
    subject: str = "Chỉ thị về chuyển đổi số",
    *,
    number: str = "12",
    notation: str = "CT-TTg",
    priority: Priority = Priority.NORMAL,
    **fields: object,
) -> DocumentInfo:
    """A plausible official document's metadata; keyword fields override any attribute."""
    from datetime import date

    info = DocumentInfo(
        code=DocumentCode(number, notation),
        subject=subject,
        promulgation=Promulgation("Hà Nội", date(2026, 11, 30)),
        priority=priority,
    )
    if fields:
        from dataclasses import replace

        info = replace(info, **fields)  # type: ignore[arg-type]
    return info


class ScriptedAdapter(Adapter):
    """An E-Office whose answers are scripted: each delivery pops the next result (default: delivered)."""

    kind = "scripted"
    wants_receipts = False

    def __init__(self, agency: str, options: dict[str, object], bus: object) -> None:
        super().__init__(agency, options, bus)  # type: ignore[arg-type]
        self.script: list[DeliveryResult] = []
        self.delivered: list[Incoming] = []

    async def deliver(self, message: Incoming) -> DeliveryResult:
        result = self.script.pop(0) if self.script else DeliveryResult.delivered()
        if result.outcome.value == "delivered":
            self.delivered.append(message)
        return result


@dataclass
class ServiceWorld:
    """Services of a generated world, one per node, opened on SQLite; no RabbitMQ."""

    root: Path
    configs: dict[str, Path]
    services: dict[str, ExchangeService] = field(default_factory=dict)

    @classmethod
    async def build(cls, root: Path, agencies: Sequence[AgencySpec], nodes: Iterable[str]) -> ServiceWorld:
        # The AMQP URL is never dialled: these services run without a broker.
        specs = [NodeSpec(n, amqp_url="amqp://guest:guest@127.0.0.1:1/", http_port=0) for n in nodes]
        world = cls(root, build_world(root, agencies, specs))
        for name, path in world.configs.items():
            cfg = load_config(path)
            service = await build_service(cfg)
            for agency in cfg.agencies:
                adapter_cls = ScriptedAdapter if agency.adapter == "scripted" else PullAdapter
                service.adapters[agency.code] = adapter_cls(
                    agency.code, dict(agency.options), service.handle(agency.code)
                )
            world.services[name] = service
        return world

    def host_of(self, agency: str) -> ExchangeService:
        return next(s for s in self.services.values() if agency in s.hosted)

    async def carry(self, rounds: int = 5) -> int:
        """Move every outbox item to its recipient's node, as the relay and consumer would; frames moved."""
        moved = 0
        for _ in range(rounds):
            batch = 0
            for service in self.services.values():
                items = await service.store.claim_outbox(1000)
                for item in items:
                    xml, attachments = frame.decode(item.body, max_bytes=64 << 20)
                    await self.host_of(item.recipient).receive(item.recipient, xml, attachments)
                await service.store.mark_published([i.id for i in items if i.id is not None])
                batch += len(items)
            moved += batch
            if not batch:
                break
        return moved

    async def close(self) -> None:
        for service in self.services.values():
            await service.store.close()
