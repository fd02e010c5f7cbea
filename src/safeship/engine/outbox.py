"""Delivering notifications from the events table, after the transition that wrote them is saved."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from safeship.engine.notify import Notification, NotificationSink, notification_for
from safeship.environments.secrets import redactor
from safeship.errors import NotFoundError, SafeshipError
from safeship.store import DeploymentRecord, EventRecord, Store

log = logging.getLogger("safeship.notify")

FAILED_KIND = "notification_failed"
_ERROR_CHARS = 500


def sink_name(sink: NotificationSink) -> str:
    """A sink's `name` attribute when it has a non-empty one, else its class name."""
    name = getattr(sink, "name", None)
    return name if isinstance(name, str) and name else type(sink).__name__


class DeliveryTimeout(TimeoutError):
    """A sink did not return within its timeout; the outbox stopped waiting for it."""


class _Busy(Exception):
    """The sink's earlier call outlived its timeout and has not returned yet: not called again."""


def _grace(timeout: float) -> float:
    """How much longer than its own timeout a sink is waited for: a sink that bounds its own work
    by it (an HTTP client's timeout) fails with its own error, and one that does not is cut off."""
    return min(2.0, max(0.5, timeout / 10))


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
    events: frozenset[str] | None  # the kinds this sink is told; None: all
    timeout: float | None  # None: called inline, trusted to return
    max_attempts: int
    backoff: float
    retry: _Retry | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # one drain of this lane at a time
    busy: threading.Thread | None = None  # a call that outlived its timeout and has not returned
    wake: asyncio.Event | None = None


