"""National fan-out benchmark: one 64 KB directive from the Government Office to 3,355 agencies.

The world is the national directory (exchange/routing/national.py): 34 provinces and
3,321 communes, ECDSA keys, the recording adapter. Two layouts:

* ``central``: every recipient on one receiving node (one ``exchange serve`` process);
* ``provincial``: each province and its communes on the province's node (34 processes).

The sending node runs in this process. For each layout it prints the world build, the
receiving nodes' start (process spawn until the topology is declared and the consumer
attached; on the first start every agency is bound, then again as a restart, with the
topology already there), how many AMQP messages carried the directive (one bundle per
node and outbox claim, transport/relay.py), the time from submit to the last signed receipt, the bytes through the
broker (our vhost's connections, both directions), the broker queue count, the broker's
memory and each receiving node's peak RSS, beside a baseline measured in the same run:
a raw aio-pika publish of the same frame to N bindings of a direct exchange on three
quorum queues, with confirms, and a consumer acking every copy.

    python benchmarks/bench_fanout.py [--layout central|provincial|both] [--communes 3321]

Runs in a private RabbitMQ vhost (created with rabbitmqctl, deleted afterwards). The
broker is shared with other work on the machine: its memory is shown as a total and
as the growth during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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
from exchange.devworld import NodeSpec, build_world, national_specs
from exchange.envelope.model import DocumentCode, DocumentInfo
from exchange.routing.national import GOVERNMENT_OFFICE
from exchange.store.base import DeliveryState

ATTACHMENT = 64 * 1024


def ctl(*args: str, timeout: float = 120) -> str:
    return subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=timeout).stdout


def broker_memory_mb() -> float:
    """The broker's resident memory (rabbitmqctl status, strategy rss), whole broker."""
    status = json.loads(ctl("status", "--formatter", "json"))
    mem = status.get("memory", {}).get("total", {})
    return (mem.get("rss") or mem.get("erlang") or 0) / 1e6


def broker_fds() -> tuple[int, int]:
    fds = json.loads(ctl("status", "--formatter", "json")).get("file_descriptors", {})
    return int(fds.get("total_used", 0)), int(fds.get("total_limit", 0))


def vhost_bytes(vhost: str) -> int:
    """Bytes received plus sent by the broker on this vhost's open connections."""
    total = 0
    for line in ctl("list_connections", "vhost", "recv_oct", "send_oct", "--no-table-headers", "--quiet").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] == vhost:
            total += int(parts[1]) + int(parts[2])
    return total


