"""Webhook authentication: bearer tokens and GitHub-style HMAC, per source."""

from __future__ import annotations

import hashlib
import hmac

from optimizer.service.auth import authenticate, github_signature
from optimizer.service.config import Secret, SourceConfig

BODY = b'{"events": []}'
REG = SourceConfig("reg", "local", "distribution", bearer_token=Secret("token-A", "inline"))
OTHER = SourceConfig("other", "local", "auto", bearer_token=Secret("token-B", "inline"))
GH = SourceConfig("gh", "ghcr", "github", hmac_secret=Secret("gh-secret", "inline"))
ALL = [REG, OTHER, GH]


def test_bearer_token_picks_its_source() -> None:
    assert authenticate(ALL, {"Authorization": "Bearer token-A"}, BODY).source is REG
    assert authenticate(ALL, {"authorization": "bearer token-B"}, BODY).source is OTHER


def test_wrong_or_missing_token_is_refused_without_the_secret() -> None:
    for headers in (
        {},
        {"Authorization": "Bearer token-C"},
        {"Authorization": "Basic dG9rZW4tQQ=="},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer token-A-and-more"},
    ):
        result = authenticate(ALL, headers, BODY)
        assert not result.ok and result.source is None
        assert "token-" not in result.reason and "gh-secret" not in result.reason


def test_hmac_signature_matches_githubs_definition() -> None:
    expected = "sha256=" + hmac.new(b"gh-secret", BODY, hashlib.sha256).hexdigest()
    assert github_signature("gh-secret", BODY) == expected
    assert authenticate(ALL, {"X-Hub-Signature-256": expected}, BODY).source is GH
    assert not authenticate(ALL, {"X-Hub-Signature-256": expected}, BODY + b" ").ok
    assert not authenticate(ALL, {"X-Hub-Signature-256": "sha256=" + "0" * 64}, BODY).ok


def test_a_token_for_one_source_does_not_open_another() -> None:
    assert not authenticate([OTHER], {"Authorization": "Bearer token-A"}, BODY).ok
    assert not authenticate([REG], {"X-Hub-Signature-256": github_signature("gh-secret", BODY)}, BODY).ok
