from __future__ import annotations

import io
import json
import logging

import pytest

from bot.log import context, redactor, register_secret, setup_logging


@pytest.fixture
def stream():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buf = io.StringIO()
    yield buf
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


@pytest.mark.parametrize(
    "line",
    [
        "GET /sync?access_token=syt_Ym90_abcdefg_123",
        'payload {"password": "hunter2", "user": "x"}',
        "Authorization: Bearer abc.def-ghi",
        "{'key': 'q83vEjRWeJBvXqkzHq1bAA=='}",
        "token syt_Ym90_ZXhhbXBsZQ_1a2b3c",
    ],
)
def test_secret_shapes_are_masked(line: str) -> None:
    out = redactor(line)
    for secret in ("syt_Ym90", "hunter2", "abc.def", "q83vEjRW", "ZXhhbXBsZQ"):
        assert secret not in out
    assert "***" in out


def test_registered_secrets_are_masked(stream) -> None:
    register_secret("correct horse battery")
    setup_logging("DEBUG", "human", stream)
    logging.getLogger("x").info("login with correct horse battery failed")
    assert "correct horse" not in stream.getvalue()
    assert "login with *** failed" in stream.getvalue()


def test_human_format_has_context(stream) -> None:
    setup_logging("INFO", "human", stream)
    logging.getLogger("bot.test").info("joined", extra=context(room="!r:x", user="@a:x"))
    logging.getLogger("bot.test").debug("hidden")
    line = stream.getvalue().strip()
    assert line.endswith("bot.test: joined [room=!r:x user=@a:x]")
    assert "hidden" not in stream.getvalue()


def test_json_format(stream) -> None:
    setup_logging("INFO", "json", stream)
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("bot.test").exception(
            "failed %s", "thing", extra=context(room="!r:x", call="c1")
        )
    entry = json.loads(stream.getvalue())
    assert entry["msg"] == "failed thing"
    assert entry["level"] == "ERROR"
    assert entry["room"] == "!r:x" and entry["call"] == "c1"
    assert "ValueError: bad" in entry["exc"]
    assert "user" not in entry
