"""Reading ``!schedule`` arguments: when, for how long, and what to run.

Pure: text in, typed values (and APScheduler triggers) out; every refusal is a
``ScheduleError`` whose message says what was wrong. ``accepted_forms()`` is the text shown
with each refusal.

    <when> [for <duration>] [record] [transcribe] [play <source>]

``<when>`` is one of: an ISO 8601 date and time, ``in <duration>``, ``[today|tomorrow] HH:MM``,
``daily HH:MM``, ``<days> HH:MM`` (``mon,wed``, ``mon-fri``, ``weekdays``, ``weekends``), or
``cron <minute> <hour> <day> <month> <weekday>`` (``cron`` may be left out).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from bot.errors import UsageError
from bot.schedule.crontab import crontab_weekdays

#: A scheduled call lasts at most this long (and ``in`` reaches at most MAX_AHEAD ahead).
MAX_DURATION_S = 24 * 3600
#: ... and at least this long: "for 0s" would join and leave at once, a mistake or a flood of
#: joins, never a call anyone wanted.
MIN_DURATION_S = 60
MAX_AHEAD = timedelta(days=366)
#: Recurring schedules fire at most this often: a bot joining every minute is a mistake.
MIN_INTERVAL_S = 15 * 60

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # APScheduler: 0 = Monday
_DAY_WORDS = {name: i for i, name in enumerate(DAYS)} | {
    "monday": 0,
    "tuesday": 1,
    "wednesday": 2,
    "thursday": 3,
    "friday": 4,
    "saturday": 5,
    "sunday": 6,
}
_DAY_GROUPS = {"weekdays": (0, 1, 2, 3, 4), "weekends": (5, 6)}
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_UNIT_WORDS = {
    **{w: "d" for w in ("d", "day", "days")},
    **{w: "h" for w in ("h", "hr", "hrs", "hour", "hours")},
    **{w: "m" for w in ("m", "min", "mins", "minute", "minutes")},
    **{w: "s" for w in ("s", "sec", "secs", "second", "seconds")},
}
_DURATION_PART = re.compile(r"(\d{1,6})\s*([a-z]+)")
_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_CRON_FIELD = re.compile(r"[0-9a-z*/,\-]+")
OPTION_WORDS = ("for", "record", "transcribe", "play")


class ScheduleError(UsageError):
    """A ``!schedule`` argument that cannot be read; the message says why."""


def accepted_forms(prefix: str = "!") -> str:
    p = f"{prefix}schedule"
    return (
        "Accepted forms:\n"
        f"  {p} 2026-11-25T09:30 — a date and time (ISO 8601; add Z or +01:00 for a zone)\n"
        f"  {p} in 10m — in 90s, 10m, 2h, 1h30m, 1d\n"
        f"  {p} tomorrow 09:00 — also today 09:00, or just 09:00 (the next one)\n"
        f"  {p} daily 09:00\n"
        f"  {p} mon,wed 14:30 — days mon…sun, ranges mon-fri, weekdays, weekends\n"
        f"  {p} cron 30 9 * * 1-5 — minute hour day month weekday\n"
        "then optionally: for 1h, record, transcribe, play <source> (last). "
        "Times are in the room's time zone."
    )


# --------------------------------------------------------------------------- when


@dataclass(frozen=True)
class Once:
    at: datetime  # aware


@dataclass(frozen=True)
class Daily:
    hour: int
    minute: int


@dataclass(frozen=True)
class Weekly:
    days: tuple[int, ...]  # sorted, 0 = Monday; never all seven (that is Daily)
    hour: int
    minute: int


@dataclass(frozen=True)
class Cron:
    """A crontab line, with the weekday field in crontab's numbering (0 or 7 = Sunday)."""

    minute: str
    hour: str
    day: str
    month: str
    weekday: str

    @property
    def text(self) -> str:
        return " ".join((self.minute, self.hour, self.day, self.month, self.weekday))


When = Once | Daily | Weekly | Cron


