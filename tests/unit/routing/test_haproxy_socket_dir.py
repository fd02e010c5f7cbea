"""HAProxy's Unix sockets move to a short folder when any of them would not fit in a socket path."""

from __future__ import annotations

from pathlib import Path

from safeship.routing.haproxy import _MAX_UNIX_PATH, socket_dir


def test_a_state_dir_that_fits_admin_but_not_master_sock_moves_all_sockets() -> None:
    # Long enough that "<dir>/haproxy/admin.sock" fits and "<dir>/haproxy/master.sock" does not.
    base = "/tmp/"
    room = _MAX_UNIX_PATH - 1 - len(base) - len("/haproxy/admin.sock")
    state_dir = Path(base + "s" * room)
    assert len(str(state_dir / "haproxy" / "admin.sock")) < _MAX_UNIX_PATH
    assert len(str(state_dir / "haproxy" / "master.sock")) >= _MAX_UNIX_PATH
    chosen = socket_dir(state_dir)
    assert chosen != state_dir / "haproxy"
    assert len(str(chosen / "master.sock")) < _MAX_UNIX_PATH


def test_a_short_state_dir_keeps_its_sockets_beside_the_config() -> None:
    state_dir = Path("/tmp/short")
    assert socket_dir(state_dir) == state_dir / "haproxy"
