"""Task and daemon tokens: random, handed out once, stored only as a sha256 hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 32


def new_token() -> str:
    """A fresh bearer token (URL-safe, 256 bits of entropy)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """Hex sha256 of the token. Tokens are high-entropy, so no salt or slow KDF is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, token_hash: str | None) -> bool:
    """Constant-time check of `token` against a stored hash; a missing hash never matches."""
    candidate = hash_token(token)
    # Compare even when there is no hash, so a missing row costs the same as a wrong token.
    return hmac.compare_digest(candidate, token_hash or "") and token_hash is not None
