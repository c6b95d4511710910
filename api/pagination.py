"""SQL pagination for flask-smorest's ``Page``: one page is read, never the whole result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import Row, Select, func, select

from core.store import db

T = TypeVar("T")
MAX_OFFSET = 2**62  # SQLite and PostgreSQL take a signed 64-bit OFFSET


class Rows(Generic[T]):
    """A SQL select seen as a sequence, so flask-smorest's ``Page`` counts and slices in SQL.

    ``len()`` is one ``COUNT(*)``; a slice is one ``OFFSET``/``LIMIT`` query whose rows
    ``convert`` turns into what the response schema dumps. ``query`` carries its ``ORDER BY``:
    pages are only stable over a total order (end it with a unique column).
    """

    def __init__(
        self,
        query: Select[*tuple[Any, ...]],
        convert: Callable[[Row[*tuple[Any, ...]]], T],
    ) -> None:
        self.query = query
        self.convert = convert

    def __len__(self) -> int:
        counted = select(func.count()).select_from(self.query.order_by(None).subquery())
        return int(db.session.scalar(counted) or 0)

    def __getitem__(self, window: slice) -> list[T]:
        if not isinstance(window, slice) or window.step not in (None, 1):
            raise TypeError("Rows supports contiguous slices only")
        start, stop = window.start or 0, window.stop
        if start > MAX_OFFSET:  # far past any end, and past what SQL's OFFSET can hold
            return []
        query = self.query.offset(start)
        if stop is not None:
            query = query.limit(max(0, stop - start))
        return [self.convert(row) for row in db.session.execute(query)]
