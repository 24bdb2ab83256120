"""Files the bot keeps (opt-outs, time zones, recording metadata, transcripts): private to its
user and replaced atomically, so a crash leaves the old file or the new one, never half."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path``, mode 0600 (its folder 0700 if it has to be made)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private_json(path: Path, data: Any) -> None:
    write_private(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
