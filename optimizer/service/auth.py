"""Who sent a webhook: a shared bearer token or an HMAC of the body, per configured source.

Every comparison is constant-time (``hmac.compare_digest``) and every configured source is tried, so the time
taken does not say which source, or how much of a token, matched. Secrets never leave this module: a failure
is reported by reason only ("missing credentials", "bad signature"), for the 401 answer and the log line.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .config import SourceConfig

__all__ = ["AuthResult", "authenticate"]


@dataclass(frozen=True)
class AuthResult:
    source: SourceConfig | None  # the source that proved itself, or None
    reason: str  # why not, when source is None: safe to log and to answer

    @property
    def ok(self) -> bool:
        return self.source is not None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def bearer_of(headers: Mapping[str, str]) -> str | None:
    value = _header(headers, "authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def github_signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def authenticate(sources: Iterable[SourceConfig], headers: Mapping[str, str], body: bytes) -> AuthResult:
    """The first source whose secret the request proves; every source is checked to keep timing flat."""
    token = bearer_of(headers)
    signature = _header(headers, "x-hub-signature-256")
    matched: SourceConfig | None = None
    tried_bearer = tried_hmac = False
    for source in sources:
        if source.bearer_token is not None:
            tried_bearer = True
            expected = source.bearer_token.reveal().encode("utf-8")
            given = (token or "").encode("utf-8")
            if hmac.compare_digest(expected, given) and token is not None and matched is None:
                matched = source
        if source.hmac_secret is not None:
            tried_hmac = True
            expected = github_signature(source.hmac_secret.reveal(), body).encode("ascii")
            given = (signature or "").strip().encode("utf-8", "replace")
            if hmac.compare_digest(expected, given) and signature is not None and matched is None:
                matched = source
    if matched is not None:
        return AuthResult(matched, "")
    if token is None and signature is None:
        return AuthResult(None, "missing credentials (no bearer token, no X-Hub-Signature-256)")
    if token is not None and tried_bearer:
        return AuthResult(None, "bearer token does not match any source")
    if signature is not None and tried_hmac:
        return AuthResult(None, "X-Hub-Signature-256 does not match any source")
    return AuthResult(None, "no source accepts this kind of credentials")
