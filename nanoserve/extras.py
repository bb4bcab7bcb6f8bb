"""Optional dependencies: which pip extra brings each one, and the error that says so.

`pip install nanoserve` installs the engine, the server and the planner; charts (`plots`) and the
workbook (`workbook`) come with extras, `all` brings both. A command that needs a missing one stops
with a `MissingExtraError` naming the extra; `nanoserve.cli` prints it as a one-line error.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from nanoserve.errors import NanoserveError

# module → the extra of pyproject.toml that installs it
EXTRA_OF: dict[str, str] = {"matplotlib": "plots", "fsrs": "workbook", "llama_cpp": "llamacpp"}


class MissingExtraError(NanoserveError, ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""

    def __init__(self, module: str, feature: str) -> None:
        self.module, self.extra = module, EXTRA_OF[module]
        super().__init__(
            f"{feature} needs {module}, which comes with an extra: pip install 'nanoserve[{self.extra}]'"
        )


def require(module: str, feature: str) -> ModuleType:
    """Import an optional dependency, or raise MissingExtraError saying what `feature` lacks."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(module, feature) from e
