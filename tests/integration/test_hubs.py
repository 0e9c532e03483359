"""Hubs on separate brokers linked by RabbitMQ shovels (docs/FEDERATION.md), end to end.

Three independent RabbitMQ nodes started by deploy/hubs/rabbit-hubs.sh in a temporary base dir
(names hubtest1..3, AMQP 5711-5713, management 15711-15713; the next free slot, 100 ports up,
when another run holds these): hub 1 is Nghệ An's (H41), hub 2 the national hub, hub 3 Ho Chi
Minh City's (H29). The links are declared from each hub's [hub] section
exactly as an operator would: the provinces' by their nodes at start (`exchange serve`), the
national hub's (no exchange node runs there) by `exchange hub apply`.
The shared broker on 5672 is never touched; the three nodes are stopped in the fixture's teardown
whatever happens (a failing test included).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exchange.adapters.recording import read_records
from exchange.devworld import AgencySpec, NodeSpec, build_world
from exchange.envelope.model import DocumentCode, DocumentInfo, StatusCode
from exchange.hub.links import LinkSpec, ManagementApi, Side, Tls, apply_link, remove_link
from exchange.hub.status import hub_status
from exchange.store.base import DeliveryState
from tests.integration.conftest import BrokerNodes, World, broker_nodes, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "hubs" / "rabbit-hubs.sh"


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _slot() -> int:
    """The first of five port/name slots nobody on this machine is using (another checkout's run of
    this module, say): the nodes' names and every port they open differ per slot."""
    for k in range(5):
        o = 100 * k
        wanted = [p + o + n for p in (5710, 5730, 15710, 25710) for n in (1, 2, 3)]
        wanted += list(range(35830 + o, 35860 + o))
        if _ports_free(wanted):
            return k
    return 0  # all taken: the start fails and says which port


SLOT = _slot()
NAME = f"hubtest{SLOT}x" if SLOT else "hubtest"
PORT_BASE, MGMT_BASE, DIST_BASE, CTL_MIN, TLS_BASE = (b + 100 * SLOT for b in (5710, 15710, 25710, 35830, 5730))

NA_1, NA_2 = "000.00.31.H41", "000.00.32.H41"  # two communes of Nghệ An
HCM_1 = "000.00.11.H29"  # a commune of Ho Chi Minh City


class Hubs(BrokerNodes):
    script = SCRIPT
    timeout = 400

    def amqp(self, n: int) -> str:
        return f"amqp://127.0.0.1:{PORT_BASE + n}"

    def url(self, n: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{PORT_BASE + n}/"

    def amqps(self, n: int) -> str:
        """The TLS listener (the national hub's only: its certificate names localhost and 127.0.0.1)."""
        return f"amqps://127.0.0.1:{TLS_BASE + n}"

    @property
    def tls(self) -> Path:
        return self.base / "tls"

    def api(self, n: int) -> str:
        return f"http://guest:guest@127.0.0.1:{MGMT_BASE + n}"


def make_tls(d: Path) -> None:
    """A test CA; the national hub's server certificate (localhost, 127.0.0.1); one client
    certificate the links present (the listener requires one); and an unrelated CA."""
    now = datetime.now(UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject: str, key, issuer: str, signer, *, ca: bool, usage=None, san=None) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        )
        if usage is not None:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san is not None:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(signer, hashes.SHA256())

    def write(stem: str, c: x509.Certificate, key=None) -> None:
        (d / f"{stem}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            (d / f"{stem}.key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                )
            )

    d.mkdir(parents=True)
    ca_key, other_key, server_key, link_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    write("ca", cert("hub test CA", ca_key, "hub test CA", ca_key, ca=True))
    write("other-ca", cert("another CA", other_key, "another CA", other_key, ca=True))
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = cert(
        "localhost", server_key, "hub test CA", ca_key, ca=False, usage=ExtendedKeyUsageOID.SERVER_AUTH, san=san
    )
    write("node2", server, server_key)  # rabbit-hubs.sh gives node 2 a TLS listener with it
    link = cert("hub link", link_key, "hub test CA", ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    write("link", link, link_key)


@pytest.fixture(scope="module")
def hubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hubs]:
    base = tmp_path_factory.mktemp("rabbit-hubs")
    make_tls(base / "tls")
    env = {
        "RABBIT_HUBS_BASE": str(base),
        "RABBIT_HUBS_NAME": NAME,
        "RABBIT_HUBS_PORT_BASE": str(PORT_BASE),
        "RABBIT_HUBS_MGMT_BASE": str(MGMT_BASE),
        "RABBIT_HUBS_DIST_BASE": str(DIST_BASE),
        "RABBIT_HUBS_CTL_PORT_MIN": str(CTL_MIN),
        "RABBIT_HUBS_TIMEOUT": "300",
        "RABBIT_HUBS_TLS_DIR": str(base / "tls"),
        "RABBIT_HUBS_TLS_BASE": str(TLS_BASE),
    }
    with broker_nodes(Hubs, base, env) as h:
        yield h


