from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from apikit import client, config_file, controller  # noqa: F401  (fixtures shared by the API tests)
