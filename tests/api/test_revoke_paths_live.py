"""Every path that kills a principal's tokens also stops what it is running, on every worker.

Real gunicorn gevent workers (2), a real Redis, httpx-sse clients, the fake upstream. What the
person on the other end notices, whichever way the credentials were revoked (the owner's
``DELETE /v1/tokens/<jti>``, ``flask tokens revoke``, ``flask users disable``, ``flask users
set-role`` to a lower role, ``flask tenants disable``, a demotion through the admin API, a
logout, signing out everywhere, an admin signing the user out):

- a direct-mode generation started with the credential ends with an in-band ``stream_revoked``
  error (no ``[DONE]``);
- a channel-mode subscriber opened with the credential is cut off at once (it may or may not
  see ``stream.revoked`` first: its own subscription is closed too), and any other subscriber of
  the stream (an operator watching) gets ``stream.revoked``, then the server closes it;
- a subscription to the user's lifecycle channel opened with the credential is closed;
- the upstream requests of those generations are closed (the fake upstream sees the disconnects);
- another tenant's generation keeps running.

"At once" is checked as within ``WITHIN_S``: well under the keeper's fallback interval (10 s with
the default lease), so it is the control bus that acted, not the keeper's next round.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from tests.api.admin_helpers import gen_body
from tests.support.hub import active_subscribers
from tests.support.tokens import user_headers
from tests.support.waiting import wait_until

pytestmark = pytest.mark.live

WITHIN_S = 5.0


class Watch:
    """A streaming request read on its own thread until the server ends it."""

    def __init__(
        self,
        live: Any,
        method: str,
        url: str,
        headers: dict[str, str],
        ready: Callable[[ServerSentEvent], bool],
        **request: Any,
    ) -> None:
        self.events: list[ServerSentEvent] = []
        self.headers: httpx.Headers | None = None
        self.status: int | None = None
        self.eof = False
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self._ready = ready
        self._args = (live, method, url, headers, request)
        self.thread = threading.Thread(target=self._run, name="watch " + url, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        live, method, url, headers, request = self._args
        try:
            with (
                live.client(timeout=60) as client,
                connect_sse(client, method, url, headers=headers, **request) as source,
            ):
                self.status, self.headers = source.response.status_code, source.response.headers
                for sse in source.iter_sse():
                    if sse.data == "" or sse.event == "ping":
                        continue
                    self.events.append(sse)
                    if self._ready(sse):
                        self.ready.set()
            self.eof = True
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
            self.error = exc

    def wait_ready(self) -> None:
        wait_until(lambda: self.ready.is_set() or self.error or not self.thread.is_alive())
        assert self.error is None and self.ready.is_set(), (self.status, self.events, self.error)

    def wait_closed(self, timeout: float = WITHIN_S) -> None:
        """The server ended the response within ``timeout``."""
        wait_until(lambda: not self.thread.is_alive(), timeout=timeout)
        assert self.error is None and self.eof, self.error

    @property
    def names(self) -> list[str]:
        return [e.event for e in self.events]

    @property
    def data(self) -> list[str]:
        return [e.data for e in self.events]


def _has_text(sse: ServerSentEvent) -> bool:
    return '"content":"' in sse.data and '"content":""' not in sse.data


def record_status(live: Any, stream_id: str) -> str:
    from core.store import db
    from streaming.models import StreamRecord

    with live.app.app_context():
        db.session.expire_all()
        record = db.session.get(StreamRecord, stream_id)
        return record.status if record is not None else ""


@dataclass
class World:
    """A tenant with the victim (an admin, so a demotion is possible) and a second admin."""

    live: Any
    tenant_id: str
    slug: str
    victim_id: str
    victim_email: str
    victim_h: dict[str, str]
    admin_h: dict[str, str]
    jti: str = ""
    token_h: dict[str, str] | None = None

    def cli(self, *args: str) -> str:
        """``flask <args>`` through ``app.test_cli_runner()`` on the live server's Redis and SQL."""
        with self.live.app.app_context():
            result = self.live.app.test_cli_runner().invoke(args=list(args))
        assert result.exit_code == 0, result.output
        return str(result.output)


def _delete_own_token(w: World, client: httpx.Client) -> None:
    response = client.delete(f"/v1/tokens/{w.jti}", headers=w.victim_h)  # the owner, by itself
    assert response.status_code == 204, response.text
    assert response.content == b""


def _cli_tokens_revoke(w: World, client: httpx.Client) -> None:
    output = w.cli("tokens", "revoke", w.jti, "--reason", "leaked")
    assert f"revoked app token {w.jti}" in output and "2 running stream(s) revoked" in output


def _cli_users_disable(w: World, client: httpx.Client) -> None:
    output = w.cli("users", "disable", "--tenant", w.slug, w.victim_email, "--reason", "abuse")
    assert "their tokens are revoked; 2 running stream(s) revoked" in output


def _cli_users_demote(w: World, client: httpx.Client) -> None:
    w.cli("users", "set-role", "--tenant", w.slug, w.victim_email, "member")


def _cli_tenants_disable(w: World, client: httpx.Client) -> None:
    w.cli("tenants", "disable", w.slug, "--reason", "unpaid")


def _api_demote(w: World, client: httpx.Client) -> None:
    response = client.patch(
        f"/v1/admin/users/{w.victim_id}", json={"role": "member"}, headers=w.admin_h
    )
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "member"


def _log_out(w: World, client: httpx.Client) -> None:
    response = client.post("/v1/auth/logout", json={}, headers=w.victim_h)
    assert response.status_code == 204, response.text


