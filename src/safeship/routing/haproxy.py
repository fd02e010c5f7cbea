"""HAProxy as a router, driven through its Runtime API (`router: haproxy` in an environment).

What safeship writes and runs (all under `<state_dir>/haproxy/`):

- `haproxy.cfg`: per route (service in an environment) one frontend bound on 127.0.0.1:<port> and
  one backend, `balance roundrobin`, `retries <hold>` with `retry-on conn-failure` and `option
  redispatch 1` (each retry on another server), a `backup` gap server (the hold, below), HTTP health checks on
  the service's readiness path (`option httpchk GET <path>`, `default-server check inter ...
  fall ... rise ...`), a per-request log line sent to `log.sock` in the format `LOG_FORMAT` (a
  Unix datagram socket that the log reader binds; unbound, HAProxy drops the lines), and the
  admin socket `admin.sock` (`level admin`).
- HAProxy runs in master-worker mode (`haproxy -W -D -p haproxy.pid -S master.sock -f
  haproxy.cfg`). Why: the master's PID stays the same across reloads, so the PID file names the
  same process for as long as HAProxy serves, and the master hands the listening sockets to the
  new worker, so a reload refuses no connection. A restarted controller finds the master by
  that PID file (checked against /proc) and reuses it instead of starting a second one.
- A route with TLS (`services.<name>.tls.<environment>`) binds `ssl crt tls/<backend>.pem`: its
  certificate chain and key, joined into one file (mode 0600) as HAProxy reads them. While the
  controller runs, a watcher looks at the user's two files every `CERT_WATCH_S` seconds; when they
  changed and load as a pair, it rewrites that PEM and hands it to HAProxy through the Runtime API
  (`set ssl cert`, `commit ssl cert`): the next handshake gets the new certificate, and no
  connection is closed or refused (no reload happens). With `redirect_http`, a second frontend on
  that port answers plain HTTP with a redirect to the same host and path over https (301 for GET
  and HEAD, 308 otherwise; 400 without a Host header). Requests on a TLS route reach the servers
  with `X-Forwarded-Proto: https` (replacing any the client sent).
- A new or removed route rewrites the config and reloads through the master CLI (`reload` on
  `master.sock`); the servers known at that moment are written into the new config with their
  weights. Instances that come and go between reloads are dynamic servers (`add server`, `enable
  server`, `enable health`; `set server ... state drain`, then `maint` and `del server`).

Weights: a version's percentage is split evenly over its ready servers, and the per-server values
are scaled so that the largest is 256 (HAProxy's maximum, for the finest resolution), rounded to
the nearest integer; a version above 0% never rounds below 1 per server, and a version at 0% gets
weight 0 on all its servers. Weights that rise are set before weights that fall, so a switch never
passes through a moment where every server has weight 0.

The hold (the recreate gap): every backend ends with `server safeship_gap 127.0.0.1:1 backup
no-check`. A backup server takes requests only while no real server can (none is left, or all have
weight 0); its connections are refused, and HAProxy retries a refused connection after 1 s,
redispatching each time, so a request in the gap waits until a real server has weight again, for at
most `retries` = recreate.max_wait in seconds (then HAProxy answers 503: unrouted). `hold()` only
checks the route: the hold is always there and costs nothing while real servers serve.

Counters (`show stat`, server rows): requests = `stot`, errors = `hrsp_5xx`, connect_failures =
`econ` + `eresp` (no connection, or no response from the server; a request HAProxy then retried
elsewhere still counts once against the version that failed it). `wretr` and `scur` are read
(`scur` for draining) but not counted. HAProxy's counters restart at 0 on a reload and vanish
with a deleted server, so each server's last values are folded into a per-version offset right
before either happens, and what `counters` returns is also never below what it returned before.
Latency buckets stay empty here: `show stat` has averages only; the log reader builds them.

What else it keeps: `routes.json` (routes, ports, servers with their versions and weights, the
exporter's port), so that a restarted controller knows the servers of the HAProxy it reuses; an
HAProxy found gone (killed) is started again from that picture at the next Runtime API call. A
frontend on a loopback port of its own serves HAProxy's Prometheus exporter
(`exporter_address(state_dir)`). Health checks may take the readiness probe's timeout (`timeout
check`), so that a slow answer on a busy host does not mark the last server DOWN.

For the log reader: `log_socket_path(state_dir)` (a short folder in /tmp replaces the state dir's
when its path is too long for a Unix socket), `backend_name(route)` / `route_of_backend(name)`, and
`HAProxyRouter.version_of(route, server_name)`, which still answers for deleted servers.

`close()` only forgets the connection state: HAProxy keeps serving, like the router daemon. Stop it
with `stop_haproxy(state_dir)` (by its recorded PID, checked against /proc).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from safeship.config.models import SafeshipConfig
from safeship.errors import InputError, PermanentError, TemporaryError
from safeship.routing.base import (
    Backend,
    RouteKey,
    Router,
    RouterAbilities,
    RouterSetup,
    RoutesSnapshot,
    TrafficCounters,
)
from safeship.routing.private import check_private
from safeship.routing.tls import Stamp, TlsListener, combined_pem, file_stamp, tls_for

log = logging.getLogger(__name__)

LOG_FORMAT = "safeship %ci %b %s %ST %Tr %Ta %TR %Tw"  # the log reader parses exactly this
INSTALL_HINT = "install it with `apt-get install --no-install-recommends haproxy` (Debian/Ubuntu) or your OS's package"
MAX_WEIGHT = 256
RETRY_DELAY_S = 1.0
CLI_TIMEOUT_S = 5.0
START_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 10.0
DRAIN_POLL_S = 0.05
_MAX_UNIX_PATH = 100
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.:-]")
DEFAULT_READY_PATH = "/health/ready"
DEFAULT_CHECK_TIMEOUT_S = 2.0
# The hold for the recreate gap: a backup server that no one serves (connections to port 1 of the
# loopback are refused: binding it needs root, and tcpmux runs nowhere) and is never checked, so it
# stays "up". HAProxy sends a request there only while no real server can take it; the refusal is
# retried after HAProxy's turn-around delay (1 s: the lesser of 1 s and `timeout connect`), each
# time redispatched, until a real server has weight again or the retries run out (then 503).
GAP_SERVER = "safeship_gap"
GAP_ADDRESS = "127.0.0.1:1"
DEFAULT_HOLD_S = 30.0
CERT_WATCH_S = 1.0  # how often the certificate files of TLS routes are looked at


# ---------------------------------------------------------------- paths and the binary


def haproxy_dir(state_dir: Path) -> Path:
    """Where the config, PID file and records live: `<state_dir>/haproxy`."""
    return state_dir / "haproxy"


def socket_dir(state_dir: Path) -> Path:
    """Where the sockets live: `<state_dir>/haproxy`, or a short private folder in /tmp when that
    path is too long for a Unix socket."""
    preferred = haproxy_dir(state_dir)
    if len(str(preferred / "master.sock")) < _MAX_UNIX_PATH:  # the longest of the three names
        return preferred
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return Path("/tmp") / f"safeship-haproxy-{digest}"


def log_socket_path(state_dir: Path) -> Path:
    """The Unix datagram socket HAProxy sends its per-request lines to (the log reader binds it)."""
    return socket_dir(state_dir) / "log.sock"


def admin_socket_path(state_dir: Path) -> Path:
    return socket_dir(state_dir) / "admin.sock"


def haproxy_binary() -> str | None:
    """The `haproxy` program on PATH (or in /usr/sbin, where Debian puts it), or None."""
    found = shutil.which("haproxy")
    if found is None and Path("/usr/sbin/haproxy").is_file():
        found = "/usr/sbin/haproxy"
    return found


def check_binary() -> tuple[bool, str]:
    """(found, a sentence saying what was found or how to install it), for --prepare/--validate."""
    binary = haproxy_binary()
    if binary is None:
        return False, f"haproxy not found on PATH; {INSTALL_HINT}"
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{binary} cannot run ({exc}); {INSTALL_HINT}"
    first = out.splitlines()[0] if out else "version unknown"
    return True, f"{binary}: {first}"


PID_READS = 10  # an empty PID file (a reload rewriting it) is read again this many times ...
PID_READ_GAP_S = 0.05  # ... this far apart


def haproxy_pid(state_dir: Path) -> int | None:
    """The PID of the HAProxy master serving `state_dir`, if recorded and alive as haproxy.

    A reload rewrites the PID file in place, so it can be read empty for a moment: an empty or
    partial read is read again a few times (at most PID_READS, PID_READ_GAP_S apart)."""
    pid_file = haproxy_dir(state_dir) / "haproxy.pid"
    for attempt in range(PID_READS):
        try:
            pid = int(pid_file.read_text().split()[0])
            break
        except (ValueError, IndexError):
            if attempt + 1 < PID_READS:
                time.sleep(PID_READ_GAP_S)
        except OSError:
            return None
    else:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    ours = str(haproxy_dir(state_dir) / "haproxy.cfg").encode()
    return pid if b"haproxy" in cmdline and ours in cmdline else None


def stop_haproxy(state_dir: Path, *, timeout: float = 10.0) -> bool:
    """Stop the HAProxy of `state_dir` (SIGUSR1: soft stop, then SIGTERM, then SIGKILL, by its
    recorded PID only); True if one ran."""
    pid = haproxy_pid(state_dir)
    if pid is None:
        return False
    for sig, wait in ((signal.SIGUSR1, timeout / 2), (signal.SIGTERM, timeout / 2), (signal.SIGKILL, 1.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and haproxy_pid(state_dir) == pid:
            time.sleep(0.05)
        if haproxy_pid(state_dir) != pid:
            return True
    return True


def exporter_address(state_dir: Path, environment: object = None) -> str | None:
    """`127.0.0.1:<port>` of HAProxy's Prometheus exporter (`/metrics`) for `state_dir`, once the
    router has started HAProxy there; None before. One HAProxy serves every environment."""
    try:
        port = int(json.loads((haproxy_dir(state_dir) / "routes.json").read_text()).get("exporter_port", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return f"127.0.0.1:{port}" if 0 < port < 65536 else None


def server_name(instance_id: str) -> str:
    """A valid HAProxy server name from an instance id (`env/service/<version>-<index>`): its last
    part, with characters HAProxy refuses replaced by `_`."""
    tail = instance_id.rsplit("/", 1)[-1] or "server"
    return _NAME_BAD.sub("_", tail)[:100]


def backend_name(route: RouteKey) -> str:
    """The backend (and frontend) name of a route: `<environment>__<service>` (both are DNS
    labels, which hold no `_`, so the name is unambiguous)."""
    return f"{route.environment}__{route.service}"


def route_of_backend(name: str) -> RouteKey | None:
    environment, sep, service = name.partition("__")
    return RouteKey(service, environment) if sep and environment and service else None


def _address(host: str) -> str:
    """A listen address as HAProxy's `bind` reads it before `:port` (IPv6 literals with `ipv6@`)."""
    return f"ipv6@{host}" if ":" in host else host


