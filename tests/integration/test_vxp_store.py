"""The store's part of the hub protocol, on both backends: system secrets, the replay guard, reopening.

Uses the fixtures of the Store contract (an empty SQLite file, a private PostgreSQL database).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from exchange.errors import ConflictError, NotFoundError
from exchange.store import DeliveryState, Store
from exchange.store.base import VxpSystem
from tests.integration import test_store_contract as contract

# The contract's fixtures and helpers.
backend_url, pg_database, store_url, store = (
    contract.backend_url,
    contract.pg_database,
    contract.store_url,
    contract.store,
)
B, C, now, send_and_publish, states = contract.B, contract.C, contract.now, contract.send_and_publish, contract.states

H41 = "000.00.00.H41"


def system(system_id: str = "vxp.saas.03", agency: str = H41, sealed: str = "v1.AAAA", key: str = "k1") -> VxpSystem:
    return VxpSystem(system_id=system_id, agency=agency, sealed=sealed, key_id=key, created_at=now())


async def test_a_system_is_created_once_rotated_in_place_and_listed(store: Store) -> None:
    await store.put_vxp_system(system())
    with pytest.raises(ConflictError):
        await store.put_vxp_system(system(sealed="v1.BBBB"))
    with pytest.raises(NotFoundError):
        await store.put_vxp_system(system("vxp.other"), rotate=True)
    with pytest.raises(ConflictError):
        await store.put_vxp_system(system(agency="000.00.00.H29"), rotate=True)
    await store.put_vxp_system(system(sealed="v1.CCCC", key="k2"), rotate=True)
    got = await store.get_vxp_system("vxp.saas.03")
    assert got is not None and (got.agency, got.sealed, got.key_id) == (H41, "v1.CCCC", "k2")
    assert got.rotated_at is not None and got.rotated_at >= got.created_at
    assert await store.get_vxp_system("vxp.other") is None
    await store.put_vxp_system(system("020100107370", agency="000.00.00.G22"))
    assert [s.system_id for s in await store.list_vxp_systems()] == ["020100107370", "vxp.saas.03"]
    report = await store.verify_journal()
    assert report.ok


async def test_a_signature_is_accepted_once_until_it_expires_then_purged(store: Store) -> None:
    t = now()
    assert await store.remember_vxp_signature("s", "a" * 64, expires_at=t + timedelta(minutes=5), now=t)
    assert not await store.remember_vxp_signature("s", "a" * 64, expires_at=t + timedelta(minutes=5), now=t)
    assert await store.remember_vxp_signature("other", "a" * 64, expires_at=t + timedelta(minutes=5), now=t)
    later = t + timedelta(minutes=6)  # past its expiry: purged, so the table stays bounded by the window
    assert await store.remember_vxp_signature("s", "a" * 64, expires_at=later + timedelta(minutes=5), now=later)


async def test_reopen_moves_a_delivered_delivery_to_failed_once(store: Store) -> None:
    m = await send_and_publish(store)
    assert await store.record_event(
        m.message_id, B, "delivered", at=now(), state=DeliveryState.DELIVERED, only_if_open=True
    )
    # Without reopen a failure after delivery stays out (a late duplicate's receipt) ...
    assert not await store.record_event(
        m.message_id, B, "failed", at=now(), state=DeliveryState.FAILED, only_if_open=True
    )
    # ... with it, the E-Office's refusal turns it failed, once.
    assert await store.record_event(
        m.message_id,
        B,
        "failed",
        at=now(),
        state=DeliveryState.FAILED,
        detail="eoffice-refused: x",
        only_if_open=True,
        reopen=True,
    )
    assert not await store.record_event(
        m.message_id, B, "failed", at=now(), state=DeliveryState.FAILED, only_if_open=True, reopen=True
    )
    assert (await states(store, m.message_id))[B] is DeliveryState.FAILED
    assert (await states(store, m.message_id))[C] is DeliveryState.QUEUED
    (d,) = [d for d in await store.deliveries(m.message_id) if d.recipient == B]
    assert d.reason == "eoffice-refused: x"
