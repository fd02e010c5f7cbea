"""The sinks a config declares, against a real HTTP receiver on loopback: the webhook's signature
verifies and its secret stays out of the body, a refusing receiver gets the event again with the
same idempotency key, a receiver that never answers holds back only its own sink and only for the
sink's timeout, Apprise reaches the receiver through a json:// URL, and the command sink runs a
real program with the event on stdin."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from safeship.config.loader import load_config
from safeship.config.models import DeploymentRequest, DeploymentStrategy
from safeship.config.scenario import Scenario
from safeship.engine.notify import LogSink, MemorySink, Notification
from safeship.engine.outbox import FAILED_KIND, Outbox
from safeship.engine.policies import policy_for
from safeship.engine.simulate import CANDIDATE, ENVIRONMENT, SERVICE, build
from safeship.engine.sinks import AppriseSink, CommandSink, WebhookSink, sinks_from_config
from safeship.errors import ConfigError
from safeship.signing import verify
from safeship.store import EventRecord, Store

SECRET = "whsec-7d1f0c9a-notify-test"  # unique: it joins the process-wide redactor


# ---------------------------------------------------------------- a receiver on loopback


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1, port 0. `mode`: "ok" answers 200, "fail" 500, "hang"
    never answers (until `release` is set, at most 60 s)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.mode = "ok"
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if receiver.mode == "hang":
                    receiver.release.wait(60)
                    return
                self.send_response(200 if receiver.mode == "ok" else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="receiver", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    try:
        yield made
    finally:
        made.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- deployments that wrote events


def scenario(**candidate: Any) -> Scenario:
    return Scenario.model_validate({
        "name": "notify", "seed": 1, "duration_s": 3600, "traffic": {"rps": 100},
        "baseline": {"error_rate": 0.005, "latency_ms": {"p50": 40, "p99": 180}},
        "candidate": candidate, "expect": "promote",
    })


async def bad_release(store: Store) -> str:
    """A canary of a release that fails 30% of requests, run to its rollback on the sim world."""
    sim = await build(scenario(error_rate=0.3), policy_for=policy_for, store=store)
    record = sim.engine.submit(DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                                 deployment_strategy=DeploymentStrategy.CANARY), policy="safeship")
    final = await sim.engine.run(record.id)
    assert final.phase == "rolled_back"
    return record.id


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    made = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        yield made
    finally:
        made.close()


def configured(tmp_path: Path, sinks: str) -> tuple[Path, Any]:
    path = tmp_path / "safeship.yaml"
    path.write_text("notifications:\n" + sinks)
    return path, load_config(path)


def failures(store: Store) -> list[EventRecord]:
    return [e for e in store.events_since(0, limit=10_000) if e.kind == FAILED_KIND]


# ---------------------------------------------------------------- webhook


async def test_the_webhook_signature_verifies_and_the_secret_stays_out_of_the_body(
        tmp_path: Path, store: Store, receiver: Receiver) -> None:
    deployment = await bad_release(store)
    (tmp_path / "hook.secret").write_text(SECRET + "\n")
    (tmp_path / "hook.secret").chmod(0o600)
    path, config = configured(tmp_path, f"  - {{name: hook, type: webhook, url: '{receiver.url}', "
                                        "secret_file: hook.secret, headers: {X-Team: payments}}\n")
    sinks = sinks_from_config(config, path.parent, source=str(path))

    assert Outbox(store, sinks).deliver_pending() == 4

    bodies = [seen.json() for seen in receiver.seen]
    assert [b["event"] for b in bodies] == ["started", "step_advanced", "rollback_started", "rolled_back"]
    for seen, body in zip(receiver.seen, bodies, strict=True):
        assert verify(SECRET.encode(), seen.body, seen.headers["x-safeship-signature"])
        assert seen.headers["idempotency-key"] == body["idempotency_key"] == f"{deployment}:{body['event_id']}"
        assert seen.headers["content-type"] == "application/json" and seen.headers["x-team"] == "payments"
        assert SECRET.encode() not in seen.body
        assert (body["deployment_id"], body["service"], body["environment"]) == (deployment, SERVICE, ENVIRONMENT)
    rolled_back = bodies[-1]
    assert (rolled_back["from_version"], rolled_back["to_version"]) == (CANDIDATE, "baseline")
    assert rolled_back["phase"] == "rolled_back" and rolled_back["weights"] == {"baseline": 100}
    assert "error rate" in rolled_back["reason"] and rolled_back["evidence"]["trigger"] == "analysis"
    assert bodies[1]["weights"][CANDIDATE] > 0 and bodies[1]["phase"] == "progressing"
    # A body signed with another secret does not verify.
    assert not verify(b"another secret", receiver.seen[0].body, receiver.seen[0].headers["x-safeship-signature"])


def test_secret_values_are_masked_in_every_body() -> None:
    from safeship.environments.secrets import register

    leaked = "db-pass-4f8e2a-notify-test"
    register([leaked])
    notification = Notification("failed", "deploy-1", SERVICE, ENVIRONMENT, f"failed: connect with {leaked}",
                                evidence={"dsn": f"postgres://app:{leaked}@db"}, reason=f"bad {leaked}")
    body = json.dumps(notification.body())
    assert leaked not in body and body.count("***") == 3
    assert leaked not in notification.text() and leaked not in notification.title


async def test_a_refusing_receiver_gets_the_event_again_with_the_same_key(
        store: Store, receiver: Receiver) -> None:
    await bad_release(store)
    clock = FakeClock()
    receiver.mode = "fail"
    outbox = Outbox(store, [WebhookSink("hook", receiver.url, timeout=5.0, retries=3, backoff=2.0)], clock=clock)

    assert outbox.deliver_pending() == 0
    assert outbox.deliver_pending() == 0  # backing off: not tried again yet
    (failed,) = failures(store)
    assert failed.data["sink"] == "hook" and failed.data["notification"] == "started" and failed.data["retry"]
    assert "answered 500" in failed.data["error"]

    receiver.mode = "ok"
    clock.now += 2.0
    assert outbox.deliver_pending() == 4

    keys = [seen.headers["idempotency-key"] for seen in receiver.seen]
    assert keys[0] == keys[1] == failed.data["key"]  # the refused one, then the same one delivered
    assert len(keys) == 5 and len(set(keys)) == 4


async def test_a_receiver_that_never_answers_holds_back_only_its_own_sink(
        store: Store, receiver: Receiver) -> None:
    await bad_release(store)
    receiver.mode = "hang"
    memory = MemorySink()
    outbox = Outbox(store, [WebhookSink("stuck", receiver.url, timeout=0.5, retries=0), memory])

    delivered = outbox.deliver_pending()

    assert delivered == 4 and [n.kind for n in memory.received] == [
        "started", "step_advanced", "rollback_started", "rolled_back"]
    stuck = failures(store)
    assert stuck and all(e.data["sink"] == "stuck" and not e.data["retry"] for e in stuck)
    assert all("0.5s" in e.data["error"] or "Timeout" in e.data["error"] for e in stuck)
    # Each event the stuck sink tried was tried once (retries: 0), cut off at its timeout, and given up.
    assert len(receiver.seen) == len(stuck)


class Hangs:
    """A sink whose notify blocks until released: only the outbox's own bound can stop waiting."""

    name = "hangs"
    timeout = 0.3

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def notify(self, notification: Notification) -> None:
        self.calls += 1
        self.release.wait(60)


