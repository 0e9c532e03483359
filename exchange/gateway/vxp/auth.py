"""The hub's header-signing scheme, both sides: what an SDK client sends and how the node checks it.

A call carries its parameters as headers (``systemid``, ``timestamp`` and the call's own:
``docId``, ``status``, ``hash-file`` …). The client repeats each as ``XroadVnpt-<name>``,
lists the names in ``XroadVnpt-sign-header-key`` (``;``-separated), writes the JSON object
``{"XroadVnpt-<name>": value, …}`` into ``XroadVnpt-sign-header`` and its HMAC-SHA256 under
the system's shared secret, in hex, into ``XroadVnpt-hash-header``.

The node checks the HMAC over the JSON **exactly as received** (the SDK writes it with
Gson, in hash-map order: it cannot be rebuilt, only verified), then reads every parameter
from that signed JSON and nowhere else; a header sent in clear (plain or prefixed) that
disagrees with its signed value is refused. ``Content-Type`` is the exception: the SDK signs
the type it meant, and its HTTP library rewrites the header for a multipart upload.
On top of the HMAC: the timestamp must be within the window of the node's clock, and the
same signature is accepted once (its hash is remembered in the store until the timestamp
leaves the window). All comparisons of secrets and digests are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from exchange.gateway.vxp.errors import (
    VxpAuthError,
    VxpHashFileError,
    VxpHeaderMismatchError,
    VxpReplayError,
    VxpSignatureError,
    VxpSystemUnknownError,
    VxpTimestampError,
)

PREFIX = "XroadVnpt-"
SIGN_HEADER_KEY = "XroadVnpt-sign-header-key"
SIGN_HEADER = "XroadVnpt-sign-header"
HASH_HEADER = "XroadVnpt-hash-header"

#: The SDK formats ``new Date()`` in the JVM's zone, which for the hub's users is Vietnam (no DST).
HUB_TZ = timezone(timedelta(hours=7), "ICT")
#: Signed timestamps further than this from the node's clock are refused.
DEFAULT_WINDOW_SECONDS = 300
#: Bounds on what a client may put in the signed headers.
MAX_SIGNED_NAMES = 64
MAX_SIGN_HEADER_BYTES = 16 * 1024

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_TIMESTAMP = re.compile(r"(\d{2})(\d{2})(\d{4})T(\d{2})(\d{2})(\d{2})\+(\d{1,4})")
#: Headers a client signs but whose sent value the HTTP stack may legitimately rewrite.
_TRANSPORT_HEADERS = frozenset({"content-type"})


# -- the client side (what the SDK does; used by tests and the worked example) -------------------


def format_timestamp(at: datetime) -> str:
    """``ddMMyyyy'T'HHmmss+SSSS`` in the hub's zone: the ``+SSSS`` is milliseconds on 4 digits, not a zone."""
    local = at.astimezone(HUB_TZ)
    return local.strftime("%d%m%YT%H%M%S") + f"+{local.microsecond // 1000:04d}"


def hmac_hex(secret: str, message: str | bytes) -> str:
    """HMAC-SHA256 of ``message`` (UTF-8) under ``secret`` (UTF-8), lower-case hex."""
    data = message.encode() if isinstance(message, str) else message
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def sign_headers(headers: Mapping[str, str], secret: str) -> dict[str, str]:
    """The full header set of a call: each header in clear and as ``XroadVnpt-<name>``, plus the signature."""
    signed = {f"{PREFIX}{name}": value for name, value in headers.items()}
    sign_header = json.dumps(signed, separators=(",", ":"))
    return {
        **headers,
        **signed,
        SIGN_HEADER_KEY: ";".join(headers),
        SIGN_HEADER: sign_header,
        HASH_HEADER: hmac_hex(secret, sign_header),
    }


def file_hash(data: bytes) -> str:
    """The ``hash-file`` of a package: SHA-256, lower-case hex."""
    return hashlib.sha256(data).hexdigest()


# -- the node side -----------------------------------------------------------------------------


def parse_timestamp(text: str) -> datetime:
    """The instant a signed ``timestamp`` names (VxpTimestampError when it is not the hub's format)."""
    m = _TIMESTAMP.fullmatch(text.strip())
    if m is None:
        raise VxpTimestampError(f"timestamp {text[:40]!r} is not ddMMyyyy'T'HHmmss+SSSS (e.g. 01122026T143005+0042)")
    day, month, year, hour, minute, second, millis = (int(g) for g in m.groups())
    try:
        return datetime(year, month, day, hour, minute, second, min(millis, 999) * 1000, tzinfo=HUB_TZ)
    except ValueError:
        raise VxpTimestampError(f"timestamp {text[:40]!r} is not a real date and time") from None


def check_file_hash(claimed: str, data: bytes) -> None:
    """Refuse a package whose ``hash-file`` is not its SHA-256 (constant-time comparison).

    Besides the 64-digit hex, the form the hub's Java SDK writes is accepted: it prints each
    byte with ``Integer.toHexString`` and so drops the leading zero of bytes below 0x10.
    """
    digest = hashlib.sha256(data).digest()
    proper = digest.hex()
    sdk_form = "".join(f"{b:x}" for b in digest)
    given = claimed.strip().lower()
    ok = hmac.compare_digest(given.encode(), proper.encode()) | hmac.compare_digest(given.encode(), sdk_form.encode())
    if not ok:
        raise VxpHashFileError(
            "hash-file is not the SHA-256 of the uploaded package; hash exactly the bytes you upload and sign again"
        )


@dataclass(frozen=True, slots=True)
class SignedCall:
    """A request whose signature checked out: who sent it and its signed parameters (names lower-cased)."""

    system_id: str
    agency: str
    params: Mapping[str, str]
    timestamp: datetime
    signature: str

    def get(self, name: str, default: str = "") -> str:
        return self.params.get(name.lower(), default)


