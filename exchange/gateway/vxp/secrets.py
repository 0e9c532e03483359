"""The systems' shared secrets: generated, sealed at rest, opened only to compute an HMAC.

The hub's scheme is an HMAC, so the node must hold each secret itself, not a hash of it.
The store keeps it sealed with AES-256-GCM under a key derived (HKDF-SHA256) from the
private signing key of the agency the system acts for: the key the node already guards
most, with nothing new to configure, back up or copy to the nodes of a cluster. The
system id and agency are the AEAD's associated data, so a sealed value copied to another
row does not open. ``key_id`` (a fingerprint of the derived key) is stored beside it:
when the agency's key pair is replaced, its systems' secrets no longer open and are
reported as such (``exchange vxp secret list``); rotate them to issue new ones.

Plaintext secrets exist only in memory, in the answer of ``exchange vxp secret create|
rotate`` (printed once) and in the HMAC computation; they are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets as _random

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from exchange.gateway.vxp.errors import VxpSecretUnreadableError

_VERSION = "v1"
_SALT = b"exchange/vxp/secret-sealing"
_INFO = b"v1 AES-256-GCM key for hub system secrets"
#: A system id is the E-Office's unit id on the hub (e.g. ``vxp.saas.03``, ``000.00.00.G22``).
SYSTEM_ID_MAX = 64


def new_secret() -> str:
    """256 random bits, URL-safe text (what the E-Office puts in its SDK configuration)."""
    return _random.token_urlsafe(32)


def sealing_key(private_key: object) -> bytes:
    """The 32-byte sealing key derived from an agency's private signing key."""
    der = private_key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(der)


def key_id(key: bytes) -> str:
    """A public fingerprint of a sealing key (16 hex digits), stored beside what it sealed."""
    return hashlib.sha256(b"exchange/vxp/key-id" + key).hexdigest()[:16]


def _aad(system_id: str, agency: str) -> bytes:
    return f"{system_id}\n{agency}".encode()


def seal(key: bytes, system_id: str, agency: str, secret: str) -> str:
    """``v1.<base64 nonce+ciphertext>``: the secret encrypted for one (system, agency) row."""
    nonce = os.urandom(12)
    data = AESGCM(key).encrypt(nonce, secret.encode(), _aad(system_id, agency))
    return f"{_VERSION}.{base64.b64encode(nonce + data).decode()}"


def unseal(key: bytes, system_id: str, agency: str, sealed: str) -> str:
    """The plaintext secret; VxpSecretUnreadableError if it was sealed under another key or tampered with."""
    version, _, body = sealed.partition(".")
    try:
        if version != _VERSION:
            raise ValueError(version)
        raw = base64.b64decode(body, validate=True)
        return AESGCM(key).decrypt(raw[:12], raw[12:], _aad(system_id, agency)).decode()
    except (ValueError, InvalidTag):
        raise VxpSecretUnreadableError(
            f"the secret of hub system {system_id} cannot be opened with agency {agency}'s current key; "
            "issue a new one with `exchange vxp secret rotate`"
        ) from None