async def test_a_sink_that_hangs_is_not_waited_for_past_its_timeout_nor_called_again_while_hung(
        store: Store) -> None:
    await bad_release(store)
    hangs, memory = Hangs(), MemorySink()
    clock = FakeClock()
    outbox = Outbox(store, [hangs, memory], clock=clock, backoff=1.0)
    try:
        assert outbox.deliver_pending() == 4
        (failed,) = failures(store)
        assert failed.data["sink"] == "hangs" and "no answer within 0.3s" in failed.data["error"]

        clock.now += 10.0
        outbox.deliver_pending()
        assert hangs.calls == 1  # its first call has not returned: not called again
        assert len(failures(store)) == 1
    finally:
        hangs.release.set()
    for _ in range(100):  # the hung call returns once released
        if outbox._lanes[0].busy is None or not outbox._lanes[0].busy.is_alive():
            break
        threading.Event().wait(0.05)
    clock.now += 100.0
    outbox.deliver_pending()
    assert hangs.calls > 1


async def test_a_foreground_flush_to_a_receiver_that_never_answers_is_bounded(
        tmp_path: Path, store: Store, receiver: Receiver) -> None:
    from safeship.cli.common import flush_notifications

    deployment = await bad_release(store)
    receiver.mode = "hang"
    path, config = configured(tmp_path, f"  - {{name: stuck, type: webhook, url: '{receiver.url}', timeout: 0.5s, "
                                        "retries: 2, backoff: 0.1s}\n  - {name: log, type: log}\n")

    flush_notifications(store, config, path, wait=1.0)  # returns: the test would time out otherwise

    assert store.get_deployment(deployment).phase == "rolled_back"
    assert store.cursor("notifications:log") > store.cursor("notifications:stuck")  # left pending
    assert failures(store) and all(e.data["sink"] == "stuck" for e in failures(store))


