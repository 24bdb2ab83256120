"""Logging: one line per event with its context (room, user, call), human or JSON.

Context goes in ``extra``: ``log.info("joined", extra=context(room=room_id))``.
Every line passes through a redactor before it is written, so secrets (password, access
tokens, media keys) never reach the log even when a library logs them: known values are
registered with ``register_secret`` and common token shapes are masked by pattern.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from typing import Any, TextIO

CONTEXT_KEYS = ("room", "user", "call")
MASK = "***"

# Shapes of secrets that libraries may print: "access_token=...", JSON fields named like
# secrets, Authorization headers, Synapse access tokens.
_PATTERNS = [
    re.compile(r"(?i)((?:access_token|password|passphrase|token|secret)=)[^\s&'\"]+"),
    re.compile(
        r"(?i)(['\"](?:access_token|password|passphrase|token|secret|key)['\"]\s*:\s*['\"])"
        r"[^'\"]+"
    ),
    re.compile(r"(?i)(Bearer\s+)[\w.~+/=-]+"),
    re.compile(r"()\bsy[tu]_[\w-]+"),
]


class Redactor:
    """Masks registered secret values and secret-shaped substrings."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def register(self, secret: str | bytes | None) -> None:
        if not secret:
            return
        text = secret.decode("latin-1") if isinstance(secret, bytes) else secret
        if len(text) < 4:  # too short to mask without garbling ordinary words
            return
        with self._lock:
            self._secrets.add(text)

    def __call__(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for s in secrets:
            if s in text:
                text = text.replace(s, MASK)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + MASK, text)
        return text


redactor = Redactor()


def register_secret(secret: str | bytes | None) -> None:
    """Never let this value appear in a log line (passwords, tokens, media keys)."""
    redactor.register(secret)


def context(room: str | None = None, user: str | None = None, call: str | None = None) -> dict:
    """``extra=`` for a log call: the room, user and call the line is about."""
    return {k: v for k, v in (("room", room), ("user", user), ("call", call)) if v is not None}


class HumanFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_KEYS if hasattr(record, k))
        if ctx:
            head, sep, tail = line.partition("\n")  # keep context on the first line
            line = f"{head} [{ctx}]{sep}{tail}"
        return redactor(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k in CONTEXT_KEYS:
            if hasattr(record, k):
                entry[k] = getattr(record, k)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redactor(json.dumps(entry, ensure_ascii=False, default=str))


def setup_logging(level: str = "INFO", fmt: str = "human", stream: TextIO | None = None) -> None:
    """Send all logging to one stream in the chosen format, replacing earlier handlers."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that are chatty at INFO: keep them at WARNING unless we debug.
    quiet = max(logging.WARNING, root.level) if level != "DEBUG" else logging.DEBUG
    for name in ("nio", "peewee", "aiohttp.access"):
        logging.getLogger(name).setLevel(quiet)
