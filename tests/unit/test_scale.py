"""National scale without a broker: the national directory, fan-out frames, recipients, lazy keys, bindings."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exchange.envelope.codes import check_agency_code, parent_code
from exchange.routing.directory import Directory
from exchange.routing.lanes import Lane
from exchange.routing.national import (
    COMMUNES,
    GOVERNMENT_OFFICE,
    PROVINCES,
    commune_counts,
    national_agencies,
    write_directory,
)
from exchange.store import Direction, MessageRecord, OutboxItem
from exchange.store.sql import SqlStore
from exchange.transport.relay import ByteBudget, OutboxRelay
from exchange.transport.topology import BindingLedger, Names, Topology


def test_the_national_directory_has_34_provinces_3321_communes_valid_unique_codes_and_parents() -> None:
    agencies = national_agencies()
    by_kind: dict[str, list] = {}
    for a in agencies:
        by_kind.setdefault(a.kind, []).append(a)
    assert len(by_kind["province"]) == 34 and len(by_kind["commune"]) == COMMUNES == 3321
    assert [a.code for a in by_kind["government"]] == [GOVERNMENT_OFFICE] and by_kind["ministry"]
    codes = [a.code for a in agencies]
    assert len(set(codes)) == len(codes)
    assert all(check_agency_code(c) == c for c in codes)
    provinces = {a.code for a in by_kind["province"]}
    assert all(parent_code(a.code) in provinces and a.parent == a.province for a in by_kind["commune"])
    assert all(parent_code(a.code) is None for a in agencies if a.kind != "commune")
    assert len(provinces) == len(PROVINCES)


def test_communes_are_spread_within_the_99_a_level_2_code_can_number() -> None:
    counts = commune_counts()
    assert sum(counts) == 3321 and max(counts) <= 99 and max(counts) - min(counts) <= 1
    with pytest.raises(ValueError, match="more than 99"):
        commune_counts(34 * 99 + 1)


def test_a_generated_directory_file_loads_with_every_agency_on_its_layouts_node(tmp_path: Path) -> None:
    path = tmp_path / "directory.toml"
    assert write_directory(path, how="provincial") == len(national_agencies())
    directory = Directory.load(path)
    assert directory.require("000.00.31.H41").node == "p-h41"
    assert directory.require(GOVERNMENT_OFFICE).node == "national"
    assert len(directory.children("000.00.00.H41")) == commune_counts()[[g for g, _ in PROVINCES].index("H41")]


class RecordingExchange:
    """Takes every publish at once and remembers the messages."""

    def __init__(self) -> None:
        self.messages: list = []

    async def publish(self, message, routing_key, *, mandatory=True, timeout=None):
        self.messages.append((routing_key, message))


async def test_the_copies_of_a_fan_out_are_published_from_one_frame_never_reencoded(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'exchange.db'}")
    await store.open()
    try:
        frame = b"EXF1" + bytes(range(256)) * 256  # 64 KiB + the magic
        recipients = [f"000.00.{i:02d}.H41" for i in range(1, 51)]
        xml = b"<envelope/>"
        record = MessageRecord(
            message_id="m1",
            kind="document",
            operation="new",
            sender=GOVERNMENT_OFFICE,
            recipients=tuple(recipients),
            direction=Direction.OUT,
            created_at=datetime.now(UTC),
            envelope_xml=xml,
            digest=hashlib.sha256(xml).hexdigest(),
        )
        await store.accept_outgoing(
            record, [OutboxItem("m1", r, f"{r}.normal", frame, {"x-recipient": r}) for r in recipients]
        )
        relay = OutboxRelay(store, asyncio.Event())
        exchange = RecordingExchange()
        relay.exchange = exchange  # type: ignore[assignment]
        assert await relay.drain_once() == (50, 0)
        bodies = [m.body for _, m in exchange.messages]
        assert {id(b) for b in bodies} == {id(bodies[0])} and bodies[0] == frame
        assert sorted(k for k, _ in exchange.messages) == sorted(f"{r}.normal" for r in recipients)
        assert len({m.message_id for _, m in exchange.messages}) == 50  # confirms are matched by it
    finally:
        await store.close()


async def test_a_fan_out_leaves_as_one_copy_per_node_and_lane_each_naming_its_recipients(tmp_path: Path) -> None:
    """1,200 recipients on two nodes: one claim, ceil(n / bundle_max) copies per node, each routed by a
    recipient it names; an item without a node (written before bundles) still leaves alone."""
    store = SqlStore(f"sqlite:///{tmp_path / 'exchange.db'}")
    await store.open()
    try:
        frame = b"EXF1" + bytes(64 * 1024)
        north = [f"000.{i // 99:02d}.{i % 99 + 1:02d}.H41" for i in range(700)]
        south = [f"000.{i // 99:02d}.{i % 99 + 1:02d}.H29" for i in range(499)]
        items = [OutboxItem("m1", r, f"{r}.normal", frame, {"x-recipient": r, "x-node": "north"}) for r in north]
        items += [OutboxItem("m1", r, f"{r}.normal", frame, {"x-recipient": r, "x-node": "south"}) for r in south]
        items.append(OutboxItem("m1", "000.00.00.H29", "000.00.00.H29.normal", frame, {}))
        codes = [i.recipient for i in items]
        xml = b"<envelope/>"
        record = MessageRecord(
            message_id="m1",
            kind="document",
            operation="new",
            sender=GOVERNMENT_OFFICE,
            recipients=tuple(codes),
            direction=Direction.OUT,
            created_at=datetime.now(UTC),
            envelope_xml=xml,
            digest=hashlib.sha256(xml).hexdigest(),
        )
        await store.accept_outgoing(record, items)
        relay = OutboxRelay(store, asyncio.Event(), batch=2000)
        exchange = RecordingExchange()
        relay.exchange = exchange  # type: ignore[assignment]
        assert await relay.drain_once() == (1200, 0)
        assert relay.copies == 4  # north: 500 + 200, south: 499, the one without a node
        served: list[str] = []
        for key, message in exchange.messages:
            listed = str((message.headers or {}).get("x-recipients") or "").split(",")
            listed = listed if listed != [""] else [str((message.headers or {})["x-recipient"])]
            assert key == f"{listed[0]}.normal" and len(listed) <= 500
            served += listed
        assert sorted(served) == sorted(codes)  # each recipient served by exactly one copy
        assert len({m.message_id for _, m in exchange.messages}) == 4  # confirms are matched by it
        assert await store.outbox_stats() == (0, None)
    finally:
        await store.close()


async def test_the_relay_keeps_its_bytes_in_flight_under_the_budget() -> None:
    budget = ByteBudget(100)
    holders = 0
    seen: list[tuple[int, int]] = []

    async def hold(size: int) -> None:
        nonlocal holders
        async with budget.hold(size):
            holders += 1
            seen.append((budget.used, holders))
            await asyncio.sleep(0.01)
            holders -= 1

    await asyncio.gather(*(hold(40) for _ in range(10)), hold(500))  # one bigger than the budget still goes
    assert len(seen) == 11
    assert all(used <= 100 or n == 1 for used, n in seen), seen
    assert (500, 1) in seen and max(n for _, n in seen) == 2  # two 40-byte frames fit, a third waits
    assert budget.used == 0


def topology(hosted: set[str]) -> Topology:
    return Topology(Names("p"), "local", None, None, None, None, {}, frozenset(hosted), (1,))  # type: ignore[arg-type]


def test_the_recipient_is_the_hosted_agency_the_routing_key_names_and_nothing_else() -> None:
    t = topology({"000.00.00.H41", "000.00.31.H41"})
    assert t.recipient_of("000.00.31.H41.express") == "000.00.31.H41"
    assert t.recipient_of("000.00.00.H29.normal") is None  # routed here by a stale binding: not ours
    assert t.recipient_of("000.00.31.H41.bogus") is None
    assert t.recipient_of("") is None and t.recipient_of(None) is None


def test_lane_queues_are_named_per_node_and_legacy_names_are_kept_for_migration() -> None:
    names = Names("exchange")
    assert names.node_queue("p-h41", Lane.EXPRESS) == "exchange.node.p-h41.express"
    assert names.agency_queue("000.00.00.H41", Lane.NORMAL) == "exchange.agency.000.00.00.H41.normal"
    assert names.route == "exchange.route"


def test_the_binding_ledger_remembers_per_broker_and_prefix(tmp_path: Path) -> None:
    a = BindingLedger(tmp_path / "b.json", "host:5672/gov|exchange|local")
    b = BindingLedger(tmp_path / "b.json", "host:5672/test|exchange|local")
    assert a.previous() == set()
    a.record(["000.00.00.H41", "000.00.31.H41"])
    b.record(["000.00.00.H29"])
    assert a.previous() == {"000.00.00.H41", "000.00.31.H41"} and b.previous() == {"000.00.00.H29"}


def test_a_node_hosting_thousands_loads_keys_on_first_use_and_certificates_alone_for_probes(tmp_path: Path) -> None:
    from exchange.devworld import AgencySpec, issue_identities
    from exchange.node import LazySigners

    specs = [AgencySpec(f"000.00.{i:02d}.H41", f"xã {i}", ec=True) for i in range(1, 6)]
    ids = issue_identities(tmp_path / "pki", specs)
    signers = LazySigners(ids)
    assert len(signers) == 5 and signers.loaded == 0
    assert signers.certificate("000.00.03.H41").not_valid_after_utc > datetime.now(UTC)
    assert signers.loaded == 0  # a certificate check does not load the private key
    assert signers["000.00.02.H41"].agency_code == "000.00.02.H41" and signers.loaded == 1
    assert signers["000.00.02.H41"] is signers["000.00.02.H41"]
    with pytest.raises(KeyError):
        signers["000.00.00.H29"]
    swapped = LazySigners({"000.00.01.H41": ids["000.00.02.H41"]})
    asyncio.run(swapped.warm())
    assert "000.00.01.H41" in swapped.failed  # its certificate names another agency


def test_issuing_a_world_writes_the_ca_index_once_per_batch(tmp_path: Path, monkeypatch) -> None:
    from exchange.devworld import AgencySpec, issue_identities
    from exchange.signing import pki

    writes = []
    real = pki.DevCA._save_index

    def counting(self, index):
        if self._batched is None:
            writes.append(len(index["certificates"]))
        return real(self, index)

    monkeypatch.setattr(pki.DevCA, "_save_index", counting)
    issue_identities(tmp_path / "pki", [AgencySpec(f"000.00.{i:02d}.H41", "x", ec=True) for i in range(1, 21)])
    ca = pki.DevCA.load_or_create(tmp_path / "pki")
    assert len([e for e in ca.entries() if e.code.endswith("H41")]) == 20
    assert len([w for w in writes if w >= 20]) <= 2  # the batch, then the CRL's number; not one per certificate


def _capacity_block() -> str:
    text = (Path(__file__).resolve().parents[2] / "deploy" / "setup.sh").read_text(encoding="utf-8")
    start = text.index("# --- RabbitMQ capacity")
    return text[start : text.index("# --- test-only services", start)]


@pytest.mark.parametrize("limit, warned", [(927, True), (65536, False)])
def test_setup_warns_when_the_brokers_open_files_limit_is_too_low_for_the_directory(
    tmp_path: Path, limit: int, warned: bool
) -> None:
    import json
    import os
    import subprocess

    fake = tmp_path / "bin" / "rabbitmqctl"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho '" + json.dumps({"file_descriptors": {"total_limit": limit}}) + "'\n")
    fake.chmod(0o755)
    directory = tmp_path / "directory.toml"  # 400 nodes: 1,206 queues, ~5,000 handles
    directory.write_text(
        "".join(
            f'[[agency]]\ncode = "000.00.{i % 99 + 1:02d}.H{i // 99 + 10:02d}"\nnode = "n{i}"\n' for i in range(400)
        ),
        encoding="utf-8",
    )
    script = 'say() { echo "[setup] $*"; }\nas_root() { "$@"; }\n' + _capacity_block()
    out = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "EXCHANGE_DIRECTORY": str(directory)},
    )
    assert out.returncode == 0, out.stderr
    assert ("WARNING" in out.stdout) is warned, out.stdout
    if warned:
        assert "400 agencies on 400 nodes" in out.stdout and "limits.conf" in out.stdout


class CongestedExchange:
    """Confirms at most ``capacity`` publishes per batch in time; the rest time out."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.pending = 0
        self.calls = 0

    async def publish(self, message, routing_key, *, mandatory=True, timeout=None):
        self.calls += 1
        self.pending += 1
        try:
            if self.pending > self.capacity:
                await asyncio.sleep(10)  # longer than the relay's confirm timeout
            await asyncio.sleep(0)
        finally:
            self.pending -= 1


