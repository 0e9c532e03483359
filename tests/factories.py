"""Shared test factories: envelopes, keys and certificates, adapters, and worlds of real services without a broker.

``envelope`` builds an envelope from its body (a document, status or receipt); ``Pki``
a dev CA with one signer per agency and a verifier that trusts it; ``incoming`` what
the bus hands an adapter; ``Adapters`` starts adapters for a test and stops them all.

``ServiceWorld`` builds the same configuration a deployment has (devworld: a CA,
one key and certificate per agency, the directory, one TOML per node) and opens
each node's :class:`~exchange.service.ExchangeService` with ``build_service``, the
function ``exchange serve`` uses. ``carry`` plays the broker: it takes what one
node's outbox would publish and hands each frame to the node hosting its
recipient, so use cases can be tested end to end on SQLite in milliseconds.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from exchange.adapters.base import Adapter, DeliveryResult, Incoming
from exchange.adapters.pull import PullAdapter
from exchange.adapters.recording import RecordingAdapter
from exchange.config import load_config
from exchange.devworld import AgencySpec, NodeSpec, build_world
from exchange.envelope.build import envelope_to_element, serialize
from exchange.envelope.model import (
    AgencyRef,
    Attachment,
    DocumentCode,
    DocumentInfo,
    Envelope,
    Header,
    Hop,
    Kind,
    Priority,
    Promulgation,
    ReceiptInfo,
    ReceiptOutcome,
    StatusCode,
    StatusInfo,
    new_message_id,
    utcnow,
)
from exchange.node import build_service
from exchange.routing import frame
from exchange.service import ExchangeService
from exchange.signing import pki
from exchange.signing.sign import Signer
from exchange.signing.trust import TrustStore
from exchange.signing.verify import Verifier

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


def status(response_for: str = "", code: StatusCode = StatusCode.ACCEPTED, **fields: object) -> StatusInfo:
    """A business status about ``response_for`` (default: a fresh message id); keyword fields as in StatusInfo."""
    return StatusInfo(response_for or new_message_id(), code, **fields)  # type: ignore[arg-type]


def receipt(
    response_for: str = "", outcome: ReceiptOutcome = ReceiptOutcome.DELIVERED, **fields: object
) -> ReceiptInfo:
    """A transport receipt for ``response_for`` (default: a fresh message id) over some envelope's digest."""
    fields.setdefault("envelope_digest", "ab" * 32)
    return ReceiptInfo(response_for or new_message_id(), outcome, **fields)  # type: ignore[arg-type]


def pdf(data: bytes, name: str = "qd.pdf", id: str = "att-1") -> Attachment:
    """A PDF attachment's manifest entry (the id tests look its bytes up by)."""
    return Attachment.of(name, data, "application/pdf", id=id)


def envelope(
    sender: str,
    recipient: str,
    body: DocumentInfo | StatusInfo | ReceiptInfo | None = None,
    *,
    attachments: Sequence[Attachment] = (),
    sender_name: str = "",
    recipient_name: str = "",
    trace: Sequence[Hop] = (),
) -> Envelope:
    """A fresh envelope (new id, now) from ``sender`` to ``recipient``; its kind is its body's.

    The default body is a bare document (12/CT-TTg, no promulgation).
    """
    body = body if body is not None else document(promulgation=None)
    kind, block = {
        DocumentInfo: (Kind.DOCUMENT, "document"),
        StatusInfo: (Kind.STATUS, "status"),
        ReceiptInfo: (Kind.RECEIPT, "receipt"),
    }[type(body)]
    header = Header(
        message_id=new_message_id(),
        kind=kind,
        sender=AgencyRef(sender, sender_name),
        recipients=(AgencyRef(recipient, recipient_name),),
        created_at=utcnow(),
        **{block: body},  # type: ignore[arg-type]
    )
    return Envelope(header, tuple(attachments), tuple(trace))


def incoming(
    message: Envelope, attachments: Mapping[str, bytes] | None = None, *, xml: bytes | None = None, attempt: int = 1
) -> Incoming:
    """``message`` as the bus hands it to its first recipient's adapter (xml: the unsigned envelope by default)."""
    data = dict(attachments or {})
    return Incoming(
        message.header.recipients[0].code,
        message,
        serialize(envelope_to_element(message)) if xml is None else xml,
        data,
        attempt,
    )


@dataclass
class Pki:
    """A dev CA, a trust store of it and its CRL, and one signer per agency it issued a certificate to."""

    ca: pki.DevCA
    trust: TrustStore
    signers: dict[str, Signer]

    @classmethod
    def create(cls, root: Path, agencies: Mapping[str, str], *, ec: Collection[str] = (), ec_ca: bool = False) -> Pki:
        """A CA in ``root`` (ECDSA if ``ec_ca``) issuing each agency (code -> name) a key, ECDSA for codes in ``ec``."""
        ca = pki.DevCA.create(root, ec=ec_ca)
        signers = {code: Signer.from_files(*ca.issue(code, name, ec=code in ec)) for code, name in agencies.items()}
        return cls(ca, TrustStore.from_paths([ca.cert_path], [ca.crl_path]), signers)

    def verifier(self) -> Verifier:
        return Verifier(self.trust)


A = TypeVar("A", bound=Adapter)


class Adapters:
    """Adapters started for one test, all stopped at its end (the ``start_adapter`` fixture)."""

    def __init__(self) -> None:
        self.started: list[Adapter] = []

    async def __call__(self, adapter: A) -> A:
        await adapter.start()
        self.started.append(adapter)
        return adapter

    async def stop(self) -> None:
        while self.started:
            await self.started.pop().stop()


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
                # Adapters that reach no outside system; any other kind is played by a pull inbox.
                adapter_cls = {"scripted": ScriptedAdapter, "recording": RecordingAdapter}.get(
                    agency.adapter, PullAdapter
                )
                adapter = adapter_cls(agency.code, dict(agency.options), service.handle(agency.code))
                await adapter.start()
                service.adapters[agency.code] = adapter
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
            for adapter in service.adapters.values():
                await adapter.stop()
            await service.store.close()
