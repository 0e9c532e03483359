"""Priority lanes and routing keys.

RabbitMQ 3.10 quorum queues have no message priorities, so each agency gets one
quorum queue per lane and the consumer serves lanes in order: an express
document overtakes any backlog of normal ones. Receipts and statuses ride the
express lane: they are small, and a sender waiting for proof should not wait
behind a recipient's document backlog.
"""

from __future__ import annotations

import enum

from exchange.envelope.model import Header, Kind, Priority


class Lane(str, enum.Enum):
    EXPRESS = "express"  # priority 3-4 (hỏa tốc), statuses and receipts
    URGENT = "urgent"  # priority 1-2 (khẩn, thượng khẩn)
    NORMAL = "normal"  # priority 0

    @property
    def rank(self) -> int:
        """Lower is served first."""
        return list(Lane).index(self)


def lane_of(header: Header) -> Lane:
    if header.kind is not Kind.DOCUMENT or header.priority >= Priority.EXPRESS:
        return Lane.EXPRESS
    if header.priority >= Priority.URGENT:
        return Lane.URGENT
    return Lane.NORMAL


def routing_key(agency: str, lane: Lane) -> str:
    return f"{agency}.{lane.value}"


def parse_routing_key(key: str) -> tuple[str, Lane]:
    agency, _, lane = key.rpartition(".")
    return agency, Lane(lane)