def hub_section(
    hubs: Hubs, n: int, name: str, home: list[str], links: list[tuple[str, int, list[str]]], *, api: str = ""
) -> str:
    """A [hub] section as an operator writes it (one password for the test's links, from the environment)."""
    out = [f'[hub]\nname = "{name}"\napi = "{api or hubs.api(n)}"\namqp = "{hubs.amqp(n)}"\nhome = {home!r}\n']
    for link, to, patterns in links:
        text = (
            f'[[hub.links]]\nname = "{link}"\nto = "{hubs.amqp(to)}"\ndownstream_api = "{hubs.api(to)}"\n'
            f'patterns = {patterns!r}\nreconnect_delay = 1\npassword_env = "HUBTEST_LINK_PW"\n'
        )
        if to == 2:  # to the national hub: amqps, the peer verified against the test CA, a client certificate
            text = text.replace(hubs.amqp(to), hubs.amqps(to)) + (
                f'ca_file = "{hubs.tls / "ca.pem"}"\ncert_file = "{hubs.tls / "link.pem"}"\n'
                f'key_file = "{hubs.tls / "link.key"}"\nserver_name = "localhost"\nverify = true\n'
            )
        out.append(text)
    return "\n".join(out).replace("'", '"')


H41 = ("h41", ["*.*.*.H41.*"], [("h41-national", 2, ["#"])])
NATIONAL = ("national", [], [("national-h41", 1, ["*.*.*.H41.*"]), ("national-h29", 3, ["*.*.*.H29.*"])])
H29 = ("h29", ["*.*.*.H29.*"], [("h29-national", 2, ["#"])])


