"""The notification sinks a config declares under `notifications:` (see docs/notifications.md).

- `WebhookSink`: a POST of the notification's JSON body, signed with HMAC-SHA256 when it has a
  secret, with an `Idempotency-Key` header a receiver can drop duplicates by;
- `AppriseSink`: a title and a text through the `apprise` library, to any Apprise URL;
- `CommandSink`: a program run without a shell, the body as JSON on its stdin;
- `LogSink` (`engine/notify.py`): a log line.

Each sink is synchronous and raises to be retried; the outbox calls it in a thread of its own,
bounded by the sink's `timeout`, and reads its `name`, `events`, `retries` and `backoff`.
`sinks_from_config` builds them; a config without `notifications:` gets the log sink alone."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from safeship.config.models import SafeshipConfig
from safeship.config.notifications import NotificationSinkConfig, unique_sink_names
from safeship.config.secret_files import read_secret_file
from safeship.engine import outgoing
from safeship.engine.notify import LogSink, Notification, NotificationSink
from safeship.errors import ConfigError
from safeship.redaction import redact_url, redact_urls
from safeship.signing import SIGNATURE_HEADER, signature

_OUTPUT_CHARS = 300  # of a failed command's stderr, in the failure event


class DeliveryError(Exception):
    """A sink's receiver refused or failed a notification; the outbox retries it."""


def body_bytes(notification: Notification) -> bytes:
    """The exact bytes a webhook or command receives: the body as compact JSON, keys in order."""
    return json.dumps(notification.body(), separators=(",", ":"), sort_keys=True, default=str).encode()


class _Settings:
    """What the outbox reads from every sink: its name, event filter, timeout, retries, backoff."""

    def __init__(self, name: str, *, events: Iterable[str] | None = None, timeout: float = 5.0,
                 retries: int = 5, backoff: float = 1.0) -> None:
        self.name = name
        self.events = frozenset(events) if events is not None else None
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff


class WebhookSink(_Settings):
    """POSTs `body_bytes(notification)` to `url`; a 2xx answer is a delivery, anything else raises.

    Headers: `Content-Type: application/json`, `Idempotency-Key` (the same for every delivery of
    one event), `X-Safeship-Event` (the kind), the configured `headers`, and with a `secret`
    `X-Safeship-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<exact body bytes>">`
    (see `safeship.signing`). The secret signs and never travels. Redirects are not followed (a
    signed body goes only where it was configured). The whole POST is bounded by `timeout` and at
    most 64 KiB of the answer is read (`engine/outgoing.py`)."""

    def __init__(self, name: str, url: str, *, secret: bytes | None = None,
                 headers: Mapping[str, str] | None = None, **settings: Any) -> None:
        super().__init__(name, **settings)
        self.url = url
        self.secret = secret
        self.headers = dict(headers or {})

    def request_headers(self, notification: Notification, body: bytes) -> dict[str, str]:
        headers = {**self.headers, "Content-Type": "application/json", "Idempotency-Key": notification.key,
                   "X-Safeship-Event": notification.kind}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        return headers

    def notify(self, notification: Notification) -> None:
        body = body_bytes(notification)
        try:
            answer = outgoing.post_blocking(self.url, body, self.request_headers(notification, body), self.timeout)
        except TimeoutError as exc:
            raise DeliveryError(f"POST to {self.origin} timed out after {self.timeout:g}s") from exc
        except httpx.HTTPError as exc:
            detail = redact_urls(str(exc), [self.url])  # never the credential a URL may carry
            raise DeliveryError(f"POST to {self.origin} failed: {type(exc).__name__}: {detail}") from exc
        if not answer.is_success:
            raise DeliveryError(f"POST to {self.origin} answered {answer.status} {answer.reason}")

    @property
    def origin(self) -> str:
        """The URL's scheme, host and port: what errors name (a path or query may hold a token)."""
        url = httpx.URL(self.url)
        return f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")


