"""Files the bot keeps (opt-outs, time zones, recording metadata, transcripts, recordings, the
job store): private to its user whatever the process umask (an embedding application, the demo
or a test does not set one), and replaced atomically where the bot writes them whole, so a
crash leaves the old file or the new one, never half."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` as a folder; each folder that has to be made, parents included, mode 0700.

    ``Path.mkdir(mode=..., parents=True)`` gives the parents the umask's mode, and the umask
    can take bits from ``mode`` too: hence a chmod of every folder made here. Folders that
    already exist keep their mode (the operator's choice, e.g. a mounted ``/data``)."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:  # made meanwhile (another thread); a file there fails below
            if not folder.is_dir():
                raise
            continue
        os.chmod(folder, PRIVATE_DIR)
    return path


def private_file(path: Path) -> Path:
    """Make sure ``path`` exists with mode 0600 (its folder private) before a writer that
    wants a path opens it: PyAV/FFmpeg, SQLite, simplematrixbotlib. They open with O_TRUNC or
    in place, which keeps an existing file's mode; what is in it is left alone."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # an older file, or a umask that took bits from 0600
    finally:
        os.close(fd)
    return path


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path``, mode 0600 (its folder 0700 if it has to be made)."""
    private_dir(path.parent)
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
