"""Build the example service's release tarball: python examples/user_service/build.py --version V --out FILE

The tarball holds `examples/__init__.py` and the service's package (its code and releases.yaml,
not its tests or this script) under `examples/user_service/`, plus a RELEASE file naming the
version, so that `python -m examples.user_service` runs from the folder it is unpacked in. It is
reproducible: files in name order, fixed owner and times, so the same sources and version give
the same bytes. `FILE.sha256` gets its sha256 in `sha256sum` format, which is also printed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent  # examples/
SKIP_DIRS = {"tests", "__pycache__"}
SKIP_FILES = {"build.py"}
MTIME = 946684800  # 2000-01-01: a fixed time keeps the tarball reproducible


def sources() -> list[tuple[str, Path]]:
    """(name in the tarball, file) for every file the release holds, in name order."""
    found = [("examples/__init__.py", ROOT / "__init__.py")]
    for path in sorted(PACKAGE.rglob("*")):
        relative = path.relative_to(PACKAGE)
        if not path.is_file() or SKIP_DIRS & set(relative.parts) or relative.name in SKIP_FILES:
            continue
        if path.suffix not in (".py", ".yaml"):
            continue
        found.append((f"examples/user_service/{relative.as_posix()}", path))
    return found


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def build(version: str, out: Path) -> str:
    """Write the tarball to `out` and `out`.sha256; returns the sha256."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in sources():
            _add(tar, name, path.read_bytes())
        _add(tar, "RELEASE", f"user-service {version}\n".encode())
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    data = packed.getvalue()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    out.with_name(out.name + ".sha256").write_text(f"{digest}  {out.name}\n")
    return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build.py", description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help="the version the release is, e.g. v1.4.0")
    parser.add_argument("--out", type=Path, required=True, help="where to write the tarball")
    args = parser.parse_args(argv)
    digest = build(args.version, args.out)
    print(f"built {args.out} ({len(sources())} files + RELEASE), sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