def queue_count(vhost: str) -> int:
    return len(
        [n for n in ctl("list_queues", "-p", vhost, "name", "--no-table-headers", "--quiet").splitlines() if n.strip()]
    )


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class MemorySampler:
    """Samples the broker's memory every few seconds in a thread; keeps the peak."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.peak = 0.0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            # a sample rabbitmqctl failed or timed out on is skipped: the peak is over the others
            with contextlib.suppress(subprocess.SubprocessError, OSError, ValueError):
                self.peak = max(self.peak, await asyncio.to_thread(broker_memory_mb))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    def stop(self) -> None:
        self._stop.set()


async def baseline(url: str, recipients: list[str], body: bytes, in_flight: int = 128) -> tuple[float, int]:
    """Seconds to publish ``body`` once per recipient (routing key per agency, confirms) through a direct
    exchange bound N times to three quorum queues and consume/ack every copy; and the broker bytes."""
    tag = uuid.uuid4().hex[:6]
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(f"raw-{tag}", aio_pika.ExchangeType.DIRECT, auto_delete=True)
        queues = [
            await channel.declare_queue(f"raw-{tag}-{lane}", durable=True, arguments={"x-queue-type": "quorum"})
            for lane in ("express", "urgent", "normal")
        ]
        raw = await channel.get_underlay_channel()
        for code in recipients:
            await raw.queue_bind(queues[2].name, exchange.name, routing_key=f"{code}.normal")
        consume = await connection.channel()
        await consume.set_qos(prefetch_count=64)
        done = asyncio.Event()
        received = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal received
            await message.ack()
            received += 1
            if received >= len(recipients):
                done.set()

        for q in queues:
            await (await consume.declare_queue(q.name, passive=True)).consume(on_message)
        sem = asyncio.Semaphore(in_flight)

        async def publish(code: str) -> None:
            async with sem:
                await exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=f"raw/{code}"),
                    routing_key=f"{code}.normal",
                    timeout=60,
                )

        started = time.perf_counter()
        await asyncio.gather(*(publish(c) for c in recipients))
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - started
        moved = len(body) * len(recipients) * 2  # in from the publisher, out to the consumer
        for q in queues:
            await q.delete(if_unused=False, if_empty=False)
        return elapsed, moved
    finally:
        await connection.close()


async def spawn(config: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], float]:
    """`exchange serve` in its own process; returns it and the seconds until its consumer was attached."""
    started = time.perf_counter()
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exchange.cli.main", "serve", "--config", str(config), "--log-level", "INFO"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, started


async def wait_started(proc: subprocess.Popen[bytes], started: float, log_path: Path, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while b"broker.connected" not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"node did not start; see {log_path}:\n" + log_path.read_text(errors="replace")[-2000:])
        await asyncio.sleep(0.1)
    return time.perf_counter() - started


async def run_layout(how: str, url: str, vhost: str, communes: int, timeout: float) -> dict[str, object]:
    from exchange.config import load_config
    from exchange.node import Node

    root = Path(tempfile.mkdtemp(prefix=f"bench-fanout-{how}-"))
    prefix = f"fan{uuid.uuid4().hex[:6]}"
    t0 = time.perf_counter()
    specs, nodes = national_specs(root, how, communes=communes)
    configs = build_world(root, specs, [NodeSpec(n, amqp_url=url, prefix=prefix, http_port=0) for n in nodes])
    build = time.perf_counter() - t0
    recipients = [s.code for s in specs if s.node != "national"]
    receivers = [n for n in nodes if n != "national"]
    memory_before = broker_memory_mb()
    procs: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    for name in receivers:
        procs[name] = await spawn(configs[name], root / f"{name}.log")
    starts = {name: await wait_started(p, t, root / f"{name}.log") for name, (p, t) in procs.items()}
    sender = Node(load_config(configs["national"]), serve_http=False)
    await sender.start()
    await sender.wait_connected(120)
    frames: set[int] = set()
    frame_ids: set[int] = set()
    copies = 0

    def on_published(items: list) -> None:  # the directive's copies: their sizes and distinct bytes objects
        nonlocal copies
        for item in items:
            if item.recipient in wanted and item.headers.get("x-kind") == "document":
                frames.add(len(item.body))
                frame_ids.add(id(item.body))
                copies += 1

    wanted = set(recipients)
    assert sender.relay is not None
    sender.relay.on_published = on_published
    copies_before = sender.relay.copies
    sampler = MemorySampler()
    sampling = asyncio.create_task(sampler.run())
    bytes_before = await asyncio.to_thread(vhost_bytes, vhost)
    try:
        svc = sender.service
        attachment = OutgoingFile("chi-thi.pdf", os.urandom(ATTACHMENT), "application/pdf")
        info = DocumentInfo(code=DocumentCode("01", "CT-TTg"), subject="Chỉ thị về chuyển đổi số quốc gia")
        t1 = time.perf_counter()
        result = await svc.submit_document(GOVERNMENT_OFFICE, recipients, info, [attachment])
        submitted = time.perf_counter() - t1
        while True:
            counts: dict[DeliveryState, int] = {}
            for d in await svc.store.deliveries(result.message_id):
                counts[d.state] = counts.get(d.state, 0) + 1
            settled = counts.get(DeliveryState.DELIVERED, 0) + counts.get(DeliveryState.FAILED, 0)
            if settled >= len(recipients) or time.perf_counter() - t1 > timeout:
                break
            await asyncio.sleep(0.5)
        last_receipt = time.perf_counter() - t1
        amqp_copies = sender.relay.copies - copies_before  # AMQP messages (bundles) for the directive
        moved = await asyncio.to_thread(vhost_bytes, vhost) - bytes_before
        queues = await asyncio.to_thread(queue_count, vhost)
        fds = await asyncio.to_thread(broker_fds)
        rss = {name: peak_rss_mb(p.pid) for name, (p, _) in procs.items()}
    finally:
        sampler.stop()
        await sampling
        await sender.stop()
        stop_all(procs)
    # A restart of the receiving node(s): the topology is there, nothing is bound again.
    restarts: dict[str, float] = {}
    procs = {name: await spawn(configs[name], root / f"{name}.restart.log") for name in receivers}
    try:
        restarts = {name: await wait_started(p, t, root / f"{name}.restart.log") for name, (p, t) in procs.items()}
    finally:
        stop_all(procs)
    return {
        "layout": how,
        "recipients": len(recipients),
        "nodes": len(receivers),
        "build": build,
        "start_max": max(starts.values()),
        "start_min": min(starts.values()),
        "submit": submitted,
        "last_receipt": last_receipt,
        "delivered": counts.get(DeliveryState.DELIVERED, 0),
        "failed": counts.get(DeliveryState.FAILED, 0),
        "bytes": moved,
        "queues": queues,
        "memory_before": memory_before,
        "memory_peak": max(sampler.peak, memory_before),
        "fds": fds,
        "rss": rss,
        "sender_rss": peak_rss_mb(os.getpid()),
        "frame": max(frames, default=0),
        "frame_objects": len(frame_ids),
        "copies": copies,
        "amqp_copies": amqp_copies,
        "restart_max": max(restarts.values()),
    }


def stop_all(procs: dict[str, tuple[subprocess.Popen[bytes], float]]) -> None:
    for p, _ in procs.values():
        p.terminate()
    for p, _ in procs.values():
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def report(r: dict[str, object], base: tuple[float, int]) -> None:
    rss = r["rss"]
    assert isinstance(rss, dict)
    values = sorted(rss.values())
    rss_text = (
        f"{values[0]:.0f} MB"
        if len(values) == 1
        else f"min {values[0]:.0f} / median {values[len(values) // 2]:.0f} / max {values[-1]:.0f} MB"
    )
    print(f"\n== layout {r['layout']}: {r['recipients']} recipients on {r['nodes']} receiving node(s)")
    print(f"  world build (PKI, directory, node configs)  {r['build']:.1f} s")
    if r["nodes"] == 1:
        print(
            f"  receiving node start                        {r['start_max']:.1f} s first start (binds every "
            f"agency), {r['restart_max']:.1f} s restart"
        )
    else:
        print(
            f"  receiving nodes start (all spawned at once) {r['start_min']:.1f} s first, {r['start_max']:.1f} s last;"
            f" restart {r['restart_max']:.1f} s last"
        )
    print(f"  submit (sign once, {r['recipients']} outbox rows)          {r['submit']:.2f} s")
    print(
        f"  submit -> last receipt                      {r['last_receipt']:.1f} s   "
        f"(delivered {r['delivered']}, failed {r['failed']})"
    )
    print(
        f"  directive frame                             {int(r['frame']) / 1024:.1f} KiB, {r['copies']} "
        f"recipients served by {r['amqp_copies']} AMQP message(s) (bundles of up to 500 per node), "
        f"from {r['frame_objects']} bytes object(s)"
    )
    print(
        f"  bytes through the broker (in + out, all)    {int(r['bytes']) / 1e6:.0f} MB   "
        f"baseline, the directive's copies alone: {base[1] / 1e6:.0f} MB"
    )
    print(
        f"  baseline: raw publish+confirm+consume       {base[0]:.1f} s for {r['recipients']} copies "
        "(a copy per recipient: the floor of the design before bundles)"
    )
    print(f"  broker queues in the vhost                  {r['queues']}")
    fds = r["fds"]
    assert isinstance(fds, tuple)
    print(
        f"  broker memory (whole, shared broker)        {r['memory_before']:.0f} MB before, "
        f"{r['memory_peak']:.0f} MB peak; file handles {fds[0]} of {fds[1]}"
    )
    print(f"  peak RSS: receiving node(s) {rss_text}; sending node {r['sender_rss']:.0f} MB")


async def amain(args: argparse.Namespace) -> int:
    from exchange.observability.logging import configure_logging

    configure_logging("WARNING")  # the sending node in this process: 3,355 receipt lines are noise here
    vhost = f"bench-fanout-{uuid.uuid4().hex[:8]}"
    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    url = f"amqp://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}"
    try:
        layouts = ["central", "provincial"] if args.layout == "both" else [args.layout]
        for how in layouts:
            r = await run_layout(how, url, vhost, args.communes, args.timeout)
            recipients = [f"b{i:05d}" for i in range(int(r["recipients"]))]
            base = await baseline(url, recipients, os.urandom(int(r["frame"]) or ATTACHMENT))
            report(r, base)
        load = os.getloadavg()
        print(
            f"\nmachine load average during the run: {load[0]:.1f} (1 min), {load[2]:.1f} (15 min) on "
            f"{os.cpu_count()} cores"
        )
    finally:
        ctl("delete_vhost", vhost, timeout=600)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layout", choices=["central", "provincial", "both"], default="both")
    p.add_argument("--communes", type=int, default=3321, help="communes in the world (3,321; fewer for a quick look)")
    p.add_argument("--timeout", type=float, default=600, help="give up waiting for receipts after this many seconds")
    return asyncio.run(amain(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
