"""`services.<name>.listen` and `services.<name>.tls`: what the loader accepts and refuses (one
sentence naming the file, the field and the value; exit 2 from a command, nothing written), the
redirect answer, and the in-process builtin router terminating TLS from the config it was given."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from pathlib import Path

import pytest

from safeship.cli import environment_manager
from safeship.config.loader import load_config
from safeship.config.ports import route_host, route_port, route_port_rule, route_tls
from safeship.errors import ConfigError
from safeship.routing.base import Backend, RouteKey
from safeship.routing.builtin import BuiltinRouter
from safeship.routing.tls import redirect_answer

CONFIG = """\
state_dir: {state}
environment_management:
  environments:
    - {{name: production, platform: local}}
    - {{name: staging, platform: local}}
    - {{name: sim, platform: sim}}
services:
  web:
    command: [python, -m, http.server, "{{port}}"]
{web}
  api:
    command: [python, -m, http.server, "{{port}}"]
    ports: {{production: 18555}}
"""


def _pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (common name `name`) and its 0600 key."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    os.chmod(key, 0o600)
    return cert, key


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "certs").mkdir()
    return _pair(tmp_path / "certs", "first")


def write(tmp_path: Path, web: str) -> Path:
    config = tmp_path / "safeship.yaml"
    config.write_text(CONFIG.format(state=tmp_path / "state", web=web))
    return config


def refused(tmp_path: Path, web: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, web))
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "safeship.yaml") + ": services.")
    assert "\n" not in message
    return message


def test_a_public_tls_listener_loads_with_absolute_paths(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    config = load_config(write(tmp_path, """\
    listen: {production: "0.0.0.0:18443", staging: "[::1]"}
    ports: {staging: 18444}
    tls:
      production: {cert_file: certs/first.pem, key_file: certs/first.key, redirect_http: 18080}"""))
    assert (route_host(config, "web", "production"), route_port(config, "web", "production")) == ("0.0.0.0", 18443)
    assert (route_host(config, "web", "staging"), route_port(config, "web", "staging")) == ("::1", 18444)
    assert route_host(config, "api", "production") == "127.0.0.1"  # the default stays loopback
    assert route_port_rule(config, "web", "production") == "services.web.listen.production"
    tls = route_tls(config, "web", "production")
    assert tls is not None and (Path(tls.cert_file), Path(tls.key_file)) == pair
    assert tls.redirect_http == 18080 and route_tls(config, "web", "staging") is None


@pytest.mark.parametrize(("value", "says"), [
    ("0.0.0.0:99999", "the port must be a number in 0..65535"),
    ("0.0.0.0:https", "the port must be a number in 0..65535"),
    ("example.com:443", "HOST an IP address"),
    ("::1:443", "an IPv6 address goes in brackets"),
    ("[::1:443", "lacks its closing ']'"),
    ("[127.0.0.1]:443", "an IPv6 address goes in brackets"),
])
def test_a_bad_listen_address_is_one_sentence_naming_field_and_value(tmp_path: Path, value: str, says: str) -> None:
    message = refused(tmp_path, f'    listen: {{production: "{value}"}}')
    assert message.count("services.web.listen.production") == 1
    assert says in message and message.endswith(f"got '{value}'")


def test_the_key_must_be_its_owners_alone(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    os.chmod(pair[1], 0o644)
    message = refused(tmp_path, "    tls: {production: {cert_file: certs/first.pem, key_file: certs/first.key}}")
    assert "services.web.tls.production.key_file" in message
    assert f"the secret file {pair[1]} has mode 0644, which lets other users read it; run chmod 600 {pair[1]}" \
        in message


@pytest.mark.parametrize(("cert", "key", "field", "says"), [
    ("certs/none.pem", "certs/first.key", "cert_file", "cannot read"),
    ("certs/first.pem", "certs/second.key", "production:", "do not load as a PEM certificate and its private key"),
    ("certs/first.key", "certs/first.key", "production:", "do not load as a PEM certificate"),
])
def test_a_pair_that_does_not_load_is_refused(tmp_path: Path, pair: tuple[Path, Path], cert: str, key: str,
                                              field: str, says: str) -> None:
    _pair(tmp_path / "certs", "second")
    message = refused(tmp_path, f"    tls: {{production: {{cert_file: {cert}, key_file: {key}}}}}")
    assert f"services.web.tls.production{'.' + field if field != 'production:' else ':'}" in message
    assert says in message


def test_a_port_is_written_in_one_place(tmp_path: Path) -> None:
    message = refused(tmp_path, '    listen: {production: "0.0.0.0:18443"}\n    ports: {production: 18443}')
    assert "services.web.ports.production: the port is also written in services.web.listen.production" in message


def test_a_redirect_port_is_no_other_routes(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    message = refused(tmp_path, "    tls: {production: {cert_file: certs/first.pem, key_file: certs/first.key, "
                                "redirect_http: 18555}}")
    assert "services.web.tls.production.redirect_http: port 18555 is already the route of api in production's" \
           in message


def test_listen_and_tls_name_an_environment_whose_router_listens(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    message = refused(tmp_path, '    listen: {prod: "0.0.0.0:18443"}')
    assert "services.web.listen.prod: there is no environment 'prod'" in message
    message = refused(tmp_path, "    tls: {sim: {cert_file: certs/first.pem, key_file: certs/first.key}}")
    assert "services.web.tls.sim: environment 'sim' routes with its platform 'sim'" in message


def test_a_command_refuses_a_bad_listener_with_exit_2_and_writes_nothing(tmp_path: Path, capsys) -> None:
    config = write(tmp_path, '    listen: {production: "0.0.0.0:70000"}')
    with pytest.raises(SystemExit) as exited:
        environment_manager.main(["--validate", "--environment", "production", "--config", str(config)])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.count("\n") == 1 and "services.web.listen.production" in err and "70000" in err
    assert not (tmp_path / "state").exists()


# ---------------------------------------------------------------- the redirect answer


@pytest.mark.parametrize(("head", "port", "status", "location"), [
    (b"GET /a?b=1 HTTP/1.1\r\nHost: example.com:80\r\n", 443, 301, "https://example.com/a?b=1"),
    (b"HEAD / HTTP/1.1\r\nhost: example.com\r\n", 8443, 301, "https://example.com:8443/"),
    (b"PUT /x HTTP/1.1\r\nHost: [::1]:8080\r\n", 8443, 308, "https://[::1]:8443/x"),
    (b"GET http://example.com:8080/p?q HTTP/1.1\r\nHost: other\r\n", 443, 301, "https://example.com/p?q"),
    (b"GET / HTTP/1.1\r\n", 443, 400, None),
    (b"GET / HTTP/1.1\r\nHost: evil.com/x\r\n", 443, 400, None),
    (b"GET / HTTP/1.1\r\nHost: example.com:8o\r\n", 443, 400, None),
    (b"GET ftp://example.com/ HTTP/1.1\r\nHost: example.com\r\n", 443, 400, None),
])
def test_the_redirect_answer(head: bytes, port: int, status: int, location: str | None) -> None:
    answer = redirect_answer(head + b"\r\n", port).decode()
    assert answer.startswith(f"HTTP/1.1 {status} ")
    if location is None:
        assert "Location:" not in answer
    else:
        assert f"\r\nLocation: {location}\r\n" in answer
    assert "\r\nConnection: close\r\n" in answer


# ---------------------------------------------------------------- the in-process builtin router


async def test_the_in_process_builtin_router_terminates_tls_from_its_config(tmp_path: Path,
                                                                             pair: tuple[Path, Path]) -> None:
    config = load_config(write(tmp_path, """\
    ports: {production: 0}
    tls: {production: {cert_file: certs/first.pem, key_file: certs/first.key}}"""))

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    router = BuiltinRouter(config=config)
    route = RouteKey("web", "production")
    try:
        port = await router.ensure_route(route, port=0, host="127.0.0.1")
        assert port is not None
        await router.set_backends(route, "v1", [Backend("i1", "127.0.0.1", server.sockets[0].getsockname()[1])])
        await router.set_weights(route, {"v1": 100})
        client = ssl.create_default_context(cafile=str(pair[0]))  # self-signed: it is its own CA
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="localhost")
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"ok\n")
        with pytest.raises(ConnectionError):  # plain HTTP on the TLS port gets no answer
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            if not await reader.read():
                raise ConnectionError("closed without an answer")
    finally:
        await router.close()
        server.close()