def _free_port(host: str, port: int) -> int:
    """`port` if it can be bound on `host` (0: any free one); OSError when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------- weights


def server_weights(percent: Mapping[str, int], servers: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Per-server weights (0..256) from version percentages: each version's share split evenly
    over its servers, scaled so the largest is 256, rounded to nearest, at least 1 for a version
    above 0%, and 0 for every server of a version at 0% (or not named)."""
    raw: dict[str, float] = {}
    for version, names in servers.items():
        share = max(0, percent.get(version, 0))
        for name in names:
            raw[name] = share / len(names) if share > 0 else 0.0
    top = max(raw.values(), default=0.0)
    if top <= 0:
        return {name: 0 for name in raw}
    return {name: (max(1, round(value * MAX_WEIGHT / top)) if value > 0 else 0) for name, value in raw.items()}


# ---------------------------------------------------------------- state


@dataclass
class _Server:
    name: str
    version: str
    instance_id: str
    host: str
    port: int
    weight: int = 0
    draining: bool = False


@dataclass
class _Route:
    port: int
    host: str = "127.0.0.1"
    servers: dict[str, _Server] = field(default_factory=dict)  # by server name
    weights: dict[str, int] = field(default_factory=dict)  # percent per version, as last asked
    tls: TlsListener | None = None


