"""Django date formats (``{{ value|date:"N j, Y" }}``, ``{% now %}``) without Django."""

from __future__ import annotations

import calendar
from collections.abc import Callable
from datetime import date, datetime, time, timezone
from typing import Any

# --------------------------------------------------------------------------------------------
# Runtime helpers: Django date formats
# --------------------------------------------------------------------------------------------

_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_MONTHS_AP = "Jan. Feb. March April May June July Aug. Sept. Oct. Nov. Dec.".split()
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
NAMED_FORMATS = {
    "DATE_FORMAT": "N j, Y",
    "DATETIME_FORMAT": "N j, Y, P",
    "SHORT_DATE_FORMAT": "m/d/Y",
    "SHORT_DATETIME_FORMAT": "m/d/Y P",
    "TIME_FORMAT": "P",
    "YEAR_MONTH_FORMAT": "F Y",
    "MONTH_DAY_FORMAT": "F j",
}


def _hour12(v: Any) -> int:
    return v.hour % 12 or 12


def _am_pm(v: Any) -> str:
    return "a.m." if v.hour < 12 else "p.m."


def _short_time(v: Any) -> str:
    return str(_hour12(v)) if v.minute == 0 else f"{_hour12(v)}:{v.minute:02d}"


def _time_p(v: Any) -> str:
    if v.minute == 0 and v.hour in (0, 12):
        return "midnight" if v.hour == 0 else "noon"
    return f"{_short_time(v)} {_am_pm(v)}"


def _ordinal(day: int) -> str:
    if day in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _offset(v: Any) -> str:
    delta = v.utcoffset()
    if delta is None:
        return ""
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{sign}{hours:02d}{minutes:02d}"


def _rfc5322(v: datetime) -> str:
    return format_date(v if v.tzinfo else v.replace(tzinfo=timezone.utc), "D, d M Y H:i:s O")


def _epoch(v: datetime) -> str:
    return str(int(v.timestamp()) if v.tzinfo else calendar.timegm(v.timetuple()))


# Format character -> function of a datetime (or a time, for the time characters).
_DATE_CHARS: dict[str, Callable[[Any], str]] = {
    "d": lambda v: f"{v.day:02d}",
    "j": lambda v: str(v.day),
    "D": lambda v: _DAYS[v.weekday()][:3],
    "l": lambda v: _DAYS[v.weekday()],
    "S": lambda v: _ordinal(v.day),
    "w": lambda v: str((v.weekday() + 1) % 7),
    "z": lambda v: str(v.timetuple().tm_yday),
    "W": lambda v: str(v.isocalendar()[1]),
    "o": lambda v: str(v.isocalendar()[0]),
    "m": lambda v: f"{v.month:02d}",
    "n": lambda v: str(v.month),
    "M": lambda v: _MONTHS[v.month - 1][:3],
    "b": lambda v: _MONTHS[v.month - 1][:3].lower(),
    "F": lambda v: _MONTHS[v.month - 1],
    "E": lambda v: _MONTHS[v.month - 1],
    "N": lambda v: _MONTHS_AP[v.month - 1],
    "t": lambda v: str(calendar.monthrange(v.year, v.month)[1]),
    "L": lambda v: str(calendar.isleap(v.year)),
    "y": lambda v: f"{v.year % 100:02d}",
    "Y": lambda v: f"{v.year:04d}",
    "c": lambda v: v.isoformat(),
    "r": _rfc5322,
    "U": _epoch,
}
_TIME_CHARS: dict[str, Callable[[Any], str]] = {
    "a": _am_pm,
    "A": lambda v: "AM" if v.hour < 12 else "PM",
    "f": _short_time,
    "g": lambda v: str(_hour12(v)),
    "G": lambda v: str(v.hour),
    "h": lambda v: f"{_hour12(v):02d}",
    "H": lambda v: f"{v.hour:02d}",
    "i": lambda v: f"{v.minute:02d}",
    "s": lambda v: f"{v.second:02d}",
    "u": lambda v: f"{v.microsecond:06d}",
    "P": _time_p,
    "e": lambda v: str(getattr(v.tzinfo, "key", None) or v.tzname() or ""),
    "T": lambda v: v.tzname() or "",
    "I": lambda v: "" if v.tzinfo is None else ("1" if v.dst() else "0"),
    "O": _offset,
    "Z": lambda v: "" if v.utcoffset() is None else str(int(v.utcoffset().total_seconds())),
}


class FormatError(ValueError):
    """A format character that does not apply to the value (a time of a date...)."""


def format_date(value: date | time, format_string: str) -> str:
    """Format a date, datetime or time with Django's ``date`` format characters."""
    only_date = False
    if isinstance(value, date) and not isinstance(value, datetime):
        only_date = True
        value = datetime(value.year, value.month, value.day)
    out = []
    chars = iter(format_string)
    for char in chars:
        if char == "\\":
            out.append(next(chars, ""))
        elif char in _TIME_CHARS:
            if only_date:
                raise FormatError(char)
            out.append(_TIME_CHARS[char](value))
        elif char in _DATE_CHARS:
            if isinstance(value, time):
                raise FormatError(char)
            out.append(_DATE_CHARS[char](value))
        else:
            out.append(char)
    return "".join(out)


def to_date(value: Any) -> date | time | None:
    """A date, datetime or time from a value: itself, an ISO 8601 string or a UTC timestamp."""
    if isinstance(value, (date, time)):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        parsers: tuple[Callable[[str], date | time], ...] = (
            date.fromisoformat if len(text) == 10 else datetime.fromisoformat,
            time.fromisoformat,
        )
        for parse in parsers:
            try:
                return parse(text)
            except ValueError:
                continue
    return None