async def test_the_events_filter_tells_a_sink_only_its_kinds(tmp_path: Path, store: Store,
                                                               receiver: Receiver) -> None:
    await bad_release(store)
    path, config = configured(tmp_path, f"  - {{name: hook, type: webhook, url: '{receiver.url}', "
                                        "events: [rolled_back]}\n")
    outbox = Outbox(store, sinks_from_config(config, path.parent))
    assert outbox.deliver_pending() == 1
    assert [seen.json()["event"] for seen in receiver.seen] == ["rolled_back"]
    assert outbox.position == store.last_event_id()  # moved past what it is not told


# ---------------------------------------------------------------- apprise


async def test_an_apprise_sink_reaches_the_receiver_through_a_json_url(
        tmp_path: Path, store: Store, receiver: Receiver) -> None:
    deployment = await bad_release(store)
    url = receiver.url.replace("http://", "json://")
    path, config = configured(tmp_path, f"  - {{name: chat, type: apprise, urls: ['{url}'], "
                                        "events: [rolled_back], timeout: 5s}\n")
    (sink,) = sinks_from_config(config, path.parent)
    assert isinstance(sink, AppriseSink)

    assert Outbox(store, [sink]).deliver_pending() == 1

    (seen,) = receiver.seen
    message = seen.json()
    assert seen.path == "/hook"
    assert "rolled back" in message["title"] and SERVICE in message["title"]
    assert deployment in message["message"] and "baseline" in message["message"]
    assert message["type"] == "failure"


async def test_an_apprise_notify_that_fails_is_retried(store: Store, receiver: Receiver) -> None:
    await bad_release(store)
    receiver.mode = "fail"
    sink = AppriseSink("chat", [receiver.url.replace("http://", "json://")], events=["rolled_back"], timeout=5.0)
    assert Outbox(store, [sink], clock=FakeClock()).deliver_pending() == 0
    (failed,) = failures(store)
    assert failed.data["sink"] == "chat" and failed.data["retry"]
    assert "apprise could not deliver" in failed.data["error"]


# ---------------------------------------------------------------- command


async def test_a_command_sink_gets_the_event_on_stdin(tmp_path: Path, store: Store) -> None:
    deployment = await bad_release(store)
    script = ("import json, os, sys; body = json.load(sys.stdin); "
              "open('told.jsonl', 'a').write(json.dumps([body['event'], os.environ['SAFESHIP_IDEMPOTENCY_KEY'], "
              "body['idempotency_key']]) + '\\n')")
    command = json.dumps([sys.executable, "-c", script])
    path, config = configured(tmp_path, f"  - name: script\n    type: command\n    command: {command}\n"
                                        "    events: [rollback_started, rolled_back]\n")
    assert Outbox(store, sinks_from_config(config, path.parent)).deliver_pending() == 2
    told = [json.loads(line) for line in (tmp_path / "told.jsonl").read_text().splitlines()]
    assert [t[0] for t in told] == ["rollback_started", "rolled_back"]
    assert all(t[1] == t[2] and t[1].startswith(deployment + ":") for t in told)


