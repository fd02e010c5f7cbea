"""Route ports are the user's: written per environment, else from the route's names, never from
the order of a list; --validate names the process holding a port and warns about the ephemeral
range; the old list-order rules are refused with the ports they gave."""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

from safeship.cli import environment_manager
from safeship.config.ports import route_port_from_names
from safeship.environments.ports import ephemeral_range

SERVICE = """
services:
  user-service:
    replicas: 1
    command: ["python", "-m", "examples.user_service", "--port", "{{port}}", "--version", "{{version}}"]
{extra}"""


def write(tmp_path: Path, environments: list[str], extra: str = "") -> Path:
    lines = ["environment_management:", "  environments:"]
    lines += [f"    - {{name: {name}, type: development, platform: local}}" for name in environments]
    config = tmp_path / "safeship.yaml"
    config.write_text("\n".join(lines) + SERVICE.format(extra=extra))
    return config


def validate(config: Path, environment: str, capsys) -> tuple[int, str, str]:
    try:
        code = environment_manager.main(["--validate", "--environment", environment, "--config", str(config)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def port_line(out: str) -> str:
    return next(line for line in out.splitlines() if "user-service port:" in line)


def test_adding_an_environment_before_another_does_not_move_its_port(tmp_path: Path, capsys) -> None:
    before = tmp_path / "before"
    after = tmp_path / "after"
    before.mkdir()
    after.mkdir()
    _, out_before, _ = validate(write(before, ["staging", "production"]), "production", capsys)
    _, out_after, _ = validate(write(after, ["development", "qa", "staging", "production"]), "production", capsys)
    port = route_port_from_names("user-service", "production")
    assert f"127.0.0.1:{port} (from the names user-service/production" in port_line(out_before)
    assert f"127.0.0.1:{port} " in port_line(out_after)
    assert 20000 <= port <= 31999


def test_a_written_port_is_the_port(tmp_path: Path, capsys) -> None:
    config = write(tmp_path, ["staging", "production"], "    ports: {production: 21234}\n")
    _, out, _ = validate(config, "production", capsys)
    assert "127.0.0.1:21234 (services.user-service.ports.production)" in port_line(out)


def test_router_port_is_refused_with_the_ports_it_gave(tmp_path: Path, capsys) -> None:
    config = write(tmp_path, ["development", "staging", "production"], "    router_port: 18080\n")
    code, out, err = validate(config, "production", capsys)
    assert code == 2 and out == ""
    assert "services.user-service.router_port" in err
    assert "ports: {development: 18080, staging: 18180, production: 18280}" in err
    assert len(err.strip().splitlines()) == 1


def test_a_port_for_an_unknown_environment_is_refused(tmp_path: Path, capsys) -> None:
    config = write(tmp_path, ["production"], "    ports: {prodution: 21000}\n")
    code, _, err = validate(config, "production", capsys)
    assert code == 2
    assert "services.user-service.ports.prodution" in err and "'prodution'" in err


def test_two_routes_on_one_port_are_refused(tmp_path: Path, capsys) -> None:
    config = write(tmp_path, ["staging", "production"], "    ports: {staging: 21000, production: 21000}\n")
    code, _, err = validate(config, "production", capsys)
    assert code == 2 and "would listen on port 21000" in err


def test_two_names_hashed_to_one_port_are_refused(tmp_path: Path, capsys) -> None:
    seen: dict[int, str] = {}
    for n in itertools.count():
        port = route_port_from_names("user-service", f"env-{n}")
        if port in seen:
            first, second = seen[port], f"env-{n}"
            break
        seen[port] = f"env-{n}"
    code, _, err = validate(write(tmp_path, [first, second]), first, capsys)
    assert code == 2 and f"would listen on port {port}" in err and "give one of them another port" in err


def test_validate_names_the_process_holding_the_port(tmp_path: Path, capsys) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config = write(tmp_path, ["production"], f"    ports: {{production: {port}}}\n")
        code, out, _ = validate(config, "production", capsys)
    assert code == 1
    line = port_line(out)
    assert line.startswith("FAIL") and f"held by PID {os.getpid()}" in line


def test_validate_warns_about_a_port_in_the_ephemeral_range(tmp_path: Path, capsys) -> None:
    low, high = ephemeral_range()
    with socket.socket() as probe:  # a free port inside the range, found by asking the kernel for one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert low <= port <= high
    config = write(tmp_path, ["production"], f"    ports: {{production: {port}}}\n")
    code, out, _ = validate(config, "production", capsys)
    line = port_line(out)
    assert line.startswith("warn") and f"inside the ephemeral port range {low}-{high}" in line
    assert code == 0
    _, out, _ = validate(write(tmp_path, ["production"], "    ports: {production: 21000}\n"), "production", capsys)
    assert "ephemeral" not in port_line(out)