async def test_a_relay_facing_a_congested_broker_shrinks_its_batches_instead_of_republishing_them_whole(
    tmp_path: Path,
) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'exchange.db'}")
    await store.open()
    try:
        recipients = [f"000.00.{i % 99 + 1:02d}.H{i // 99 + 10:02d}" for i in range(400)]
        xml = b"<envelope/>"
        record = MessageRecord(
            message_id="m1",
            kind="document",
            operation="new",
            sender=GOVERNMENT_OFFICE,
            recipients=tuple(recipients),
            direction=Direction.OUT,
            created_at=datetime.now(UTC),
            envelope_xml=xml,
            digest=hashlib.sha256(xml).hexdigest(),
        )
        await store.accept_outgoing(record, [OutboxItem("m1", r, f"{r}.normal", b"frame", {}) for r in recipients])
        relay = OutboxRelay(store, asyncio.Event(), batch=200, confirm_timeout=0.05)
        exchange = CongestedExchange(capacity=30)
        relay.exchange = exchange  # type: ignore[assignment]
        published = 0
        for _ in range(40):
            ok, _ = await relay.drain_once()
            published += ok
            if published == 400:
                break
            await store.release_outbox([])  # nothing: released items are claimable again at once
        assert published == 400
        assert relay.window < 200  # it backed off
        # Without the shrinking window every round re-sent ~170 copies that could not be confirmed.
        assert exchange.calls < 400 + 3 * 200, exchange.calls
    finally:
        await store.close()