async def test_a_command_that_fails_or_hangs_is_a_failed_delivery(tmp_path: Path, store: Store) -> None:
    await bad_release(store)
    failing = CommandSink("failing", [sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"],
                          events=["rolled_back"], timeout=30.0, retries=0)
    slow = CommandSink("slow", [sys.executable, "-c", "import time; time.sleep(60)"], events=["rolled_back"],
                       timeout=0.5, retries=0)
    Outbox(store, [failing, slow]).deliver_pending()
    errors = {e.data["sink"]: e.data["error"] for e in failures(store)}
    assert "exited with 3: boom" in errors["failing"]
    assert "did not finish within 0.5s" in errors["slow"] or "no answer within 0.5s" in errors["slow"]


# ---------------------------------------------------------------- from the config


def test_without_notifications_the_log_sink_alone(tmp_path: Path) -> None:
    path = tmp_path / "safeship.yaml"
    path.write_text("{}\n")
    (sink,) = sinks_from_config(load_config(path), tmp_path)
    assert isinstance(sink, LogSink) and sink.name == "log"


@pytest.mark.parametrize(("sinks", "field", "words"), [
    ("  - {name: hook, type: webhook, url: 'http://127.0.0.1:9/', secret_file: missing.secret}\n",
     "notifications[0].secret_file", "missing.secret"),
    ("  - {name: hook, type: webhook, url: 'http://127.0.0.1:9/', secret_file: empty.secret}\n",
     "notifications[0].secret_file", "is empty"),
    ("  - {name: chat, type: apprise, urls: ['nothing-like-a-url']}\n", "notifications[0].urls[0]",
     "apprise cannot use the URL"),  # the URL itself is not repeated: an Apprise URL is a credential
])
def test_a_sink_that_cannot_be_built_is_a_config_error(tmp_path: Path, sinks: str, field: str, words: str) -> None:
    (tmp_path / "empty.secret").write_text("\n")
    (tmp_path / "empty.secret").chmod(0o600)
    path = tmp_path / "safeship.yaml"
    with pytest.raises(ConfigError) as caught:  # when the config loads, or when its sinks are built
        path, config = configured(tmp_path, sinks)
        sinks_from_config(config, tmp_path, source=str(path))
    assert caught.value.field == field and words in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.parametrize(("sinks", "words"), [
    ("  - {name: hook, type: webhook, url: 'http://x/', events: [deployed]}\n", "unknown event 'deployed'"),
    ("  - {name: hook, type: webhook, url: 'http://x/', events: []}\n", "would tell nothing"),
    ("  - {name: hook, type: webhook, url: 'ftp://x/'}\n", "must start with http"),
    ("  - {name: hook, type: webhook, url: 'http://x/', command: [echo]}\n", "does not take command"),
    ("  - {name: hook, type: webhook}\n", "needs a url"),
    ("  - {name: run, type: command, command: []}\n", "needs a command"),
    ("  - {name: hook, type: webhook, url: 'http://x/', headers: {Idempotency-Key: x}}\n", "set by safeship"),
])
def test_a_bad_sink_is_refused_when_the_config_loads(tmp_path: Path, sinks: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        configured(tmp_path, sinks)
    assert "notifications[0]" in str(caught.value) and words in str(caught.value)


async def test_a_foreground_command_delivers_to_the_sinks_of_its_config_file(
        tmp_path: Path, store: Store, receiver: Receiver, capsys: pytest.CaptureFixture[str]) -> None:
    from safeship.cli.common import flush_notifications

    await bad_release(store)
    path = tmp_path / "safeship.yaml"
    path.write_text(f"notifications:\n  - {{name: hook, type: webhook, url: '{receiver.url}', "
                    "secret_file: gone.secret}\n")
    flush_notifications(store, config_path=path)  # the secret file is missing: nothing is sent
    assert receiver.seen == [] and store.cursor("notifications:hook") == 0
    assert "warning: notifications not sent" in capsys.readouterr().err

    (tmp_path / "gone.secret").write_text(SECRET)
    (tmp_path / "gone.secret").chmod(0o600)
    flush_notifications(store, config_path=path)  # fixed: what waited is delivered
    assert [seen.json()["event"] for seen in receiver.seen] == [
        "started", "step_advanced", "rollback_started", "rolled_back"]
    assert store.cursor("notifications:hook") > 0


def test_two_sinks_of_one_name_are_refused_when_the_config_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        configured(tmp_path, "  - {name: a, type: log}\n  - {name: a, type: log}\n")
    assert "notifications: two sinks are named 'a'" in str(caught.value)
