"""The HAProxy config safeship writes for TLS routes, checked by the real `haproxy -c`: the TLS
bind with the joined PEM (0600), an IPv6 listen address, and the redirect frontend."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from safeship.config.models import SafeshipConfig
from safeship.routing.base import RouteKey
from safeship.routing.haproxy import HAProxyRouter, _Route, haproxy_binary
from safeship.routing.tls import tls_for

pytestmark = pytest.mark.skipif(haproxy_binary() is None, reason="the haproxy binary is not installed")


def test_a_tls_route_on_ipv6_with_a_redirect_is_a_config_haproxy_accepts(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=60)
    os.chmod(key, 0o600)
    config = SafeshipConfig.model_validate({
        "environment_management": {"environments": [{"name": "prod", "router": "haproxy"}]},
        "services": {"web": {"listen": {"prod": "[::1]:18443"},
                             "tls": {"prod": {"cert_file": str(cert), "key_file": str(key), "redirect_http": 18080}}}},
    })
    router = HAProxyRouter(tmp_path / "state", config=config)
    router.dir.mkdir(parents=True)
    router.exporter_port = 18999  # open() would pick a free one
    route = RouteKey("web", "prod")
    router._routes[route] = _Route(port=18443, host="::1", tls=tls_for(config, route))
    router._write_pems()
    text = router.render()
    pem = router.pem_path(route)
    assert f"    bind ipv6@::1:18443 ssl crt {pem} alpn http/1.1\n" in text
    assert "frontend prod__web_https_redirect\n    bind ipv6@::1:18080\n" in text
    assert "    http-request set-header X-Forwarded-Proto https\n" in text
    assert "code 301 if { method GET HEAD }" in text and "code 308\n" in text
    assert pem.stat().st_mode & 0o777 == 0o600
    assert pem.read_text() == cert.read_text().rstrip("\n") + "\n" + key.read_text().rstrip("\n") + "\n"
    written = tmp_path / "haproxy.cfg"
    written.write_text(text)
    binary = haproxy_binary()
    assert binary is not None
    checked = subprocess.run([binary, "-c", "-q", "-f", str(written)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
