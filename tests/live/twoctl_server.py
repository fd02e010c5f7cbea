"""`python -m safeship.api.server`, with the shared world of sharedworld.py registered first."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from sharedworld import register

from safeship.api.server import main

if __name__ == "__main__":
    register()
    raise SystemExit(main(sys.argv[1:]))
