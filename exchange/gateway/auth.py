"""Who is calling: per-agency API tokens (stored hashed) and optional mutual TLS.

A token is 256 random bits; the store keeps only its SHA-256, and a request is
authenticated by looking that hash up. A fast unsalted hash is enough here (and
lets the lookup be an index probe) because the secret is random, not chosen by
a person: there is no dictionary to try against a leaked hash.

With mutual TLS the TLS layer has already verified the client certificate
against ``[http] tls_client_ca``; the agency is the one code the certificate
names (subjectAltName ``urn:qcvn102:agency:<code>``, else organizationIdentifier),
read exactly as the signing side reads it (``exchange.signing.keys.agency_code_of``).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from aiohttp import web

from exchange.envelope.codes import check_agency_code
from exchange.errors import AuthError, BadRequestError, ForbiddenError
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


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the agency it acts for, and how it proved it."""

    agency: str
    method: str  # "token" or "mtls"


def _unauthenticated(message: str) -> AuthError:
    return AuthError(message)


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header; AuthError if the header is there but malformed."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or " " in value:
        raise _unauthenticated("the Authorization header must be 'Bearer <token>'; "
                               "issue a token with `exchange token create --agency CODE`")
    return value


def client_certificate_agency(request: web.Request) -> str | None:
    """The agency code of a verified TLS client certificate, or None when no certificate was presented."""
    from cryptography import x509

    from exchange.signing.keys import agency_code_of

    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    code = agency_code_of(x509.load_der_x509_certificate(der))
    if code is None:
        raise _unauthenticated("the client certificate names no single agency code "
                               "(subjectAltName urn:qcvn102:agency:<code>); use an agency certificate or a token")
    return code


class Authenticator:
    """Turns a request into a :class:`Principal`, or raises AuthError / ForbiddenError."""

    def __init__(self, store: Store, hosted: frozenset[str], *, mtls: bool = False) -> None:
        self.store = store
        self.hosted = hosted
        self.mtls = mtls

    async def authenticate(self, request: web.Request) -> Principal:
        token = bearer_token(request)
        certified = client_certificate_agency(request) if self.mtls else None
        if token is not None:
            agency = await self.store.agency_for_token(hash_token(token))
            if agency is None:
                raise _unauthenticated("the API token is unknown or was withdrawn; "
                                       "issue a new one with `exchange token create --agency CODE`")
            if certified is not None and certified != agency:
                raise ForbiddenError(f"the API token is agency {agency}'s but the client certificate names "
                                     f"{certified}; present credentials of one agency")
            principal = Principal(agency, "token")
        elif certified is not None:
            principal = Principal(certified, "mtls")
        else:
            raise _unauthenticated("this endpoint needs 'Authorization: Bearer <token>'"
                                   + (" or an agency client certificate" if self.mtls else ""))
        if principal.agency not in self.hosted:
            raise ForbiddenError(f"agency {principal.agency} is not hosted by this node; "
                                 "call the gateway of the node that hosts it")
        return principal
