"""A transcript that survives its bot: ``transcript.partial.json`` in the call's folder, kept up
to date while transcribing and removed once the transcript files are written.

A bot that re-joins the call after a crash, or the fleet worker that takes the call over
(``CallContext.resumed``), finds it and carries on with the same transcript: the earlier lines
stay, the new ones are placed after them in the call's time (seconds since the folder's UTC
time, the first join).
"""

from __future__ import annotations

import calendar
import dataclasses
import logging
import time
from pathlib import Path

from bot.plugin import write_private
from plugins.transcriber.engine import Word
from plugins.transcriber.transcript import Line, Transcript

log = logging.getLogger(__name__)

PARTIAL_FILE = "transcript.partial.json"
FOLDER_TIME = "%Y%m%dT%H%M%SZ"


def read_partial(folder: Path) -> Transcript | None:
    """The transcript an interrupted bot left in ``folder``, if any."""
    try:
        return Transcript.from_json((folder / PARTIAL_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("cannot read the interrupted transcript in %s (%s); starting anew", folder, e)
        return None


def write_partial(folder: Path, transcript: Transcript) -> None:
    write_private(folder / PARTIAL_FILE, transcript.to_json())


def remove_partial(folder: Path) -> None:
    (folder / PARTIAL_FILE).unlink(missing_ok=True)


def seconds_since(origin_utc: str) -> float:
    """Now, in the transcript's time (0 at ``origin_utc``); 0.0 if that is not a time."""
    try:
        origin = calendar.timegm(time.strptime(origin_utc, FOLDER_TIME))
    except ValueError:
        return 0.0
    return max(0.0, time.time() - origin)


def shifted(line: Line, offset: float) -> Line:
    """``line`` moved ``offset`` seconds later (the new process's clock starts at 0)."""
    if not offset:
        return line
    words = tuple(
        Word(round(w.start + offset, 3), round(w.end + offset, 3), w.text, w.probability)
        for w in line.words
    )
    return dataclasses.replace(
        line, start=round(line.start + offset, 3), end=round(line.end + offset, 3), words=words
    )
