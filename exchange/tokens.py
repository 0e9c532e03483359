"""Per-agency API tokens: issued here, stored hashed, checked by the gateway.

A token is 256 random bits; the store keeps only its SHA-256, and a request is
authenticated by looking that hash up. A fast unsalted hash is enough here (and
lets the lookup be an index probe) because the secret is random, not chosen by
a person: there is no dictionary to try against a leaked hash.

Issuing lives outside the gateway so that the CLI and the development world can
issue tokens without importing the HTTP layer.
"""

from __future__ import annotations

import hashlib
import secrets

from exchange.envelope.codes import check_agency_code
from exchange.errors import BadRequestError
from exchange.store.base import Store

#: Tokens start with this, so that a leaked one is recognisable (secret scanners, logs).
TOKEN_PREFIX = "exg_"


def hash_token(token: str) -> str:
    """What the store keeps for a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


async def new_token(store: Store, agency_code: str, *, label: str = "") -> str:
    """Issue a token for ``agency_code``: the store keeps its hash, the caller gets the only plaintext copy."""
    check_agency_code(agency_code)
    if len(label) > 200:
        raise BadRequestError("a token label has at most 200 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await store.put_token(agency_code, hash_token(token), label)
    return token
