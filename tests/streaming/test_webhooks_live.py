"""Completion webhooks on real gunicorn gevent workers, to a loopback receiver.

- every terminal event (completed, failed, cancelled, revoked) reaches the receiver exactly once
  with a verified signature, including a receiver that answered 500 twice first; every attempt
  is visible to the tenant's admin;
- a receiver that never answers holds no worker: the streams end, other requests are served, and
  its deliveries fail after their bounded attempts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from tests.support.hub import prompt, read_hub, tenant_of
from tests.support.waiting import wait_until
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.live


@pytest.fixture()
def live_overrides() -> dict[str, str]:
    return {
        "WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
        "WEBHOOK_RETRY_BASE_S": "0.1",
        "WEBHOOK_TIMEOUT_S": "1",
        "WEBHOOK_MAX_ATTEMPTS": "3",
    }


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture()
def app_people(
    live: Any, live_user: Callable[..., Any]
) -> tuple[dict[str, str], dict[str, str], str]:
    """(member headers, admin headers, admin user id) of one tenant."""
    member, as_member = live_user()
    with live.app.app_context():
        tenant = tenant_of(member)
    admin, as_admin = live_user(tenant, role="admin")
    return as_member, as_admin, admin.id


def _start(client: Any, headers: dict[str, str], url: str, **knobs: Any) -> str:
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": prompt(**knobs)}],
        "webhook_url": url,
    }
    response = client.post("/v1/streams", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _deliveries(client: Any, as_admin: dict[str, str]) -> list[dict[str, Any]]:
    response = client.get(
        "/v1/admin/webhooks/deliveries", params={"page_size": 100}, headers=as_admin
    )
    assert response.status_code == 200
    return list(response.json())


def test_each_terminal_event_is_delivered_once_verified_even_after_two_500s(
    live: Any, receiver: Receiver, app_people: tuple[dict[str, str], dict[str, str], str]
) -> None:
    as_member, as_admin, _ = app_people
    receiver.statuses = {"/hooks/flaky": [500, 500]}  # its first two attempts fail
    with live.client() as client:
        settings = client.put(
            "/v1/admin/webhooks", json={"origins": [receiver.origin]}, headers=as_admin
        ).json()
        url = receiver.url()
        completed = _start(client, as_member, receiver.url("/hooks/flaky"), tokens=5)
        failed = _start(client, as_member, url, tokens=5, error_after=2)
        cancelled = _start(client, as_member, url, infinite=1, delay_ms=20)
        revoked = _start(client, as_member, url, infinite=1, delay_ms=20)
        # Both infinite streams produce before they are stopped.
        read_hub(client, f"streams/{cancelled}", as_member, stop_after=2)
        read_hub(client, f"streams/{revoked}", as_member, stop_after=2)
        assert client.delete(f"/v1/streams/{cancelled}", headers=as_member).status_code == 202
        revoke = client.post(
            f"/v1/admin/streams/{revoked}/revoke", json={"reason": "test"}, headers=as_admin
        )
        assert revoke.status_code == 202

        def all_settled() -> list[dict[str, Any]]:
            rows = _deliveries(client, as_admin)
            done = len(rows) == 4 and all(r["status"] != "pending" for r in rows)
            return rows if done else []

        rows = wait_until(all_settled, timeout=60)

    by_stream = {r["stream_id"]: r for r in rows}
    expected = {
        completed: "stream.completed",
        failed: "stream.failed",
        cancelled: "stream.cancelled",
        revoked: "stream.revoked",
    }
    assert {s: r["event"] for s, r in by_stream.items()} == expected
    assert all(r["status"] == "delivered" for r in rows)
    attempted = {s: [a["status"] for a in r["attempts"]] for s, r in by_stream.items()}
    assert attempted == {  # every attempt is visible to the admin
        completed: [500, 500, 200],
        failed: [200],
        cancelled: [200],
        revoked: [200],
    }

    verifier = Webhook(settings["secret"])
    answered_ok: Counter[str] = Counter()
    attempts: Counter[str] = Counter()
    for got in receiver.received:
        payload = verifier.verify(got.body, got.headers)  # raises unless signed by the tenant
        assert payload["id"] == got.headers["Streamgate-Id"]
        attempts[payload["id"]] += 1
        assert payload["type"] == expected[payload["data"]["stream_id"]]
        assert set(payload["data"]["usage"]) == {
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
        }
    for r in rows:
        answered_ok[r["id"]] = sum(1 for a in r["attempts"] if a["ok"])
    assert sorted(attempts.values()) == [1, 1, 1, 3]  # the retried one kept its id
    assert set(attempts) == {r["id"] for r in rows}
    assert all(n == 1 for n in answered_ok.values())  # exactly one accepted delivery each
    assert receiver.count() == 6


def test_a_receiver_that_never_answers_holds_no_worker(
    live: Any, app_people: tuple[dict[str, str], dict[str, str], str]
) -> None:
    as_member, as_admin, _ = app_people
    silent = Receiver(hang=True)
    try:
        with live.client() as client:
            client.put("/v1/admin/webhooks", json={"origins": [silent.origin]}, headers=as_admin)
            hooked = [_start(client, as_member, silent.url(), tokens=3) for _ in range(6)]
            # Every run ends although its webhook hangs: the run never waits for the receiver.
            for stream_id in hooked:
                wait_until(
                    lambda s=stream_id: (
                        client.get(f"/v1/streams/{s}", headers=as_member).json()["status"]
                        == "completed"
                    ),
                    timeout=30,
                )
            wait_until(lambda: silent.count() >= 6, timeout=30)  # six POSTs hang right now
            # ...and both workers still serve: a new stream runs and is read to its end.
            plain = client.post(
                "/v1/streams",
                json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
                headers=as_member,
            ).json()
            reading = read_hub(client, plain["channel"], as_member)
            assert reading.names[-1] == "stream.completed"
            assert client.get("/healthz").status_code == 200

            def all_failed() -> list[dict[str, Any]]:
                rows = _deliveries(client, as_admin)
                return rows if rows and all(r["status"] == "failed" for r in rows) else []

            rows = wait_until(all_failed, timeout=60)
    finally:
        silent.stop()
    assert len(rows) == 6
    for row in rows:
        assert [a["error"] for a in row["attempts"]] == ["timeout"] * 3  # bounded, then given up