@dataclass
class _Offsets:
    """Per route: what servers counted before a reload or their deletion, per version."""

    retired: dict[str, TrafficCounters] = field(default_factory=dict)
    unrouted_retired: int = 0
    deleted_5xx: int = 0  # 5xx of servers deleted since the last reload (still in the BACKEND row)
    returned: dict[str, TrafficCounters] = field(default_factory=dict)
    unrouted_returned: int = 0


class HAProxyRouter:
    """A `Router` over a real HAProxy, driven through its admin socket. See the module text."""

    abilities: RouterAbilities = RouterAbilities(hold=True, listens=True)
    per_environment: ClassVar[bool] = False  # one HAProxy per state directory serves every environment
    # The traffic source an environment gets with this router unless it names one: show stat's
    # counts with latency from HAProxy's per-request log (show stat has averages only).
    traffic: ClassVar[str] = "haproxy"

    @classmethod
    def create(cls, setup: RouterSetup) -> Router:
        return cls(setup.state_dir, config=setup.config, close_grace=setup.close_grace)

    def __init__(self, state_dir: Path, *, config: SafeshipConfig | None = None, close_grace: float = 2.0) -> None:
        self.state_dir = state_dir
        self.dir = haproxy_dir(state_dir)
        self.sockets = socket_dir(state_dir)
        self.config = config
        self.close_grace = close_grace
        self._routes: dict[RouteKey, _Route] = {}
        self._offsets: dict[RouteKey, _Offsets] = {}
        self._names: dict[RouteKey, dict[str, str]] = {}  # server name -> version, kept after deletion
        self._lock = asyncio.Lock()
        self._opened = False
        self.started = False  # True when this object started HAProxy (False: it reused one)
        self.restarts = 0  # times it started HAProxy again after finding it gone
        self.exporter_port = 0  # where HAProxy's Prometheus exporter listens (picked at first start)
        self._stamps: dict[RouteKey, Stamp] = {}  # the certificate files' stamps HAProxy serves
        self._refused: dict[RouteKey, Stamp] = {}  # stamps of pairs that did not load (logged once)
        self._watcher: asyncio.Task[None] | None = None
        self.certificate_updates = 0  # certificates handed to HAProxy through the Runtime API

    # ------------------------------------------------------------ files

    @property
    def config_path(self) -> Path:
        return self.dir / "haproxy.cfg"

    @property
    def admin_socket(self) -> Path:
        return self.sockets / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.sockets / "master.sock"

    def pem_path(self, route: RouteKey) -> Path:
        """The certificate chain and key of a TLS route, joined as HAProxy reads them."""
        return self.dir / "tls" / f"{backend_name(route)}.pem"

    def _write_pems(self) -> None:
        """Join every TLS route's pair into its PEM file (0600) and note the files' stamps; a pair
        that does not load is a PermanentError naming its files (the config would be refused)."""
        for key, route in self._routes.items():
            if route.tls is None:
                continue
            try:
                stamp = file_stamp(route.tls)
                _write_private(self.pem_path(key), combined_pem(route.tls))
            except (InputError, OSError) as exc:
                raise PermanentError(f"router haproxy: route {key}: {exc}") from exc
            self._stamps[key] = stamp

    def _load_state(self) -> None:
        try:
            raw = json.loads((self.dir / "routes.json").read_text())
        except (OSError, ValueError):
            return
        try:
            self.exporter_port = int(raw.get("exporter_port", 0))
            for row in raw.get("routes", []):
                route = _Route(port=int(row["port"]), host=str(row.get("host", "127.0.0.1")),
                               weights={str(k): int(v) for k, v in row.get("weights", {}).items()},
                               tls=TlsListener.from_json(row.get("tls")))
                for s in row.get("servers", []):
                    server = _Server(str(s["name"]), str(s["version"]), str(s["instance_id"]), str(s["host"]),
                                     int(s["port"]), int(s.get("weight", 0)))
                    route.servers[server.name] = server
                    self._names.setdefault(RouteKey(str(row["service"]), str(row["environment"])), {})[
                        server.name] = server.version
                self._routes[RouteKey(str(row["service"]), str(row["environment"]))] = route
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.dir / "routes.json", exc)
            self._routes.clear()

    def _save_state(self) -> None:
        rows: list[dict[str, Any]] = []
        for key, route in self._routes.items():
            rows.append({
                "service": key.service, "environment": key.environment, "host": route.host, "port": route.port,
                "weights": route.weights, "tls": route.tls.to_json() if route.tls is not None else None,
                "servers": [{"name": s.name, "version": s.version, "instance_id": s.instance_id, "host": s.host,
                             "port": s.port, "weight": s.weight} for s in route.servers.values() if not s.draining],
            })
        target = self.dir / "routes.json"
        temporary = target.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps({"exporter_port": self.exporter_port, "routes": rows}, indent=1))
            temporary.replace(target)
        except OSError as exc:
            raise TemporaryError(f"cannot write {target}: {exc}", delay=RETRY_DELAY_S) from exc

    def _ready_probe(self, route: RouteKey) -> tuple[str | None, float, int, int]:
        """(HTTP path or None for a TCP check, interval s, fall, rise) from the service's readiness."""
        if self.config is None or route.service not in self.config.services:
            return DEFAULT_READY_PATH, 1.0, 2, 1
        probe = self.config.health_checks_for(route.service).readiness
        path = probe.path if probe.type == "http" else None
        return path, probe.interval, probe.failure_threshold, probe.success_threshold

    def _check_timeout(self, route: RouteKey) -> float:
        if self.config is None or route.service not in self.config.services:
            return DEFAULT_CHECK_TIMEOUT_S
        return float(self.config.health_checks_for(route.service).readiness.timeout)

    def render(self) -> str:
        """The whole HAProxy config for the routes known now."""
        lines = [
            "# written by safeship; rewritten on every route change",
            "global",
            f"    stats socket {self.admin_socket} mode 600 level admin expose-fd listeners",
            "    stats timeout 30s",
            "    hard-stop-after 30s",
            "",
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 60s",
            "    timeout server 60s",
            "    timeout http-keep-alive 10s",
            "    timeout queue 5s",
            "",
        ]
        for key in sorted(self._routes, key=backend_name):
            route = self._routes[key]
            name = backend_name(key)
            path, interval, fall, rise = self._ready_probe(key)
            inter_ms = max(100, round(interval * 1000))
            tls = f" ssl crt {self.pem_path(key)} alpn http/1.1" if route.tls is not None else ""
            if route.tls is not None and route.tls.redirect_http is not None:
                # Host without its port (regsub), then this route's https port, then path and query.
                location = f"https://%[req.hdr(host),regsub(:[0-9]+$,)]:{route.port}%[pathq]"
                lines += [
                    f"frontend {name}_https_redirect",
                    f"    bind {_address(route.host)}:{route.tls.redirect_http}",
                    "    http-request deny deny_status 400 unless { req.hdr(host) -m found }",
                    f"    http-request redirect location {location} code 301 if {{ method GET HEAD }}",
                    f"    http-request redirect location {location} code 308",
                    "",
                ]
            lines += [
                f"frontend {name}",
                f"    bind {_address(route.host)}:{route.port}{tls}",
                f"    log unix@{log_socket_path(self.state_dir)} len 2048 format raw local0",
                f'    log-format "{LOG_FORMAT}"',
                *(["    http-request set-header X-Forwarded-Proto https"] if route.tls is not None else []),
                f"    default_backend {name}",
                "",
                f"backend {name}",
                "    balance roundrobin",
                # The hold (see GAP_SERVER): a refused connection is tried again about once a second,
                # on another server each time, for as long as the recreate gap may last.
                f"    retries {self.hold_retries(key)}",
                "    retry-on conn-failure",
                "    option redispatch 1",
            ]
            if path is not None:
                lines.append(f"    option httpchk GET {path}")
            # A check may take the probe's own timeout (the controller's prober allows as much), so
            # that a busy host's slow answer does not mark the last server DOWN and cost requests.
            lines.append(f"    timeout check {max(100, round(self._check_timeout(key) * 1000))}")
            lines.append(f"    default-server check inter {inter_ms} fall {fall} rise {rise}")
            for server in route.servers.values():
                if not server.draining:
                    lines.append(f"    server {server.name} {server.host}:{server.port} weight {server.weight}")
            lines.append(f"    server {GAP_SERVER} {GAP_ADDRESS} backup no-check")
            lines.append("")
        lines += [  # HAProxy's own Prometheus exporter, for a user's Prometheus (see `exporter_address`)
            "frontend safeship_metrics",
            f"    bind 127.0.0.1:{self.exporter_port}",
            "    http-request use-service prometheus-exporter if { path /metrics }",
            "    http-request deny",
            "",
        ]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------ the process

    async def open(self) -> None:
        """Start HAProxy for this state dir, or reuse the one a previous controller started."""
        async with self._lock:
            if self._opened and haproxy_pid(self.state_dir) is not None:
                return
            binary = haproxy_binary()
            if binary is None:
                raise PermanentError(f"router haproxy: the haproxy program is not installed; {INSTALL_HINT}")
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                self.sockets.mkdir(parents=True, exist_ok=True, mode=0o700)
                check_private(self.sockets, "router haproxy: the socket folder", self.state_dir)
            except OSError as exc:
                raise PermanentError(f"router haproxy: cannot create {self.dir}: {exc}") from exc
            if not self._routes:
                self._load_state()
            if haproxy_pid(self.state_dir) is None:
                if not self.exporter_port:
                    self.exporter_port = _free_port("127.0.0.1", 0)
                await asyncio.to_thread(self._start, binary)
                self._save_state()
                self.started = True
            self._opened = True

    def _start(self, binary: str) -> None:
        self._write_config(binary)
        with contextlib.suppress(FileNotFoundError):
            self.master_socket.unlink()
        command = [binary, "-W", "-D", "-p", str(self.dir / "haproxy.pid"), "-S", f"{self.master_socket},mode,600",
                   "-f", str(self.config_path)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        except (OSError, subprocess.SubprocessError) as exc:
            raise TemporaryError(f"router haproxy: cannot start {binary}: {exc}", delay=RETRY_DELAY_S) from exc
        if done.returncode != 0:
            raise TemporaryError(f"router haproxy: haproxy exited {done.returncode}: "
                                 f"{_last_line(done.stderr)}", delay=RETRY_DELAY_S)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if haproxy_pid(self.state_dir) is not None and self._answers():
                log.info("started haproxy (pid %s) for %s", haproxy_pid(self.state_dir), self.state_dir)
                return
            time.sleep(0.05)
        raise TemporaryError(f"router haproxy: haproxy did not answer on {self.admin_socket}", delay=RETRY_DELAY_S)

    def _answers(self) -> bool:
        try:
            return "Pid:" in _ask(self.admin_socket, "show info")
        except OSError:
            return False

    def _write_config(self, binary: str) -> None:
        self._write_pems()
        text = self.render()
        temporary = self.config_path.with_suffix(".new")
        try:
            temporary.write_text(text)
        except OSError as exc:
            raise TemporaryError(f"router haproxy: cannot write {temporary}: {exc}", delay=RETRY_DELAY_S) from exc
        checked = subprocess.run([binary, "-c", "-q", "-f", str(temporary)], capture_output=True, text=True,
                                 timeout=30, check=False)
        if checked.returncode != 0:
            raise PermanentError(f"router haproxy: the config safeship wrote is refused: {_last_line(checked.stderr)}")
        temporary.replace(self.config_path)

    def _reload(self) -> None:
        """Rewrite the config and reload through the master CLI; returns once a new worker answers."""
        binary = haproxy_binary()
        if binary is None:
            raise PermanentError(f"router haproxy: the haproxy program is not installed; {INSTALL_HINT}")
        if haproxy_pid(self.state_dir) is None:
            self._start(binary)
            return
        self._write_config(binary)
        before = self._worker_pid()
        try:
            _ask(self.master_socket, "reload", wait_close=False)
        except OSError as exc:
            raise TemporaryError(f"router haproxy: reload failed: {exc}", delay=RETRY_DELAY_S) from exc
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            now = self._worker_pid()
            if now is not None and now != before:
                return
            time.sleep(0.05)
        raise TemporaryError(f"router haproxy: no new worker answered within {RELOAD_TIMEOUT_S:g} s of a reload",
                             delay=RETRY_DELAY_S)

    def _worker_pid(self) -> int | None:
        try:
            for line in _ask(self.admin_socket, "show info").splitlines():
                if line.startswith("Pid:"):
                    return int(line.split(":", 1)[1])
        except (OSError, ValueError):
            return None
        return None

    def _cli(self, command: str) -> str:
        """One Runtime API command on the admin socket; its answer. Transport failures are temporary."""
        try:
            return _ask(self.admin_socket, command)
        except OSError as exc:
            failure = exc
        binary = haproxy_binary()
        if self._opened and binary is not None and haproxy_pid(self.state_dir) is None:
            # HAProxy went away (killed, host reboot): start it again from the routing picture
            # kept here, which the config carries (routes, servers, weights), and ask once more.
            log.warning("haproxy for %s is gone; starting it again", self.state_dir)
            self._start(binary)
            self.restarts += 1
            try:
                return _ask(self.admin_socket, command)
            except OSError as exc:
                failure = exc
        raise TemporaryError(f"router haproxy: {' '.join(command.split()[:2])}: {failure}",
                             delay=RETRY_DELAY_S) from failure

    def _cli_ok(self, command: str) -> None:
        answer = self._cli(command).strip()
        if answer and not answer.startswith(("New server registered", "Server deleted")):
            raise TemporaryError(f"router haproxy: {command!r} answered {answer.splitlines()[0]!r}",
                                 delay=RETRY_DELAY_S)

    # ------------------------------------------------------------ routes

    async def ensure_route(self, route: RouteKey, *, port: int | None = None, host: str = "127.0.0.1") -> int | None:
        await self.open()
        async with self._lock:
            known = self._routes.get(route)
            tls = tls_for(self.config, route) if self.config is not None else None
            if known is not None:
                wanted_host = host if port is not None else known.host
                wanted_tls = tls if self.config is not None else known.tls
                if (known.host, known.tls) != (wanted_host, wanted_tls):  # the config changed since
                    previous = known.host, known.tls
                    known.host, known.tls = wanted_host, wanted_tls
                    try:
                        await asyncio.to_thread(self._fold_all_and_reload)
                    except Exception:
                        known.host, known.tls = previous
                        raise
                    self._save_state()
                self._watch_certificates()
                return known.port
            if port is None:
                return None
            try:
                chosen = _free_port(host, port)
            except OSError as exc:
                raise TemporaryError(f"router haproxy: {host}:{port} for {route} cannot be bound: {exc}",
                                     delay=RETRY_DELAY_S) from exc
            self._routes[route] = _Route(port=chosen, host=host, tls=tls)
            try:
                await asyncio.to_thread(self._fold_all_and_reload)
            except Exception:
                del self._routes[route]
                raise
            self._save_state()
            log.info("route %s: haproxy listens on %s:%d%s", route, host, chosen, " (TLS)" if tls else "")
            self._watch_certificates()
            return chosen

    async def remove_route(self, route: RouteKey) -> None:
        async with self._lock:
            if route not in self._routes:
                return
            del self._routes[route]
            self._offsets.pop(route, None)
            await asyncio.to_thread(self._fold_all_and_reload)
            self._save_state()
            self._stamps.pop(route, None)
            self._refused.pop(route, None)
            with contextlib.suppress(FileNotFoundError):
                self.pem_path(route).unlink()  # the key's copy goes with the route

    def _fold_all_and_reload(self) -> None:
        """Fold every server's counters into its version's offset (a reload zeroes them), reload."""
        saved = {key: _Offsets(dict(o.retired), o.unrouted_retired, o.deleted_5xx, o.returned, o.unrouted_returned)
                 for key, o in self._offsets.items()}
        if haproxy_pid(self.state_dir) is not None:
            for key in list(self._routes):
                self._fold_route(key)
        try:
            self._reload()
        except Exception:
            self._offsets.update(saved)  # the counts were not zeroed after all
            raise

    # ------------------------------------------------------------ servers

    async def set_backends(self, route: RouteKey, version: str, backends: Sequence[Backend]) -> None:
        async with self._lock:
            known = self._route(route)
            name_b = backend_name(route)
            wanted = {b.instance_id: b for b in backends}
            mine = {s.instance_id: s for s in known.servers.values() if s.version == version and not s.draining}
            for instance_id, backend in wanted.items():
                current = mine.get(instance_id)
                if current is not None and (current.host, current.port) == (backend.host, backend.port):
                    continue
                if current is not None:  # same instance, new address: replace it
                    await self._drain_and_delete(route, [current])
                await asyncio.to_thread(self._add_server, route, known, version, backend)
            leaving = [s for iid, s in mine.items() if iid not in wanted]
            await asyncio.to_thread(self._apply_weights, route, known)
            if leaving or any(s.draining for s in known.servers.values()):
                await self._drain_and_delete(route, leaving)
            log.debug("route %s (%s): %s has %d servers", route, name_b, version, len(wanted))
            self._save_state()

    def _add_server(self, route: RouteKey, known: _Route, version: str, backend: Backend) -> None:
        base = server_name(backend.instance_id)
        name, n = base, 1
        while name in known.servers or name == GAP_SERVER:
            n += 1
            name = f"{base}-{n}"
        _, interval, fall, rise = self._ready_probe(route)
        inter_ms = max(100, round(interval * 1000))
        target = f"{backend_name(route)}/{name}"
        self._cli_ok(f"add server {target} {backend.host}:{backend.port} weight 0 check inter {inter_ms} "
                     f"fall {fall} rise {rise}")
        self._cli_ok(f"enable server {target}")
        self._cli_ok(f"enable health {target}")
        known.servers[name] = _Server(name, version, backend.instance_id, backend.host, backend.port)
        self._names.setdefault(route, {})[name] = version
        self._offsets.setdefault(route, _Offsets())

    async def _drain_and_delete(self, route: RouteKey, leaving: Sequence[_Server]) -> None:
        """Drain, wait (bounded by the close grace) for in-flight requests, then delete. A server
        that still has connections after the grace is deleted at the next call instead."""
        known = self._route(route)
        b = backend_name(route)
        for server in leaving:
            await asyncio.to_thread(self._cli_ok, f"set server {b}/{server.name} state drain")
            server.draining = True
        deadline = time.monotonic() + max(0.5, self.close_grace)
        while time.monotonic() < deadline:
            busy = await asyncio.to_thread(self._busy, route, [s.name for s in leaving])
            if not busy:
                break
            await asyncio.sleep(DRAIN_POLL_S)
        for server in list(known.servers.values()):
            if server.draining:
                await asyncio.to_thread(self._delete, route, known, server)

    def _busy(self, route: RouteKey, names: Sequence[str]) -> bool:
        rows = self._stat_rows(route)
        return any(int(rows[n].get("scur") or 0) > 0 for n in names if n in rows)

    def _delete(self, route: RouteKey, known: _Route, server: _Server) -> None:
        b = backend_name(route)
        rows = self._stat_rows(route)
        self._cli_ok(f"set server {b}/{server.name} state maint")
        answer = self._cli(f"del server {b}/{server.name}").strip()
        if answer.startswith("Server deleted") or "No such server" in answer:
            offsets = self._offsets.setdefault(route, _Offsets())
            row = rows.get(server.name)
            if row is not None:
                kept = offsets.retired.setdefault(server.version, TrafficCounters())
                offsets.retired[server.version] = kept.plus(_counters(row))
                offsets.deleted_5xx += _int(row, "hrsp_5xx")
            del known.servers[server.name]
        else:
            log.info("route %s: %s not deleted yet: %s", route, server.name, answer.splitlines()[0] if answer else "")

    def version_of(self, route: RouteKey, name: str) -> str | None:
        """The version a server name of `route` belongs to (for the log reader), or None."""
        known = self._routes.get(route)
        server = known.servers.get(name) if known is not None else None
        if server is not None:
            return server.version
        return self._names.get(route, {}).get(name)

    # ------------------------------------------------------------ weights

    async def set_weights(self, route: RouteKey, weights: Mapping[str, int]) -> None:
        for version, value in weights.items():
            if not 0 <= int(value) <= 100:
                raise InputError(f"weights: {version}: {value} is not a percentage between 0 and 100")
        async with self._lock:
            known = self._route(route)
            known.weights = {str(v): int(p) for v, p in weights.items()}
            await asyncio.to_thread(self._apply_weights, route, known)
            self._save_state()

    def _apply_weights(self, route: RouteKey, known: _Route) -> None:
        by_version: dict[str, list[str]] = {}
        for server in known.servers.values():
            if not server.draining:
                by_version.setdefault(server.version, []).append(server.name)
        target = server_weights(known.weights, by_version)
        b = backend_name(route)
        # Rises first, then falls: no instant where every server is at 0.
        order = sorted(target, key=lambda n: target[n] <= known.servers[n].weight)
        for name in order:
            self._cli_ok(f"set server {b}/{name} weight {target[name]}")
            known.servers[name].weight = target[name]

    def hold_retries(self, route: RouteKey) -> int:
        """`retries` of the route's backend: one a second for the recreate gap's `max_wait`
        (intelligent_deployment.strategies.recreate.max_wait), at least 3."""
        wait = DEFAULT_HOLD_S
        if self.config is not None:
            wait = float(self.config.intelligent_deployment.strategies.recreate.max_wait)
        return max(3, math.ceil(wait))

    async def hold(self, route: RouteKey, max_wait: float) -> None:
        """HAProxy holds all the time (the gap server, GAP_SERVER): a request that finds no server
        with weight waits, retried once a second, for up to `hold_retries` seconds. This checks that
        the route is there and says when `max_wait` is longer than the config lets HAProxy wait."""
        if max_wait <= 0:
            raise InputError(f"router haproxy: hold max_wait must be > 0, got {max_wait}")
        self._route(route)
        if max_wait > self.hold_retries(route):
            log.warning("route %s: HAProxy holds requests for %d s, less than the %g s asked", route,
                        self.hold_retries(route), max_wait)

    # ------------------------------------------------------------ counters

    def _stat_rows(self, route: RouteKey) -> dict[str, dict[str, str]]:
        """`show stat` rows of the route's backend, by server name (and "BACKEND")."""
        text = self._cli("show stat")
        if not text.startswith("# "):
            raise TemporaryError(f"router haproxy: show stat answered {text[:80]!r}", delay=RETRY_DELAY_S)
        reader = csv.DictReader(io.StringIO(text[2:]))
        b = backend_name(route)
        return {row["svname"]: row for row in reader if row.get("pxname") == b}

    def _fold_route(self, route: RouteKey) -> None:
        """Move the route's current HAProxy counts into its offsets (before they are zeroed)."""
        known = self._routes.get(route)
        if known is None:
            return
        try:
            rows = self._stat_rows(route)
        except TemporaryError:
            return
        offsets = self._offsets.setdefault(route, _Offsets())
        for server in known.servers.values():
            row = rows.get(server.name)
            if row is not None:
                offsets.retired[server.version] = offsets.retired.get(server.version, TrafficCounters()).plus(
                    _counters(row))
        offsets.unrouted_retired += _unrouted(rows, offsets.deleted_5xx)
        offsets.deleted_5xx = 0

    def _read(self, route: RouteKey) -> tuple[dict[str, TrafficCounters], int]:
        known = self._route(route)
        rows = self._stat_rows(route)
        offsets = self._offsets.setdefault(route, _Offsets())
        found: dict[str, TrafficCounters] = {v: c.plus(TrafficCounters()) for v, c in offsets.retired.items()}
        for server in known.servers.values():
            found.setdefault(server.version, TrafficCounters())
            row = rows.get(server.name)
            if row is not None:
                found[server.version] = found[server.version].plus(_counters(row))
        for version, counters in found.items():  # never below what was returned before
            before = offsets.returned.get(version)
            if before is not None:
                found[version] = _at_least(counters, before)
            offsets.returned[version] = found[version].plus(TrafficCounters())
        unrouted = max(offsets.unrouted_returned, offsets.unrouted_retired + _unrouted(rows, offsets.deleted_5xx))
        offsets.unrouted_returned = unrouted
        return found, unrouted

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        async with self._lock:
            found, _ = await asyncio.to_thread(self._read, route)
            return found

    async def routes_snapshot(self) -> RoutesSnapshot:
        snapshot = RoutesSnapshot()
        async with self._lock:
            for key in list(self._routes):
                found, unrouted = await asyncio.to_thread(self._read, key)
                snapshot.counters[key] = found
                snapshot.unrouted[key] = unrouted
        return snapshot

    def port(self, route: RouteKey) -> int:
        return self._route(route).port

    def _route(self, route: RouteKey) -> _Route:
        known = self._routes.get(route)
        if known is None:
            raise InputError(f"router haproxy: route {route} is not known; ensure_route it first")
        return known

    async def close(self) -> None:
        """Forget the connection; HAProxy keeps serving the routes (stop it with `stop_haproxy`)."""
        self._opened = False
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    # ------------------------------------------------------------ certificates

    def _watch_certificates(self) -> None:
        if self._watcher is None and any(r.tls is not None for r in self._routes.values()):
            self._watcher = asyncio.create_task(self._watch(), name="haproxy-certificates")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CERT_WATCH_S)
            try:
                async with self._lock:
                    await asyncio.to_thread(self.update_certificates)
            except Exception as exc:  # the next look tries again; routing goes on meanwhile
                log.warning("router haproxy: updating a certificate failed: %s", exc)

    def update_certificates(self) -> int:
        """Hand HAProxy every TLS route's pair that changed on disk since it got it (and loads as a
        pair) through the Runtime API, without a reload; returns how many it updated."""
        updated = 0
        for key, route in list(self._routes.items()):
            if route.tls is None:
                continue
            try:
                stamp = file_stamp(route.tls)
            except OSError:
                continue  # replaced by rename, caught between unlink and rename: next look
            if stamp == self._stamps.get(key) or stamp == self._refused.get(key):
                continue
            try:
                text = combined_pem(route.tls)
            except InputError as exc:
                self._refused[key] = stamp
                log.warning("router haproxy: route %s keeps the certificate it serves: %s", key, exc)
                continue
            path = self.pem_path(key)
            _write_private(path, text)  # what a reload or a restart reads
            answer = self._cli(f"set ssl cert {path} <<\n{text}")
            if "Transaction" not in answer:
                raise TemporaryError(f"router haproxy: set ssl cert {path} answered {_last_line(answer)!r}",
                                     delay=RETRY_DELAY_S)
            answer = self._cli(f"commit ssl cert {path}")
            if "Success" not in answer:
                raise TemporaryError(f"router haproxy: commit ssl cert {path} answered {_last_line(answer)!r}",
                                     delay=RETRY_DELAY_S)
            self._stamps[key] = stamp
            self._refused.pop(key, None)
            self.certificate_updates += 1
            updated += 1
            log.info("router haproxy: route %s serves the certificate in %s to new connections", key,
                     route.tls.cert_file)
        return updated


