"""Reading !schedule arguments: every accepted form, and clear refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.schedule.when import (
    MIN_INTERVAL_S,
    Cron,
    Daily,
    Once,
    ScheduleError,
    Weekly,
    crontab_weekdays,
    format_duration,
    job_id,
    parse_days,
    parse_duration,
    parse_schedule,
)

BERLIN = ZoneInfo("Europe/Berlin")
# Monday 2026-11-23, 08:00 UTC = 09:00 in Berlin (CET, +01:00)
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def parse(text: str, tz: ZoneInfo = BERLIN):
    return parse_schedule(text, tz, NOW)


def first_run(text: str, tz: ZoneInfo = BERLIN) -> datetime:
    return parse(text, tz).trigger().get_next_fire_time(None, NOW)


# --------------------------------------------------------------------------- accepted forms


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-11-25T09:30", "2026-11-25 08:30"),  # naive: the room's zone
        ("2026-11-25 09:30", "2026-11-25 08:30"),  # date and time as two words
        ("2026-11-25T09:30Z", "2026-11-25 09:30"),
        ("2026-11-25T09:30:00+05:00", "2026-11-25 04:30"),
        ("in 10m", "2026-11-23 08:10"),
        ("in 90s", "2026-11-23 08:01"),
        ("in 1h30m", "2026-11-23 09:30"),
        ("in 2 hours", "2026-11-23 10:00"),
        ("in 1d", "2026-11-24 08:00"),
        ("today 18:00", "2026-11-23 17:00"),
        ("tomorrow 09:00", "2026-11-24 08:00"),
        ("18:00", "2026-11-23 17:00"),  # later today
        ("08:30", "2026-11-24 07:30"),  # already past today (09:00 local): tomorrow
    ],
)
def test_one_off_times(text: str, utc: str) -> None:
    sched = parse(text)
    assert isinstance(sched.when, Once)
    assert f"{first_run(text).astimezone(UTC):%Y-%m-%d %H:%M}" == utc


def test_relative_seconds_are_kept() -> None:
    assert first_run("in 90s") == NOW + timedelta(seconds=90)


@pytest.mark.parametrize(
    ("text", "when", "first_local"),
    [
        ("daily 09:00", Daily(9, 0), "2026-11-23 09:00"),  # exactly now: fires now
        ("daily 9:30", Daily(9, 30), "2026-11-23 09:30"),
        ("mon,wed 14:30", Weekly((0, 2), 14, 30), "2026-11-23 14:30"),
        ("Mon, Wed 14:30", Weekly((0, 2), 14, 30), "2026-11-23 14:30"),
        ("tue 10:00", Weekly((1,), 10, 0), "2026-11-24 10:00"),
        ("weekly thursday 10:00", Weekly((3,), 10, 0), "2026-11-26 10:00"),
        ("mon-fri 08:00", Weekly((0, 1, 2, 3, 4), 8, 0), "2026-11-24 08:00"),
        ("weekdays 08:00", Weekly((0, 1, 2, 3, 4), 8, 0), "2026-11-24 08:00"),
        ("weekends 11:00", Weekly((5, 6), 11, 0), "2026-11-28 11:00"),
        ("fri-mon 12:00", Weekly((0, 4, 5, 6), 12, 0), "2026-11-23 12:00"),
        ("mon-sun 07:00", Daily(7, 0), "2026-11-24 07:00"),  # every day is daily
    ],
)
def test_daily_and_weekly(text: str, when: object, first_local: str) -> None:
    sched = parse(text)
    assert sched.when == when
    assert f"{first_run(text):%Y-%m-%d %H:%M}" == first_local
    assert first_run(text).tzinfo is not None and first_run(text).utcoffset() == timedelta(hours=1)


@pytest.mark.parametrize("text", ["cron 30 9 * * 1-5", "30 9 * * 1-5"])
def test_cron_weekdays_follow_crontab(text: str) -> None:
    sched = parse(text)
    assert sched.when == Cron("30", "9", "*", "*", "1-5")
    runs = []
    t, prev = NOW, None
    trigger = sched.trigger()
    for _ in range(5):
        prev = trigger.get_next_fire_time(prev, t)
        runs.append(f"{prev:%a %H:%M}")
        t = prev + timedelta(seconds=1)
    # crontab's 1-5 is Monday to Friday (APScheduler's own numbering would give Tue-Sat)
    assert runs == ["Mon 09:30", "Tue 09:30", "Wed 09:30", "Thu 09:30", "Fri 09:30"]


def test_cron_sunday_as_0_and_7() -> None:
    assert crontab_weekdays("0") == crontab_weekdays("7") == "sun"
    assert crontab_weekdays("5-7") == "fri,sat,sun"
    assert crontab_weekdays("*/2") == "tue,thu,sat,sun"
    assert crontab_weekdays("sun-sat") == "*"
    assert crontab_weekdays("mon,3") == "mon,wed"


@given(st.sets(st.integers(0, 7), min_size=1))
def test_crontab_weekday_lists_match_the_days(days: set[int]) -> None:
    names = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
    field = ",".join(str(d) for d in sorted(days))
    want = {names[d % 7] for d in days}
    got = crontab_weekdays(field)
    assert (set(names) if got == "*" else set(got.split(","))) == want


def test_time_zone_follows_the_room() -> None:
    assert first_run("tomorrow 09:00", ZoneInfo("UTC")) == datetime(2026, 11, 24, 9, tzinfo=UTC)
    ny = first_run("tomorrow 09:00", ZoneInfo("America/New_York"))
    assert ny.astimezone(UTC) == datetime(2026, 11, 24, 14, tzinfo=UTC)


def test_daily_keeps_local_time_across_daylight_saving() -> None:
    trigger = parse("daily 09:00").trigger()
    march = datetime(2027, 3, 27, 6, tzinfo=UTC)  # Berlin switches to CEST on the 28th
    first = trigger.get_next_fire_time(None, march)
    second = trigger.get_next_fire_time(first, first + timedelta(seconds=1))
    assert (f"{first:%H:%M %Z}", f"{second:%H:%M %Z}") == ("09:00 CET", "09:00 CEST")


def test_options() -> None:
    sched = parse("tomorrow 09:00 for 1h record transcribe play https://example.org/a b.ogg")
    assert sched.duration_s == 3600
    assert (sched.record, sched.transcribe) == (True, True)
    assert sched.play == "https://example.org/a b.ogg"
    assert sched.commands() == [
        "record start",
        "transcribe start",
        "play https://example.org/a b.ogg",
    ]
    assert sched.describe() == (
        "once at 2026-11-24 09:00:00 Europe/Berlin, for 1h, record, transcribe, "
        "play https://example.org/a b.ogg"
    )
    assert parse("daily 09:00 record for 45 minutes").duration_s == 45 * 60
    assert parse("in 10m").commands() == []


def test_job_ids_are_stable_per_room_and_time() -> None:
    a = parse("daily 09:00 record")
    b = parse("daily 9:00 for 1h")  # same moments, other options: the same schedule
    assert job_id("!r:x", a) == job_id("!r:x", b)
    assert job_id("!r:x", a) != job_id("!other:x", a)
    assert job_id("!r:x", a) != job_id("!r:x", parse("daily 09:01"))
    assert job_id("!r:x", a) != job_id("!r:x", parse("daily 09:00", ZoneInfo("UTC")))
    assert len(job_id("!r:x", a)) == 10


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "Say when first."),
        ("record", "Say when first."),
        ("yesterday", "I cannot read 'yesterday' as a time."),
        ("2026-11-25", "Add a time of day to the date"),
        ("2026-11-20T09:00", "is in the past"),
        ("2026-11-23T08:59", "is in the past"),  # 07:59 UTC
        ("in", "Give a duration after in"),
        ("in 10x", "Give a duration after in"),
        ("in 0s", "at least 1s"),
        ("in 400d", "more than 366 days ahead"),
        ("daily", "Give a time of day after daily as HH:MM"),
        ("daily 25:00", "Give a time of day after daily as HH:MM"),
        ("mon 9", "Give a time of day after mon as HH:MM"),
        ("mon,funday 10:00", "I cannot read"),
        ("tomorrow", "Give a time of day after tomorrow"),
        ("* * * * *", "fires every 1m; the shortest interval allowed is 15m"),
        ("*/5 9 * * *", "fires every 5m"),
        ("cron 30 9 * *", "A cron expression has 5 fields"),
        ("cron 0 9 1 * mon", "either the day of the month or the weekday"),
        ("cron 61 9 * * *", "Bad cron expression"),
        ("cron 0 9 * * 8", "Bad cron expression"),
        ("cron 0 9 30 2 *", "never fires"),
        ("in 10m for", "Give a duration after for"),
        ("in 10m for ever", "Give a duration after for"),
        ("in 10m for 25h", "A scheduled call lasts at most 1d"),
        ("in 10m for 0s", "A scheduled call lasts at least 1m"),
        ("in 10m for 59s", "A scheduled call lasts at least 1m"),
        ("daily 09:00 for 0 minutes", "at least 1m"),
        ("in 10m for 1h for 2h", "for is given twice"),
        ("in 10m record record", "record is given twice"),
        ("in 10m play", "play needs a source"),
        ("daily 09:00 dance", "I do not understand 'dance'"),
        ("daily 09:00 for 25h", "at most 1d"),
    ],
)
def test_refusals_say_why_and_show_the_forms(text: str, why: str) -> None:
    with pytest.raises(ScheduleError) as e:
        parse(text)
    message = str(e.value)
    assert why in message
    assert "Accepted forms:" in message
    for form in ("2026-11-25T09:30", "in 10m", "daily 09:00", "mon,wed 14:30", "cron"):
        assert form in message


def test_duration_longer_than_the_interval_is_refused() -> None:
    with pytest.raises(ScheduleError, match="longer than the 1h between two runs"):
        parse("cron 0 * * * * for 2h")


def test_shortest_interval_allowed() -> None:
    assert parse(f"cron */{MIN_INTERVAL_S // 60} * * * *").when == Cron("*/15", "*", "*", "*", "*")


@given(st.text(max_size=60))
def test_any_text_is_parsed_or_refused(text: str) -> None:
    try:
        sched = parse(text)
    except ScheduleError:
        return
    assert sched.trigger().get_next_fire_time(None, NOW) is not None


@given(st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), min_size=1))
def test_day_lists(names: list[str]) -> None:
    index = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    assert parse_days(",".join(names)) == tuple(sorted({index.index(n) for n in names}))


# --------------------------------------------------------------------------- durations


@given(st.integers(1, 10 * 86400))
def test_durations_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h30m", 5400), ("1h 30m", 5400), ("45 minutes", 2700)],
)
def test_duration_forms(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "h", "1h30", "10 parsecs", "1h+30m", "-5m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ScheduleError, match="like 90s, 10m, 2h, 1h30m or 1d"):
        parse_duration(text)


def test_weekday_range_pairs() -> None:
    assert isinstance(parse("sat-sun 10:00").when, Weekly)
    assert parse_days("funday") is None
