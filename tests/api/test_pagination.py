"""api.pagination.Rows: flask-smorest's ``Page`` over a SQL select, one page read at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask_smorest import Page
from flask_smorest.pagination import PaginationParameters
from sqlalchemy import event, select

from api.pagination import Rows

pytestmark = pytest.mark.db

SLUGS = [f"page-{n}" for n in range(5)]


@pytest.fixture()
def rows(app: Any, make_tenant: Any) -> Rows[str]:
    from auth.models import Tenant

    for slug in SLUGS:
        make_tenant(slug)
    query = select(Tenant.slug).where(Tenant.slug.like("page-%")).order_by(Tenant.slug.desc())
    return Rows(query, lambda row: str(row[0]).upper())


@pytest.fixture()
def statements(app: Any) -> Iterator[list[str]]:
    """The SQL statements the test runs."""
    from core.store import db

    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    yield seen
    event.remove(db.engine, "before_cursor_execute", record)


def test_len_counts_every_row(rows: Rows[str]) -> None:
    assert len(rows) == 5


def test_a_slice_is_converted_rows_in_query_order(rows: Rows[str]) -> None:
    assert rows[0:2] == ["PAGE-4", "PAGE-3"]
    assert rows[4:6] == ["PAGE-0"]
    assert rows[3:] == ["PAGE-1", "PAGE-0"]
    assert rows[6:8] == [] and rows[2:1] == []


def test_only_contiguous_slices_are_served(rows: Rows[str]) -> None:
    with pytest.raises(TypeError, match="contiguous"):
        rows[0]  # type: ignore[index]
    with pytest.raises(TypeError, match="contiguous"):
        rows[0:4:2]


def test_a_page_reads_only_its_rows(rows: Rows[str], statements: list[str]) -> None:
    page = Page(rows, PaginationParameters(page=2, page_size=2))
    assert page.items == ["PAGE-2", "PAGE-1"]
    assert page.page_params.item_count == 5
    reads = [s for s in statements if "count(" not in s.lower()]
    assert len(reads) == 1 and "LIMIT" in reads[0].upper() and "OFFSET" in reads[0].upper()


def test_a_page_far_past_the_end_is_empty_not_an_error(rows: Rows[str]) -> None:
    # 2**58 * 71 does not fit SQLite's 64-bit OFFSET: a fuzzer's page number answered 500.
    page = PaginationParameters(page=2**58, page_size=71)
    assert Page(rows, page).items == []
