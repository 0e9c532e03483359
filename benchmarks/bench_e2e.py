"""End-to-end benchmark: signed documents with a 64 KB attachment, A → B, receipts back.

Prints documents/s and latency p50/p99 (submit → delivered receipt at the
sender) beside a raw aio-pika publish-with-confirms + consume loop of the same
message size measured in the same run, and the ratio between the two.

The sending node runs in this process, where submissions and receipts are
timed; the receiving node runs as its own `exchange serve` process, as two
agencies' nodes do in a deployment. `--one-process` runs both nodes in this
process instead (they then share one interpreter lock).

    python benchmarks/bench_e2e.py [--documents 1000] [--store-url postgresql://…] [--one-process] [--keys rsa|ec]
                                   [--repeat N]

Runs in a private RabbitMQ vhost (created with rabbitmqctl, deleted afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exchange.adapters.base import OutgoingFile
from exchange.devworld import AgencySpec, NodeSpec, build_world
from exchange.envelope.model import DocumentCode, DocumentInfo
from exchange.store.base import DeliveryState

A, B = "000.00.00.G22", "000.00.00.H41"
ATTACHMENT = 64 * 1024


_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def broker_cpu() -> float:
    """CPU seconds used so far by the RabbitMQ VM(s) on this machine (every beam.smp process)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "beam.smp":
                    total += process_cpu(int(proc.name))
            except OSError:
                continue
    return total


class CpuMeter:
    """CPU used by this process, an optional child process and the broker between start() and stop()."""

    def __init__(self, child: int | None = None) -> None:
        self.child = child
        self.start()

    def _now(self) -> tuple[float, float, float]:
        return (process_cpu(os.getpid()), process_cpu(self.child) if self.child else 0.0, broker_cpu())

    def start(self) -> None:
        self._begin = self._now()

    def stop(self) -> tuple[float, float, float]:
        """(this process, child, broker) CPU seconds since start()."""
        end = self._now()
        return tuple(b - a for a, b in zip(self._begin, end, strict=True))  # type: ignore[return-value]


def key_operations(key: object, count: int = 50) -> float:
    """CPU seconds of one private-key signature plus one public-key verification (cryptography alone)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    digest = os.urandom(32)
    if isinstance(key, rsa.RSAPrivateKey):
        sign = lambda: key.sign(digest, padding.PKCS1v15(), hashes.SHA256())  # noqa: E731
        verify = lambda sig: key.public_key().verify(sig, digest, padding.PKCS1v15(), hashes.SHA256())  # noqa: E731
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        sign = lambda: key.sign(digest, ec.ECDSA(hashes.SHA256()))  # noqa: E731
        verify = lambda sig: key.public_key().verify(sig, digest, ec.ECDSA(hashes.SHA256()))  # noqa: E731
    else:
        raise TypeError(f"unexpected key type {type(key).__name__}")
    started = time.process_time()
    for _ in range(count):
        verify(sign())
    return (time.process_time() - started) / count


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


async def raw_loop(url: str, count: int, size: int, in_flight: int = 256) -> tuple[float, float]:
    """Messages/s of a plain persistent publish-with-confirms + consume/ack loop on a quorum queue,
    and the CPU seconds per message it took (this process and the broker)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            f"raw-{uuid.uuid4().hex[:6]}", durable=True, arguments={"x-queue-type": "quorum"}
        )
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=256)
        cq = await consume_channel.declare_queue(queue.name, passive=True)
        body = os.urandom(size)
        done = asyncio.Event()
        received = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal received
            await message.ack()
            received += 1
            if received >= count:
                done.set()

        await cq.consume(on_message)
        sem = asyncio.Semaphore(in_flight)

        async def publish(i: int) -> None:
            async with sem:
                await channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=str(i)),
                    routing_key=queue.name,
                    timeout=30,
                )

        started = time.perf_counter()
        meter = CpuMeter()
        await asyncio.gather(*(publish(i) for i in range(count)))
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - started
        cpu = sum(meter.stop())
        await queue.delete(if_unused=False, if_empty=False)
        return count / elapsed, cpu / count
    finally:
        await connection.close()