def apply_national(hubs: Hubs, root: Path, prefix: str) -> None:
    """The national operator's `exchange hub apply` (no exchange node runs on the national hub)."""
    path = root / "hub-national.toml"
    path.write_text(f'[amqp]\nprefix = "{prefix}"\n\n' + hub_section(hubs, 2, *NATIONAL), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "exchange.cli.main", "hub", "apply", "-c", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.environ["HUBTEST_LINK_PW"] not in proc.stdout + proc.stderr  # the password is never printed


def unanswered_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def world(hubs: Hubs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    """Nghệ An's and Ho Chi Minh City's hubs are declared by their nodes at start, from the [hub] of
    their own TOML (`exchange serve`); the national hub by `exchange hub apply`. The second Nghệ An
    node's [hub] names a management API nobody answers on: it starts and takes documents all the
    same, its apply waiting in the background."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("HUBTEST_LINK_PW", uuid.uuid4().hex)
    apply_national(hubs, tmp_path, prefix)

    def rec(code: str, node: str) -> AgencySpec:
        return AgencySpec(
            code, f"agency {code}", node=node, adapter="recording", options={"path": str(tmp_path / f"{code}.jsonl")}
        )

    nowhere = f"http://guest:guest@127.0.0.1:{unanswered_port()}"
    specs = [
        NodeSpec(
            "na", amqp_url=hubs.url(1), prefix=prefix, http_port=0, retry_delays=(1,), extra=hub_section(hubs, 1, *H41)
        ),
        NodeSpec(
            "na2",
            amqp_url=hubs.url(1),
            prefix=prefix,
            http_port=0,
            retry_delays=(1,),
            extra=hub_section(hubs, 1, *H41, api=nowhere),
        ),
        NodeSpec(
            "hcm", amqp_url=hubs.url(3), prefix=prefix, http_port=0, retry_delays=(1,), extra=hub_section(hubs, 3, *H29)
        ),
    ]
    w = World(tmp_path, build_world(tmp_path, [rec(NA_1, "na"), rec(NA_2, "na2"), rec(HCM_1, "hcm")], specs))
    w.prefix = prefix  # type: ignore[attr-defined]
    try:
        for node in ("na", "na2", "hcm"):
            await w.start(node)
        for node in ("na", "hcm"):
            (task,) = [t for t in w.nodes[node]._tasks if t.get_name() == "hub-apply"]
            await asyncio.wait_for(task, 60)
        (waiting,) = [t for t in w.nodes["na2"]._tasks if t.get_name() == "hub-apply"]
        assert not waiting.done()  # still retrying, while na2 is connected and consuming
        # What only the nodes declared: their own links (and home patterns) on their hubs.
        assert "h41-national" in await link_status(hubs, 1, prefix)
        assert "h29-national" in await link_status(hubs, 3, prefix)
        yield w
    finally:
        await w.close()


def doc(subject: str = "Công văn liên tỉnh") -> DocumentInfo:
    return DocumentInfo(code=DocumentCode("7", "UBND-VP"), subject=subject)


async def delivered(service, message_id: str, recipient: str) -> bool:
    return any(
        d.recipient == recipient and d.state is DeliveryState.DELIVERED
        for d in await service.store.deliveries(message_id)
    )


async def link_status(hubs: Hubs, n: int, prefix: str) -> dict[str, object]:
    async with ManagementApi(hubs.api(n)) as api:
        return {s.link: s for s in (await hub_status(api, prefix)).links}


async def test_a_document_between_provinces_goes_through_the_national_hub_and_its_hops_reach_the_senders_timeline(
    world: World, tmp_path: Path
) -> None:
    na, hcm = world.service("na"), world.service("hcm")
    sent = await na.submit_document(NA_1, [HCM_1], doc())
    await wait_for(lambda: delivered(na, sent.message_id, HCM_1), 90, "receipt from Ho Chi Minh City")
    (record,) = read_records(tmp_path / f"{HCM_1}.jsonl")
    assert record["message_id"] == sent.message_id and record["sender"] == NA_1

    async def hop_details() -> list[str]:
        return [t.detail for t in await na.store.timeline(sent.message_id) if t.event == "hop"]

    async def four_hops() -> bool:  # recorded just after the receipt's own event
        return len(await hop_details()) >= 4

    await wait_for(four_hops, 10, "the four hops in the sender's timeline")
    hops = await hop_details()
    # Nghệ An hub → national hub → Ho Chi Minh City hub, and the receipt back the same way.
    assert [h.split(" (")[0] for h in hops] == [
        "document via hub link " + f"{world.prefix}.link.h41-national",  # type: ignore[attr-defined]
        "document via hub link " + f"{world.prefix}.link.national-h29",  # type: ignore[attr-defined]
        "receipt via hub link " + f"{world.prefix}.link.h29-national",  # type: ignore[attr-defined]
        "receipt via hub link " + f"{world.prefix}.link.national-h41",  # type: ignore[attr-defined]
    ], hops

    # A status from Ho Chi Minh City comes back the same way and lands in the sender's timeline.
    await hcm.submit_status(HCM_1, sent.message_id, StatusCode.ACCEPTED, description="đã tiếp nhận")

    async def status_hop_details() -> list[str]:
        return [
            t.detail
            for t in await na.store.timeline(sent.message_id)
            if t.event == "hop" and t.detail.startswith("status via")
        ]

    async def status_back() -> bool:
        events = [t.event for t in await na.store.timeline(sent.message_id)]
        return "status:03" in events and len(await status_hop_details()) >= 2

    await wait_for(status_back, 90, "status 03 and its two hops back in Nghệ An")
    status_hops = await status_hop_details()
    assert len(status_hops) == 2 and "h29-national" in status_hops[0] and "national-h41" in status_hops[1]


async def test_a_document_between_two_agencies_of_one_province_never_leaves_its_hub(
    world: World, hubs: Hubs, tmp_path: Path
) -> None:
    na = world.service("na")
    sent = await na.submit_document(NA_1, [NA_2], doc("Công văn trong tỉnh"))
    await wait_for(lambda: delivered(na, sent.message_id, NA_2), 60, "receipt from the other commune")
    assert len(read_records(tmp_path / f"{NA_2}.jsonl")) == 1
    # Every message that crosses a link carries the shovel's forward headers, which become hops:
    # none here, neither way.
    assert [t for t in await na.store.timeline(sent.message_id) if t.event == "hop"] == []
    up = await link_status(hubs, 1, world.prefix)  # type: ignore[attr-defined]
    assert up["h41-national"].backlog == 0 and up["h41-national"].up


async def test_the_links_to_the_national_hub_run_over_tls_and_a_peer_it_cannot_verify_keeps_a_link_down(
    world: World, hubs: Hubs
) -> None:
    prefix = world.prefix  # type: ignore[attr-defined]
    users = {f"{prefix}-link-h41-national", f"{prefix}-link-h29-national"}

    async def link_connections() -> list[dict]:
        async with ManagementApi(hubs.api(2)) as api:
            return [c for c in await api.request("GET", "/connections") or [] if c.get("user") in users]

    async def both_connected() -> bool:
        return {c["user"] for c in await link_connections()} == users

    await wait_for(both_connected, 30, "both provinces' shovels connected to the national hub")
    for c in await link_connections():
        # The national hub's TLS listener, which requires a client certificate and verifies it.
        assert c["ssl"] is True and c["port"] == TLS_BASE + 2, c
        assert c["peer_cert_subject"] == "CN=hub link", c
    assert (await link_status(hubs, 1, prefix))["h41-national"].up

    # verify_peer is real: the same link with a CA that did not sign the national hub's certificate
    # never connects; RabbitMQ logs the TLS alert and the link is reported down.
    bad = LinkSpec(
        name="h41-wrongca",
        upstream=Side(hubs.amqp(1), hubs.api(1)),
        downstream=Side(
            hubs.amqps(2),
            tls=Tls(
                str(hubs.tls / "other-ca.pem"), str(hubs.tls / "link.pem"), str(hubs.tls / "link.key"), "localhost"
            ),
        ),
        patterns=("*.*.*.H99.*",),
        prefix=prefix,
        reconnect_delay=1,
        password=os.environ["HUBTEST_LINK_PW"],
    )
    log = hubs.base / f"{NAME}1" / "log" / f"{NAME}1@localhost.log"
    failed = f"Shovel '{prefix}.link.h41-wrongca' failed to connect"

    async def refused() -> bool:
        await asyncio.sleep(0.5)
        return any(failed in line and "unknown_ca" in line for line in log.read_text(errors="replace").splitlines())

    async with ManagementApi(hubs.api(1)) as up, ManagementApi(hubs.api(2)) as down:
        await apply_link(bad, upstream_api=up, downstream_api=down)
        try:
            await wait_for(refused, 30, "hub 1's log: the wrong-CA link refused with unknown_ca")
            assert not (await link_status(hubs, 1, prefix))["h41-wrongca"].up
        finally:
            await remove_link(bad, upstream_api=up, delete_queue=True)


async def link_queue_depth(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url, timeout=15)
    try:
        channel = await connection.channel()
        q = await channel.declare_queue(queue, passive=True)
        return int(q.declaration_result.message_count or 0)
    finally:
        await connection.close()


async def submit_many(service, sender: str, recipient: str, count: int, label: str) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 20):
        results = await asyncio.gather(
            *(
                service.submit_document(sender, [recipient], doc(f"{label} {i}"))
                for i in range(start, min(start + 20, count))
            )
        )
        ids += [r.message_id for r in results]
    return ids


_SEEN: dict[str, set[str]] = {}


async def all_delivered(service, ids: list[str], recipient: str) -> int:
    """How many of ``ids`` have their receipt back (checks only those not seen delivered yet)."""
    seen = _SEEN.setdefault(f"{id(service)}:{recipient}", set())
    for mid in ids:
        if mid not in seen and await delivered(service, mid, recipient):
            seen.add(mid)
    if len(seen & set(ids)) < len(ids):
        await asyncio.sleep(1)  # let the nodes work between polls
    return len(seen & set(ids))


#: Documents in the national-outage burst: 300 in the suite (the whole of it has a time budget),
#: the issue's 1,000 with EXCHANGE_TEST_HUB_BURST=1000 (about 50 s on the 2-core test machine).
BURST = int(os.environ.get("EXCHANGE_TEST_HUB_BURST", "300"))


async def outbox_size(service) -> int:
    return (await service.store.outbox_stats())[0]


@pytest.mark.slow
async def test_a_burst_loses_nothing_and_duplicates_nothing_when_the_national_hub_stops_midway(
    world: World, hubs: Hubs, tmp_path: Path
) -> None:
    started = time.monotonic()
    na = world.service("na")
    n_before, n_during = BURST * 3 // 10, BURST * 4 // 10
    first = await submit_many(na, NA_1, HCM_1, n_before, "trước")
    await wait_for(lambda: delivered(na, first[0], HCM_1), 60, "the burst flowing between the provinces")
    # The national hub goes down mid-burst: 40 % of the documents are submitted while it stops,
    # the last 30 % once it is down.
    stopper = asyncio.create_task(hubs.arun("stop-node", "2"))
    try:
        during = await submit_many(na, NA_1, HCM_1, n_during, "trong lúc")
        await stopper
        down_at = time.monotonic()
        after = await submit_many(na, NA_1, HCM_1, BURST - n_before - n_during, "sau")

        # Store-and-forward on Nghệ An's own disk: the node's relay gets every document confirmed
        # by its own hub (its outbox empties) although the national hub is down, and at least
        # everything submitted after the stop waits in the link queue (read straight from the
        # broker: the management API's figures lag; a message the shovel holds in flight while it
        # reconnects is not counted as ready, hence "at least" and a wait).
        async def outbox_empty() -> bool:
            return await outbox_size(na) == 0

        await wait_for(outbox_empty, 60, "Nghệ An's outbox published into its own hub during the outage")
        queue = f"{world.prefix}.link.h41-national"  # type: ignore[attr-defined]

        async def after_held() -> bool:
            return await link_queue_depth(hubs.url(1), queue) >= len(after)

        await wait_for(after_held, 30, f"the {len(after)} documents sent after the stop held in the link queue")
        held = await link_queue_depth(hubs.url(1), queue)
        # The outage is real: nothing submitted after the stop can have reached Ho Chi Minh City.
        assert await all_delivered(na, after, HCM_1) == 0
        print(f"\nheld in Nghệ An's link queue {time.monotonic() - down_at:.1f} s into the outage: {held}")
    finally:
        if not stopper.done():
            with contextlib.suppress(Exception):
                await stopper
        await hubs.arun("start-node", "2")  # always: the next test needs the national hub
    ids = first + during + after
    assert len(ids) == BURST

    async def every_receipt_back() -> bool:
        return await all_delivered(na, ids, HCM_1) == len(ids)

    await wait_for(every_receipt_back, 400, f"{BURST} receipts back in Nghệ An")
    records = read_records(tmp_path / f"{HCM_1}.jsonl")
    got = [r["message_id"] for r in records]
    assert len(got) == len(set(got)) == BURST, "each document handed to the E-Office exactly once"
    assert set(got) == set(ids)
    print(
        f"\n{BURST} documents across a national-hub outage: {time.monotonic() - started:.1f}s in all, "
        f"outage and recovery from {down_at - started:.1f}s"
    )


@pytest.mark.slow
async def test_the_national_hub_keeps_what_it_accepts_for_a_provincial_hub_that_is_down(
    world: World, hubs: Hubs, tmp_path: Path
) -> None:
    na = world.service("na")
    await hubs.arun("stop-node", "3")  # Ho Chi Minh City's hub goes down
    try:
        ids = await submit_many(na, NA_1, HCM_1, 50, "chờ")

        async def held_nationally() -> bool:
            s = (await link_status(hubs, 2, world.prefix))["national-h29"]  # type: ignore[attr-defined]
            return s.backlog == 50 and not s.up

        await wait_for(held_nationally, 120, "50 documents waiting on the national hub for H29")
        national = (await link_status(hubs, 2, world.prefix))["national-h29"]  # type: ignore[attr-defined]
        assert national.oldest_seconds is not None and national.oldest_seconds >= 0
    finally:
        await hubs.arun("start-node", "3")

    async def every_receipt_back() -> bool:
        return await all_delivered(na, ids, HCM_1) == len(ids)

    await wait_for(every_receipt_back, 300, "50 receipts back once H29's hub is up")
    got = [r["message_id"] for r in read_records(tmp_path / f"{HCM_1}.jsonl")]
    assert sorted(got) == sorted(ids)
