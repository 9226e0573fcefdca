"""API tokens: only their sha256 is stored (fleet file, responder); compared in constant time."""

from __future__ import annotations

import hashlib
import hmac


def sha256_hex(token: str) -> str:
    """The hex sha256 of a token, the form the fleet file's `*_sha256` fields hold."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str | None, want_sha256: str | None) -> bool:
    """Whether `token` hashes to `want_sha256`; no token or no configured hash never matches."""
    if token is None or not want_sha256:
        return False
    return hmac.compare_digest(sha256_hex(token).encode(), want_sha256.encode())
