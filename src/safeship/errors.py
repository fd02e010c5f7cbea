"""Every error safeship raises, split by what should happen next.

    SafeshipError                     exit 1 when nothing more specific applies
    ├── InputError                    bad config, arguments or API body: one sentence, exit 2, nothing changed
    │   ├── ConfigError               names the file, the field and the value
    │   └── NotFoundError             an id, service, version or environment that does not exist (API: 404)
    ├── ConflictError                 the request clashes with state (an active deployment): exit 2 (API: 409)
    │   └── StaleStateError           another engine advanced the deployment first; the tick's work is dropped
    │       └── LeaseLostError        another controller holds the deployment's lease now: stop driving it
    ├── StoreError                    the store cannot be used (corrupt, locked, read-only, unreachable): exit 4
    ├── PermanentError                retrying will not help: the step fails with the reason, and rolls back
    ├── TemporaryError(delay)         retry after `delay` seconds; after `analysis.error_limit` in a row the
    │                                 step fails, and a driver rolls back after five failed ticks in a row
    └── ControllerUnreachable         the controller daemon does not answer: exit 3

Plug-ins translate subprocess, HTTP and Kubernetes errors into these at their edge, with
``raise ... from exc``.
"""

from __future__ import annotations


class SafeshipError(Exception):
    exit_code = 1


class InputError(SafeshipError):
    exit_code = 2


class ConfigError(InputError):
    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        self.field = field
        self.detail = message
        where = f"{source}: {field}: " if field else f"{source}: "
        super().__init__(f"{where}{message}")


class NotFoundError(InputError):
    pass


class ConflictError(SafeshipError):
    exit_code = 2


class StaleStateError(ConflictError):
    """Another engine advanced this deployment first; this tick's work is dropped."""


class LeaseLostError(StaleStateError):
    """This controller's lease on a deployment is no longer the current one (it was paused past
    its expiry and another controller took it): its write was refused, and it must stop driving
    the deployment."""


class StoreError(SafeshipError):
    """The store cannot be opened, read or written; nothing was changed. Exit 4."""

    exit_code = 4


class PermanentError(SafeshipError):
    pass


class TemporaryError(SafeshipError):
    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class ControllerUnreachable(SafeshipError):
    exit_code = 3
