"""/v1/streams: start in the background, look at it while it runs, list your own, cancel it.

In-process app, real Redis and SQL, the fake upstream; the hub is read with the Flask test client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bench.fake_upstream import expected_text
from tests.support.hub import open_hub, prompt, tenant_of
from tests.support.waiting import wait_until

# The hub and the control bus need this process's dispatcher and keeper (post_worker_init's).
pytestmark = pytest.mark.usefixtures("app_services")

Headers = dict[str, str]


def start(client: Any, headers: Headers, **knobs: Any) -> dict[str, Any]:
    body = {
        "model": "fake-model",
        "max_tokens": knobs.pop("max_tokens", 2000),
        "messages": [{"role": "user", "content": prompt(**knobs)}],
    }
    response = client.post("/v1/streams", json=body, headers=headers)
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.headers["X-Stream-Id"] == response.get_json()["id"]
    return dict(response.get_json())


@pytest.fixture()
def people(make_user: Callable[..., Any], auth_headers: Callable[..., Headers]) -> dict[str, Any]:
    owner = make_user()
    tenant = tenant_of(owner)
    colleague = make_user(tenant)
    admin = make_user(tenant, role="admin")
    outsider = make_user()
    outsider_admin = make_user(tenant_of(outsider), role="admin")
    return {
        "owner": auth_headers(owner),
        "owner_id": owner.id,
        "colleague": auth_headers(colleague),
        "admin": auth_headers(admin),
        "outsider": auth_headers(outsider),
        "outsider_admin": auth_headers(outsider_admin),
    }


@pytest.mark.db
def test_a_stream_starts_in_the_background_and_shows_its_text_so_far(
    client: Any,
    people: dict[str, Any],
) -> None:
    started = start(client, people["owner"], infinite=1, delay_ms=20)
    sid = started["id"]
    assert started["status"] == "running"
    assert started["channel"] == f"streams/{sid}"
    assert started["events_url"] == f"/v1/events?channel=streams/{sid}"

    def partial() -> dict[str, Any] | None:
        body = client.get(f"/v1/streams/{sid}", headers=people["owner"]).get_json()
        return body if body["status"] == "running" and len(body["text"]) > 10 else None

    body = wait_until(partial)
    assert expected_text(400).startswith(body["text"])
    assert body["usage"]["completion_tokens"] >= 0 and body["mode"] == "channel"
    # A tenant admin may look too; the answer is the same stream.
    assert client.get(f"/v1/streams/{sid}", headers=people["admin"]).get_json()["id"] == sid
    client.delete(f"/v1/streams/{sid}", headers=people["owner"])


@pytest.mark.db
def test_cancel_closes_the_upstream_tells_subscribers_and_records_it(
    client: Any,
    people: dict[str, Any],
    fake_upstream: Any,
) -> None:
    started = start(client, people["owner"], infinite=1, delay_ms=20)
    sid = started["id"]
    hub = open_hub(client, started["channel"], people["owner"])
    try:
        assert hub.status == 200
        hub.read(until=lambda e: e.event == "token")
        # Other tests' runs may still be winding down on the shared fake upstream: count from here.
        closed_before = fake_upstream.snapshot()["disconnects"]
        response = client.delete(f"/v1/streams/{sid}", headers=people["owner"])
        assert response.status_code == 202
        assert response.get_json()["status"] == "cancelling"
        hub.read()
    finally:
        hub.close()
    assert hub.eof and hub.events[-1].event == "stream.cancelled"
    assert hub.events[-1].data["type"] == "stream.cancelled"
    assert fake_upstream.wait_for(lambda s: s["disconnects"] > closed_before, timeout=15)
    sent = "".join(e.data["text"] for e in hub.events if e.event == "token")

    def recorded() -> dict[str, Any] | None:
        body = client.get(f"/v1/streams/{sid}", headers=people["owner"]).get_json()
        return body if body["status"] == "cancelled" else None

    body = wait_until(recorded)
    assert body["text"] == sent and body["finished_at"]
    again = client.delete(f"/v1/streams/{sid}", headers=people["owner"])
    assert again.status_code == 409 and again.get_json()["error_code"] == "stream_finished"


@pytest.mark.db
def test_the_list_is_your_own_newest_first_and_paginated(
    client: Any,
    people: dict[str, Any],
) -> None:
    ids = [start(client, people["owner"], tokens=1)["id"] for _ in range(5)]
    start(client, people["colleague"], tokens=1)  # not the owner's: never listed for them
    # The status filter reads the durable records, written as each run settles.
    wait_until(
        lambda: (
            len(
                client.get(
                    "/v1/streams", query_string={"status": "completed"}, headers=people["owner"]
                ).get_json()
            )
            == 5
        )
    )

    first = client.get(
        "/v1/streams", query_string={"page": 1, "page_size": 2}, headers=people["owner"]
    )
    assert first.status_code == 200
    pagination = first.headers["X-Pagination"]
    assert '"total": 5' in pagination and '"total_pages": 3' in pagination
    pages = [first.get_json()] + [
        client.get(
            "/v1/streams", query_string={"page": n, "page_size": 2}, headers=people["owner"]
        ).get_json()
        for n in (2, 3)
    ]
    assert [len(p) for p in pages] == [2, 2, 1]
    listed = [row["id"] for page in pages for row in page]
    assert sorted(listed) == sorted(ids) and len(set(listed)) == 5
    created = [row["created_at"] for page in pages for row in page]
    assert created == sorted(created, reverse=True)
    assert all("text" not in row or row["text"] is None for page in pages for row in page)

    assert (
        client.get(
            "/v1/streams", query_string={"status": "running"}, headers=people["owner"]
        ).get_json()
        == []
    )
    assert (
        client.get(
            "/v1/streams", query_string={"status": "bogus"}, headers=people["owner"]
        ).status_code
        == 422
    )


def test_another_tenant_or_a_colleague_gets_404(client: Any, people: dict[str, Any]) -> None:
    sid = start(client, people["owner"], infinite=1, delay_ms=20)["id"]
    try:
        for who in ("outsider", "outsider_admin", "colleague"):
            for method in ("get", "delete"):
                response = getattr(client, method)(f"/v1/streams/{sid}", headers=people[who])
                assert response.status_code == 404, (who, method)
                assert response.get_json()["error_code"] == "stream_not_found"
        nothing = client.get("/v1/streams/str_" + "x" * 20, headers=people["outsider"])
        assert (
            nothing.get_json()
            == client.get(f"/v1/streams/{sid}", headers=people["outsider"]).get_json()
        )
        assert client.get("/v1/streams", headers=people["outsider"]).get_json() == []
        ticket = client.post(
            "/v1/events/tickets", json={"channel": f"streams/{sid}"}, headers=people["outsider"]
        )
        assert ticket.status_code == 403
    finally:
        client.delete(f"/v1/streams/{sid}", headers=people["owner"])


def test_every_route_needs_a_token(client: Any, people: dict[str, Any]) -> None:
    sid = "str_" + "a" * 20
    for method, url, body in (
        (
            "post",
            "/v1/streams",
            {"model": "fake-model", "messages": [{"role": "user", "content": "x"}]},
        ),
        ("get", "/v1/streams", None),
        ("get", f"/v1/streams/{sid}", None),
        ("delete", f"/v1/streams/{sid}", None),
        ("post", "/v1/events/tickets", {"channel": f"streams/{sid}"}),
        ("get", f"/v1/events?channel=streams/{sid}", None),
    ):
        response = getattr(client, method)(url, json=body)
        assert response.status_code == 401, (method, url)
        assert response.get_json()["code"] == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_bad_request_starts_nothing(client: Any, people: dict[str, Any], redis: Any) -> None:
    unknown = client.post(
        "/v1/streams",
        headers=people["owner"],
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
    )
    assert unknown.status_code == 404 and unknown.get_json()["error_code"] == "model_not_found"
    invalid = client.post("/v1/streams", headers=people["owner"], json={"model": "fake-model"})
    assert invalid.status_code in (400, 422)
    assert client.get("/v1/streams", headers=people["owner"]).get_json() == []
    assert redis.zcard("sg:live") == 0
