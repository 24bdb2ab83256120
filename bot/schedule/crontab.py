"""Crontab weekdays for APScheduler 3, which numbers them differently (0 = Monday there,
0 or 7 = Sunday in crontab), so that ``1-5`` means Monday to Friday as everyone expects."""

from __future__ import annotations

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # APScheduler: 0 = Monday
_CRONTAB_DAYS = {n: i for i, n in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}


def crontab_weekdays(field: str) -> str:
    """A crontab weekday field (0 or 7 = Sunday, names, ranges, steps) as APScheduler's
    ``day_of_week`` (0 = Monday; ``1-5`` would mean Tuesday to Saturday there)."""
    days: set[int] = set()  # crontab numbering, 0 = Sunday
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = _int(step_text, "step") if step_text else 1
        if step < 1:
            raise ValueError(f"step must be at least 1 in {part!r}")
        if span == "*":
            lo, hi = 0, 6
        else:
            a, _, b = span.partition("-")
            lo = _weekday(a)
            hi = _weekday(b) if b else (6 if step_text else lo)
            if b and hi == 0 and _weekday_is_seven(b):
                hi = 7
            if hi < lo:
                raise ValueError(f"weekday range {span!r} runs backwards")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    if len(days) == 7:
        return "*"
    return ",".join(DAYS[(d - 1) % 7] for d in sorted(days, key=lambda d: (d - 1) % 7))


def _weekday(text: str) -> int:
    if text in _CRONTAB_DAYS:
        return _CRONTAB_DAYS[text]
    n = _int(text, "weekday")
    if not 0 <= n <= 7:
        raise ValueError(f"weekday {n} is not 0-7")
    return n % 7


def _weekday_is_seven(text: str) -> bool:
    return text.isdigit() and int(text) == 7


def _int(text: str, what: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{what} {text!r} is not a number")
    return int(text)
