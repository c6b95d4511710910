"""/v1/conversations: history stored per user, each reply a channel-mode stream with the history.

In-process app, real Redis and SQL, the fake upstream (which records the last request's body).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bench.fake_upstream import expected_text
from tests.support.hub import prompt, tenant_of
from tests.support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("app_services")

Headers = dict[str, str]


def create(client: Any, headers: Headers, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/conversations", json=fields, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return dict(response.get_json())


def send(client: Any, headers: Headers, cid: str, content: str, **extra: Any) -> Any:
    return client.post(
        f"/v1/conversations/{cid}/turns", json={"content": content, **extra}, headers=headers
    )


def settled(client: Any, headers: Headers, cid: str) -> dict[str, Any]:
    """The conversation once its last reply has ended."""

    def done() -> dict[str, Any] | None:
        body = client.get(f"/v1/conversations/{cid}", headers=headers).get_json()
        last = body["turns"][-1]["reply"]
        return body if last and last["status"] != "running" else None

    return dict(wait_until(done, timeout=20))


@pytest.fixture()
def people(make_user: Callable[..., Any], auth_headers: Callable[..., Headers]) -> dict[str, Any]:
    owner = make_user()
    outsider = make_user()
    return {
        "owner": auth_headers(owner),
        "colleague": auth_headers(make_user(tenant_of(owner))),
        "admin": auth_headers(make_user(tenant_of(owner), role="admin")),
        "outsider": auth_headers(outsider),
        "outsider_admin": auth_headers(make_user(tenant_of(outsider), role="admin")),
    }


@pytest.mark.db
def test_three_turns_send_the_whole_history_with_the_conversations_settings(
    client: Any, people: dict[str, Any], fake_upstream: Any
) -> None:
    owner = people["owner"]
    cid = create(
        client,
        owner,
        model="fake-model",
        system_prompt="You are terse.",
        temperature=0.3,
        top_p=0.9,
        max_tokens=40,
    )["id"]
    sent = [prompt(tokens=n) for n in (3, 4, 5)]
    for n, content in enumerate(sent):
        accepted = send(client, owner, cid, content)
        assert accepted.status_code == 202, accepted.get_data(as_text=True)
        stream = accepted.get_json()["stream"]
        assert accepted.headers["X-Stream-Id"] == stream["id"]
        assert stream["channel"] == "streams/" + stream["id"]
        assert accepted.get_json()["turn"]["position"] == n
        settled(client, owner, cid)

    body = fake_upstream.stats.last_body
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": sent[0]},
        {"role": "assistant", "content": expected_text(3)},
        {"role": "user", "content": sent[1]},
        {"role": "assistant", "content": expected_text(4)},
        {"role": "user", "content": sent[2]},
    ]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.3, 0.9, 40)

    whole = client.get(f"/v1/conversations/{cid}", headers=owner).get_json()
    assert [t["content"] for t in whole["turns"]] == sent
    assert [t["reply"]["text"] for t in whole["turns"]] == [expected_text(n) for n in (3, 4, 5)]
    assert {t["reply"]["status"] for t in whole["turns"]} == {"completed"}
    assert whole["title"] == sent[0][:57] + "..." if len(sent[0]) > 60 else sent[0]
    # The reply's stream shows what it was asked, for a client that attaches to it.
    record = client.get(f"/v1/streams/{whole['turns'][-1]['stream_id']}", headers=owner)
    assert record.get_json()["messages"] == body["messages"]
    assert record.get_json()["settings"] == {"max_tokens": 40, "temperature": 0.3, "top_p": 0.9}


@pytest.mark.db
def test_list_rename_and_delete(client: Any, people: dict[str, Any]) -> None:
    owner = people["owner"]
    first = create(client, owner, title="First")
    second = create(client, owner)
    assert second["title"] == "New conversation" and second["turn_count"] == 0
    listed = client.get("/v1/conversations", headers=owner).get_json()
    assert [c["id"] for c in listed] == [second["id"], first["id"]]  # most recent first

    renamed = client.patch(
        f"/v1/conversations/{first['id']}", json={"title": "Renamed"}, headers=owner
    )
    assert renamed.status_code == 200 and renamed.get_json()["title"] == "Renamed"
    listed = client.get("/v1/conversations", headers=owner).get_json()
    assert [c["title"] for c in listed] == ["Renamed", "New conversation"]

    assert client.delete(f"/v1/conversations/{first['id']}", headers=owner).status_code == 204
    gone = client.get(f"/v1/conversations/{first['id']}", headers=owner)
    assert gone.status_code == 404 and gone.get_json()["error_code"] == "conversation_not_found"
    assert [c["id"] for c in client.get("/v1/conversations", headers=owner).get_json()] == [
        second["id"]
    ]


def test_another_user_or_tenant_gets_404_and_never_sees_the_list(
    client: Any, people: dict[str, Any]
) -> None:
    cid = create(client, people["owner"], title="Mine", model="fake-model")["id"]
    nothing = client.get("/v1/conversations/cnv_" + "x" * 20, headers=people["owner"])
    for who in ("colleague", "admin", "outsider", "outsider_admin"):
        calls = [
            client.get(f"/v1/conversations/{cid}", headers=people[who]),
            client.patch(f"/v1/conversations/{cid}", json={"title": "x"}, headers=people[who]),
            client.delete(f"/v1/conversations/{cid}", headers=people[who]),
            send(client, people[who], cid, "hello"),
        ]
        for response in calls:
            assert response.status_code == 404, (who, response.get_data(as_text=True))
            assert response.get_json() == nothing.get_json()
        assert client.get("/v1/conversations", headers=people[who]).get_json() == []
    mine = client.get(f"/v1/conversations/{cid}", headers=people["owner"]).get_json()
    assert mine["title"] == "Mine" and mine["turns"] == []


def test_every_route_needs_a_token(client: Any) -> None:
    calls = [
        client.get("/v1/conversations"),
        client.post("/v1/conversations", json={}),
        client.get("/v1/conversations/cnv_x"),
        client.patch("/v1/conversations/cnv_x", json={"title": "x"}),
        client.delete("/v1/conversations/cnv_x"),
        client.post("/v1/conversations/cnv_x/turns", json={"content": "x"}),
    ]
    assert [r.status_code for r in calls] == [401] * len(calls)
    assert all(r.headers["WWW-Authenticate"].startswith("Bearer") for r in calls)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("", {"title": "a\x00b"}, "title"),
        ("", {"title": ""}, "title"),
        ("", {"temperature": 3}, "temperature"),
        ("", {"top_p": -0.1}, "top_p"),
        ("", {"max_tokens": "many"}, "max_tokens"),
        ("", {"colour": "blue"}, "colour"),
        ("/turns", {"content": ""}, "content"),
        ("/turns", {}, "content"),
        ("/turns", {"content": 7}, "content"),
    ],
)
def test_bad_input_is_a_422_naming_the_field_and_writes_nothing(
    client: Any, people: dict[str, Any], path: str, body: dict[str, Any], field: str
) -> None:
    owner = people["owner"]
    cid = create(client, owner, model="fake-model")["id"]
    url = "/v1/conversations" + (f"/{cid}" + path if path else "")
    response = client.post(url, json=body, headers=owner)
    assert response.status_code == 422, response.get_data(as_text=True)
    envelope = response.get_json()
    assert envelope["code"] == 422 and field in str(envelope["errors"])
    listed = client.get("/v1/conversations", headers=owner).get_json()
    assert [(c["id"], c["turn_count"]) for c in listed] == [(cid, 0)]


def test_a_turn_refused_by_the_streams_rules_leaves_no_turn(
    client: Any, people: dict[str, Any], app: Any
) -> None:
    owner = people["owner"]
    cap = app.config["MAX_TOKENS_CAP"]
    cid = create(client, owner, model="fake-model", max_tokens=cap + 1)["id"]
    too_many = send(client, owner, cid, "hello")
    assert too_many.status_code == 400 and too_many.get_json()["error_code"] == (
        "max_tokens_too_large"
    )
    unknown = send(client, owner, cid, "hello", model="no-such-model")
    assert unknown.status_code == 404 and unknown.get_json()["error_code"] == "model_not_found"
    long_prompt = {"system_prompt": "x" * (app.config["MAX_PROMPT_CHARS"] + 1)}
    refused = client.post("/v1/conversations", json=long_prompt, headers=owner)
    assert refused.status_code == 400 and "system_prompt" in refused.get_json()["errors"]
    patched = client.patch(f"/v1/conversations/{cid}", json=long_prompt, headers=owner)
    assert patched.status_code == 400
    no_model = create(client, owner)["id"]
    assert send(client, owner, no_model, "hello").status_code == 422
    for conversation in (cid, no_model):
        body = client.get(f"/v1/conversations/{conversation}", headers=owner).get_json()
        assert body["turns"] == []
    assert client.get("/v1/streams", headers=owner).get_json() == []


def test_limits_apply_and_a_second_message_waits_for_the_running_reply(
    client: Any,
    fake_upstream: Any,
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
    auth_headers: Callable[..., Headers],
) -> None:
    tenant = make_tenant(limits={"concurrent": 1})
    alice = auth_headers(make_user(tenant))
    bob = auth_headers(make_user(tenant))
    cid = create(client, alice, model="fake-model")["id"]
    running = send(client, alice, cid, prompt(infinite=1, delay_ms=20))
    assert running.status_code == 202
    busy = send(client, alice, cid, "and then?")
    assert busy.status_code == 409 and busy.get_json()["error_code"] == "reply_running"

    other = create(client, bob, model="fake-model")["id"]
    refused = send(client, bob, other, "hello")
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    assert refused.get_json()["errors"]["limit"] == "tenant.concurrent"
    assert client.get(f"/v1/conversations/{other}", headers=bob).get_json()["turns"] == []

    stream_id = running.get_json()["stream"]["id"]
    wait_until(lambda: client.get(f"/v1/streams/{stream_id}", headers=alice).get_json()["text"])
    assert client.delete(f"/v1/streams/{stream_id}", headers=alice).status_code == 202
    stopped = settled(client, alice, cid)
    assert stopped["turns"][0]["reply"]["status"] == "cancelled"
    partial = stopped["turns"][0]["reply"]["text"]
    # A stopped reply is history like any other: the next message continues after it.
    wait_until(lambda: send(client, alice, cid, prompt(tokens=2)).status_code == 202)
    sent = wait_until(lambda: len(fake_upstream.stats.last_body["messages"]) == 3)
    assert sent and fake_upstream.stats.last_body["messages"][1] == {
        "role": "assistant",
        "content": partial,
    }


@pytest.mark.db
def test_deleting_a_conversation_deletes_its_turns_and_keeps_the_streams(
    client: Any, people: dict[str, Any]
) -> None:
    from api.models import ConversationTurn
    from core.store import db
    from streaming.models import StreamRecord

    owner = people["owner"]
    cid = create(client, owner, model="fake-model")["id"]
    stream_id = send(client, owner, cid, prompt(tokens=2)).get_json()["stream"]["id"]
    settled(client, owner, cid)
    assert client.delete(f"/v1/conversations/{cid}", headers=owner).status_code == 204
    db.session.remove()
    assert db.session.query(ConversationTurn).filter_by(conversation_id=cid).count() == 0
    assert db.session.get(StreamRecord, stream_id) is not None  # the usage record stays
    assert client.get(f"/v1/streams/{stream_id}", headers=owner).status_code == 200


@pytest.mark.db
def test_deleting_a_conversation_cancels_its_running_reply(
    client: Any, fake_upstream: Any, people: dict[str, Any]
) -> None:
    owner = people["owner"]
    cid = create(client, owner, model="fake-model")["id"]
    running = send(client, owner, cid, prompt(infinite=1, delay_ms=20))
    stream_id = running.get_json()["stream"]["id"]
    wait_until(lambda: client.get(f"/v1/streams/{stream_id}", headers=owner).get_json()["text"])
    assert client.delete(f"/v1/conversations/{cid}", headers=owner).status_code == 204

    def ended() -> dict[str, Any] | None:
        body = client.get(f"/v1/streams/{stream_id}", headers=owner).get_json()
        return body if body["status"] != "running" else None

    record = wait_until(ended, timeout=20)
    assert record["status"] == "cancelled"  # not left generating for a conversation nobody has
    wait_until(lambda: fake_upstream.snapshot()["active"] == 0)


def test_a_retried_send_with_the_same_idempotency_key_starts_nothing_new(
    client: Any, people: dict[str, Any]
) -> None:
    owner = people["owner"]
    cid = create(client, owner, model="fake-model")["id"]
    retry = {**owner, "Idempotency-Key": "send-once-1"}
    first = send(client, retry, cid, prompt(tokens=2))
    again = send(client, retry, cid, prompt(tokens=2))
    assert first.status_code == again.status_code == 202
    assert again.get_json()["stream"]["id"] == first.get_json()["stream"]["id"]
    assert len(settled(client, owner, cid)["turns"]) == 1
