"""The dashboard's session cookie and CSRF tokens, both derived from the API token.

- Logging in with an API token (the local admin token, or one `safeship token create` made) sets a
  session cookie (HttpOnly, SameSite=Strict, Path=/). The cookie is not the token: it is its issue
  time, the session generation, a random nonce, the id of the token that logged in (nothing for the
  local admin token) and an HMAC of them under the local admin token, so a new `<state_dir>/token`
  (read when the controller starts) ends every session. The token id is looked up on every
  request: revoking a token ends its sessions at once.
- The server refuses a session older than SESSION_MAX_AGE_S (12 hours) whatever the browser keeps,
  and one of an earlier generation: logging out bumps the generation (kept in
  `<state_dir>/dashboard-sessions`, mode 0600, so a restart does not bring old cookies back), which
  ends every session issued before, the copied cookie of the one logging out among them.
- Every action the pages post carries a CSRF token: an HMAC of the session cookie under the API
  token, in a hidden form field or the `X-CSRF-Token` header. A cross-site page can neither read
  the cookie nor compute the token, so it cannot forge an action.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

COOKIE = "safeship_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_MAX_AGE_S = 12 * 3600
CLOCK_SKEW_S = 60  # a session issued this far in the future is still taken (another clock)
GENERATION_FILE = "dashboard-sessions"
SUBJECT = re.compile(r"(?:tok-[0-9a-f]{1,32})?")  # a token id, or '' for the local admin token

log = logging.getLogger(__name__)


class Sessions:
    """Makes and checks session cookies and CSRF tokens for one API token. `state_dir`: where the
    session generation is kept across restarts (in memory only without one)."""

    def __init__(self, token: str, *, state_dir: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._token = token.encode()
        self._key = hmac.new(self._token, b"safeship dashboard key", hashlib.sha256).digest()
        self._file = state_dir / GENERATION_FILE if state_dir is not None else None
        self._clock = clock
        self.generation = self._read_generation()

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()

    def _read_generation(self) -> int:
        if self._file is None:
            return 0
        try:
            return max(0, int(self._file.read_text().strip() or "0"))
        except (OSError, ValueError):
            return 0

    def token_matches(self, given: str) -> bool:
        """The token typed on the login page is the API token (compared in constant time)."""
        return hmac.compare_digest(given.strip().encode(), self._token)

    def new_session(self, subject: str = "") -> str:
        """A session cookie for the token whose id is `subject` ('' for the local admin token)."""
        if SUBJECT.fullmatch(subject) is None:
            raise ValueError(f"a session subject is a token id, not {subject!r}")
        value = f"{int(self._clock())}.{self.generation}.{secrets.token_urlsafe(18)}"
        if subject:
            value = f"{value}.{subject}"
        return f"{value}.{self._mac('session', value)}"

    def session_subject(self, cookie: str | None) -> str | None:
        """The token id the session was issued to ('' for the local admin token), if the cookie is
        signed under this token, of the current generation and at most SESSION_MAX_AGE_S old; else
        None."""
        if not cookie or cookie.count(".") not in (3, 4):
            return None
        value, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac.encode(), self._mac("session", value).encode()):
            return None
        issued, generation, nonce, *rest = value.split(".")
        subject = rest[0] if rest else ""
        if not (issued.isdigit() and generation.isdigit() and nonce) or SUBJECT.fullmatch(subject) is None:
            return None
        age = self._clock() - int(issued)
        fresh = int(generation) == self.generation and -CLOCK_SKEW_S <= age <= SESSION_MAX_AGE_S
        return subject if fresh else None

    def valid_session(self, cookie: str | None) -> bool:
        """Signed under this token, of the current generation, and at most SESSION_MAX_AGE_S old."""
        return self.session_subject(cookie) is not None

    def revoke_all(self) -> None:
        """End every session issued so far (logout): the generation goes up by one, and is written
        to disk so that a restarted controller keeps refusing the old cookies. A file that cannot
        be written is logged; the sessions end anyway until the controller restarts."""
        self.generation += 1
        if self._file is None:
            return
        partial = self._file.with_name(f".{self._file.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(f"{self.generation}\n")
            partial.replace(self._file)
        except OSError as exc:
            log.warning("dashboard logout: cannot write %s (%s); old sessions come back after a restart",
                        self._file, exc.strerror or exc)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    def csrf_for(self, cookie: str) -> str:
        return self._mac("csrf", cookie)

    def valid_csrf(self, cookie: str | None, given: str | None) -> bool:
        if not self.valid_session(cookie) or not given:
            return False
        assert cookie is not None
        return hmac.compare_digest(given.encode(), self.csrf_for(cookie).encode())
