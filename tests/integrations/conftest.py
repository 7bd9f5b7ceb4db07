"""The integration tests reuse the multi-process harness of tests/distributed (spawned gloo workers)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))
