from __future__ import annotations

import sys
from pathlib import Path

# faultkit builds on the live tests' controller kit
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "live"))
