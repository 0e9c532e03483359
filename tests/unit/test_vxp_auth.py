"""The hub's header-signing scheme (exchange.gateway.vxp.auth) and the sealing of system secrets."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
from multidict import CIMultiDict

from exchange.gateway.vxp import secrets
from exchange.gateway.vxp.auth import (
    HASH_HEADER,
    SIGN_HEADER,
    SIGN_HEADER_KEY,
    HeaderVerifier,
    check_file_hash,
    format_timestamp,
    parse_timestamp,
    sign_headers,
)
from exchange.gateway.vxp.errors import (
    VxpAuthError,
    VxpHashFileError,
    VxpHeaderMismatchError,
    VxpReplayError,
    VxpSecretUnreadableError,
    VxpSignatureError,
    VxpSystemUnknownError,
    VxpTimestampError,
)

NOW = datetime(2026, 12, 1, 7, 30, 5, 42_000, tzinfo=UTC)
SECRET = "s3cr3t-of-the-e-office"
AGENCY = "000.00.00.H41"


def call(**extra: str) -> dict[str, str]:
    return {"systemid": "vxp.saas.03", "timestamp": format_timestamp(NOW), **extra}


class Memory:
    """Secret lookup and replay guard of a node, in memory."""

    def __init__(self) -> None:
        self.systems = {"vxp.saas.03": (AGENCY, SECRET)}
        self.seen: dict[tuple[str, str], datetime] = {}

    async def lookup(self, system_id: str):
        return self.systems.get(system_id)

    async def replay(self, system_id: str, signature: str, expires_at: datetime, now: datetime) -> bool:
        self.seen = {k: v for k, v in self.seen.items() if v >= now}
        if (system_id, signature) in self.seen:
            return False
        self.seen[(system_id, signature)] = expires_at
        return True


def verifier(memory: Memory | None = None, now: datetime = NOW) -> HeaderVerifier:
    memory = memory or Memory()
    return HeaderVerifier(memory.lookup, memory.replay, window_seconds=300, clock=lambda: now)


async def verify(headers: dict[str, str] | CIMultiDict, v: HeaderVerifier | None = None, required=()):
    h = CIMultiDict(headers)
    return await (v or verifier()).verify(h, lambda name: h.getall(name, []), required)


def test_the_timestamp_is_the_sdks_format_in_vietnam_time_with_milliseconds_after_the_plus() -> None:
    assert format_timestamp(NOW) == "01122026T143005+0042"
    assert parse_timestamp("01122026T143005+0042") == NOW
    for bad in ("2026-12-01T14:30:05", "01122026T143005", "32122026T143005+0000", "01122026T143005+07:00"):
        with pytest.raises(VxpTimestampError):
            parse_timestamp(bad)


def test_the_hash_header_is_the_hmac_sha256_hex_of_the_signed_json_computed_by_hand() -> None:
    headers = sign_headers(call(docId="42"), SECRET)
    assert headers[SIGN_HEADER_KEY] == "systemid;timestamp;docId"
    signed = json.loads(headers[SIGN_HEADER])
    assert signed == {
        "XroadVnpt-systemid": "vxp.saas.03",
        "XroadVnpt-timestamp": "01122026T143005+0042",
        "XroadVnpt-docId": "42",
    }
    by_hand = hmac.new(SECRET.encode(), headers[SIGN_HEADER].encode(), hashlib.sha256).hexdigest()
    assert headers[HASH_HEADER] == by_hand
    assert headers["XroadVnpt-docId"] == headers["docId"] == "42"


async def test_a_correctly_signed_call_gives_its_system_agency_and_signed_parameters() -> None:
    signed = await verify(sign_headers(call(docId="42", status="acceptance"), SECRET), required=("docId",))
    assert (signed.system_id, signed.agency) == ("vxp.saas.03", AGENCY)
    assert signed.get("docid") == signed.get("docId") == "42" and signed.get("status") == "acceptance"
    assert signed.timestamp == NOW


async def test_the_json_is_verified_as_sent_whatever_its_key_order_and_spacing() -> None:
    # The SDK's Gson writes the JSON in hash-map order; the node verifies the bytes it got.
    names = ["timestamp", "docId", "systemid"]
    values = call(docId="7")
    text = "{ " + ", ".join(f'"XroadVnpt-{n}" : "{values[n]}"' for n in names) + " }"
    headers = {f"XroadVnpt-{n}": values[n] for n in names}
    headers.update(
        {
            SIGN_HEADER_KEY: ";".join(names),
            SIGN_HEADER: text,
            HASH_HEADER: hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).hexdigest().upper(),
        }
    )
    assert (await verify(headers)).get("docId") == "7"


async def test_a_wrong_secret_or_a_changed_signed_value_is_refused() -> None:
    with pytest.raises(VxpSignatureError):
        await verify(sign_headers(call(docId="42"), "not-the-secret"))
    headers = sign_headers(call(docId="42"), SECRET)
    headers[SIGN_HEADER] = headers[SIGN_HEADER].replace('"42"', '"43"')
    headers["docId"] = headers["XroadVnpt-docId"] = "43"
    with pytest.raises(VxpSignatureError):
        await verify(headers)


async def test_a_header_sent_in_clear_that_differs_from_its_signed_value_is_refused() -> None:
    for name in ("docId", "XroadVnpt-docId"):
        headers = sign_headers(call(docId="42"), SECRET)
        headers[name] = "43"
        with pytest.raises(VxpHeaderMismatchError):
            await verify(headers)
    # ... but only the prefixed copies are needed (the SDK sends no plain ones), and Content-Type may differ.
    headers = sign_headers(call(docId="42", **{"Content-Type": "application/octet-stream"}), SECRET)
    del headers["docId"], headers["systemid"], headers["timestamp"]
    headers["Content-Type"] = "multipart/form-data; boundary=x"
    assert (await verify(headers)).get("docId") == "42"


async def test_stale_or_future_timestamps_are_refused_and_a_replay_is_refused_once_seen() -> None:
    headers = sign_headers(call(), SECRET)
    for skew in (timedelta(seconds=301), timedelta(seconds=-301)):
        with pytest.raises(VxpTimestampError):
            await verify(headers, verifier(now=NOW + skew))
    memory = Memory()
    await verify(headers, verifier(memory))
    with pytest.raises(VxpReplayError):
        await verify(headers, verifier(memory, now=NOW + timedelta(seconds=10)))
    # The same call signed anew (fresh timestamp) is fine.
    fresh = sign_headers({**call(), "timestamp": format_timestamp(NOW + timedelta(seconds=1))}, SECRET)
    await verify(fresh, verifier(memory, now=NOW + timedelta(seconds=10)))


async def test_unknown_systems_missing_or_malformed_signature_headers_are_refused() -> None:
    with pytest.raises(VxpSystemUnknownError):
        await verify(sign_headers({**call(), "systemid": "someone.else"}, SECRET))
    headers = sign_headers(call(), SECRET)
    for missing in (SIGN_HEADER_KEY, SIGN_HEADER, HASH_HEADER):
        with pytest.raises(VxpAuthError):
            await verify({k: v for k, v in headers.items() if k != missing})
    with pytest.raises(VxpAuthError, match="exactly the headers"):
        await verify({**headers, SIGN_HEADER_KEY: "systemid"})
    with pytest.raises(VxpAuthError, match="needs the signed header"):
        await verify(headers, required=("docId",))
    text = '{"XroadVnpt-systemid":"vxp.saas.03","XroadVnpt-systemid":"x","XroadVnpt-timestamp":"t"}'
    with pytest.raises(VxpAuthError, match="twice"):
        await verify(
            {
                SIGN_HEADER_KEY: "systemid;timestamp",
                SIGN_HEADER: text,
                HASH_HEADER: hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).hexdigest(),
            }
        )
    with pytest.raises(VxpAuthError, match="systemid and timestamp"):
        await verify(sign_headers({"systemid": "vxp.saas.03"}, SECRET))


def test_hash_file_is_the_sha256_hex_and_the_sdks_unpadded_form_is_accepted() -> None:
    data = next(bytes([i]) * 3 for i in range(256) if any(b < 0x10 for b in hashlib.sha256(bytes([i]) * 3).digest()))
    digest = hashlib.sha256(data).digest()
    check_file_hash(digest.hex(), data)
    check_file_hash(digest.hex().upper(), data)
    sdk = "".join(format(b, "x") for b in digest)  # Java Integer.toHexString per byte
    assert len(sdk) < 64
    check_file_hash(sdk, data)
    with pytest.raises(VxpHashFileError):
        check_file_hash(hashlib.sha256(data + b"x").hexdigest(), data)
    with pytest.raises(VxpHashFileError):
        check_file_hash("", data)


def test_a_sealed_secret_opens_only_with_its_key_for_its_own_system_and_agency() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = secrets.sealing_key(ec.generate_private_key(ec.SECP256R1()))
    other = secrets.sealing_key(ec.generate_private_key(ec.SECP256R1()))
    secret = secrets.new_secret()
    sealed = secrets.seal(key, "vxp.saas.03", AGENCY, secret)
    assert secret not in sealed and len(secret) >= 43
    assert secrets.unseal(key, "vxp.saas.03", AGENCY, sealed) == secret
    for args in ((other, "vxp.saas.03", AGENCY), (key, "vxp.saas.04", AGENCY), (key, "vxp.saas.03", "000.00.00.H29")):
        with pytest.raises(VxpSecretUnreadableError):
            secrets.unseal(*args, sealed)
    assert secrets.key_id(key) != secrets.key_id(other) and len(secrets.key_id(key)) == 16
