"""Browser tests drive Debian's chromium (/usr/bin/chromium) with Playwright against a real
controller started by the live tests' helpers (tests/live/livekit.py, put on sys.path here)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "live"))
