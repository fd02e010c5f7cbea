"""One host, real processes: a route whose port is held by another process is never moved to
another port; the controller says who holds it and takes the port once it is free."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from livekit import ENV, SERVICE, controller_with, wait_for

from safeship.store import Store

pytestmark = pytest.mark.live


def _routes(state_dir: Path) -> list[dict[str, object]]:
    try:
        return list(json.loads((state_dir / "routes.json").read_text())["routes"])
    except (OSError, ValueError, KeyError):
        return []


def test_a_held_route_port_is_waited_for_never_moved(tmp_path: Path) -> None:
    squatter = socket.socket()
    try:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        def own_port(text: str) -> str:
            return text.replace(f"    ports: {{{ENV}: 0}}", f"    ports: {{{ENV}: {port}}}")

        with controller_with(tmp_path, own_port) as setup:
            wait_for(lambda: bool(_routes(setup.state_dir)), 30, "routes.json")
            [route] = _routes(setup.state_dir)
            assert route["port"] == port and route["listening"] is False
            store = Store(f"sqlite:///{setup.state_dir}/state.db")
            try:
                [event] = [e for e in store.events("controller") if e.kind == "port_unavailable"]
            finally:
                store.close()
            assert f"127.0.0.1:{port}" in event.message and f"held by PID {os.getpid()}" in event.message
            assert event.data["service"] == SERVICE and event.data["port"] == port
            log = (setup.state_dir.parent / "controller.log").read_text()
            assert f"cannot listen on its port 127.0.0.1:{port}" in log and "trying another port" not in log

            squatter.close()  # the port is free: the route takes it, and no other
            wait_for(lambda: _routes(setup.state_dir)[0].get("listening") is True, 60, "the route to bind its port")
            assert _routes(setup.state_dir)[0]["port"] == port
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass  # the router listens there now
    finally:
        squatter.close()
