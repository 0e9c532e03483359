"""The console's security: scrypt password hashes, session ids, CSRF tokens, login throttling, headers.

Passwords are hashed with scrypt (memory-hard: n=2**14, r=8, p=1 takes 16 MiB per guess) and a
random 16-byte salt; the stored form names its parameters, so they can grow later. Session ids and
CSRF tokens are 256 random bits; the store keeps only the SHA-256 of a session id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable

#: scrypt cost: N (CPU/memory), r (block size), p (parallelism). 128 * N * r bytes = 16 MiB.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
#: Shortest password an operator may choose.
MIN_PASSWORD = 12
#: Content-Security-Policy of every console page: nothing inline, nothing from elsewhere, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
#: Headers on every console response (pages and evidence alike).
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) for ``password``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time comparison); False for a malformed hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 1024 * 1024,
            dklen=len(want),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


#: A hash of a random password, checked when the name is unknown: a login costs the same either way.
DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def new_secret() -> str:
    """256 random bits, URL-safe: a session id or a CSRF token."""
    return secrets.token_urlsafe(32)


def session_key(session_id: str) -> str:
    """What the store keeps for a session id."""
    return hashlib.sha256(session_id.encode("ascii", "replace")).hexdigest()


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time CSRF token comparison."""
    return bool(given) and hmac.compare_digest(str(given).encode("utf-8"), expected.encode("utf-8"))


class LoginThrottle:
    """At most ``attempts`` failed logins per ``window`` seconds per client address and per account name.

    In memory, per node process: enough against guessing through one node (each guess also costs
    an scrypt); the figures are the ones an operator would not reach by mistyping.
    """

    def __init__(self, attempts: int = 5, window: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        cutoff = self.clock() - self.window
        while q and q[0] < cutoff:
            q.popleft()
        return q

    def blocked(self, *keys: str) -> float:
        """Seconds until a login may be tried again for any of ``keys`` (0: allowed now)."""
        wait = 0.0
        for key in keys:
            q = self._recent(key)
            if len(q) >= self.attempts:
                wait = max(wait, q[0] + self.window - self.clock())
        return wait

    def failed(self, *keys: str) -> None:
        now = self.clock()
        for key in keys:
            self._recent(key).append(now)
        if len(self._failures) > 10_000:  # bounded: forget keys whose failures have all expired
            for key in [k for k in self._failures if not self._recent(k)]:
                del self._failures[key]

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)