#: Looks a system up: its agency and plaintext secret, or None when unknown.
SecretLookup = Callable[[str], Awaitable[tuple[str, str] | None]]
#: Records a signature until a time; False when it was already recorded.
ReplayGuard = Callable[[str, str, datetime, datetime], Awaitable[bool]]

_DUMMY_SECRET = "exchange-vxp-unknown-system"


def _signed_names(raw: str) -> list[str]:
    names = [n.strip() for n in raw.split(";") if n.strip()]
    if not names or len(names) > MAX_SIGNED_NAMES:
        raise VxpAuthError(f"{SIGN_HEADER_KEY} must list 1 to {MAX_SIGNED_NAMES} header names separated by ';'")
    lowered = [n.lower() for n in names]
    if len(set(lowered)) != len(lowered):
        raise VxpAuthError(f"{SIGN_HEADER_KEY} names a header twice")
    bad = next((n for n in names if not _NAME.fullmatch(n)), None)
    if bad is not None:
        raise VxpAuthError(f"{SIGN_HEADER_KEY} names {bad[:40]!r}, which is not a header name")
    return names


def _signed_values(raw: str, names: list[str]) -> dict[str, str]:
    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in pairs:
            if key in out:
                raise VxpAuthError(f"{SIGN_HEADER} has the key {key[:60]!r} twice")
            out[key] = value
        return out

    try:
        data = json.loads(raw, object_pairs_hook=no_duplicates)
    except ValueError:
        raise VxpAuthError(f"{SIGN_HEADER} is not a JSON object") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise VxpAuthError(f"{SIGN_HEADER} must be a JSON object of strings")
    expected = {f"{PREFIX}{n}" for n in names}
    if set(data) != expected:
        raise VxpAuthError(
            f'{SIGN_HEADER} must hold exactly the headers {SIGN_HEADER_KEY} lists, each as "{PREFIX}<name>"'
        )
    return {n: data[f"{PREFIX}{n}"] for n in names}


class HeaderVerifier:
    """Checks the signed headers of one call; stateless but for the replay guard it is given."""

    def __init__(
        self,
        lookup: SecretLookup,
        replay: ReplayGuard,
        *,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.lookup = lookup
        self.replay = replay
        self.window = timedelta(seconds=window_seconds)
        self.clock = clock or (lambda: datetime.now(UTC))

    async def verify(
        self, headers: Mapping[str, str], getall: Callable[[str], list[str]], required: tuple[str, ...] = ()
    ) -> SignedCall:
        """Verify a call's headers (``getall`` gives every value of a header, case-insensitively)."""
        key_list, sign_header, signature = (headers.get(h) for h in (SIGN_HEADER_KEY, SIGN_HEADER, HASH_HEADER))
        if not key_list or not sign_header or not signature:
            raise VxpAuthError(
                f"a hub call needs the headers {SIGN_HEADER_KEY}, {SIGN_HEADER} and {HASH_HEADER}; "
                "sign it as docs/API.md (national hub protocol) shows"
            )
        if len(sign_header.encode("utf-8", "surrogateescape")) > MAX_SIGN_HEADER_BYTES:
            raise VxpAuthError(f"{SIGN_HEADER} is over {MAX_SIGN_HEADER_BYTES} bytes")
        names = _signed_names(key_list)
        values = _signed_values(sign_header, names)
        params = {n.lower(): v for n, v in values.items()}
        system_id = params.get("systemid", "")
        if not system_id or "timestamp" not in params:
            raise VxpAuthError("the signed headers must include systemid and timestamp")

        found = await self.lookup(system_id)
        secret = found[1] if found is not None else _DUMMY_SECRET
        # Computed for unknown systems too, so that the answer takes as long either way.
        expected = hmac_hex(secret, sign_header.encode("utf-8", "surrogateescape"))
        matches = hmac.compare_digest(expected.encode(), signature.strip().lower().encode("utf-8", "replace"))
        if found is None:
            raise VxpSystemUnknownError(
                f"system {system_id[:64]!r} has no secret on this node; the operator issues "
                "one with `exchange vxp secret create --system ID --agency CODE`"
            )
        if not matches:
            raise VxpSignatureError(
                f"{HASH_HEADER} is not the HMAC-SHA256 of {SIGN_HEADER} under system "
                f"{system_id}'s secret; check the secret and sign the header JSON as sent"
            )

        for name, value in values.items():
            if name.lower() in _TRANSPORT_HEADERS:
                continue
            for header in (name, f"{PREFIX}{name}"):
                if any(sent != value for sent in getall(header)):
                    raise VxpHeaderMismatchError(
                        f"header {header} differs from its signed value; send each "
                        "header with exactly the value you signed"
                    )
        missing = [r for r in required if r.lower() not in params]
        if missing:
            raise VxpAuthError(f"this call needs the signed header(s) {', '.join(missing)}")

        at = parse_timestamp(params["timestamp"])
        now = self.clock()
        if abs(now - at) > self.window:
            raise VxpTimestampError(
                f"timestamp {params['timestamp']} is {abs(now - at).total_seconds():.0f} s from the node's clock, "
                f"outside the {self.window.total_seconds():.0f} s window; sign each call with a fresh timestamp "
                "(and keep the E-Office's clock in sync)"
            )
        digest = hashlib.sha256(signature.strip().lower().encode()).hexdigest()
        if not await self.replay(system_id, digest, max(at, now) + self.window, now):
            raise VxpReplayError("this signed request was already accepted; sign every call anew (fresh timestamp)")
        return SignedCall(system_id=system_id, agency=found[0], params=params, timestamp=at, signature=digest)