@dataclass(frozen=True)
class Schedule:
    """A parsed ``!schedule``: when (in ``tz``), for how long, and what to run."""

    when: When
    tz: ZoneInfo
    duration_s: float | None = None
    record: bool = False
    transcribe: bool = False
    play: str | None = None

    def trigger(self) -> BaseTrigger:
        w = self.when
        if isinstance(w, Once):
            return DateTrigger(run_date=w.at, timezone=self.tz)
        if isinstance(w, Daily):
            return CronTrigger(hour=w.hour, minute=w.minute, timezone=self.tz)
        if isinstance(w, Weekly):
            days = ",".join(DAYS[d] for d in w.days)
            return CronTrigger(day_of_week=days, hour=w.hour, minute=w.minute, timezone=self.tz)
        return CronTrigger(
            minute=w.minute,
            hour=w.hour,
            day=w.day,
            month=w.month,
            day_of_week=crontab_weekdays(w.weekday),
            timezone=self.tz,
        )

    def when_text(self) -> str:
        """The time part, normalized (``daily 09:00 Europe/Berlin``)."""
        w = self.when
        if isinstance(w, Once):
            return f"once at {w.at.astimezone(self.tz):%Y-%m-%d %H:%M:%S} {self.tz.key}"
        if isinstance(w, Daily):
            return f"daily {w.hour:02}:{w.minute:02} {self.tz.key}"
        if isinstance(w, Weekly):
            return f"{','.join(DAYS[d] for d in w.days)} {w.hour:02}:{w.minute:02} {self.tz.key}"
        return f"cron {w.text} {self.tz.key}"

    def key(self) -> str:
        """What makes two schedules the same: the moments they fire (not what they run)."""
        if isinstance(self.when, Once):
            return f"once {self.when.at.timestamp():.0f}"
        return self.when_text()

    def commands(self) -> list[str]:
        """The command lines (without prefix) to run once in the call."""
        lines = []
        if self.record:
            lines.append("record start")
        if self.transcribe:
            lines.append("transcribe start")
        if self.play is not None:
            lines.append(f"play {self.play}")
        return lines

    def describe(self) -> str:
        parts = [self.when_text()]
        if self.duration_s is not None:
            parts.append(f"for {format_duration(self.duration_s)}")
        parts += [c.removesuffix(" start") for c in self.commands()]
        return ", ".join(parts)


def job_id(room_id: str, schedule: Schedule) -> str:
    """A short, stable ID: the same schedule in the same room always gets the same one."""
    digest = hashlib.sha256(f"{room_id}\n{schedule.key()}".encode()).hexdigest()
    return digest[:10]


# --------------------------------------------------------------------------- parsing


def parse_schedule(text: str, tz: ZoneInfo, now: datetime, prefix: str = "!") -> Schedule:
    """Read ``<when> [for <duration>] [record] [transcribe] [play <source>]``."""
    try:
        return _parse(text, tz, now)
    except ScheduleError as e:
        raise ScheduleError(f"{e}\n{accepted_forms(prefix)}") from None


def _parse(text: str, tz: ZoneInfo, now: datetime) -> Schedule:
    tokens = text.split()
    cut = next((i for i, t in enumerate(tokens) if t.lower() in OPTION_WORDS), len(tokens))
    if cut == 0:
        raise ScheduleError("Say when first.")
    when = parse_when(tokens[:cut], tz, now)
    duration, record, transcribe, play = _options(tokens[cut:])
    schedule = Schedule(when, tz, duration, record, transcribe, play)
    if not isinstance(when, Once):
        gap = min_interval(schedule.trigger(), now)
        if gap is None:
            raise ScheduleError(f"The schedule {_shown(text)} never fires.")
        if gap < MIN_INTERVAL_S:
            raise ScheduleError(
                f"That fires every {format_duration(gap)}; the shortest interval allowed "
                f"is {format_duration(MIN_INTERVAL_S)}."
            )
        if duration is not None and duration > gap:
            raise ScheduleError(
                f"The call would last {format_duration(duration)}, longer than the "
                f"{format_duration(gap)} between two runs."
            )
    return schedule


