"""The workbooks' calculations, each returning a `Result` that carries its derivation.

Pure Python: nothing here imports torch.
"""

from nanoserve.planner.derivation import Result, derive

__all__ = ["Result", "derive"]
