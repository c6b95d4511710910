"""Completion webhooks in-process: where a webhook may go (allow-list, no private addresses
unless allowed), the signature (checked with the ``standardwebhooks`` library), the admin's
settings and deliveries, and the sweeper that takes over a delivery whose worker stopped."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from standardwebhooks.webhooks import Webhook

from core.errors import ApiError
from streaming import webhooks
from tests.support.accounts import admin_and_member
from tests.support.hub import add_stream_record, prompt
from tests.support.tokens import user_headers
from tests.support.waiting import wait_until
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.usefixtures("app_services")

ORIGIN = "https://hooks.example.com"

Headers = dict[str, str]

team = pytest.fixture(admin_and_member, name="team")  # an admin's and a member's headers


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def _code(call: Callable[[], Any]) -> str | None:
    with pytest.raises(ApiError) as caught:
        call()
    assert caught.value.code == 400
    assert "webhook_url" in (caught.value.errors or {})
    return caught.value.error_code


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_private_and_loopback_addresses_are_refused_unless_allowed(url: str) -> None:
    parts = urlsplit(url)
    origin = webhooks.normalize_origin(f"{parts.scheme}://{parts.netloc}")
    assert origin is not None
    allowed = [origin]
    assert _code(lambda: webhooks.check_url(url, allowed, False)) == "webhook_address_refused"
    assert webhooks.check_url(url, allowed, True) == url


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("https://elsewhere.example.com/hook", "webhook_origin_not_allowed"),
        ("https://hooks.example.com:8443/hook", "webhook_origin_not_allowed"),
        ("http://hooks.example.com/hook", "webhook_origin_not_allowed"),
        ("ftp://hooks.example.com/hook", "invalid_webhook_url"),
        ("https://user:pw@hooks.example.com/hook", "invalid_webhook_url"),
        ("/relative/hook", "invalid_webhook_url"),
        ("https://hooks.example.com:99999/hook", "invalid_webhook_url"),
        ("https://hooks.example.com/" + "x" * 2100, "invalid_webhook_url"),
    ],
)
def test_a_url_off_the_allow_list_or_malformed_is_refused(url: str, code: str) -> None:
    assert _code(lambda: webhooks.check_url(url, [ORIGIN], True)) == code


def test_the_signature_verifies_with_the_standard_webhooks_library() -> None:
    secret = webhooks.new_secret()
    body = b'{"type":"stream.completed"}'
    signature = webhooks.sign(secret, "msg_1", 1_700_000_000, body)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000"}
    verifier = Webhook(secret)
    with pytest.raises(Exception, match="(?i)signature|timestamp"):
        verifier.verify(body, {**headers, "webhook-signature": "v1,AAAA"})
    # The library also checks the timestamp's age; verify its signature check directly.
    assert verifier.sign("msg_1", _datetime(1_700_000_000), body.decode()) == signature


def _datetime(ts: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC)


def test_admins_set_the_allow_list_and_see_deliveries_of_their_tenant_only(
    client: Any,
    team: tuple[Headers, Headers],
    make_user: Callable[..., Any],
) -> None:
    as_admin, as_member = team
    as_other = user_headers(make_user(role="admin"))

    assert client.get("/v1/admin/webhooks").status_code == 401
    assert client.get("/v1/admin/webhooks/deliveries").status_code == 401
    assert client.put("/v1/admin/webhooks", json={"origins": []}).status_code == 401
    assert client.get("/v1/admin/webhooks", headers=as_member).status_code == 403

    assert client.get("/v1/admin/webhooks", headers=as_admin).get_json() == {
        "origins": [],
        "secret": None,
    }
    bad = client.put(
        "/v1/admin/webhooks", json={"origins": ["hooks.example.com"]}, headers=as_admin
    )
    assert bad.status_code == 400 and bad.get_json()["error_code"] == "invalid_origin"
    set_ = client.put(
        "/v1/admin/webhooks", json={"origins": ["HTTPS://Hooks.Example.com:443/"]}, headers=as_admin
    )
    assert set_.status_code == 200
    settings = set_.get_json()
    assert settings["origins"] == [ORIGIN] and settings["secret"].startswith("whsec_")
    again = client.put("/v1/admin/webhooks", json={"origins": [ORIGIN]}, headers=as_admin)
    assert again.get_json()["secret"] == settings["secret"]  # kept unless rotated
    rotated = client.put(
        "/v1/admin/webhooks", json={"origins": [ORIGIN], "rotate_secret": True}, headers=as_admin
    )
    assert rotated.get_json()["secret"] != settings["secret"]
    for not_a_bool in ("yes", 1):
        loose = {"origins": [ORIGIN], "rotate_secret": not_a_bool}
        assert client.put("/v1/admin/webhooks", json=loose, headers=as_admin).status_code == 422
    assert client.get("/v1/admin/webhooks", headers=as_other).get_json()["origins"] == []


@pytest.fixture()
def app_overrides() -> dict[str, Any]:
    return {"WEBHOOK_ALLOW_PRIVATE": True, "WEBHOOK_RETRY_BASE_S": 0.05, "WEBHOOK_SWEEP_S": 3600}


@pytest.mark.db
def test_a_stream_with_a_webhook_delivers_its_terminal_event_signed(
    client: Any,
    receiver: Receiver,
    team: tuple[Headers, Headers],
) -> None:
    as_admin, as_member = team
    secret = client.put(
        "/v1/admin/webhooks", json={"origins": [receiver.origin]}, headers=as_admin
    ).get_json()["secret"]
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": prompt(tokens=7)}],
        "webhook_url": receiver.url(),
    }
    started = client.post("/v1/streams", json=body, headers=as_member)
    assert started.status_code == 202, started.get_json()
    stream_id = started.get_json()["id"]

    def delivered() -> list[dict[str, Any]]:
        rows = client.get(
            "/v1/admin/webhooks/deliveries", query_string={"stream_id": stream_id}, headers=as_admin
        ).get_json()
        return rows if rows and rows[0]["status"] == "delivered" else []

    [row] = wait_until(delivered)
    assert [a["status"] for a in row["attempts"]] == [200]
    [got] = receiver.received
    payload = Webhook(secret).verify(got.body, got.headers)  # signature and timestamp
    assert got.headers["Streamgate-Signature"] == got.headers["webhook-signature"]
    assert got.headers["Streamgate-Id"] == row["id"] == payload["id"]
    assert payload["type"] == "stream.completed"
    assert payload["data"]["stream_id"] == stream_id
    assert payload["data"]["usage"]["completion_tokens"] == 7


def test_a_private_webhook_url_is_refused_with_400_and_nothing_starts(
    app: Any,
    client: Any,
    receiver: Receiver,
    team: tuple[Headers, Headers],
) -> None:
    app.config["WEBHOOK_ALLOW_PRIVATE"] = False
    as_admin, as_member = team
    client.put("/v1/admin/webhooks", json={"origins": [receiver.origin]}, headers=as_admin)
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
        "webhook_url": receiver.url(),
    }
    refused = client.post("/v1/streams", json=body, headers=as_member)
    assert refused.status_code == 400
    assert refused.get_json()["error_code"] == "webhook_address_refused"
    assert "webhook_url" in refused.get_json()["errors"]
    off_list = client.post(
        "/v1/streams", json={**body, "webhook_url": ORIGIN + "/hook"}, headers=as_member
    )
    assert off_list.status_code == 400
    assert off_list.get_json()["error_code"] == "webhook_origin_not_allowed"
    listed = client.get("/v1/streams", headers=as_member).get_json()
    assert listed == []  # nothing was admitted or recorded


def test_the_sweeper_takes_over_a_delivery_whose_worker_stopped(
    app: Any,
    client: Any,
    receiver: Receiver,
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
) -> None:
    from core.store import db, utcnow
    from streaming.models import WebhookDelivery

    tenant = make_tenant()
    tenant.webhook_origins, tenant.webhook_secret = [receiver.origin], webhooks.new_secret()
    user = make_user(tenant)
    add_stream_record(tenant.id, user.id, id="str_swept")
    payload = json.dumps({"id": "msg_swept", "type": "stream.completed", "data": {}})
    db.session.add(
        WebhookDelivery(
            id="msg_swept",
            tenant_id=tenant.id,
            stream_id="str_swept",
            url=receiver.url(),
            event="stream.completed",
            payload=payload,
            attempts=[{"ok": False, "status": 500}],
            lease_until=utcnow() - timedelta(seconds=1),  # its worker stopped renewing it
        )
    )
    db.session.commit()
    secret = tenant.webhook_secret
    assert webhooks.sweep(app) == 1
    wait_until(lambda: receiver.count() == 1)
    Webhook(secret).verify(receiver.received[0].body, receiver.received[0].headers)

    def status() -> str:
        db.session.remove()
        return str(db.session.get(WebhookDelivery, "msg_swept").status)

    wait_until(lambda: status() == "delivered")
    assert webhooks.sweep(app) == 0  # nothing left to take over
