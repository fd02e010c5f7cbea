"""Sockets that fall back to /tmp (a state_dir too long for a Unix socket path): a router daemon
socket another user made there first, or a socket folder others may write to, is refused in one
sentence naming it, instead of being connected to or bound in."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeship.errors import PermanentError
from safeship.routing.haproxy import socket_dir
from safeship.routing.haproxy_log import HAProxyLogTraffic
from safeship.routing.remote import RemoteRouter, socket_path

NOBODY = 65534


@pytest.fixture
def long_state_dir(tmp_path: Path) -> Path:
    state_dir = tmp_path / ("s" * 120)  # too long for a Unix socket path: sockets move to /tmp
    state_dir.mkdir(mode=0o700)
    return state_dir


@pytest.fixture
def foreign_socket(long_state_dir: Path) -> Iterator[Path]:
    """A listening socket at the router daemon's /tmp path, owned by another user (nobody)."""
    path = socket_path(long_state_dir)
    assert path.parent == Path("/tmp")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        listener.listen()
        os.chown(path, NOBODY, NOBODY)
        yield path
    finally:
        listener.close()
        path.unlink(missing_ok=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file another user's needs root")
async def test_a_router_daemon_socket_of_another_user_in_tmp_is_refused(long_state_dir: Path,
                                                                         foreign_socket: Path) -> None:
    router = RemoteRouter(long_state_dir, start_timeout=2.0)
    try:
        with pytest.raises(PermanentError) as refused:
            await asyncio.wait_for(router.open(), 10)
    finally:
        await asyncio.wait_for(router.close(), 10)
    assert str(refused.value) == (
        f"the router daemon's socket {foreign_socket} belongs to uid {NOBODY}, not to this user (uid 0); "
        "remove it, or use a shorter state_dir so that nothing is placed in /tmp")
    assert not (long_state_dir / "router.log").exists()  # no daemon was started beside it


@pytest.fixture
def open_socket_folder(long_state_dir: Path) -> Iterator[Path]:
    """The haproxy socket folder in /tmp, made first and left writable by everyone."""
    folder = socket_dir(long_state_dir)
    assert folder.parent == Path("/tmp")
    folder.mkdir()
    try:
        folder.chmod(0o777)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_socket_folder_others_may_write_in_tmp_is_refused(long_state_dir: Path, open_socket_folder: Path) -> None:
    with pytest.raises(PermanentError) as refused:
        HAProxyLogTraffic(None, long_state_dir)
    assert str(refused.value) == (
        f"haproxy log socket folder {open_socket_folder} may be written by group or others (mode 777); "
        "remove it, or use a shorter state_dir so that nothing is placed in /tmp")
    assert list(open_socket_folder.iterdir()) == []  # nothing bound in it


def test_a_private_socket_folder_in_tmp_is_used(long_state_dir: Path, open_socket_folder: Path) -> None:
    open_socket_folder.chmod(0o700)
    source = HAProxyLogTraffic(None, long_state_dir)
    try:
        assert (open_socket_folder / "log.sock").exists()
    finally:
        asyncio.run(source.close())