class AppriseSink(_Settings):
    """Sends `notification.title` and `notification.text()` to every Apprise URL (Slack, Teams,
    Discord, email, ntfy, json:// and the rest); a notify that does not succeed raises."""

    def __init__(self, name: str, urls: Sequence[str], **settings: Any) -> None:
        super().__init__(name, **settings)
        self.urls = list(urls)

    def _apprise(self) -> Any:
        import apprise

        sender = apprise.Apprise(asset=_asset())
        for url in self.urls:
            if not sender.add(url):
                raise DeliveryError(f"apprise cannot use the URL {redact_url(url)!r}")
        return sender

    def check_urls(self) -> int | None:
        """The index of the first URL Apprise cannot use, or None when it can use them all."""
        import apprise

        for index, url in enumerate(self.urls):
            if not apprise.Apprise(asset=_asset()).add(url):
                return index
        return None

    def notify(self, notification: Notification) -> None:
        import apprise

        kind = notification.kind
        notify_type = (apprise.NotifyType.FAILURE if kind in ("rollback_started", "rolled_back", "failed", "cancelled")
                       else apprise.NotifyType.SUCCESS if kind in ("promoted", "succeeded")
                       else apprise.NotifyType.INFO)
        sender = self._apprise()
        bounded = {"timeout": self.timeout} if "timeout" in inspect.signature(sender.notify).parameters else {}
        result = sender.notify(body=notification.text(), title=notification.title, notify_type=notify_type,
                               **bounded)
        if not result:
            status = getattr(getattr(result, "status", None), "name", "failed")
            raise DeliveryError(f"apprise could not deliver to {len(self.urls)} URL(s): {status}")


def _asset() -> Any:
    """Apprise's settings: its persistent store in memory only, so a controller writes nothing under
    the user's home (older Apprise releases have no such store and take no such setting)."""
    import apprise

    try:
        return apprise.AppriseAsset(storage_mode="memory")
    except TypeError:
        return apprise.AppriseAsset()


class CommandSink(_Settings):
    """Runs `command` (an argument list, no shell) in `cwd` with the body as JSON on stdin, and
    `SAFESHIP_EVENT` and `SAFESHIP_IDEMPOTENCY_KEY` in its environment. Exit 0 is a delivery; any
    other exit raises with the end of its stderr. Past `timeout` its whole process group is
    killed and the delivery fails."""

    def __init__(self, name: str, command: Sequence[str], *, cwd: Path | None = None, **settings: Any) -> None:
        super().__init__(name, **settings)
        self.command = list(command)
        self.cwd = cwd

    def notify(self, notification: Notification) -> None:
        env = dict(os.environ, SAFESHIP_EVENT=notification.kind, SAFESHIP_IDEMPOTENCY_KEY=notification.key)
        try:
            child = subprocess.Popen(  # an argument list from the config, no shell
                self.command, cwd=self.cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise DeliveryError(f"{self.command[0]} could not start: {exc}") from exc
        try:
            _, err = child.communicate(body_bytes(notification), timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(child)
            raise DeliveryError(f"{self.command[0]} did not finish within {self.timeout:g}s; killed") from None
        except BaseException:
            _kill_group(child)
            raise
        if child.returncode != 0:
            tail = err.decode(errors="replace").strip()[-_OUTPUT_CHARS:]
            raise DeliveryError(f"{self.command[0]} exited with {child.returncode}" + (f": {tail}" if tail else ""))


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """Kill the command and whatever it started (its own session), then reap it."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        child.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.communicate(timeout=5)


# ---------------------------------------------------------------- from the config


def sinks_from_config(config: SafeshipConfig, config_dir: Path, *, source: str = "safeship.yaml") -> list[
        NotificationSink]:
    """The sinks `notifications:` declares, in order; the log sink alone when it declares none.

    `config_dir` is the config file's folder: `secret_file` and a command's working directory are
    relative to it. A secret file that cannot be read, is empty or readable by others, or an
    Apprise URL Apprise cannot use is a ConfigError naming `source`, the field and the value. Each
    webhook secret joins the process-wide redactor, so it is masked wherever it might be printed."""
    if not config.notifications:
        return [LogSink()]
    try:
        unique_sink_names(config.notifications)
    except ValueError as exc:
        raise ConfigError(source, "notifications", str(exc)) from None
    return [_sink(index, sink, config_dir, source) for index, sink in enumerate(config.notifications)]


def _sink(index: int, sink: NotificationSinkConfig, config_dir: Path, source: str) -> NotificationSink:
    where = f"notifications[{index}]"
    settings: dict[str, Any] = {"events": sink.events, "timeout": float(sink.timeout), "retries": int(sink.retries),
                                "backoff": float(sink.backoff)}
    if sink.type == "webhook":
        assert sink.url is not None  # the model requires it
        secret = (read_secret_file(sink.secret_file, config_dir, source, f"{where}.secret_file")
                  if sink.secret_file else None)
        return WebhookSink(sink.name, sink.url, secret=secret, headers=sink.headers, **settings)
    if sink.type == "apprise":
        made = AppriseSink(sink.name, sink.urls, **settings)
        bad = made.check_urls()
        if bad is not None:
            raise ConfigError(source, f"{where}.urls[{bad}]",
                              f"apprise cannot use the URL {redact_url(sink.urls[bad])!r}")
        return made
    if sink.type == "command":
        return CommandSink(sink.name, sink.command, cwd=config_dir, **settings)
    return LogSink(sink.name, events=sink.events)
