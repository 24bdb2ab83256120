"""The tests' Synapse: bot.demo.synapse run from its own virtual environment (its pins may
clash with ours); the README test command installs it at ``.venv-synapse``, and
``CALLBOT_SYNAPSE_PYTHON`` points elsewhere (``bot.demo.synapse.synapse_python``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.demo.synapse import Account, free_port, synapse_python
from bot.demo.synapse import Synapse as _Synapse

REPO = Path(__file__).resolve().parent.parent
__all__ = ["REPO", "Account", "Synapse", "free_port", "synapse_python"]


class Synapse(_Synapse):
    def __init__(self, directory: Path, extra_config: dict[str, Any] | None = None) -> None:
        super().__init__(directory, synapse_python(), extra_config)

    def start(self, timeout_s: float = 60.0) -> None:
        if not self.python.exists():
            raise RuntimeError(
                f"Synapse is not installed at {self.python}: run the README test command "
                "(scripts/test.sh), which installs it, or set CALLBOT_SYNAPSE_PYTHON"
            )
        super().start(timeout_s)

    def kill(self) -> None:
        """SIGKILL, as a crash or a pulled plug would (start() again reuses the data)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
