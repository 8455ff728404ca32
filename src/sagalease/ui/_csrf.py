"""CSRF protection of the action forms: a signed double-submit token.

The browser holds a random nonce in the cookie ``sagalease_csrf`` (HttpOnly,
SameSite=Strict); every action form carries ``csrf_token``, the HMAC-SHA256 of that
nonce under a secret the server draws at start (never sent anywhere). A POST is
accepted only when both are there and the field is the HMAC of the cookie
(compared in constant time): another site can neither read the cookie nor
compute the field without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

__all__ = ["COOKIE", "FIELD", "Csrf"]

COOKIE = "sagalease_csrf"
"""The cookie holding the nonce."""

FIELD = "csrf_token"
"""The form field holding the nonce's HMAC."""

_NONCE = re.compile(r"[A-Za-z0-9_-]{32,128}")


class Csrf:
    """Tokens under one secret (default: 32 random bytes drawn here)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secrets.token_bytes(32) if secret is None else bytes(secret)
        if len(self._secret) < 16:
            raise ValueError("the CSRF secret must be at least 16 bytes")

    @staticmethod
    def new_nonce() -> str:
        """A fresh random nonce for the cookie."""
        return secrets.token_urlsafe(32)

    @staticmethod
    def usable_nonce(value: str | None) -> bool:
        """Whether a cookie value looks like a nonce this module drew."""
        return value is not None and _NONCE.fullmatch(value) is not None

    def token(self, nonce: str) -> str:
        """The form field's value for ``nonce``."""
        return hmac.new(self._secret, nonce.encode("ascii"), hashlib.sha256).hexdigest()

    def valid(self, nonce: str | None, token: str | None) -> bool:
        """Whether ``token`` (the form field) is the HMAC of ``nonce`` (the cookie)."""
        if not self.usable_nonce(nonce) or not token:
            return False
        assert nonce is not None
        expected = self.token(nonce).encode("ascii")
        return hmac.compare_digest(expected, token.encode("utf-8", "replace"))