def _options(tokens: list[str]) -> tuple[float | None, bool, bool, str | None]:
    duration: float | None = None
    flags = {"record": False, "transcribe": False}
    play: str | None = None
    i = 0
    while i < len(tokens):
        word = tokens[i].lower()
        if word == "play":
            play = " ".join(tokens[i + 1 :])
            if not play:
                raise ScheduleError("play needs a source: play <file or URL>.")
            break
        if word in flags:
            if flags[word]:
                raise ScheduleError(f"{word} is given twice.")
            flags[word] = True
            i += 1
        elif word == "for":
            if duration is not None:
                raise ScheduleError("for is given twice.")
            end = next(
                (j for j in range(i + 1, len(tokens)) if tokens[j].lower() in OPTION_WORDS),
                len(tokens),
            )
            duration = parse_duration(" ".join(tokens[i + 1 : end]), "for")
            if duration > MAX_DURATION_S:
                raise ScheduleError(
                    f"A scheduled call lasts at most {format_duration(MAX_DURATION_S)}."
                )
            if duration < MIN_DURATION_S:
                raise ScheduleError(
                    f"A scheduled call lasts at least {format_duration(MIN_DURATION_S)}."
                )
            i = end
        else:
            raise ScheduleError(
                f"I do not understand {_shown(tokens[i])}: after the time come "
                "for <duration>, record, transcribe, play <source>."
            )
    return duration, flags["record"], flags["transcribe"], play


def parse_when(tokens: list[str], tz: ZoneInfo, now: datetime) -> When:
    words = [t.lower() for t in tokens]
    head, rest = words[0], words[1:]
    if head == "in":
        ahead = parse_duration(" ".join(rest), "in")
        if ahead < 1:
            raise ScheduleError("in needs a time ahead of at least 1s.")
        return _future(now + timedelta(seconds=ahead), now)
    if head in ("today", "tomorrow"):
        hour, minute = _clock(rest, head)
        day = now.astimezone(tz).date() + timedelta(days=1 if head == "tomorrow" else 0)
        return _future(datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz), now)
    if head == "daily":
        hour, minute = _clock(rest, "daily")
        return Daily(hour, minute)
    bare_cron = len(words) == 5 and words[0][0] in "0123456789*"
    if head == "cron" or (bare_cron and all(_CRON_FIELD.fullmatch(w) for w in words)):
        return _cron(words[1:] if head == "cron" else words)
    if _CLOCK.fullmatch(head) and not rest:
        hour, minute = _clock(words, "")
        local = now.astimezone(tz)
        at = datetime(local.year, local.month, local.day, hour, minute, tzinfo=tz)
        if at <= now:
            nxt = local.date() + timedelta(days=1)
            at = datetime(nxt.year, nxt.month, nxt.day, hour, minute, tzinfo=tz)
        return Once(at)
    if head == "weekly" and rest:
        words = rest
    day_text = re.sub(",+", ",", ",".join(words[:-1])).strip(",") if len(words) > 1 else head
    days = parse_days(day_text) if _looks_like_days(day_text) else None
    if days is not None:
        hour, minute = _clock(words[-1:] if len(words) > 1 else [], day_text)
        return Daily(hour, minute) if len(days) == 7 else Weekly(days, hour, minute)
    return _future(_iso(tokens, tz), now)


def _future(at: datetime, now: datetime) -> Once:
    if at <= now:
        raise ScheduleError(f"{at:%Y-%m-%d %H:%M %Z} is in the past.")
    if at - now > MAX_AHEAD:
        raise ScheduleError(f"That is more than {MAX_AHEAD.days} days ahead.")
    return Once(at)


def _clock(words: list[str], after: str) -> tuple[int, int]:
    if len(words) > 1 and _CLOCK.fullmatch(words[0]):
        raise ScheduleError(
            f"I do not understand {_shown(words[1])}: after the time come "
            "for <duration>, record, transcribe, play <source>."
        )
    m = _CLOCK.fullmatch(words[0]) if len(words) == 1 else None
    if m is None:
        what = f"after {after} " if after else ""
        raise ScheduleError(f"Give a time of day {what}as HH:MM (24-hour), like 09:30.")
    return int(m.group(1)), int(m.group(2))


