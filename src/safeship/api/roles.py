"""Who may do what: the roles API tokens carry, and the one place that decides.

Three roles, each optionally limited to named environments:

- `viewer` reads: deployments, history, rollbacks, environments, the dashboard's pages;
- `deployer` also deploys, cancels, rolls back, approves and promotes deployments, and runs an
  environment's validate checks, in its environments only;
- `admin` also cleans environments up and reads the audit table (in its environments only, when
  limited; the audit table only when it is not limited).

The token in `<state_dir>/token` is the *local admin*: an admin of every environment, so that the
CLI on this host keeps working without a step. Tokens made by `safeship token create` are kept in
the store as their SHA-256 only; the plain token is printed once and never stored. A token is
256 random bits, so a fast hash is as good as a slow one here: nothing can be guessed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from safeship.errors import InputError, SafeshipError
from safeship.store import Store, TokenRecord

LOCAL_ADMIN = "local admin"
TOKEN_PREFIX = "safeship_"
TOUCH_EVERY_S = 60.0  # `last used` is written at most this often per token (a read is not a write each time)
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Role(str, Enum):
    VIEWER = "viewer"
    DEPLOYER = "deployer"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return ROLE_NAMES.index(self.value)


ROLE_NAMES = ("viewer", "deployer", "admin")


class Permission(Enum):
    """What an action needs: the lowest role that may do it."""

    READ = Role.VIEWER
    DEPLOY = Role.DEPLOYER
    ADMIN = Role.ADMIN


class Forbidden(SafeshipError):
    """The caller's role or environments do not allow the action (answered 403; exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class Principal:
    """The caller of one request: a token's name and role, and the environments it is limited to
    (None: all). `token_id` is None for the local admin token."""

    name: str
    role: Role
    environments: tuple[str, ...] | None = None
    token_id: str | None = None

    @property
    def described(self) -> str:
        where = f" of {', '.join(self.environments)}" if self.environments is not None else ""
        who = "the local admin token" if self.token_id is None else f"token {self.name!r}"
        return f"{who} ({self.role.value}{where})"

    def refusal(self, permission: Permission, environment: str | None, doing: str) -> str | None:
        """Why this caller may not do `doing` (in `environment`), as one sentence; None if it may."""
        needed = permission.value
        if self.role.rank < needed.rank:
            return f"{self.described} may not {doing}: that needs the {needed.value} role or higher"
        if self.environments is not None:
            if environment is None:
                return f"{self.described} may not {doing}: that needs a token not limited to environments"
            if environment not in self.environments:
                return f"{self.described} may not {doing} in {environment}"
        return None

    def may(self, permission: Permission, environment: str | None = None) -> bool:
        return self.refusal(permission, environment, "act") is None

    def require(self, permission: Permission, environment: str | None, doing: str) -> None:
        """Forbidden (403) with the sentence of `refusal` unless the caller may."""
        why = self.refusal(permission, environment, doing)
        if why is not None:
            raise Forbidden(why)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A new API token: a recognisable prefix and 32 random bytes."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise InputError(f"--role: {value!r} is not a role (roles: {', '.join(ROLE_NAMES)})") from None


def check_token_name(value: str) -> str:
    if TOKEN_NAME.fullmatch(value) is None:
        raise InputError(f"--name: {value!r} cannot name a token (1 to 64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit)")
    return value


def principal_of(record: TokenRecord) -> Principal:
    environments = tuple(record.environments) if record.environments is not None else None
    return Principal(record.name, Role(record.role), environments, token_id=record.id)


class Authority:
    """Turns a bearer token (or a dashboard session's token id) into the Principal it stands for.
    Revoked tokens stand for no one: a revocation takes effect on the next request, dashboard
    sessions included."""

    def __init__(self, store: Store, admin_token: str) -> None:
        self.store = store
        self._admin = admin_token.encode()
        self._touched: dict[str, float] = {}

    def for_token(self, given: str) -> Principal | None:
        given = given.strip()
        if not given:
            return None
        if hmac.compare_digest(given.encode(), self._admin):
            return Principal(LOCAL_ADMIN, Role.ADMIN)
        record = self.store.token_by_sha256(token_digest(given))
        if record is None or record.revoked_at is not None:
            return None
        self._touch(record.id)
        return principal_of(record)

    def for_session(self, token_id: str) -> Principal | None:
        """The principal of a dashboard session: '' is the local admin, else a token's id."""
        if token_id == "":
            return Principal(LOCAL_ADMIN, Role.ADMIN)
        record = self.store.token_by_id(token_id)
        if record is None or record.revoked_at is not None:
            return None
        self._touch(record.id)
        return principal_of(record)

    def _touch(self, token_id: str) -> None:
        now = time.time()
        if now - self._touched.get(token_id, 0.0) >= TOUCH_EVERY_S:
            self._touched[token_id] = now
            self.store.touch_token(token_id, now)


def environments_problem(given: Sequence[str], known: Sequence[str], config_path: str) -> str | None:
    """Why `--environment` values cannot limit a token, naming the first unknown one; None if they can."""
    for name in given:
        if name not in known:
            return (f"--environment: {name!r} is not an environment of {config_path} "
                    f"(known: {', '.join(sorted(known)) or 'none'})")
    return None
