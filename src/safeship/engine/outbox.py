"""Delivering notifications from the events table, after the transition that wrote them is saved."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from safeship.engine.notify import NotificationSink, notification_for
from safeship.errors import NotFoundError
from safeship.store import DeploymentRecord, EventRecord, Store

log = logging.getLogger("safeship.notify")

FAILED_KIND = "notification_failed"
_ERROR_CHARS = 500


def sink_name(sink: NotificationSink) -> str:
    """A sink's `name` attribute when it has a non-empty one, else its class name."""
    name = getattr(sink, "name", None)
    return name if isinstance(name, str) and name else type(sink).__name__


@dataclass
class _Retry:
    event_id: int
    attempts: int
    due: float  # clock time before which the sink is not tried again


@dataclass
class _Lane:
    """One sink and its own cursor, so a sink that fails holds back only itself."""

    sink: NotificationSink
    name: str
    cursor: str
    retry: _Retry | None = None


class Outbox:
    """Delivers notifications to sinks from the events table.

    Every transition writes its events in the same transaction as the deployment's new state, so
    an event that is stored stands for a transition that happened. The outbox reads the events
    after a cursor stored in the same database, turns the ones that are notifications (entering
    rolling_back, rolled_back, succeeded, failed or cancelled) into `Notification`s and hands them
    to its sinks. Nothing is delivered before the transition is saved, and a slow sink delays only
    the outbox, never a tick.

    Guarantee: at-least-once, in event order, per sink. Each sink has its own cursor, named
    `"{name}:{sink name}"`, moved past an event only after that sink took its notification, so a
    crash re-sends at most the notification in flight and never skips one; a new Outbox with the
    same name and sink names (a restart) goes on where the last left off. The cursor `name` holds
    the lowest of its sinks' cursors: every event up to it was dealt with by every sink.

    A sink that raises (an `Exception`) does not stop the other sinks or the loop, and never fails
    a deployment: the failure is logged and stored as an event of kind `notification_failed`
    (sink, error, event id, attempt, whether it will be retried). That sink stays at the event and
    tries it again on a later pass, after `backoff` seconds doubling on each failure up to
    `max_backoff`; after `max_attempts` failures of the same event it gives that event up (the
    last `notification_failed` says so) and goes on with the next. Attempts are counted in memory,
    so a restart gives a failing event a fresh set.

    Webhook sinks and the dashboard's live view read the same events table through their own
    named cursors (`Store.events_since`, `Store.cursor`, `Store.advance_cursor`).
    """

    def __init__(
        self,
        store: Store,
        sinks: Sequence[NotificationSink],
        name: str = "notifications",
        *,
        max_attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.store = store
        self.name = name
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.clock = clock
        self._lanes: list[_Lane] = []
        seen: dict[str, int] = {}
        for sink in sinks:
            base = sink_name(sink)
            seen[base] = seen.get(base, 0) + 1
            lane_name = base if seen[base] == 1 else f"{base}-{seen[base]}"
            self._lanes.append(_Lane(sink, lane_name, f"{name}:{lane_name}"))
        self._pass = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._woken = False

    @property
    def position(self) -> int:
        """The outbox's cursor: the id of the last event every sink is done with."""
        return self.store.cursor(self.name)

    def cursor_names(self) -> list[str]:
        """The stored cursor of each sink, in the order the sinks were given."""
        return [lane.cursor for lane in self._lanes]

    # ------------------------------------------------------------ one pass

    def deliver_pending(self, limit: int = 500) -> int:
        """Deliver what every sink has not had yet, reading `limit` events at a time until each
        sink has caught up or waits to retry. Returns the number of deliveries that succeeded
        (one per notification per sink). Only store errors propagate; sinks' errors do not."""
        with self._pass:
            deployments: dict[str, DeploymentRecord | None] = {}
            delivered = sum(self._drain(lane, limit, deployments) for lane in self._lanes)
            if self._lanes:
                lowest = min(self.store.cursor(lane.cursor) for lane in self._lanes)
                if lowest > self.store.cursor(self.name):  # an idle pass writes nothing
                    self.store.advance_cursor(self.name, lowest, at=self.clock())
            return delivered

    def _drain(self, lane: _Lane, limit: int, deployments: dict[str, DeploymentRecord | None]) -> int:
        if lane.retry is not None and self.clock() < lane.retry.due:
            return 0
        delivered = 0
        position = self.store.cursor(lane.cursor)
        while True:
            events = self.store.events_since(position, limit=limit)
            saved = position
            for event in events:
                assert event.id is not None  # read from the store
                deployment = self._deployment(event.deployment_id, deployments)
                notification = notification_for(event, deployment)
                if notification is not None:
                    try:
                        lane.sink.notify(notification)
                    except Exception as exc:
                        if self._failed(lane, event, notification.kind, exc):
                            self._save(lane, position, saved)
                            return delivered
                    else:
                        delivered += 1
                        lane.retry = None
                    # Saved at once after each notification: a crash re-sends only the one in flight.
                    saved = self._save(lane, event.id, saved)
                position = event.id
            self._save(lane, position, saved)
            if len(events) < limit:
                return delivered

    def _save(self, lane: _Lane, position: int, saved: int) -> int:
        if position > saved:
            self.store.advance_cursor(lane.cursor, position, at=self.clock())
            return position
        return saved

    def _deployment(self, deployment_id: str, known: dict[str, DeploymentRecord | None]) -> DeploymentRecord | None:
        if deployment_id not in known:
            try:
                known[deployment_id] = self.store.get_deployment(deployment_id)
            except NotFoundError:
                known[deployment_id] = None
        return known[deployment_id]

    def _failed(self, lane: _Lane, event: EventRecord, kind: str, exc: Exception) -> bool:
        """Log and record a failed delivery; True when the sink should stay at this event."""
        assert event.id is not None
        attempts = lane.retry.attempts + 1 if lane.retry is not None and lane.retry.event_id == event.id else 1
        retry = attempts < self.max_attempts
        now = self.clock()
        error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        outcome = "will retry" if retry else "gave up"
        log.warning(
            "notification %s of %s to sink %s failed (attempt %d of %d, %s): %s",
            kind, event.deployment_id, lane.name, attempts, self.max_attempts, outcome, error,
        )
        lane.retry = (
            _Retry(event.id, attempts, now + min(self.backoff * 2 ** (attempts - 1), self.max_backoff))
            if retry
            else None
        )
        record = EventRecord(
            event.deployment_id,
            now,
            FAILED_KIND,
            f"notification {kind} to {lane.name} failed (attempt {attempts} of {self.max_attempts}, "
            f"{outcome}): {error}",
            {
                "sink": lane.name,
                "error": error,
                "event_id": event.id,
                "notification": kind,
                "attempt": attempts,
                "retry": retry,
            },
        )
        try:
            self.store.add_events([record])
        except Exception:
            log.exception("could not record the failed notification %s of %s", kind, event.deployment_id)
        return retry

    # ------------------------------------------------------------ the controller's task

    def wake(self) -> None:
        """Make a running `run` deliver now instead of after its poll interval. Safe to call from
        any thread, and before `run` starts (its first pass then happens at once anyway)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            self._woken = True
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed; nothing runs to wake
            loop.call_soon_threadsafe(wake.set)

    async def run(self, stop: asyncio.Event, poll: float = 1.0) -> None:
        """Deliver in a worker thread every `poll` seconds, or sooner after `wake()`, until
        `stop` is set. A pass that fails (the store cannot be used) is logged and tried again on
        the next one; sinks' failures are handled inside the pass."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self._woken:
            self._wake.set()
        try:
            while not stop.is_set():
                self._wake.clear()
                self._woken = False
                try:
                    await asyncio.to_thread(self.deliver_pending)
                except Exception:
                    log.exception("delivering notifications failed; trying again in %.1fs", poll)
                await _first(stop, self._wake, poll)
        finally:
            self._loop = None
            self._wake = None


async def _first(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    """Return when `stop` or `wake` is set, or after `timeout` seconds."""
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
