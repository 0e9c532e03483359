"""The state of a hub's links: shovel state, backlog and age of the oldest waiting message.

Everything is read from the hub's management HTTP API. The age of the oldest message is read by
peeking at the head of the link queue (``reject_requeue_true``: the message goes back where it
was). That is safe on a link queue because it has no delivery limit (links.quorum_link_arguments)
and its only other consumer is the shovel; the entering time is the message's AMQP timestamp (set
by the node's relay) or, for a message that arrived from another hub, the shovel's
``x-shovelled-timestamp``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from exchange.hub.links import HubNames, ManagementApi

#: Shovel states of RabbitMQ 3.10: "running" moves messages; "starting" is connecting (or waiting
#: reconnect-delay after a failure); "terminated" failed and is waiting to restart.
UP_STATES = frozenset({"running"})


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """One link as its upstream hub sees it."""

    link: str
    queue: str
    state: str
    reason: str
    backlog: int
    unacked: int
    oldest_seconds: float | None
    destination: str

    @property
    def up(self) -> bool:
        return self.state in UP_STATES


@dataclass(frozen=True, slots=True)
class HubStatus:
    """All links of one hub, and what it parked as unroutable."""

    api: str
    links: tuple[LinkStatus, ...]
    unrouted: int


def _entered_at(message: dict[str, Any]) -> float | None:
    props = message.get("properties") or {}
    headers = props.get("headers") or {}
    if isinstance(headers.get("x-shovelled-timestamp"), (int, float)):
        return float(headers["x-shovelled-timestamp"])
    ts = props.get("timestamp")
    return float(ts) if isinstance(ts, (int, float)) else None


async def oldest_age(api: ManagementApi, vhost: str, queue: str, now: float | None = None) -> float | None:
    """Seconds the head message of ``queue`` has waited, or None if it is empty or carries no time."""
    got = await api.request(
        "POST",
        f"/queues/{api.vh(vhost)}/{quote(queue, safe='')}/get",
        {"count": 1, "ackmode": "reject_requeue_true", "encoding": "auto", "truncate": 1},
        ok_missing=True,
    )
    if not got:
        return None
    entered = _entered_at(got[0])
    if entered is None:
        return None
    return max(0.0, (now if now is not None else time.time()) - entered)


async def hub_status(api: ManagementApi, prefix: str = "exchange", vhost: str = "/", *, peek: bool = True) -> HubStatus:
    """Every link whose queue lives on this hub (``{prefix}.link.*``), with its shovel's state."""
    n = HubNames(prefix)
    v = api.vh(vhost)
    shovels = {s.get("name"): s for s in (await api.request("GET", f"/shovels/{v}", ok_missing=True) or [])}
    queues = await api.request("GET", f"/queues/{v}?columns=name,messages,messages_ready,messages_unacknowledged")
    link_prefix = n.link_queue("")
    links: list[LinkStatus] = []
    unrouted = 0
    params = {
        p.get("name"): p.get("value") or {}
        for p in (await api.request("GET", f"/parameters/shovel/{v}", ok_missing=True) or [])
    }
    for q in sorted(queues or [], key=lambda q: q.get("name", "")):
        name = q.get("name", "")
        if name == n.unrouted:
            unrouted = int(q.get("messages") or 0)
        if not name.startswith(link_prefix):
            continue
        link = name[len(link_prefix) :]
        shovel = shovels.get(n.shovel(link))
        state = str(shovel.get("state")) if shovel else ("missing" if n.shovel(link) not in params else "starting")
        reason = str(shovel.get("reason") or "") if shovel else ""
        ready = int(q.get("messages_ready") or 0)
        oldest = await oldest_age(api, vhost, name) if (peek and ready) else (0.0 if not ready else None)
        value = params.get(n.shovel(link), {})
        links.append(
            LinkStatus(
                link=link,
                queue=name,
                state=state,
                reason=reason[:300],
                backlog=int(q.get("messages") or 0),
                unacked=int(q.get("messages_unacknowledged") or 0),
                oldest_seconds=oldest,
                destination=_redact(str((shovel or {}).get("dest_uri") or value.get("dest-uri") or "")),
            )
        )
    return HubStatus(api.display, tuple(links), unrouted)


def _redact(uri: str) -> str:
    """A URI without its credentials (the shovel parameter holds the link password)."""
    if "@" not in uri:
        return uri
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://{rest.split('@', 1)[1]}"
