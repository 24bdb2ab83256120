"""Messages: what the bot receives, and the content of what it sends (notices, replies, threads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ReplyMode = Literal["reply", "thread"]


@dataclass(frozen=True)
class IncomingMessage:
    """A text message someone sent in a room the bot is in (already decrypted)."""

    room_id: str
    event_id: str
    sender: str
    body: str  # the plain body; formatted_body is never read
    timestamp_ms: int
    thread_root: str | None = None
    #: for a Megolm-decrypted message: the sending device's curve25519 key and the session
    #: (what the device-trust policy checks); None for an unencrypted one
    sender_key: str | None = None
    session_id: str | None = None


def notice(text: str, html: str | None = None) -> dict[str, Any]:
    """An ``m.notice`` (the msgtype bots use, so other bots do not answer it)."""
    content: dict[str, Any] = {"msgtype": "m.notice", "body": text}
    if html is not None:
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = html
    return content


def edit(event_id: str, new: dict[str, Any]) -> dict[str, Any]:
    """An edit (``m.replace``) of ``event_id`` to the content ``new``."""
    return {
        **new,
        "body": f"* {new.get('body', '')}",
        "m.new_content": new,
        "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
    }


def thread_root_of(content: dict[str, Any]) -> str | None:
    """The thread an event belongs to, from its ``m.relates_to``."""
    rel = content.get("m.relates_to")
    if isinstance(rel, dict) and rel.get("rel_type") == "m.thread":
        root = rel.get("event_id")
        return root if isinstance(root, str) else None
    return None


def in_reply(
    content: dict[str, Any], event_id: str, thread_root: str | None, mode: ReplyMode
) -> dict[str, Any]:
    """Make ``content`` answer ``event_id``: a reply, or a thread message.

    A message inside a thread is always answered in that thread. In "thread" mode a command
    outside a thread starts one at the command; the reply fallback (``is_falling_back``)
    lets clients without threads show it as a plain reply.
    """
    if thread_root is not None or mode == "thread":
        relation: dict[str, Any] = {
            "rel_type": "m.thread",
            "event_id": thread_root or event_id,
            "is_falling_back": thread_root is None,
            "m.in_reply_to": {"event_id": event_id},
        }
    else:
        relation = {"m.in_reply_to": {"event_id": event_id}}
    return {**content, "m.relates_to": relation}
