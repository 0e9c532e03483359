"""Applying a hub's ``[hub]`` section: by ``exchange hub apply``, and by ``exchange serve`` at start.

A node whose TOML has a ``[hub]`` section declares it on its hub's broker when it starts, in a
background task: the management API of a hub can be down while its AMQP listener is up (a
restarted plugin, a firewall), and documents must keep flowing through the local broker
meanwhile (a link missing only means cross-hub documents wait: the node's mandatory publish is
returned and the item stays in its outbox). So the task never blocks the start, each attempt is
bounded in time, and an unreachable API is retried with exponential backoff (1 s doubling up to
60 s) until it answers; one line says the hub is being waited for, one that it was applied. A
refusal (credentials, a conflicting object) is not retried: the same request would be refused
again until an operator fixes it; the next start or ``exchange hub apply`` applies it then.

Every node of a hub may carry the same ``[hub]``: the declarations are idempotent, and RabbitMQ
leaves a running shovel alone when its definition is set again unchanged (3.10, measured: no
reconnect, same start time), so a node's restart does not interrupt its hub's links.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from exchange.errors import BrokerUnavailableError, ConfigError, ExchangeError
from exchange.hub.config import HubConfig, hub_config
from exchange.hub.links import Applied, LinkSpec, ManagementApi, apply_link, declare_hub

if TYPE_CHECKING:
    from exchange.config import NodeConfig
    from exchange.routing.directory import Directory

log = structlog.get_logger("exchange.hub")


async def apply_hub(hub: HubConfig) -> list[tuple[Applied, str, LinkSpec]]:
    """Declare everything ``hub`` describes (home patterns, then every link); idempotent.

    Returns, per link, what was done, the link password and the link's spec. Raises
    :class:`BrokerUnavailableError` when a management API does not answer and
    :class:`~exchange.hub.links.HubLinkError` when one refuses.
    """
    out = []
    async with ManagementApi(hub.api) as api:
        await declare_hub(api, hub.prefix, hub.vhost, home=hub.home)
        for spec in hub.links:
            if spec.downstream.api:
                async with ManagementApi(spec.downstream.api) as down:
                    applied, password = await apply_link(spec, upstream_api=api, downstream_api=down)
            else:
                applied, password = await apply_link(spec, upstream_api=api)
            out.append((applied, password, spec))
    return out


def node_hub(config: NodeConfig, directory: Directory | None = None) -> HubConfig | None:
    """The ``[hub]`` section of a node's own TOML (None without one); a bad section is a ConfigError.

    A link applied at every start needs its password from the environment (``password_env``):
    a generated one would change at each start and lock out the neighbour's half of the link.
    """
    if config.source is None:
        return None
    path = Path(config.source)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read its [hub] section ({exc})") from None
    if "hub" not in raw:
        return None
    hub = hub_config(raw, prefix=config.amqp.prefix, source=str(path), directory=directory)
    if hub is None:
        return None
    for spec in hub.links:
        if not spec.password:
            raise ConfigError(
                f"{path}: [[hub.links]] {spec.name} has no password_env; a node applies its [hub] at every "
                "start and needs the link password from the environment (see docs/FEDERATION.md)"
            )
    return hub


async def keep_applying(
    hub: HubConfig,
    *,
    first_delay: float = 1.0,
    max_delay: float = 60.0,
    attempt_timeout: float = 60.0,
    apply: Callable[[HubConfig], Awaitable[object]] = apply_hub,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> bool:
    """Apply ``hub`` until it is applied (True) or refused (False); an unreachable API is retried."""
    started, attempt, delay = time.monotonic(), 0, first_delay
    while True:
        attempt += 1
        try:
            await asyncio.wait_for(apply(hub), attempt_timeout)
        except (BrokerUnavailableError, TimeoutError) as exc:
            detail = exc.message if isinstance(exc, ExchangeError) else f"no answer within {attempt_timeout:.0f} s"
            (log.warning if attempt == 1 else log.debug)(
                "hub.apply_waiting",
                hub=hub.name,
                attempt=attempt,
                retry_in=round(delay, 1),
                detail=detail[:300],
                hint="documents keep flowing through the local broker; cross-hub ones wait until the links exist",
            )
            await sleep(delay)
            delay = min(delay * 2, max_delay)
            continue
        except ExchangeError as exc:
            log.error(
                "hub.apply_refused",
                hub=hub.name,
                attempt=attempt,
                detail=exc.message[:300],
                hint="fix the [hub] section or the hub's credentials, then restart or run `exchange hub apply`",
            )
            return False
        log.info(
            "hub.applied",
            hub=hub.name,
            links=[spec.name for spec in hub.links],
            home=list(hub.home),
            attempts=attempt,
            seconds=round(time.monotonic() - started, 1),
        )
        return True


def hub_apply_task(config: NodeConfig, directory: Directory | None = None) -> asyncio.Task[None] | None:
    """Start applying the node's ``[hub]`` in the background (None when it has none).

    The section is read and checked now, so a bad one fails the node's start like any other
    configuration error; only the declarations wait for the management API.
    """
    hub = node_hub(config, directory)
    if hub is None:
        return None

    async def run() -> None:
        await keep_applying(hub)

    return asyncio.create_task(run(), name="hub-apply")
