"""What the console's usage charts read: tokens per day by user and by model, and refusals.

``GET /v1/admin/usage?group_by=user|model&per_day=true`` splits each group by UTC day;
``group_by=day`` also counts the requests a limit refused (429) that day.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.api.admin_helpers import build_world
from tests.api.test_admin_manage import add_record, usage

pytestmark = pytest.mark.db


@pytest.fixture()
def world(app: Any, make_tenant: Any, make_user: Any, auth_headers: Any) -> dict[str, Any]:
    return build_world(make_tenant, make_user, auth_headers)


def test_tokens_per_day_by_user_and_by_model(client: Any, world: dict[str, Any]) -> None:
    a, b = world["a"], world["b"]
    d1 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    d2 = d1 + timedelta(days=1)
    add_record(a["tenant"].id, a["member"].id, d1, 10, 100, model="small")
    add_record(a["tenant"].id, a["member"].id, d1, 1, 1, model="large")
    add_record(a["tenant"].id, a["admin"].id, d2, 2, 3, model="small")
    add_record(b["tenant"].id, b["member"].id, d1, 50, 50, model="small")  # another tenant's
    member, admin, h = a["member"].id, a["admin"].id, a["admin_h"]
    rng = {"from": "2026-03-01", "to": "2026-03-03"}

    by_model = usage(client, h, group_by="model", **rng).get_json()
    assert [(r["model"], r["streams"], r["total_tokens"]) for r in by_model] == [
        ("large", 1, 2),
        ("small", 2, 115),
    ]
    daily_models = usage(client, h, group_by="model", per_day="true", **rng).get_json()
    assert [(r["day"], r["model"], r["total_tokens"]) for r in daily_models] == [
        ("2026-03-01", "large", 2),
        ("2026-03-01", "small", 110),
        ("2026-03-02", "small", 5),
    ]
    daily_users = usage(client, h, group_by="user", per_day="true", **rng).get_json()
    assert sorted((r["day"], r["user_id"], r["total_tokens"]) for r in daily_users) == sorted(
        [("2026-03-01", member, 112), ("2026-03-02", admin, 5)]
    )


def test_a_day_counts_the_requests_a_limit_refused(client: Any, world: dict[str, Any]) -> None:
    a, b = world["a"], world["b"]
    member, h = a["member"].id, a["admin_h"]
    limited = client.put(f"/v1/admin/users/{member}/limits", json={"rpm": 1}, headers=h)
    assert limited.status_code == 200, limited.get_data(as_text=True)
    answers = [client.get("/v1/streams", headers=a["member_h"]).status_code for _ in range(3)]
    assert answers == [200, 429, 429]

    [today] = usage(client, h, group_by="day").get_json()
    assert today["day"] == datetime.now(UTC).date().isoformat()
    assert today["refusals"] == 2 and today["streams"] == 0  # a day of refusals only
    assert usage(client, h, group_by="day", user=member).get_json()[0]["refusals"] == 2
    assert usage(client, h, group_by="day", user=a["admin"].id).get_json() == []
    assert usage(client, b["admin_h"], group_by="day").get_json() == []  # not another tenant's