def _number(sink: NotificationSink, attribute: str) -> float | None:
    value = getattr(sink, attribute, None)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class Outbox:
    """Delivers notifications to sinks from the events table.

    Every transition writes its events in the same transaction as the deployment's new state, so
    an event that is stored stands for a transition that happened. The outbox reads the events
    after a cursor stored in the same database, turns the ones people are told about into
    `Notification`s (`notification_for`: started, step_advanced, awaiting_approval, promoted,
    rollback_started, rolled_back, failed, succeeded, cancelled) and hands them to its sinks.
    Nothing is delivered before the transition is saved, and a slow sink delays only its own
    lane, never a tick nor another sink.

    Guarantee: at-least-once, in event order, per sink. Each sink has its own cursor, named
    `"{name}:{sink name}"`, moved past an event only after that sink took its notification, so a
    crash re-sends at most the notification in flight and never skips one; a new Outbox with the
    same name and sink names (a restart) goes on where the last left off. Every delivery of one
    event carries the same idempotency key (`Notification.key`), so a receiver can drop the
    duplicates a crash may cause. The cursor `name` holds the lowest of its sinks' cursors: every
    event up to it was dealt with by every sink.

    Sinks are drained side by side, each in a thread of its own. A sink with a `timeout`
    attribute is called in a thread of its own and waited for that long at most (and a little
    grace, so that a sink bounding its own work fails with its own error): a sink that hangs
    counts as failed then, and is not called again until its hung call returns. A sink with
    an `events` attribute is told only those kinds; its cursor moves past the others.

    A sink that raises (an `Exception`) does not stop the other sinks or the loop, and never fails
    a deployment: the failure is logged and stored as an event of kind `notification_failed`
    (sink, error, event id, idempotency key, attempt, whether it will be retried). That sink stays
    at the event and tries it again on a later pass, after its `backoff` (the sink's attribute,
    else the outbox's) doubling on each failure up to `max_backoff`; after `retries + 1` tries
    (the sink's `retries` attribute, else the outbox's `max_attempts`) it gives that event up (the
    last `notification_failed` says so) and goes on with the next. Attempts are counted in memory,
    so a restart gives a failing event a fresh set.

    A sink that has no stored cursor yet (one just added to the config) starts at the first event
    after `new_sinks_from` when that is given (the controller gives the last event id when it
    starts: a new webhook is not sent the whole backlog), unless its name is in `replay`
    (`since: start` in its config). Without `new_sinks_from` it starts at the first event.

    The dashboard's live view and other readers use the same events table through their own
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
        new_sinks_from: int | None = None,
        replay: Collection[str] = (),
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
            events = getattr(sink, "events", None)
            retries = _number(sink, "retries")
            backoff_s = _number(sink, "backoff")
            self._lanes.append(_Lane(
                sink, lane_name, f"{name}:{lane_name}",
                events=frozenset(events) if events is not None else None,
                timeout=_number(sink, "timeout"),
                max_attempts=int(retries) + 1 if retries is not None else max_attempts,
                backoff=backoff_s if backoff_s is not None else backoff,
            ))
        if new_sinks_from is not None:  # a sink without a cursor starts there, unless it replays the backlog
            for lane in self._lanes:
                if lane.name not in replay:
                    store.start_cursor(lane.cursor, new_sinks_from, at=clock())
        self._store_lock = threading.RLock()  # one store call at a time from the lanes' threads
        self._events: dict[str, list[EventRecord]] = {}  # each deployment's events read so far
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken = False
        self._halt = threading.Event()  # set when `run` is told to stop: no new delivery begins

    @property
    def sinks(self) -> list[NotificationSink]:
        return [lane.sink for lane in self._lanes]

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
        sink has caught up or waits to retry; the sinks side by side. Returns the number of
        deliveries that succeeded (one per notification per sink). Only store errors propagate;
        sinks' errors do not."""
        if len(self._lanes) <= 1:
            delivered = sum(self._deliver_lane(lane, limit) for lane in self._lanes)
        else:
            with ThreadPoolExecutor(len(self._lanes), thread_name_prefix="outbox") as pool:
                futures = [pool.submit(self._deliver_lane, lane, limit) for lane in self._lanes]
                delivered = sum(future.result() for future in futures)
        self._advance_position()
        return delivered

    def flush(self, wait: float) -> int:
        """Deliver everything pending, retrying failed deliveries after their backoff, for at most
        `wait` seconds more than one delivery's own timeout. What is left (a sink that is down)
        stays pending for the next pass of whoever delivers. Returns the deliveries that
        succeeded."""
        deadline = time.monotonic() + wait
        delivered = self.deliver_pending()
        for _ in range(10_000):  # bounded; each round sleeps until a retry is due
            dues = [lane.retry.due for lane in self._lanes if lane.retry is not None]
            if not dues:
                break
            pause = max(0.0, min(dues) - self.clock())
            if pause >= deadline - time.monotonic():
                break
            time.sleep(pause)
            delivered += self.deliver_pending()
        return delivered

    def _deliver_lane(self, lane: _Lane, limit: int) -> int:
        with lane.lock:
            if lane.retry is not None and self.clock() < lane.retry.due:
                return 0
            return self._drain(lane, limit)

    def _advance_position(self) -> None:
        if not self._lanes:
            return
        with self._store_lock:
            lowest = min(self.store.cursor(lane.cursor) for lane in self._lanes)
            if lowest > self.store.cursor(self.name):  # an idle pass writes nothing
                self.store.advance_cursor(self.name, lowest, at=self.clock())

    def _drain(self, lane: _Lane, limit: int) -> int:
        delivered = 0
        with self._store_lock:
            position = self.store.cursor(lane.cursor)
        while True:
            with self._store_lock:
                # Only the kinds anyone is told about are read (a look a second per deployment
                # is not); every event up to `ceiling` was written before the read, so a pass
                # that reads fewer than `limit` has seen every notified one up to it.
                ceiling = self.store.last_event_id()
                events = self.store.events_since(position, limit=limit, kinds=NOTIFIED_KINDS)
            # Deployments are read after their events, so a record is never older than its events.
            deployments: dict[str, DeploymentRecord | None] = {}
            saved = position
            for event in events:
                assert event.id is not None  # read from the store
                if self._halt.is_set():
                    self._save(lane, position, saved)
                    return delivered
                notification = self._notification(event, deployments)
                if notification is not None and (lane.events is None or notification.kind in lane.events):
                    try:
                        self._call(lane, notification)
                    except _Busy:
                        self._save(lane, position, saved)
                        return delivered
                    except Exception as exc:
                        if self._failed(lane, event, notification, exc):
                            self._save(lane, position, saved)
                            return delivered
                    else:
                        delivered += 1
                        lane.retry = None
                    # Saved at once after each notification: a crash re-sends only the one in flight.
                    saved = self._save(lane, event.id, saved)
                position = event.id
            if len(events) < limit:
                self._save(lane, max(position, ceiling), saved)
                return delivered
            saved = self._save(lane, position, saved)

    def _call(self, lane: _Lane, notification: Notification) -> None:
        """`lane.sink.notify(notification)`, given at most the sink's timeout when it has one."""
        if lane.timeout is None:
            lane.sink.notify(notification)
            return
        if lane.busy is not None:
            if lane.busy.is_alive():
                raise _Busy(lane.name)
            lane.busy = None
        raised: list[BaseException] = []

        def deliver() -> None:
            try:
                lane.sink.notify(notification)
            except BaseException as exc:  # handed to the waiting thread, which decides
                raised.append(exc)

        worker = threading.Thread(target=deliver, name=f"notify-{lane.name}", daemon=True)
        worker.start()
        worker.join(lane.timeout + _grace(lane.timeout))
        if worker.is_alive():
            lane.busy = worker
            raise DeliveryTimeout(f"no answer within {lane.timeout:g}s")
        if raised:
            raise raised[0]

    def _save(self, lane: _Lane, position: int, saved: int) -> int:
        if position > saved:
            with self._store_lock:
                self.store.advance_cursor(lane.cursor, position, at=self.clock())
            return position
        return saved

    def _notification(self, event: EventRecord,
                      deployments: dict[str, DeploymentRecord | None]) -> Notification | None:
        """`notification_for` the event, given its deployment's record and earlier events."""
        assert event.id is not None
        if event.kind not in NOTIFIED_KINDS:
            return None  # the common case (looks, instances) without reading anything else
        with self._store_lock:
            if event.deployment_id not in deployments:
                try:
                    deployments[event.deployment_id] = self.store.get_deployment(event.deployment_id)
                except NotFoundError:
                    deployments[event.deployment_id] = None
            earlier = self._earlier(event)
        return notification_for(event, deployments[event.deployment_id], earlier)

    def _earlier(self, event: EventRecord) -> list[EventRecord]:
        """The deployment's events before `event`. Those read before are kept, and only the newer
        ones are read when `event` is newer than the last one kept: a deployment writes an event
        at every look, and reading them all again for each notification cost more than the
        deployment's ticks. What is kept of an event that `notification_for` reads only the kind
        of (every kind but phase and weights) is its kind and id."""
        assert event.id is not None
        known = self._events.get(event.deployment_id)
        if known is None or not known or (known[-1].id or 0) < event.id:
            if known is None and len(self._events) >= EVENT_CACHE_DEPLOYMENTS:
                self._events.clear()  # a cache, not a copy of the table
            if not known:
                fresh = self.store.events(event.deployment_id)
            else:
                fresh = []
                after = known[-1].id or 0
                while True:
                    batch = self.store.events_since(after, limit=EVENT_BATCH, deployment_id=event.deployment_id)
                    fresh.extend(batch)
                    if len(batch) < EVENT_BATCH:
                        break
                    after = batch[-1].id or after
            known = self._events[event.deployment_id] = (known or []) + [_compact(e) for e in fresh]
        ids = [e.id or 0 for e in known]
        return known[: bisect.bisect_left(ids, event.id)]

    def _failed(self, lane: _Lane, event: EventRecord, notification: Notification, exc: Exception) -> bool:
        """Log and record a failed delivery; True when the sink should stay at this event."""
        assert event.id is not None
        kind = notification.kind
        attempts = lane.retry.attempts + 1 if lane.retry is not None and lane.retry.event_id == event.id else 1
        retry = attempts < lane.max_attempts
        now = self.clock()
        error = redactor().redact_text(f"{type(exc).__name__}: {exc}")[:_ERROR_CHARS]
        outcome = "will retry" if retry else "gave up"
        log.warning(
            "notification %s of %s to sink %s failed (attempt %d of %d, %s): %s",
            kind, event.deployment_id, lane.name, attempts, lane.max_attempts, outcome, error,
        )
        lane.retry = (
            _Retry(event.id, attempts, now + min(lane.backoff * 2 ** (attempts - 1), self.max_backoff))
            if retry
            else None
        )
        record = EventRecord(
            event.deployment_id,
            now,
            FAILED_KIND,
            f"notification {kind} to {lane.name} failed (attempt {attempts} of {lane.max_attempts}, "
            f"{outcome}): {error}",
            {
                "sink": lane.name,
                "error": error,
                "event_id": event.id,
                "key": notification.key,
                "notification": kind,
                "attempt": attempts,
                "retry": retry,
            },
        )
        try:
            with self._store_lock:
                self.store.add_events([record])
        except Exception:
            log.exception("could not record the failed notification %s of %s", kind, event.deployment_id)
        return retry

    # ------------------------------------------------------------ the controller's task

    def wake(self) -> None:
        """Make a running `run` deliver now instead of after its poll interval. Safe to call from
        any thread, and before `run` starts (its first pass then happens at once anyway)."""
        loop = self._loop
        if loop is None:
            self._woken = True
            return
        for lane in self._lanes:
            wake = lane.wake
            if wake is not None:
                with contextlib.suppress(RuntimeError):  # the loop has closed; nothing runs to wake
                    loop.call_soon_threadsafe(wake.set)

    async def run(self, stop: asyncio.Event, poll: float = 1.0) -> None:
        """Deliver every `poll` seconds, or sooner after `wake()`, until `stop` is set: one task
        per sink, each delivering in a thread of the outbox's own pool (never the event loop's
        default executor, which the controller needs), so that a sink that hangs holds back only
        itself. Once `stop` is set no new notification is begun; the ones in flight end within
        their sink's timeout. A pass that fails (the store cannot be used) is logged and tried
        again on the next one; sinks' failures are handled inside the pass."""
        loop = self._loop = asyncio.get_running_loop()
        self._halt.clear()
        for lane in self._lanes:
            lane.wake = asyncio.Event()
            if self._woken:
                lane.wake.set()
        self._woken = False
        pool = ThreadPoolExecutor(max(1, len(self._lanes)), thread_name_prefix="outbox")

        async def halt_on_stop() -> None:
            await stop.wait()
            self._halt.set()

        watcher = asyncio.ensure_future(halt_on_stop())
        try:
            await asyncio.gather(*(self._run_lane(loop, pool, lane, stop, poll) for lane in self._lanes))
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            pool.shutdown(wait=False)
            self._halt.clear()  # the passes have ended; a later deliver_pending delivers again
            self._loop = None
            for lane in self._lanes:
                lane.wake = None

    async def _run_lane(self, loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor, lane: _Lane,
                        stop: asyncio.Event, poll: float) -> None:
        wake = lane.wake
        assert wake is not None
        while not stop.is_set():
            wake.clear()
            try:
                await loop.run_in_executor(pool, self._pass_of, lane)
            except Exception as exc:  # a SafeshipError (the store's full disk) is a sentence; anything else a bug
                log.error("delivering notifications to %s failed; trying again in %.1fs: %s", lane.name, poll, exc,
                          exc_info=not isinstance(exc, SafeshipError))
            await _first(stop, wake, poll)

    def _pass_of(self, lane: _Lane) -> None:
        self._deliver_lane(lane, 500)
        self._advance_position()


NOTIFIED_KINDS = frozenset(("created", "promoted", "phase", "weights"))  # events that may be a notification
EVENT_CACHE_DEPLOYMENTS = 2000  # deployments whose events the outbox keeps (compacted) between passes
EVENT_BATCH = 500  # events read at once when a deployment's kept events are brought up to date
_KEPT_WHOLE = ("phase", "weights")  # the kinds notification_for reads more of than the kind


def _compact(event: EventRecord) -> EventRecord:
    """What `notification_for` reads of an earlier event: all of a phase or weights event; of
    any other, its kind (and its id, for ordering)."""
    if event.kind in _KEPT_WHOLE:
        return event
    return EventRecord(event.deployment_id, event.at, event.kind, "", {}, id=event.id)


async def _first(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    """Return when `stop` or `wake` is set, or after `timeout` seconds."""
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
