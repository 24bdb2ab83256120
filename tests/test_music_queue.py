"""The music player's queue: loop modes, skip, remove, shuffle, the bound."""

from __future__ import annotations

import random

import pytest

from plugins.music.queue import LoopMode, PlayQueue, QueueFull, Track


def names(q: PlayQueue) -> list[str]:
    return [t.query for t in q.upcoming]


def filled(*queries: str, **kw) -> PlayQueue:
    q = PlayQueue(**kw)
    for query in queries:
        q.add(Track(query, "@a:x"))
    return q


def test_plays_in_order_then_runs_out() -> None:
    q = filled("a", "b")
    assert q.advance().query == "a"
    assert q.advance().query == "b"
    assert q.advance() is None and q.current is None


def test_loop_one_repeats_the_track_but_a_skip_leaves_it() -> None:
    q = filled("a", "b", loop=LoopMode.ONE)
    a = q.advance()
    assert q.advance() is a and q.advance() is a
    assert q.skip().query == "b"


def test_loop_all_goes_round_including_skipped_tracks() -> None:
    q = filled("a", "b", "c", loop=LoopMode.ALL)
    played = [q.advance().query for _ in range(4)]
    assert played == ["a", "b", "c", "a"]
    assert q.skip().query == "b" and names(q) == ["c", "a"]
    # A track that fails is dropped even in loop all (or it would fail forever).
    assert q.drop_current().query == "c" and names(q) == ["a"]


def test_remove_shuffle_clear_and_the_bound() -> None:
    q = filled("a", "b", "c", "d", max_size=4)
    with pytest.raises(QueueFull, match="full"):
        q.add(Track("e", "@a:x"))
    assert q.remove(2).query == "b" and names(q) == ["a", "c", "d"]
    for bad in (0, 4):
        with pytest.raises(IndexError):
            q.remove(bad)
    q.shuffle(random.Random(3))
    assert sorted(names(q)) == ["a", "c", "d"]
    q.advance()
    assert q.clear() == 2 and len(q) == 0 and q.current is not None