# ---------------------------------------------------------------- helpers


def _ask(path: Path, command: str, *, wait_close: bool = True) -> str:
    """Send one command to a HAProxy CLI socket and read until it closes (bounded by a timeout)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(CLI_TIMEOUT_S)
        conn.connect(str(path))
        conn.sendall(command.encode() + b"\n")
        if not wait_close:
            return ""
        chunks: list[bytes] = []
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` (mode 0600 from the start) by a rename, so a reader never sees half."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(temporary, path)


def _int(row: Mapping[str, str], key: str) -> int:
    value = row.get(key) or "0"
    try:
        return int(value)
    except ValueError:
        return 0


def _counters(row: Mapping[str, str]) -> TrafficCounters:
    return TrafficCounters(requests=_int(row, "stot"), errors=_int(row, "hrsp_5xx"),
                           connect_failures=_int(row, "econ") + _int(row, "eresp"))


def _unrouted(rows: Mapping[str, Mapping[str, str]], deleted_5xx: int = 0) -> int:
    """503s HAProxy answered itself (no server): the backend's 5xx beyond its servers' own
    (`deleted_5xx`: those of servers deleted since the last reload)."""
    backend = rows.get("BACKEND")
    if backend is None:
        return 0
    servers = sum(_int(r, "hrsp_5xx") for name, r in rows.items() if name not in ("BACKEND", "FRONTEND"))
    return max(0, _int(backend, "hrsp_5xx") - servers - deleted_5xx)


def _at_least(now: TrafficCounters, before: TrafficCounters) -> TrafficCounters:
    return TrafficCounters(
        requests=max(now.requests, before.requests), errors=max(now.errors, before.errors),
        connect_failures=max(now.connect_failures, before.connect_failures),
        latency_sum_ms=max(now.latency_sum_ms, before.latency_sum_ms),
        latency_buckets=[max(a, b) for a, b in zip(now.latency_buckets, before.latency_buckets, strict=True)],
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
