"""tests/engine's model-free scheduler harness, to compare the simulator's schedule with it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "engine"))
