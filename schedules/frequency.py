"""How often a schedule spec can fire: the shortest gap between two of its actions.

Used to hold every schedule to its capability's minimum interval (``ScheduleDecl.min_interval``)
before a spec reaches Temporal. Cron expressions are read as the server reads them (5 fields
``minute hour day month weekday``, 6 with a year, 7 with seconds first; ``@hourly`` and the
other shorthands; ``@every <n><s|m|h|d>[/<phase>]``). The gap is computed over one day: the
times of day an expression fires (seconds x minutes x hours), as if it fired every day, which
never underestimates how often it fires. Day, month, weekday and year fields can only make a
spec fire less often, so a gap of a day or more reads as one day: minimum intervals are at
most a day (:data:`HORIZON`).

Anything the analysis cannot read (an unusual field syntax, several ``@every`` expressions or
one mixed with crons) answers ``None``: the caller refuses what it cannot bound.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta

HORIZON = timedelta(days=1)
_DAY = 86400
_SHORTHANDS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
_EVERY = re.compile(r"^@every\s+(\d+)([smhd])(?:/\d+[smhd])?$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ITEM = re.compile(r"^(\*|\d+)(?:-(\d+))?(?:/(\d+))?$")


def _values(field: str, top: int) -> set[int] | None:
    """The values ``field`` allows in ``0..top``, or None when it cannot be read."""
    values: set[int] = set()
    for item in field.split(","):
        m = _ITEM.match(item)
        if m is None:
            return None
        first, last, step = m.group(1), m.group(2), m.group(3)
        if first == "*":
            if last is not None:
                return None
            lo, hi = 0, top
        else:
            lo = int(first)
            # "a/n" runs from a to the top, "a-b" from a to b, "a" is a alone.
            hi = int(last) if last is not None else (top if step is not None else lo)
        n = int(step) if step is not None else 1
        if n < 1 or lo > hi or hi > top:
            return None
        values.update(range(lo, hi + 1, n))
    return values


def _seconds_of_day(expr: str) -> set[int] | None:
    """The seconds of the day at which a cron expression fires (as if on every day)."""
    expr = _SHORTHANDS.get(expr, expr)
    fields = expr.split()
    if len(fields) == 5:  # no seconds, no year
        fields = ["0", *fields, "*"]
    elif len(fields) == 6:  # no seconds
        fields = ["0", *fields]
    if len(fields) != 7:
        return None
    seconds, minutes, hours = _values(fields[0], 59), _values(fields[1], 59), _values(fields[2], 23)
    if seconds is None or minutes is None or hours is None:
        return None
    return {h * 3600 + m * 60 + s for h in hours for m in minutes for s in seconds}


def shortest_gap(cron: Sequence[str], every_seconds: int | None) -> timedelta | None:
    """The shortest time between two actions of the spec, capped at :data:`HORIZON`; None when
    it cannot be told (the caller refuses the spec)."""
    exprs = [c.split("#", 1)[0].strip() for c in cron]
    if every_seconds is not None:
        if exprs:
            return None
        return min(timedelta(seconds=every_seconds), HORIZON)
    everies = [e for e in exprs if e.startswith("@every")]
    if everies:
        m = _EVERY.match(everies[0])
        if len(exprs) != 1 or m is None:
            return None
        return min(timedelta(seconds=int(m.group(1)) * _UNIT[m.group(2)]), HORIZON)
    times: set[int] = set()
    for expr in exprs:
        fired = _seconds_of_day(expr)
        if fired is None:
            return None
        times |= fired
    if not times:
        return None
    ordered = sorted(times)
    # Around midnight: the last time of one day to the first of the next.
    gaps = [b - a for a, b in zip(ordered, ordered[1:], strict=False)] + [_DAY - ordered[-1] + ordered[0]]
    return min(timedelta(seconds=min(gaps)), HORIZON)
