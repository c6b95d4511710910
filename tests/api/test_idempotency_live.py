"""Concurrent duplicates on real gunicorn gevent workers: one ``Idempotency-Key`` sent by 20
clients at once creates one stream and one upstream request, and every client gets its id."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bench.fake_upstream import FakeUpstream
from tests.support.hub import stream_body
from tests.support.tokens import user_headers
from tests.support.waiting import wait_until

pytestmark = pytest.mark.live

CLIENTS = 20


def test_twenty_concurrent_posts_with_one_key_create_one_stream_and_one_upstream_request(
    live: Any,
    fake_upstream: FakeUpstream,
    make_user: Callable[..., Any],
) -> None:
    from core.store import db
    from streaming.models import StreamRecord

    user = make_user()
    tenant_id = user.tenant_id
    headers = {**user_headers(user), "Idempotency-Key": "mobile-retry-7f3a"}
    body = stream_body(tokens=20, delay_ms=5)
    barrier = threading.Barrier(CLIENTS)

    def post(_: int) -> httpx.Response:
        with live.client() as client:
            barrier.wait()
            return client.post("/v1/streams", json=body, headers=headers)

    with ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(post, range(CLIENTS)))

    assert [r.status_code for r in responses] == [202] * CLIENTS, [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    replayed = [r for r in responses if r.headers.get("Idempotent-Replayed") == "true"]
    assert len(replayed) == CLIENTS - 1
    [stream_id] = ids
    with live.client() as client:
        wait_until(
            lambda: (
                client.get(f"/v1/streams/{stream_id}", headers=headers).json()["status"]
                == "completed"
            ),
            timeout=30,
        )
    assert fake_upstream.snapshot()["requests"] == 1
    db.session.remove()
    count = db.session.scalar(
        select(func.count()).select_from(StreamRecord).where(StreamRecord.tenant_id == tenant_id)
    )
    assert count == 1
