"""Metrics naming rules, log redaction and JSON-only output, W3C traceparent handling."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
import structlog
from prometheus_client import CollectorRegistry

from exchange.observability import tracing
from exchange.observability.logging import REDACTED, bind_message, configure_logging, scrub_text
from exchange.observability.metrics import (
    FORBIDDEN_LABELS,
    METRICS,
    REGISTRY,
    Metrics,
    make_metrics_handler,
    sample_names,
)

# -- metrics ----------------------------------------------------------------------------

NAME_RE = re.compile(r"^exchange_[a-z][a-z0-9_]*$")


def families(registry: CollectorRegistry):
    return list(registry.collect())


def test_metrics_use_their_own_registry_so_instances_do_not_collide() -> None:
    a, b = Metrics(), Metrics()
    a.deliveries.labels("000.00.00.G22", "delivered").inc()
    assert a.registry is not b.registry
    assert (
        b.registry.get_sample_value("exchange_deliveries_total", {"agency": "000.00.00.G22", "outcome": "delivered"})
        is None
    )
    assert METRICS.registry is REGISTRY
    explicit = CollectorRegistry()
    assert Metrics(explicit).registry is explicit


def test_every_metric_is_prefixed_and_snake_case() -> None:
    m = Metrics()
    for family in families(m.registry):
        assert NAME_RE.match(family.name), family.name
        for sample in family.samples:
            assert NAME_RE.match(sample.name), sample.name


def test_counters_end_in_total_and_durations_in_seconds() -> None:
    m = Metrics()
    _exercise(m)
    for family in families(m.registry):
        if family.type == "counter":
            assert {s.name for s in family.samples} == {f"{family.name}_total"}, family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), f"{family.name}: histograms here measure time in seconds"
        if "latency" in family.name or "age" in family.name or "expiry" in family.name:
            assert family.name.endswith("_seconds"), f"{family.name}: time is in base units (seconds)"


def test_no_metric_has_an_unbounded_label() -> None:
    m = Metrics()
    _exercise(m)
    allowed = {"agency", "kind", "outcome", "reason", "lane", "stage", "version", "python", "le"}
    for family in families(m.registry):
        for sample in family.samples:
            labels = set(sample.labels)
            assert not labels & FORBIDDEN_LABELS, (sample.name, labels)
            assert not any("id" in label.split("_") for label in labels), (sample.name, labels)
            assert labels <= allowed, (sample.name, labels - allowed)


def test_the_metrics_the_node_reads_by_attribute_exist() -> None:
    """exchange.service, routing.consumer/relay/node look metrics up by these names."""
    m = Metrics()
    m.documents_submitted.labels("000.00.00.G22", "document").inc()
    m.duplicates_suppressed.labels("000.00.00.G22").inc()
    m.deliveries.labels("000.00.00.G22", "failed").inc()
    m.delivery_latency.labels("000.00.00.G22").observe(0.3)
    m.receipt_latency.labels("000.00.00.G22").observe(0.05)
    m.rejections.labels("signature", "signature-invalid").inc()
    m.publish_confirm_seconds.observe(0.004)
    m.retries.labels("adapter-error").inc()
    m.dead_letters.labels("000.00.00.G22", "adapter-error").inc()
    for gauge in ("broker_up", "store_up", "outbox_size", "outbox_oldest_age_seconds", "retry_backlog"):
        getattr(m, gauge).set(1)
    m.certificate_expiry_seconds.labels("000.00.00.G22").set(-5)
    m.queue_depth.labels("express").set(3)
    m.queue_oldest_message_age_seconds.labels("000.00.00.G22").set(12)
    get = m.registry.get_sample_value
    assert get("exchange_documents_submitted_total", {"agency": "000.00.00.G22", "kind": "document"}) == 1
    assert get("exchange_delivery_latency_seconds_count", {"agency": "000.00.00.G22"}) == 1
    assert get("exchange_certificate_expiry_seconds", {"agency": "000.00.00.G22"}) == -5
    info = [s for f in families(m.registry) if f.name == "exchange_build" for s in f.samples]
    assert info and info[0].value == 1 and "version" in info[0].labels


def test_sample_names_include_empty_labelled_metrics() -> None:
    names = sample_names(Metrics().registry)
    assert {
        "exchange_deliveries_total",
        "exchange_delivery_latency_seconds_bucket",
        "exchange_queue_depth",
        "exchange_build_info",
        "exchange_broker_up",
    } <= names


def test_histogram_buckets_span_milliseconds_to_minutes() -> None:
    m = Metrics()
    m.delivery_latency.labels("x").observe(1)
    buckets = [
        float(s.labels["le"])
        for f in families(m.registry)
        if f.name == "exchange_delivery_latency_seconds"
        for s in f.samples
        if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
    ]
    assert min(buckets) <= 0.1 and max(buckets) >= 600


async def test_metrics_are_served_by_the_aiohttp_handler() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    m = Metrics()
    m.broker_up.set(1)
    app = web.Application()
    app.router.add_get("/metrics", make_metrics_handler(m.registry))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/metrics")
        text = await resp.text()
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert "exchange_broker_up 1.0" in text
    assert "_created" not in text


def _exercise(m: Metrics) -> None:
    m.documents_submitted.labels("a", "document").inc()
    m.deliveries.labels("a", "delivered").inc()
    m.dead_letters.labels("a", "r").inc()
    m.duplicates_suppressed.labels("a").inc()
    m.retries.labels("r").inc()
    m.rejections.labels("xml", "r").inc()
    m.delivery_latency.labels("a").observe(1)
    m.receipt_latency.labels("a").observe(1)
    m.queue_depth.labels("normal").set(1)
    m.queue_oldest_message_age_seconds.labels("a").set(1)
    m.certificate_expiry_seconds.labels("a").set(1)


# -- logging ----------------------------------------------------------------------------

SECRET = "tok-9f8e7d6c5b4a"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Leave logging as other tests expect it: configure_logging changes process-wide state."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    config = structlog.get_config()
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)
        logging.captureWarnings(False)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("DEBUG", json=True, stream=stream)
    yield stream


def lines(stream: io.StringIO) -> list[dict]:
    raw = [line for line in stream.getvalue().splitlines() if line.strip()]
    return [json.loads(line) for line in raw]  # raises if any line is not JSON


def test_secret_fields_are_redacted_at_any_depth(captured: io.StringIO) -> None:
    log = structlog.get_logger("exchange.test")
    log.info(
        "submit",
        token=SECRET,
        headers={"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET},
        agencies=[{"code": "A", "hmac": SECRET, "inner": {"private_key": SECRET, "cookie": SECRET}}],
        password=SECRET,
        client_secret=SECRET,
        access_token=SECRET,
    )
    out = captured.getvalue()
    assert SECRET not in out
    (entry,) = lines(captured)
    assert entry["token"] == REDACTED
    assert entry["headers"]["Authorization"] == REDACTED
    assert entry["agencies"][0]["inner"]["private_key"] == REDACTED
    assert entry["agencies"][0]["code"] == "A"


def test_secrets_inside_text_are_scrubbed(captured: io.StringIO) -> None:
    log = structlog.get_logger("exchange.test")
    log.warning(
        f"calling with token={SECRET}",
        url=f"amqps://exchange:{SECRET}@rabbit:5671/gov",
        detail=f"header Authorization: Bearer {SECRET}; next",
    )
    assert SECRET not in captured.getvalue()
    entry = lines(captured)[0]
    assert entry["url"] == f"amqps://exchange:{REDACTED}@rabbit:5671/gov"


def test_document_contents_are_dropped(captured: io.StringIO) -> None:
    log = structlog.get_logger("exchange.test")
    log.info(
        "received",
        subject="Quyết định bí mật",
        body=b"%PDF-1.7",
        content="text",
        document={"subject": "nested subject", "code": "12/QD-UBND", "attachment_data": "AAAA"},
    )
    out = captured.getvalue()
    assert "bí mật" not in out and "nested subject" not in out and "AAAA" not in out and "PDF" not in out
    entry = lines(captured)[0]
    assert "subject" not in entry and "body" not in entry and "content" not in entry
    assert entry["document"] == {"code": "12/QD-UBND"}


def test_stdlib_loggers_write_json_and_are_redacted(captured: io.StringIO) -> None:
    logging.getLogger("aio_pika").warning("connecting to amqp://guest:%s@localhost/", SECRET)
    logging.getLogger("aiohttp.access").info("request headers %s", {"Authorization": f"Bearer {SECRET}"})
    logging.getLogger("asyncio").error("task failed", extra={"api_key": SECRET, "agency": "A"})
    try:
        raise RuntimeError(f"password={SECRET}")
    except RuntimeError:
        logging.getLogger("aiormq").exception("connection lost")
    assert SECRET not in captured.getvalue()
    entries = lines(captured)
    assert [e["logger"] for e in entries][:4] == ["aio_pika", "aiohttp.access", "asyncio", "aiormq"]
    assert all({"event", "level", "timestamp"} <= set(e) for e in entries)
    assert entries[2]["agency"] == "A" and entries[2]["api_key"] == REDACTED
    assert "RuntimeError" in entries[3]["exception"]


def test_anything_shaped_like_an_api_token_is_redacted_in_keys_values_and_exceptions(captured: io.StringIO) -> None:
    from exchange.observability import logging as exchange_logging
    from exchange.tokens import TOKEN_PREFIX

    assert exchange_logging.TOKEN_PREFIX == TOKEN_PREFIX
    token = TOKEN_PREFIX + "Zq3v_9-kLmN0pQrStUvWxYz0123456789abcdefGhIj"
    cut = token[:20]  # aiohttp quotes only the first bytes of an over-long line
    log = structlog.get_logger("exchange.test")
    log.info(
        "http.request",
        message_id=token,
        path=f"/v1/inbox/{token}/ack",
        nested={"items": [{"note": f"got {cut}"}], token: "as a key"},
    )
    try:
        raise ValueError(f"Got more than 8190 bytes when reading: b'X-Api-Key: {cut}'")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1")
    logging.getLogger("aiohttp.access").info('127.0.0.1 "GET /v1/inbox?t=%s HTTP/1.1" 400', token)
    out = captured.getvalue()
    assert token[4:] not in out and cut[4:] not in out
    entries = lines(captured)
    assert entries[0]["message_id"] == REDACTED and entries[0]["path"] == f"/v1/inbox/{REDACTED}/ack"
    assert entries[0]["nested"][REDACTED] == "as a key"
    assert "ValueError" in entries[1]["exception"] and entries[2]["logger"] == "aiohttp.access"


def test_each_line_has_iso_utc_timestamp_and_level(captured: io.StringIO) -> None:
    structlog.get_logger("exchange.test").error("boom")
    entry = lines(captured)[0]
    assert entry["level"] == "error" and entry["logger"] == "exchange.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", entry["timestamp"])


def test_level_filters_structlog_and_stdlib(captured: io.StringIO) -> None:
    configure_logging("WARNING", stream=captured)
    structlog.get_logger("exchange.test").info("hidden")
    logging.getLogger("aiohttp").info("hidden too")
    structlog.get_logger("exchange.test").warning("shown")
    assert [e["event"] for e in lines(captured)] == ["shown"]


def test_bind_message_adds_ids_and_restores_on_exit(captured: io.StringIO) -> None:
    log = structlog.get_logger("exchange.test")
    with bind_message("5f0c…", "000.00.00.G22", "000.00.00.H53", correlation_id="abc"):
        log.info("inside")
        logging.getLogger("aio_pika").info("library line inside")
    log.info("outside")
    inside, library, outside = lines(captured)
    assert inside["message_id"] == "5f0c…" and inside["sender"] == "000.00.00.G22"
    assert inside["recipient"] == "000.00.00.H53" and inside["correlation_id"] == "abc"
    assert library["message_id"] == "5f0c…"
    assert "message_id" not in outside


async def test_bound_ids_do_not_leak_between_tasks(captured: io.StringIO) -> None:
    log = structlog.get_logger("exchange.test")

    async def handle(mid: str) -> None:
        with bind_message(mid, "A", "B"):
            await asyncio.sleep(0.01)
            log.info("handled", expected=mid)

    await asyncio.gather(*(handle(f"m{i}") for i in range(5)))
    for entry in lines(captured):
        assert entry["message_id"] == entry["expected"]


def test_console_mode_also_redacts() -> None:
    stream = io.StringIO()
    configure_logging("INFO", json=False, stream=stream)
    structlog.get_logger("exchange.test").info("dev", token=SECRET)
    assert SECRET not in stream.getvalue() and "dev" in stream.getvalue()


@pytest.mark.parametrize(
    "text",
    [
        f"Bearer {SECRET}",
        f"token={SECRET}",
        f"'password': '{SECRET}'",
        f"postgresql://u:{SECRET}@db/x",
        f"api-key: {SECRET}",
        f"Cookie: session={SECRET}",
        f"-----BEGIN EC PRIVATE KEY-----\n{SECRET}\n-----END EC PRIVATE KEY-----",
    ],
)
def test_scrub_text_removes_credentials(text: str) -> None:
    assert SECRET not in scrub_text(text)


def test_scrub_text_leaves_ordinary_prose() -> None:
    text = "Basic configuration loaded; the token store has 3 agencies"
    assert scrub_text(text) == text


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError):
        configure_logging("LOUD", stream=io.StringIO())


# -- tracing ----------------------------------------------------------------------------

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_parse_valid_traceparent() -> None:
    assert tracing.parse_traceparent(VALID) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
    assert tracing.parse_traceparent(VALID[:-2] + "00")[2] == 0


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        VALID.upper(),  # hex must be lowercase
        "01" + VALID[2:],  # only version 00
        "ff" + VALID[2:],  # ff is forbidden
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",  # short span id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  # short flags
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # v00 has exactly 4 fields
        VALID + "\n",
        " " + VALID,
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  # not hex
    ],
)
def test_parse_rejects_invalid_traceparent(header: str | None) -> None:
    assert tracing.parse_traceparent(header) is None


def test_new_traceparent_is_valid_and_unique() -> None:
    headers = {tracing.new_traceparent() for _ in range(200)}
    assert len(headers) == 200
    for h in headers:
        parsed = tracing.parse_traceparent(h)
        assert parsed is not None and parsed[2] == tracing.SAMPLED
    assert tracing.parse_traceparent(tracing.new_traceparent(sampled=False))[2] == 0


def test_child_keeps_trace_and_flags_with_a_new_span() -> None:
    child = tracing.child_traceparent(VALID)
    trace_id, span_id, flags = tracing.parse_traceparent(child)
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and flags == 1
    assert span_id != "00f067aa0ba902b7"
    assert tracing.correlation_id(child) == tracing.correlation_id(VALID) == trace_id


def test_child_of_invalid_parent_starts_a_new_trace() -> None:
    child = tracing.child_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01")
    assert tracing.parse_traceparent(child) is not None
    assert tracing.correlation_id(child) != "0" * 32
    assert tracing.correlation_id(None) is None


def test_format_refuses_forbidden_ids() -> None:
    with pytest.raises(ValueError):
        tracing.format_traceparent("0" * 32, "00f067aa0ba902b7")
    with pytest.raises(ValueError):
        tracing.format_traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 256)
    assert tracing.format_traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7") == VALID


async def test_sql_statements_and_their_parameters_are_never_logged_even_at_debug(
    captured: io.StringIO, tmp_path
) -> None:
    # SQLAlchemy echoes statements and bound values (subjects, envelope bytes) once its logger
    # inherits INFO from the root: `exchange serve` at INFO printed every query before this.
    from exchange.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    await store.open()
    try:
        await store.put_token("000.00.00.G22", "c0ffee" * 10, label="Công văn mật số 7")
        await store.agency_for_token("c0ffee" * 10)
    finally:
        await store.close()
    assert "Công văn mật số 7" not in captured.getvalue()
    assert not [line for line in lines(captured) if line.get("logger", "").startswith("sqlalchemy")]
