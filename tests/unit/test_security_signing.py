"""Webhook notifications and webhook gates carry `X-Safeship-Signature: t=<unix seconds>,v1=<hex
HMAC-SHA256 of "<t>.<body>">`, checked here by a real receiver on 127.0.0.1; a secret file others
may read is refused when the config loads (exit 2, naming the file)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from safeship.cli import deployment_engine
from safeship.config.loader import load_config
from safeship.engine import webhooks
from safeship.engine.notify import Notification
from safeship.engine.sinks import WebhookSink, sinks_from_config
from safeship.errors import ConfigError
from safeship.signing import verify

SECRET = "whsec-security-signing-3b9e61"
HEADER = re.compile(r"t=(\d+),v1=([0-9a-f]{64})")


class Receiver:
    """Answers 200 to every POST and keeps its headers and body."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], bytes]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def _secret_file(folder: Path, mode: int = 0o600) -> Path:
    path = folder / "hook.secret"
    path.write_text(SECRET + "\n")
    path.chmod(mode)
    return path


def _check(header: str, body: bytes) -> int:
    """The header's timestamp, after checking the signature as a receiver would, by hand."""
    found = HEADER.fullmatch(header)
    assert found is not None, header
    stamp = int(found.group(1))
    expected = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(found.group(2), expected)
    assert abs(time.time() - stamp) < 120
    return stamp


def test_a_webhook_notification_is_signed_with_a_timestamp(tmp_path: Path, receiver: Receiver) -> None:
    _secret_file(tmp_path)
    path = tmp_path / "safeship.yaml"
    path.write_text(f"notifications:\n  - {{name: hook, type: webhook, url: '{receiver.url}', "
                    "secret_file: hook.secret}\n")
    [sink] = sinks_from_config(load_config(path), tmp_path, source=str(path))
    assert isinstance(sink, WebhookSink)
    sink.notify(Notification(kind="started", deployment_id="deploy-0123456789", service="user-service",
                             environment="production", message="started", version="v1.3.0", from_version="v1.2.0",
                             to_version="v1.3.0", event_id=1, at=time.time()))
    [(headers, body)] = receiver.seen
    stamp = _check(headers["x-safeship-signature"], body)
    assert verify(SECRET.encode(), body, headers["x-safeship-signature"])
    # A receiver refuses the same request replayed more than 5 minutes later, or another body.
    assert not verify(SECRET.encode(), body, headers["x-safeship-signature"], now=stamp + 301)
    assert not verify(SECRET.encode(), body + b" ", headers["x-safeship-signature"])


def _gate_config(tmp_path: Path, url: str, secret: str | None) -> Path:
    path = tmp_path / "safeship.yaml"
    line = f", secret_file: {secret}" if secret else ""
    path.write_text(
        "environment_management:\n  environments:\n    - {name: staging, type: staging, platform: sim}\n"
        "services:\n  user-service:\n    replicas: 1\n    command: [run, '{port}']\n    webhooks:\n"
        f"      - {{name: sign-off, type: confirm-promotion, url: '{url}'{line}}}\n"
    )
    return path


async def test_a_webhook_gate_request_is_signed_the_same_way(tmp_path: Path, receiver: Receiver) -> None:
    _secret_file(tmp_path)
    config = load_config(_gate_config(tmp_path, receiver.url, "hook.secret"))
    [gate] = config.services["user-service"].webhooks
    answer = await webhooks.ask(gate, {"id": "deploy-0123456789", "phase": "progressing"})
    assert answer.ok and answer.text == "HTTP 200"
    [(headers, body)] = receiver.seen
    _check(headers["x-safeship-signature"], body)
    assert json.loads(body) == {"id": "deploy-0123456789", "phase": "progressing"}
    assert headers["content-type"] == "application/json"
    assert SECRET.encode() not in body


async def test_a_gate_without_a_secret_file_is_not_signed(tmp_path: Path, receiver: Receiver) -> None:
    config = load_config(_gate_config(tmp_path, receiver.url, None))
    [gate] = config.services["user-service"].webhooks
    assert (await webhooks.ask(gate, {"id": "x"})).ok
    [(headers, _)] = receiver.seen
    assert "x-safeship-signature" not in headers


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_secret_file_others_may_read_is_refused_when_the_config_loads(tmp_path: Path, mode: int) -> None:
    secret = _secret_file(tmp_path, mode)
    path = tmp_path / "safeship.yaml"
    path.write_text("notifications:\n  - {name: hook, type: webhook, url: 'http://127.0.0.1:9/', "
                    "secret_file: hook.secret}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(secret) in message and f"mode {mode:04o}" in message and "notifications[0].secret_file" in message
    assert SECRET not in message


def test_a_gate_secret_file_others_may_read_is_refused_too(tmp_path: Path) -> None:
    secret = _secret_file(tmp_path, 0o644)
    with pytest.raises(ConfigError, match=r"webhooks\[0\]\.secret_file: the secret file .* has mode 0644") as caught:
        load_config(_gate_config(tmp_path, "http://127.0.0.1:9/", "hook.secret"))
    assert str(secret) in str(caught.value)


def test_the_cli_exits_2_with_one_sentence_naming_the_file(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    secret = _secret_file(tmp_path, 0o644)
    path = tmp_path / "safeship.yaml"
    path.write_text("environment_management:\n  environments:\n    - {name: staging, type: staging, platform: sim}\n"
                    "notifications:\n  - {name: hook, type: webhook, url: 'http://127.0.0.1:9/', "
                    "secret_file: hook.secret}\n")
    with pytest.raises(SystemExit) as exited:
        deployment_engine.main(["--list", "--config", str(path)])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2
    assert len(err.splitlines()) == 1 and str(secret) in err and "0644" in err
