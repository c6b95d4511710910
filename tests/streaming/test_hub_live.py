"""The hub on real gunicorn gevent workers (2 of them), with a real Redis and httpx-sse clients.

- several devices of one user and a tenant admin read the same stream; others are refused;
- a second device learns of a new generation on ``users/<id>`` and attaches to it;
- a resume id older than the trimmed log is answered with ``X-Streamgate-History: lost``;
- a stream whose log expired, or that was revoked, answers 410;
- open connections end when their token expires or is revoked, and never outlive ``exp``;
- subscriptions per user are capped (429);
- when the worker's pub/sub connection drops, its subscribers are closed and resume without a gap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from bench.fake_upstream import expected_text
from tests.support.config import PASSWORD
from tests.support.hub import (
    Reading,
    active_subscribers,
    assert_continuous,
    open_subscriptions,
    read_hub,
    read_live,
    start_stream,
    tenant_of,
    text_of,
)
from tests.support.live import hub_readers
from tests.support.waiting import wait_until

pytestmark = pytest.mark.live


def _in_thread(fn: Callable[[], Reading], out: list[Reading]) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread


def test_devices_and_the_tenant_admin_see_the_same_stream_others_are_refused(
    live: Any,
    live_user: Any,
    make_user: Callable[..., Any],
    auth_headers: Callable[..., Any],
) -> None:
    owner, phone = live_user()
    with live.app.app_context():
        laptop = auth_headers(owner)  # a second login of the same person: another token
        tenant = tenant_of(owner)
        admin = auth_headers(make_user(tenant, role="admin"))
        colleague = auth_headers(make_user(tenant))
        outsider = auth_headers(make_user())
        outsider_admin = auth_headers(make_user(role="admin"))

    with live.client() as client:
        # The laptop watches the user's channel; the phone starts a generation.
        notices: list[Reading] = []
        watcher = _in_thread(
            lambda: read_live(
                live, f"users/{owner.id}", laptop, stop_when=lambda e: e.event == "stream.completed"
            ),
            notices,
        )
        wait_until(lambda: active_subscribers(client) == 1)
        started = start_stream(client, phone, tokens=60, delay_ms=5, first_delay_ms=300)
        channel = started["channel"]

        readers: list[Reading] = []
        threads = [
            _in_thread(lambda h=h: read_live(live, channel, h), readers) for h in (phone, admin)
        ]
        watcher.join(60)
        (lifecycle,) = notices
        assert lifecycle.names == ["stream.started", "stream.completed"]
        assert lifecycle.events[0].data["channel"] == channel  # how the laptop finds it
        assert lifecycle.events[0].data["events_url"] == started["events_url"]
        laptop_reading = read_hub(client, lifecycle.events[0].data["channel"], laptop)
        for thread in threads:
            thread.join(60)

        for reading in [*readers, laptop_reading]:
            assert reading.status == 200 and reading.eof
            assert reading.ids == laptop_reading.ids
            assert text_of(reading.events) == expected_text(60)

        refusals = [
            read_hub(client, ch, h)
            for h in (colleague, outsider, outsider_admin)
            for ch in (channel, "streams/str_" + "n" * 20, f"users/{owner.id}")
        ]
        assert {r.status for r in refusals} == {403}
        assert all(r.body == refusals[0].body for r in refusals)


@pytest.fixture()
def live_overrides(request: pytest.FixtureRequest) -> dict[str, str]:
    return dict(getattr(request, "param", {}))


@pytest.mark.parametrize(
    "live_overrides", [{"STREAM_LOG_MAXLEN": "20", "SSE_COALESCE_MS": "0"}], indirect=True
)
def test_a_resume_older_than_the_trimmed_log_says_history_was_lost(
    live: Any, live_user: Any
) -> None:
    _, headers = live_user()
    with live.client() as client:
        started = start_stream(client, headers, tokens=400, delay_ms=0)
        url = f"/v1/streams/{started['id']}"
        wait_until(lambda: client.get(url, headers=headers).json()["status"] == "completed")
        full = read_hub(client, started["channel"], headers)  # a late reader of a trimmed log
        assert full.eof and full.names[-1] == "stream.completed"
        assert full.headers["X-Streamgate-History"] == "lost"  # even the start is gone
        assert full.names[0] == "token" and full.events[0].data["index"] > 0
        assert_continuous_from(full)

        # Resuming from an id that is still in the log: no gap, no header.
        recent = full.ids[-5]
        resumed = read_hub(client, started["channel"], headers, last_event_id=recent)
        assert "X-Streamgate-History" not in resumed.headers
        assert resumed.ids == full.ids[-4:]

        # Resuming from an id the log no longer holds: the header says so; the rest still comes.
        oldest_kept = full.ids[0]
        ms, seq = oldest_kept.split("-")
        older = f"{ms}-{int(seq) - 1}" if int(seq) > 0 else f"{int(ms) - 1}-0"
        gap = read_hub(client, started["channel"], headers, last_event_id=older, via="query")
        assert gap.headers["X-Streamgate-History"] == "lost"
        assert gap.ids == full.ids


def assert_continuous_from(reading: Reading) -> None:
    tokens = [e for e in reading.events if e.event == "token"]
    for before, after in zip(tokens, tokens[1:], strict=False):
        assert after.data["index"] == before.data["index"] + before.data["count"]


@pytest.mark.parametrize("live_overrides", [{"STREAM_LOG_TTL_S": "1"}], indirect=True)
def test_a_stream_whose_log_expired_answers_410(live: Any, live_user: Any, redis: Any) -> None:
    _, headers = live_user()
    with live.client() as client:
        started = start_stream(client, headers, tokens=5)
        done = read_hub(client, started["channel"], headers)
        assert done.eof and done.names[-1] == "stream.completed"
        wait_until(lambda: not redis.exists("sg:log:{" + started["channel"] + "}"), timeout=30)
        for last in (done.ids[2], None):
            gone = read_hub(client, started["channel"], headers, last_event_id=last)
            assert gone.status == 410 and gone.body["error_code"] == "stream_expired"
        # The text outlives the log.
        record = client.get(f"/v1/streams/{started['id']}", headers=headers).json()
        assert record["status"] == "completed" and record["text"] == expected_text(5)


def test_a_revoked_stream_ends_its_readers_and_answers_410(
    live: Any,
    live_user: Any,
    make_user: Callable[..., Any],
) -> None:
    from core.store import get_redis
    from streaming import control

    owner, headers = live_user()
    with live.app.app_context():
        admin_id = make_user(tenant_of(owner), role="admin").id
    with live.client() as client:
        started = start_stream(client, headers, infinite=1, delay_ms=20)
        reader: list[Reading] = []
        thread = _in_thread(lambda: read_live(live, started["channel"], headers), reader)
        wait_until(
            lambda: client.get(f"/v1/streams/{started['id']}", headers=headers).json()["text"]
        )
        with live.app.app_context():
            # Revoke only once the reader is connected (else it rightly gets a 410 at once).
            wait_until(lambda: get_redis().zcard(f"sg:ss:{started['id']}") >= 1)
            control.send(
                get_redis(),
                control.ControlMessage(
                    control.REVOKE_STREAM, stream_id=started["id"], by=admin_id, reason="policy"
                ),
                60,
            )
        thread.join(60)
        (seen,) = reader
        assert seen.eof and seen.names[-1] == "stream.revoked"
        assert seen.events[-1].data["by"] == admin_id and seen.events[-1].data["reason"] == "policy"
        for last in (seen.ids[-2], None):
            again = read_hub(client, started["channel"], headers, last_event_id=last)
            assert again.status == 410 and again.body["error_code"] == "stream_revoked"


def _login(client: httpx.Client, live: Any, user: Any) -> dict[str, Any]:
    with live.app.app_context():
        slug = tenant_of(user).slug
    response = client.post(
        "/v1/auth/login", json={"tenant": slug, "email": user.email, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.parametrize(
    "live_overrides", [{"JWT_ACCESS_TTL_S": "3", "SSE_HEARTBEAT_S": "0.5"}], indirect=True
)
def test_an_open_connection_ends_when_its_token_expires(live: Any, live_user: Any) -> None:
    import jwt as pyjwt

    user, _ = live_user()
    with live.client() as client:
        token = _login(client, live, user)["access_token"]
        exp = pyjwt.decode(token, options={"verify_signature": False})["exp"]
        headers = {"Authorization": "Bearer " + token}
        reading = read_hub(client, f"users/{user.id}", headers, skip_pings=False)
        assert reading.status == 200 and reading.eof  # the server ended it
        pings = [e for e in reading.events if e.event == "ping"]
        assert pings and all(p.data["type"] == "ping" for p in pings)
        assert max(p.data["time"] for p in pings) <= exp  # nothing was sent after exp
        again = read_hub(client, f"users/{user.id}", headers)
        assert again.status == 401


@pytest.mark.parametrize("live_overrides", [{"SSE_HEARTBEAT_S": "0.5"}], indirect=True)
def test_an_open_connection_ends_when_its_token_is_revoked(live: Any, live_user: Any) -> None:
    user, _ = live_user()
    with live.client() as client:
        token = _login(client, live, user)["access_token"]
        headers = {"Authorization": "Bearer " + token}
        reader: list[Reading] = []
        thread = _in_thread(lambda: read_live(live, f"users/{user.id}", headers), reader)
        wait_until(lambda: active_subscribers(client) == 1)
        # Logging out revokes the token in Redis, with no control message: the hub's batched
        # re-check has to find it.
        assert client.post("/v1/auth/logout", json={}, headers=headers).status_code == 204
        thread.join(60)
        assert not thread.is_alive() and reader[0].eof
        wait_until(lambda: active_subscribers(client) == 0)


@pytest.mark.parametrize("live_overrides", [{"SSE_MAX_SUBSCRIPTIONS_PER_USER": "3"}], indirect=True)
def test_subscriptions_per_user_are_capped(live: Any, live_user: Any, redis: Any) -> None:
    user, headers = live_user()
    url = f"{live.url}/v1/events?channel=users/{user.id}"
    with httpx.Client(timeout=30) as client:
        opened = open_subscriptions(client, url, headers, 3)
        refused = client.get(url, headers=headers)
        assert refused.status_code == 429
        assert refused.json()["error_code"] == "too_many_subscriptions"
        assert int(refused.headers["Retry-After"]) >= 1
        opened.pop()[0].close()
        wait_until(lambda: redis.zcard(f"sg:subs:{user.id}") == 2)
        with client.stream("GET", url, headers=headers) as again:
            assert again.status_code == 200
        for response, _ in opened:
            response.close()
    wait_until(lambda: redis.zcard(f"sg:subs:{user.id}") == 0)


def test_subscribers_of_a_worker_whose_pubsub_drops_are_closed_and_resume_without_gap(
    live: Any,
    live_user: Any,
    redis: Any,
) -> None:
    _, headers = live_user()
    workers = live.workers()
    # Both workers' readers must be there to be cut: a worker that was still (re)connecting its
    # pub/sub connection would be missed by the kill, and its subscribers never see a drop.
    wait_until(lambda: len(hub_readers(redis, workers)) == len(workers) == 2)
    with live.client() as client:
        started = start_stream(client, headers, tokens=300, delay_ms=10)
        killed: list[int] = []

        def kill_pubsub_once(event: Any) -> bool:
            if not killed and event.event == "token" and event.data["index"] > 20:
                wait_until(lambda: len(hub_readers(redis, workers)) == 2)
                killed.append(redis.client_kill_filter(_type="pubsub"))
            return False  # keep reading until the server ends the connection

        first = read_hub(client, started["channel"], headers, stop_when=kill_pubsub_once)
        assert killed and killed[0] >= 2  # both workers' dispatchers
        assert first.eof and first.names[-1] == "token"  # ended without a terminal event
        rest = read_hub(client, started["channel"], headers, last_event_id=first.last_id)
        assert rest.eof and rest.names[-1] == "stream.completed"
        events = first.events + rest.events
        assert text_of(events) == expected_text(300)
        assert_continuous(events)
        assert len({e.id for e in events}) == len(events)
    assert "control/hub connection lost" in live.log()
    # Both readers are back: the control bus reaches every worker again.
    wait_until(lambda: len(hub_readers(redis, workers)) == 2)