async def start_process_node(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """`exchange serve` for ``config`` in its own process; returns once its consumer is attached."""
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exchange.cli.main", "serve", "--config", str(config), "--log-level", "WARNING"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while b"serving" not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(
                f"the receiving node did not start; see {log_path}:\n" + log_path.read_text(errors="replace")[-2000:]
            )
        await asyncio.sleep(0.1)
    return proc


async def bus_loop(
    root: Path, url: str, count: int, store_url: str, concurrency: int = 64, one_process: bool = False, ec: bool = False
) -> tuple[float, list[float], dict[str, float]]:
    """Documents/s, per-document latencies (s) and CPU seconds per document through two real nodes."""
    from exchange.config import load_config
    from exchange.node import Node

    prefix = f"bench{uuid.uuid4().hex[:6]}"
    stores = {
        "central": store_url.replace("{node}", "central") if store_url else "",
        "local": store_url.replace("{node}", "local") if store_url else "",
    }
    configs = build_world(
        root,
        [
            AgencySpec(A, "Văn phòng Chính phủ", node="central", ec=ec),
            AgencySpec(B, "UBND tỉnh Nghệ An", node="local", ec=ec),
        ],
        [NodeSpec(n, amqp_url=url, prefix=prefix, http_port=0, store_url=stores[n]) for n in ("central", "local")],
    )
    receiver = None
    if one_process:
        nodes = [Node(load_config(configs[n]), serve_http=False) for n in ("local", "central")]
    else:
        receiver = await start_process_node(configs["local"], root / "local.log")
        nodes = [Node(load_config(configs["central"]), serve_http=False)]
    for node in nodes:
        await node.start()
        await node.wait_connected()
    central = nodes[-1].service
    attachment = OutgoingFile("phu-luc.pdf", os.urandom(ATTACHMENT), "application/pdf")
    submitted: dict[str, float] = {}
    sem = asyncio.Semaphore(concurrency)

    async def submit(i: int) -> None:
        async with sem:
            t = time.time()
            r = await central.submit_document(
                A, [B], DocumentInfo(DocumentCode(str(i), "BM"), f"Văn bản {i}"), [attachment]
            )
            submitted[r.message_id] = t

    try:
        keys = key_operations(central.signers[A].key)
        meter = CpuMeter(receiver.pid if receiver is not None else None)
        started = time.perf_counter()
        last_report = started
        await asyncio.gather(*(submit(i) for i in range(count)))
        while True:
            delivered = (await central.store.delivery_counts()).get(DeliveryState.DELIVERED.value, 0)
            if delivered >= count:
                break
            if time.perf_counter() - last_report > 5:
                print(f"  … {delivered}/{count} receipts", file=sys.stderr, flush=True)
                last_report = time.perf_counter()
            await asyncio.sleep(0.1)  # (polling is part of the sender process: keep it light)
        elapsed = time.perf_counter() - started
        sender_cpu, receiver_cpu, broker = meter.stop()
        cpu = {
            "sender": sender_cpu / count,
            "receiver": receiver_cpu / count,
            "broker": broker / count,
            "keys": 2 * keys,
        }
        latencies = []
        for mid, t0 in submitted.items():
            (d,) = await central.store.deliveries(mid)
            latencies.append(d.updated_at.timestamp() - t0)
        return count / elapsed, latencies, cpu
    finally:
        for node in nodes:
            await node.stop()
        if receiver is not None:
            receiver.terminate()
            try:
                receiver.wait(30)
            except subprocess.TimeoutExpired:
                receiver.kill()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(count: int, store_url: str, one_process: bool, ec: bool, repeat: int = 1) -> None:
    vhost = f"exchange-bench-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    url = f"amqp://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}"
    runs: list[tuple[float, float, float, list[float], dict[str, float]]] = []
    try:
        for i in range(repeat):
            label = f"[{i + 1}/{repeat}] " if repeat > 1 else ""
            print(
                f"{label}raw aio-pika loop: {count} persistent messages of {ATTACHMENT + 5 * 1024} bytes …",
                file=sys.stderr,
            )
            raw, raw_cpu = await raw_loop(url, count, ATTACHMENT + 5 * 1024)
            print(
                f"{label}bus: {count} signed documents with a 64 KB attachment, A → B, receipts back …", file=sys.stderr
            )
            with tempfile.TemporaryDirectory() as tmp:
                rate, lat, cpu = await bus_loop(Path(tmp), url, count, store_url, one_process=one_process, ec=ec)
            runs.append((raw, raw_cpu, rate, lat, cpu))
            if repeat > 1:
                print(f"{label}raw {raw:.0f} msg/s, bus {rate:.0f} doc/s, ratio {rate / raw:.2f}", file=sys.stderr)
    finally:
        rabbitmqctl("delete_vhost", vhost)
    # With several runs (the raw loop and the bus alternate), the run with the median ratio is shown.
    raw, raw_cpu, rate, lat, cpu = sorted(runs, key=lambda r: r[2] / r[0])[len(runs) // 2]
    print()
    if repeat > 1:
        ratios = sorted(r[2] / r[0] for r in runs)
        print(
            f"{repeat} runs, raw loop and bus alternating; ratios {', '.join(f'{x:.2f}' for x in ratios)}. "
            "The run with the median ratio:"
        )
    print(f"{'measure':42} {'value':>12}")
    print(f"{'raw publish+confirm+consume (msg/s)':42} {raw:12.0f}")
    print(
        f"{'bus documents with receipts (doc/s)':42} {rate:12.0f}   "
        f"({'both nodes in one process' if one_process else 'receiving node in its own process'}; "
        f"{'ECDSA P-256' if ec else 'RSA 3072'} agency keys)"
    )
    print(f"{'ratio bus / raw':42} {rate / raw:12.2f}   (aim: ≥ 0.50)")
    print(f"{'latency p50 submit→receipt (ms)':42} {percentile(lat, 50) * 1000:12.1f}")
    print(f"{'latency p99 submit→receipt (ms)':42} {percentile(lat, 99) * 1000:12.1f}")
    print(f"{'latency mean (ms)':42} {statistics.fmean(lat) * 1000:12.1f}")
    bus_cpu = cpu["sender"] + cpu["receiver"] + cpu["broker"]
    print()
    print("CPU time, all processes of the run (both nodes and the broker):")
    print(f"{'raw loop, per message (ms)':42} {raw_cpu * 1000:12.2f}")
    print(
        f"{'bus, per document (ms)':42} {bus_cpu * 1000:12.2f}   (sending node {cpu['sender'] * 1000:.1f}, "
        f"receiving node {cpu['receiver'] * 1000:.1f}, broker {cpu['broker'] * 1000:.1f})"
    )
    print(
        f"{'  of which the key operations alone (ms)':42} {cpu['keys'] * 1000:12.2f}   "
        "(two signatures + two verifications: document and receipt)"
    )
    print(
        f"{'CPU-bound ratio, raw per msg / bus per doc':42} {raw_cpu / bus_cpu:12.2f}   "
        f"(the aim needs a document to cost at most {2 * raw_cpu * 1000:.2f} ms)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--store-url", default="", help="store URL template, {node} replaced (default SQLite)")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="node log level during the run (default WARNING, "
        "as a loaded production node would run; INFO logs every handover)",
    )
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="run both nodes in this process (default: the receiving node in its own process)",
    )
    parser.add_argument(
        "--keys",
        choices=("rsa", "ec"),
        default="rsa",
        help="agency signing keys: rsa (RSA 3072, the dev PKI default) or ec (ECDSA P-256)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="alternate the raw loop and the bus this many times; show the median run"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    from exchange.observability.logging import configure_logging

    configure_logging(args.log_level)
    asyncio.run(run(args.documents, args.store_url, args.one_process, args.keys == "ec", args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
