"""The dashboard's session cookie and CSRF tokens, both derived from the API token.

- Logging in with the API token sets a session cookie (HttpOnly, SameSite=Strict, Path=/). The
  cookie is not the token: it is a random nonce and an HMAC of it under the token, so a new token
  (a new `<state_dir>/token`, read when the controller starts) ends every session.
- Every action the pages post carries a CSRF token: an HMAC of the session cookie under the API
  token, in a hidden form field or the `X-CSRF-Token` header. A cross-site page can neither read
  the cookie nor compute the token, so it cannot forge an action.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

COOKIE = "safeship_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_MAX_AGE_S = 12 * 3600


class Sessions:
    """Makes and checks session cookies and CSRF tokens for one API token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._key = hmac.new(self._token, b"safeship dashboard key", hashlib.sha256).digest()

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        """The token typed on the login page is the API token (compared in constant time)."""
        return hmac.compare_digest(given.strip().encode(), self._token)

    def new_session(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._mac('session', nonce)}"

    def valid_session(self, cookie: str | None) -> bool:
        if not cookie or cookie.count(".") != 1:
            return False
        nonce, mac = cookie.split(".")
        return bool(nonce) and hmac.compare_digest(mac.encode(), self._mac("session", nonce).encode())

    def csrf_for(self, cookie: str) -> str:
        return self._mac("csrf", cookie)

    def valid_csrf(self, cookie: str | None, given: str | None) -> bool:
        if not self.valid_session(cookie) or not given:
            return False
        assert cookie is not None
        return hmac.compare_digest(given.encode(), self.csrf_for(cookie).encode())