class ClosingChannelExchange:
    """Its channel closes under the first ``doomed`` publishes: aiormq then rejects their pending
    confirms with :class:`asyncio.CancelledError` (``Channel.close()``'s default reason); later
    publishes go to the reopened channel and are confirmed."""

    def __init__(self, doomed: int) -> None:
        self.doomed = doomed
        self.calls = 0
        self.confirmed: list[str] = []

    async def publish(self, message, routing_key, *, mandatory=True, timeout=None):
        self.calls += 1
        confirm = asyncio.get_running_loop().create_future()
        if self.calls <= self.doomed:
            asyncio.get_running_loop().call_soon(confirm.set_exception, asyncio.CancelledError())
        else:
            confirm.set_result(None)
        await confirm
        self.confirmed.append(routing_key)


async def test_a_relay_whose_channel_closes_under_pending_confirms_keeps_publishing_until_the_outbox_is_empty(
    tmp_path: Path,
) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'exchange.db'}")
    await store.open()
    try:
        recipients = [f"000.00.{i % 99 + 1:02d}.H{i // 99 + 10:02d}" for i in range(120)]
        xml = b"<envelope/>"
        record = MessageRecord(
            message_id="m1",
            kind="receipt",
            operation="new",
            sender=GOVERNMENT_OFFICE,
            recipients=tuple(recipients),
            direction=Direction.OUT,
            created_at=datetime.now(UTC),
            envelope_xml=xml,
            digest=hashlib.sha256(xml).hexdigest(),
        )
        await store.accept_outgoing(record, [OutboxItem("m1", r, f"{r}.normal", b"frame", {}) for r in recipients])
        relay = OutboxRelay(store, asyncio.Event(), batch=50, poll_interval=0.01)
        exchange = ClosingChannelExchange(doomed=30)
        relay.exchange = exchange  # type: ignore[assignment]
        running = asyncio.create_task(relay.run())
        try:
            while relay.published < len(recipients) and not running.done():
                await asyncio.sleep(0.01)
            # Before: the CancelledError of the rejected confirms ended relay.run() silently,
            # with the batch's items claimed and the rest of the outbox never published.
            assert not running.done(), running
            assert sorted(set(exchange.confirmed)) == sorted(f"{r}.normal" for r in recipients)
            assert relay.published == len(recipients) and (await store.outbox_stats())[0] == 0
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    finally:
        await store.close()
