"""Live captions in the room: one line per utterance, in a thread or as edits of one message."""

from __future__ import annotations

from collections import deque
from html import escape
from typing import Literal

from bot.plugin import CallContext
from plugins.transcriber.transcript import Line

CaptionMode = Literal["thread", "edit", "off"]


class Captions:
    """``open`` posts the notice that starts them (the root of the thread, or the message
    that edits keep rewriting); ``add`` shows a line."""

    def __init__(self, call: CallContext, mode: CaptionMode, lines_shown: int = 8) -> None:
        self.call = call
        self.mode = mode
        self.root: str | None = None
        self._header = ""
        self._recent: deque[Line] = deque(maxlen=lines_shown)

    async def open(self, header: str) -> None:
        self._header = header
        self.root = await self.call.post(header)

    async def add(self, line: Line) -> None:
        if self.mode == "off" or self.root is None:
            return
        if self.mode == "thread":
            await self.call.post(
                f"{line.speaker}: {line.text}",
                f"<b>{escape(line.speaker)}</b>: {escape(line.text)}",
                thread=self.root,
            )
            return
        self._recent.append(line)
        text = "\n".join([self._header, *(f"{x.speaker}: {x.text}" for x in self._recent)])
        html = "<br>".join(
            [escape(self._header)]
            + [f"<b>{escape(x.speaker)}</b>: {escape(x.text)}" for x in self._recent]
        )
        await self.call.edit(self.root, text, html)
