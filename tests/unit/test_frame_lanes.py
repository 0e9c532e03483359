"""The transport frame and priority lanes."""

from __future__ import annotations

import pytest

from exchange.errors import PayloadTooLargeError
from exchange.routing import frame
from exchange.routing.frame import FrameError
from exchange.routing.lanes import Lane, parse_routing_key, routing_key


def test_frame_round_trips_xml_and_attachments() -> None:
    parts = {"att-1": b"\x00\x01binary", "att-2": "Quyết định".encode() * 1000, "empty": b""}
    body = frame.encode(b"<env/>", parts)
    xml, got = frame.decode(body, max_bytes=len(body))
    assert xml == b"<env/>" and got == parts


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b"XXXX" + b[4:],  # foreign magic
        lambda b: b[:-3],  # truncated
        lambda b: b + b"junk",  # trailing bytes
        lambda b: b[:4] + b"\x00\x00\x00\x00" + b[8:],  # zero parts
        lambda b: b[:4] + b"\xff\xff\xff\xff" + b[8:],  # absurd part count
    ],
)
def test_garbled_frames_are_refused(mangle) -> None:
    body = frame.encode(b"<env/>", {"a": b"1"})
    with pytest.raises(FrameError):
        frame.decode(mangle(body), max_bytes=10_000)


def test_frame_without_envelope_part_and_oversize_are_refused() -> None:
    body = frame.MAGIC + b"\x00\x00\x00\x01" + b"\x00\x01a" + (1).to_bytes(8, "big") + b"x"
    with pytest.raises(FrameError, match="no envelope"):
        frame.decode(body, max_bytes=1000)
    with pytest.raises(PayloadTooLargeError):
        frame.decode(frame.encode(b"x" * 100, {}), max_bytes=50)


def test_lanes_rank_express_first_and_keys_round_trip() -> None:
    assert sorted(Lane, key=lambda lane: lane.rank) == [Lane.EXPRESS, Lane.URGENT, Lane.NORMAL]
    assert parse_routing_key(routing_key("000.00.00.G22", Lane.URGENT)) == ("000.00.00.G22", Lane.URGENT)
