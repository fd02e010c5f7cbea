"""A release tarball is hashed and unpacked from one open file: a file swapped in after the hash is
not what gets unpacked. A tarball with too many members, too many bytes, a member with an absolute
path or `..`, or a link pointing outside the release folder is refused in one sentence naming it,
and nothing is unpacked."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from safeship.errors import PermanentError
from safeship.platforms import local
from safeship.platforms.local import unpack_release
from safeship.store import ArtifactRecord, sha256_of


def tarball(path: Path, members: list[tuple[str, Callable[[tarfile.TarInfo], None]]]) -> Path:
    """A .tar.gz of `members`: (name, a function that shapes its TarInfo); files hold b"data"."""
    with tarfile.open(path, "w:gz") as tar:
        for name, shape in members:
            info = tarfile.TarInfo(name)
            info.size = 4
            shape(info)
            tar.addfile(info, io.BytesIO(b"data") if info.isfile() else None)
    return path


def plain(info: tarfile.TarInfo) -> None:
    pass


def symlink(target: str) -> Callable[[tarfile.TarInfo], None]:
    def shape(info: tarfile.TarInfo) -> None:
        info.type, info.linkname, info.size = tarfile.SYMTYPE, target, 0
    return shape


def hardlink(target: str) -> Callable[[tarfile.TarInfo], None]:
    def shape(info: tarfile.TarInfo) -> None:
        info.type, info.linkname, info.size = tarfile.LNKTYPE, target, 0
    return shape


def record(path: Path) -> ArtifactRecord:
    return ArtifactRecord("svc", "v1", str(path), sha256_of(path), "run-1", 1.0)


def unpacked_anything(tmp_path: Path) -> bool:
    releases = tmp_path / "releases"
    return releases.exists() and any(p.is_file() or p.is_symlink() for p in releases.rglob("*"))


@pytest.mark.parametrize(("name", "shape", "words"), [
    ("/etc/evil-safeship-test", plain, "'/etc/evil-safeship-test' would land outside the release folder"),
    ("app/../../evil", plain, "'app/../../evil' would land outside the release folder"),
    ("../evil", plain, "'../evil' would land outside the release folder"),
    ("app/link", symlink("../../outside"), "'app/link' links to '../../outside', outside the release folder"),
    ("app/abs", symlink("/etc/passwd"), "'app/abs' links to '/etc/passwd', outside the release folder"),
    ("app/hard", hardlink("../outside"), "'app/hard' links to '../outside', outside the release folder"),
])
def test_a_member_that_leaves_the_folder_is_refused(tmp_path: Path, name: str,
                                                    shape: Callable[[tarfile.TarInfo], None], words: str) -> None:
    path = tarball(tmp_path / "r.tar.gz", [("app/main.py", plain), (name, shape)])
    with pytest.raises(PermanentError) as refused:
        unpack_release(tmp_path / "releases", record(path))
    message = str(refused.value)
    assert message == f"the artifact {path} of svc v1 could not be unpacked: member {words}"
    assert not unpacked_anything(tmp_path)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "outside").exists()


def test_links_inside_the_folder_are_unpacked(tmp_path: Path) -> None:
    path = tarball(tmp_path / "r.tar.gz", [("app/main.py", plain), ("app/sub/link", symlink("../main.py")),
                                           ("app/hard", hardlink("app/main.py"))])
    folder = unpack_release(tmp_path / "releases", record(path))
    assert folder is not None and (folder / "app" / "sub" / "link").read_bytes() == b"data"


def test_too_many_members_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "MAX_RELEASE_MEMBERS", 5)
    path = tarball(tmp_path / "r.tar.gz", [(f"f{i}", plain) for i in range(6)])
    with pytest.raises(PermanentError) as refused:
        unpack_release(tmp_path / "releases", record(path))
    assert str(refused.value) == f"the artifact {path} of svc v1 could not be unpacked: it has more than 5 members"
    assert not unpacked_anything(tmp_path)


def test_too_many_unpacked_bytes_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "MAX_RELEASE_BYTES", 10)
    path = tarball(tmp_path / "r.tar.gz", [("a", plain), ("b", plain), ("c", plain)])  # 12 bytes
    with pytest.raises(PermanentError) as refused:
        unpack_release(tmp_path / "releases", record(path))
    assert str(refused.value) == (f"the artifact {path} of svc v1 could not be unpacked: "
                                  "it unpacks to more than 10 bytes")
    assert not unpacked_anything(tmp_path)


def test_a_tarball_swapped_in_after_the_hash_is_not_unpacked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tested = tarball(tmp_path / "r.tar.gz", [("TESTED", plain)])
    artifact = record(tested)
    swapped = tarball(tmp_path / "swapped.tar.gz", [("SWAPPED", plain)])
    real_sha256 = hashlib.sha256

    class SwapAfterHashing:
        """hashlib.sha256 that replaces the artifact's path with another tarball once the digest is
        taken: the moment between a check by path and a use by path."""

        def __init__(self, *args: Any) -> None:
            self._digest = real_sha256(*args)

        def update(self, data: bytes) -> None:
            self._digest.update(data)

        def hexdigest(self) -> str:
            if swapped.exists():
                os.replace(swapped, tested)
            return self._digest.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", SwapAfterHashing)
    folder = unpack_release(tmp_path / "releases", artifact)
    monkeypatch.undo()
    assert not swapped.exists()  # the swap happened
    assert folder is not None
    assert sorted(p.name for p in folder.iterdir()) == [".safeship-sha256", "TESTED"]