def _sign_out_everywhere(w: World, client: httpx.Client) -> None:
    response = client.delete("/v1/auth/sessions", headers=w.victim_h)
    assert response.status_code == 204, response.text


def _admin_signs_out(w: World, client: httpx.Client) -> None:
    response = client.post(
        f"/v1/admin/users/{w.victim_id}/sign-out", json={"reason": "lost phone"}, headers=w.admin_h
    )
    assert response.status_code == 202, response.text
    assert len(response.json()["streams_revoked"]) == 2
    assert response.json()["user"]["disabled"] is False  # signed out, not disabled


# (what revokes, whose credential the streams use: the victim's app token or access token)
PATHS = {
    "DELETE /v1/tokens/<jti> by its owner": (_delete_own_token, "token"),
    "flask tokens revoke": (_cli_tokens_revoke, "token"),
    "flask users disable": (_cli_users_disable, "user"),
    "flask users set-role (demotion)": (_cli_users_demote, "user"),
    "flask tenants disable": (_cli_tenants_disable, "user"),
    "PATCH /v1/admin/users/<id> (demotion)": (_api_demote, "user"),
    "POST /v1/auth/logout": (_log_out, "user"),
    "DELETE /v1/auth/sessions (sign out everywhere)": (_sign_out_everywhere, "user"),
    "POST /v1/admin/users/<id>/sign-out": (_admin_signs_out, "user"),
}


@pytest.fixture()
def world(live: Any, make_user: Callable[..., Any]) -> World:
    from auth.models import Tenant
    from core.store import db

    with live.app.app_context():
        victim = make_user(role="admin")
        tenant = db.session.get(Tenant, victim.tenant_id)
        admin = make_user(tenant, role="admin")
        return World(
            live=live,
            tenant_id=tenant.id,
            slug=tenant.slug,
            victim_id=victim.id,
            victim_email=victim.email,
            victim_h=user_headers(victim),
            admin_h=user_headers(admin),
        )


@pytest.mark.parametrize("path", list(PATHS))
def test_revoking_credentials_stops_their_streams_and_subscriptions_on_every_worker(
    path: str,
    live: Any,
    world: World,
    fake_upstream: Any,
    make_user: Callable[..., Any],
) -> None:
    revoke, credential = PATHS[path]
    with live.app.app_context():
        bystander_h = user_headers(make_user())  # another tenant
        operator_h = user_headers(make_user(role="operator"))  # a third one: reads any channel

    with live.client() as client:
        if credential == "token":
            issued = client.post(
                "/v1/tokens",
                json={"name": "bot", "scopes": ["chat", "read"]},
                headers=world.victim_h,
            )
            assert issued.status_code == 201, issued.text
            world.jti = issued.json()["jti"]
            headers = {"Authorization": "Bearer " + issued.json()["token"]}
        else:
            headers = world.victim_h

        lifecycle = Watch(
            live,
            "GET",
            "/v1/events",
            headers,
            ready=lambda e: e.event == "stream.started",
            params={"channel": f"users/{world.victim_id}"},
        )
        wait_until(lambda: active_subscribers(client) == 1 or not lifecycle.thread.is_alive())
        direct = Watch(
            live, "POST", "/v1/chat/completions", headers, _has_text, json=gen_body(stream=True)
        )
        started = client.post("/v1/streams", json=gen_body(), headers=headers)
        assert started.status_code == 202, started.text
        channel_id = started.json()["id"]
        reader, watcher = (
            Watch(
                live,
                "GET",
                "/v1/events",
                h,
                ready=lambda e: e.event == "token",
                params={"channel": started.json()["channel"]},
            )
            for h in (headers, operator_h)
        )
        other = client.post("/v1/streams", json=gen_body(), headers=bystander_h)
        assert other.status_code == 202, other.text
        other_id = other.json()["id"]
        try:
            for watch in (lifecycle, direct, reader, watcher):
                watch.wait_ready()
            assert direct.headers is not None
            direct_id = direct.headers["X-Stream-Id"]
            assert fake_upstream.wait_for(lambda s: s["active"] == 3, timeout=10)

            revoke(world, client)

            # The direct-mode response ends with an in-band error, not [DONE].
            direct.wait_closed()
            assert direct.status == 200
            assert "[DONE]" not in direct.data
            assert json.loads(direct.data[-1])["error"]["code"] == "stream_revoked"
            # The channel-mode subscriber with the credential is cut off; one without it is told
            # the stream was revoked, then the server closes its connection.
            reader.wait_closed()
            assert set(reader.names) <= {"stream.started", "token", "stream.revoked"}
            watcher.wait_closed()
            assert watcher.names[-1] == "stream.revoked", watcher.names[-3:]
            # The subscription to the user's channel opened with the credential is closed too.
            lifecycle.wait_closed()
            # Both upstream requests are closed; the other tenant's generation runs on.
            assert fake_upstream.wait_for(
                lambda s: s["disconnects"] == 2 and s["active"] == 1, timeout=WITHIN_S
            ), fake_upstream.snapshot()
            for stream_id in (direct_id, channel_id):
                wait_until(lambda sid=stream_id: record_status(live, sid) == "revoked")
            assert record_status(live, other_id) == "running"
            # The credential itself is dead for new requests.
            assert client.get("/v1/auth/me", headers=headers).status_code == 401
        finally:
            client.delete(f"/v1/streams/{other_id}", headers=bystander_h)
