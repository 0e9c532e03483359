"""Who is calling: per-agency API tokens (issued by ``exchange.tokens``) and optional mutual TLS.

With mutual TLS the TLS layer has already verified the client certificate
against ``[http] tls_client_ca``; the agency is the one code the certificate
names (subjectAltName ``urn:qcvn102:agency:<code>``, else organizationIdentifier),
read exactly as the signing side reads it (``exchange.signing.keys.agency_code_of``).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from exchange.errors import AuthError, ForbiddenError
from exchange.store.base import Store
from exchange.tokens import hash_token


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
        raise _unauthenticated(
            "the Authorization header must be 'Bearer <token>'; "
            "issue a token with `exchange token create --agency CODE`"
        )
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
        raise _unauthenticated(
            "the client certificate names no single agency code "
            "(subjectAltName urn:qcvn102:agency:<code>); use an agency certificate or a token"
        )
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
                raise _unauthenticated(
                    "the API token is unknown or was withdrawn; "
                    "issue a new one with `exchange token create --agency CODE`"
                )
            if certified is not None and certified != agency:
                raise ForbiddenError(
                    f"the API token is agency {agency}'s but the client certificate names "
                    f"{certified}; present credentials of one agency"
                )
            principal = Principal(agency, "token")
        elif certified is not None:
            principal = Principal(certified, "mtls")
        else:
            raise _unauthenticated(
                "this endpoint needs 'Authorization: Bearer <token>'"
                + (" or an agency client certificate" if self.mtls else "")
            )
        if principal.agency not in self.hosted:
            raise ForbiddenError(
                f"agency {principal.agency} is not hosted by this node; call the gateway of the node that hosts it"
            )
        return principal
