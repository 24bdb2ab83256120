"""What the benchmarks share: a throwaway Synapse around one asyncio measurement."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from bot.log import setup_logging
from tests.synapse import Synapse


def run_with_synapse(measure: Callable[[Synapse, Path], Awaitable[None]]) -> None:
    """Start Synapse in a temporary folder, run ``measure(synapse, folder)``, clean up."""
    setup_logging("ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        synapse = Synapse(Path(tmp) / "synapse")
        synapse.start()
        try:
            asyncio.run(measure(synapse, Path(tmp)))
        finally:
            synapse.stop()
