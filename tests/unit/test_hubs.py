"""Hub links without a broker: what is declared (names, patterns, least privilege, shovel keys),
the [hub] section, the hops read from shovel headers and their way to the sender's timeline,
and the per-link metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from exchange.devworld import AgencySpec
from exchange.envelope.model import Hop
from exchange.errors import ConfigError
from exchange.hub.config import hub_config
from exchange.hub.links import (
    LinkSpec,
    Side,
    Tls,
    downstream_permissions,
    hub_patterns,
    province_pattern,
    quorum_link_arguments,
    shovel_definition,
    upstream_permissions,
)
from exchange.hub.monitor import HubMetrics
from exchange.hub.status import HubStatus, LinkStatus, _redact
from exchange.hub.trace import shovel_hops
from exchange.routing import frame
from exchange.routing.directory import AgencyEntry, Directory
from tests.factories import GOVERNMENT_OFFICE, NGHE_AN, ServiceWorld, document


def spec(**kw) -> LinkSpec:
    base = {
        "name": "h41-national",
        "upstream": Side("amqp://127.0.0.1:5672"),
        "downstream": Side(
            "amqps://hub.national.example.vn:5671",
            tls=Tls("/etc/rabbitmq/ca.pem", "/etc/rabbitmq/link.pem", "/etc/rabbitmq/link.key"),
        ),
        "patterns": ("#",),
        "prefix": "exchange",
    }
    return LinkSpec(**{**base, **kw})


def test_the_shovel_moves_the_link_queue_to_the_neighbours_route_exchange_with_confirms_and_forward_headers() -> None:
    d = shovel_definition(spec(), "s3cret/+")
    assert d["src-queue"] == "exchange.link.h41-national" and d["dest-exchange"] == "exchange.route"
    assert "dest-exchange-key" not in d  # the routing key {code}.{lane} travels unchanged
    assert d["ack-mode"] == "on-confirm" and d["dest-add-forward-headers"] is True
    assert d["src-uri"] == "amqp://exchange-link-h41-national:s3cret%2F%2B@127.0.0.1:5672/%2F"
    # TLS to the neighbour, verified, with the files on the upstream broker's machine.
    assert d["dest-uri"].startswith("amqps://exchange-link-h41-national:s3cret%2F%2B@hub.national.example.vn:5671/%2F?")
    for part in (
        "cacertfile=%2Fetc%2Frabbitmq%2Fca.pem",
        "certfile=%2Fetc%2Frabbitmq%2Flink.pem",
        "keyfile=%2Fetc%2Frabbitmq%2Flink.key",
        "verify=verify_peer",
        "server_name_indication=hub.national.example.vn",
    ):
        assert part in d["dest-uri"]


def test_each_side_grants_the_link_user_only_what_the_shovel_needs() -> None:
    s = spec()
    assert upstream_permissions(s) == ("^$", "^$", r"^exchange\.link\.h41\-national$")
    assert downstream_permissions(s) == ("^$", r"^exchange\.route$", "^$")


def test_a_link_address_with_credentials_or_tls_options_on_plain_amqp_is_refused() -> None:
    with pytest.raises(ConfigError, match="no credentials"):
        shovel_definition(spec(downstream=Side("amqp://admin:pw@hub:5672")), "x")
    with pytest.raises(ConfigError, match="amqps"):
        shovel_definition(spec(downstream=Side("amqp://hub:5672", tls=Tls(ca_file="/ca.pem"))), "x")


@pytest.mark.parametrize("patterns", [(), ("H41",), ("*.*.*.h41.*",), ("a b",)])
def test_a_link_needs_topic_patterns_over_agency_codes(patterns: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        spec(patterns=patterns)


def test_a_link_queue_has_no_delivery_limit_and_pushes_back_only_when_bounded() -> None:
    assert quorum_link_arguments(0) == {"x-queue-type": "quorum"}
    assert quorum_link_arguments(10**9) == {
        "x-queue-type": "quorum",
        "x-max-length-bytes": 10**9,
        "x-overflow": "reject-publish",
    }


def entry(code: str, hub: str | None) -> AgencyEntry:
    return AgencyEntry(code=code, name=code, node="n", hub=hub)


def test_patterns_from_the_directory_cover_whole_provinces_and_exact_codes_of_split_ones() -> None:
    d = Directory(
        [
            entry("000.00.00.H29", "h29"),
            entry("000.00.11.H29", "h29"),
            entry("000.00.00.H41", "h41"),
            entry("000.00.31.H41", "national"),
            entry("000.00.00.G22", "national"),
        ]
    )
    assert hub_patterns(d, ["h29"]) == ("*.*.*.H29.*",)
    assert hub_patterns(d, ["national"]) == ("*.*.*.G22.*", "000.00.31.H41.*")
    assert province_pattern("H41") == "*.*.*.H41.*"
    assert d.same_hub("000.00.00.H29", "000.00.11.H29") and not d.same_hub("000.00.00.H29", "000.00.00.H41")


def test_the_directory_reads_the_hub_of_each_agency(tmp_path: Path) -> None:
    (tmp_path / "d.toml").write_text(
        '[[agency]]\ncode = "000.00.31.H41"\nnode = "na"\nhub = "h41"\n'
        '[[agency]]\ncode = "000.00.00.G22"\nnode = "central"\n',
        encoding="utf-8",
    )
    d = Directory.load(tmp_path / "d.toml")
    assert d.require("000.00.31.H41").hub == "h41" and d.require("000.00.00.G22").hub is None
    assert [e.code for e in d.on_hub("h41")] == ["000.00.31.H41"]
    (tmp_path / "bad.toml").write_text('[[agency]]\ncode = "000.00.31.H41"\nnode = "na"\nhub = ""\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="hub"):
        Directory.load(tmp_path / "bad.toml")


def test_the_hub_section_takes_passwords_from_the_environment_only() -> None:
    raw = {
        "hub": {
            "name": "h41",
            "api": "http://admin@127.0.0.1:15672",
            "api_password_env": "API_PW",
            "amqp": "amqp://127.0.0.1:5672",
            "home": ["*.*.*.H41.*"],
            "links": [
                {
                    "name": "h41-national",
                    "to": "amqps://national:5671",
                    "patterns": ["#"],
                    "password_env": "LINK_PW",
                    "ca_file": "/ca.pem",
                }
            ],
        }
    }
    hub = hub_config(raw, prefix="exchange", environ={"API_PW": "adm", "LINK_PW": "lnk"})
    assert hub is not None and hub.api == "http://admin:adm@127.0.0.1:15672" and hub.home == ("*.*.*.H41.*",)
    (link,) = hub.links
    assert link.password == "lnk" and link.downstream.tls is not None and link.downstream.tls.ca_file == "/ca.pem"
    assert "lnk" not in repr(link)  # never in a log line or a traceback
    with pytest.raises(ConfigError, match="LINK_PW"):
        hub_config(raw, prefix="exchange", environ={"API_PW": "adm"})
    # What only reads the hub (exchange hub status, the exporter) needs no link password.
    reader = hub_config(raw, prefix="exchange", environ={"API_PW": "adm"}, link_secrets=False)
    assert reader is not None and reader.api == hub.api and reader.links[0].password == ""
    with pytest.raises(ConfigError, match="unknown keys"):
        hub_config({"hub": {**raw["hub"], "passwd": "x"}}, prefix="exchange", environ={})
    assert hub_config({}, prefix="exchange") is None


def test_hops_are_read_oldest_first_from_the_shovel_headers() -> None:
    headers = {
        "x-shovelled": [
            {"shovelled-by": "hub2@vm", "shovel-name": "exchange.link.national-h29", "src-uri": "amqp://h2"},
            {"shovelled-by": b"hub1@vm", "shovel-name": b"exchange.link.h41-national"},
        ],
        "x-shovelled-timestamp": 1796158834,
    }
    hops = shovel_hops(headers)
    assert [h.node for h in hops] == [
        "hub link exchange.link.h41-national (broker hub1@vm)",
        "hub link exchange.link.national-h29 (broker hub2@vm)",
    ]
    assert hops[-1].at == datetime.fromtimestamp(1796158834, tz=UTC)
    assert shovel_hops({}) == () and shovel_hops({"x-shovelled": "junk"}) == ()


def test_metrics_report_each_link_and_forget_a_removed_one() -> None:
    m = HubMetrics()
    a = LinkStatus("h41-national", "q", "running", "", 0, 0, 0.0, "amqp://n")
    b = LinkStatus("h41-h42", "q2", "terminated", "econnrefused", 7, 0, 42.0, "amqp://m")
    m.update(HubStatus("http://h", (a, b), unrouted=2))
    text = generate_latest(m.registry).decode()
    assert (
        'exchange_hub_link_up{link="h41-h42"} 0.0' in text and 'exchange_hub_link_up{link="h41-national"} 1.0' in text
    )
    assert 'exchange_hub_link_backlog_messages{link="h41-h42"} 7.0' in text
    assert 'exchange_hub_link_oldest_age_seconds{link="h41-h42"} 42.0' in text
    assert "exchange_hub_unrouted_messages 2.0" in text
    m.update(HubStatus("http://h", (a,), unrouted=0))
    assert "h41-h42" not in generate_latest(m.registry).decode()
    assert _redact("amqps://u:p@host:5671/%2F") == "amqps://host:5671/%2F"


AGENCIES = (
    AgencySpec(GOVERNMENT_OFFICE, "Văn phòng Chính phủ", node="central", ec=True),
    AgencySpec(NGHE_AN, "UBND tỉnh Nghệ An", node="local", ec=True),
)


async def test_the_hops_of_a_document_and_of_its_receipt_reach_the_senders_timeline(tmp_path: Path) -> None:
    world = await ServiceWorld.build(tmp_path, AGENCIES, ["central", "local"])
    try:
        central, local = world.services["central"], world.services["local"]
        sent = await central.submit_document(GOVERNMENT_OFFICE, [NGHE_AN], document())
        at = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
        there = (Hop("hub link exchange.link.national-h41 (broker hub2@vm)", at),)
        back = (Hop("hub link exchange.link.h41-national (broker hub1@vm)", at),)
        for service, hops in ((central, there), (local, back)):
            items = await service.store.claim_outbox(10)
            for item in items:
                xml, attachments = frame.decode(item.body, max_bytes=1 << 20)
                await world.host_of(item.recipient).receive(item.recipient, xml, attachments, hops=hops)
            await service.store.mark_published([i.id for i in items if i.id is not None])
        hops = [t.detail for t in await central.store.timeline(sent.message_id) if t.event == "hop"]
        assert hops == [
            "document via hub link exchange.link.national-h41 (broker hub2@vm)",
            "receipt via hub link exchange.link.h41-national (broker hub1@vm)",
        ]
        # The receipt's (unsigned) Trace carried the document's hops; the signature still verified.
        assert {d.state for d in await central.store.deliveries(sent.message_id)} == {"delivered"}
    finally:
        await world.close()