def _iso(tokens: list[str], tz: ZoneInfo) -> datetime:
    text = "T".join(tokens) if len(tokens) == 2 else " ".join(tokens)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ScheduleError(f"I cannot read {_shown(' '.join(tokens))} as a time.") from None
    if len(text) <= 10 and "T" not in text:  # a date alone
        raise ScheduleError("Add a time of day to the date, like 2026-11-25T09:30.")
    return at if at.tzinfo is not None else at.replace(tzinfo=tz)


def _looks_like_days(word: str) -> bool:
    return bool(re.fullmatch(r"[a-z]+(?:[,-][a-z]+)*", word)) and word not in ("in", "cron")


def parse_days(text: str) -> tuple[int, ...] | None:
    """``mon,wed`` / ``mon-fri`` / ``weekdays`` → sorted day numbers (0 = Monday); None if
    the text is not a list of days."""
    days: set[int] = set()
    for item in text.split(","):
        if item in _DAY_GROUPS:
            days.update(_DAY_GROUPS[item])
            continue
        ends = item.split("-")
        if len(ends) > 2 or not all(e in _DAY_WORDS for e in ends):
            return None
        first, last = _DAY_WORDS[ends[0]], _DAY_WORDS[ends[-1]]
        span = (last - first) % 7  # fri-mon wraps over the weekend
        days.update((first + k) % 7 for k in range(span + 1))
    return tuple(sorted(days))


def _cron(fields: list[str]) -> Cron:
    if len(fields) != 5:
        raise ScheduleError(
            f"A cron expression has 5 fields (minute hour day month weekday); got {len(fields)}."
        )
    cron = Cron(*fields)
    if cron.day != "*" and cron.weekday != "*":
        raise ScheduleError(
            "Restrict either the day of the month or the weekday in a cron expression, not both."
        )
    try:
        CronTrigger(
            minute=cron.minute,
            hour=cron.hour,
            day=cron.day,
            month=cron.month,
            day_of_week=crontab_weekdays(cron.weekday),
        )
    except ValueError as e:
        raise ScheduleError(f"Bad cron expression {_shown(cron.text)}: {e}.") from None
    return cron


def min_interval(trigger: BaseTrigger, now: datetime, runs: int = 50) -> float | None:
    """The shortest time between two of the next ``runs`` fire times (None: fires < twice)."""
    times: list[datetime] = []
    previous = None
    t = now
    for _ in range(runs):
        nxt = trigger.get_next_fire_time(previous, t)
        if nxt is None:
            break
        times.append(nxt)
        previous, t = nxt, nxt + timedelta(seconds=1)
    if len(times) < 2:
        return None
    return min((b - a).total_seconds() for a, b in itertools.pairwise(times))


# --------------------------------------------------------------------------- durations


def parse_duration(text: str, after: str = "") -> float:
    """``1h30m``, ``90s``, ``45 minutes``, ``1 day`` → seconds."""
    compact = text.strip().lower()
    pos, total, seen = 0, 0, False
    for m in _DURATION_PART.finditer(compact):
        if compact[pos : m.start()].strip():
            break
        unit = _UNIT_WORDS.get(m.group(2))
        if unit is None:
            break
        total += int(m.group(1)) * _UNITS[unit]
        pos, seen = m.end(), True
    else:
        if seen and not compact[pos:].strip():
            return float(total)
    what = f"after {after} " if after else ""
    raise ScheduleError(
        f"Give a duration {what}like 90s, 10m, 2h, 1h30m or 1d (got {_shown(text) or 'nothing'})."
    )


def format_duration(seconds: float) -> str:
    """``5400`` → ``1h30m``; the inverse of ``parse_duration`` for whole seconds."""
    s = int(seconds)
    if s == 0:
        return "0s"
    parts = []
    for unit, size in _UNITS.items():
        n, s = divmod(s, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def _shown(text: str, limit: int = 40) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return repr(text) if text else ""
