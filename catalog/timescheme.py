"""Time schemes: N periods of a month (default) or of a fixed number of days from an anchor.

Each sample may have its own anchor (the scheme's start by default); its periods are
half-open [start, end) intervals in UTC so that every instant belongs to one period.
"""

from __future__ import annotations

import calendar
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any


def add_months(day: date, months: int) -> date:
    """`day` moved by `months`, the day of month clamped to the target month's length."""
    index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True)
class TimeScheme:
    """`periods` consecutive periods from `start`: calendar-like months, or `period_days` days."""

    start: date
    periods: int = 12
    period_days: int | None = None
    """None = monthly periods; otherwise the length of every period in days."""

    def __post_init__(self) -> None:
        if isinstance(self.start, datetime) or not isinstance(self.start, date):
            raise TypeError(f"TimeScheme.start must be a datetime.date, got {self.start!r}")
        if self.periods < 1:
            raise ValueError(f"TimeScheme.periods must be >= 1, got {self.periods}")
        if self.period_days is not None and self.period_days < 1:
            raise ValueError(f"TimeScheme.period_days must be >= 1 or None, got {self.period_days}")

    def period_starts(self, anchor: date | None = None) -> list[date]:
        """Start date of every period (and of the one after the last, as the end)."""
        first = anchor or self.start
        if self.period_days is None:
            return [add_months(first, k) for k in range(self.periods + 1)]
        return [first + timedelta(days=self.period_days * k) for k in range(self.periods + 1)]

    def bounds(self, anchor: date | None = None) -> list[tuple[datetime, datetime]]:
        """[start, end) of every period, in UTC."""
        edges = [_midnight(d) for d in self.period_starts(anchor)]
        return list(itertools.pairwise(edges))

    def span(self, anchor: date | None = None) -> tuple[datetime, datetime]:
        """[first start, last end) covering all periods."""
        edges = self.period_starts(anchor)
        return _midnight(edges[0]), _midnight(edges[-1])

    def period_of(self, when: datetime, anchor: date | None = None) -> int | None:
        """Index of the period holding `when`, or None when outside the scheme."""
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
        for index, (start, end) in enumerate(self.bounds(anchor)):
            if start <= when < end:
                return index
        return None

    def to_dict(self) -> dict[str, object]:
        return {
            "start": self.start.isoformat(),
            "periods": self.periods,
            "period_days": self.period_days,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimeScheme:
        """Inverse of `to_dict`; `data` is parsed JSON, so its values are untyped."""
        days = data.get("period_days")
        return cls(
            date.fromisoformat(str(data["start"])),
            int(data["periods"]),
            int(days) if days else None,
        )
