"""Sessions (finding 18.9): refresh rotation with reuse detection, listing and ending sessions."""

from __future__ import annotations

from typing import Any

from tests.support.config import PASSWORD
from tests.support.tokens import assert_auth_error, bearer, claims_of, tenant_of


def refresh(client: Any, token: str) -> Any:
    return client.post("/v1/auth/refresh", headers=bearer(token))


def test_every_refresh_rotates_and_the_old_refresh_token_is_spent(
    client: Any, pair: dict[str, str]
) -> None:
    first = refresh(client, pair["refresh_token"])
    assert first.status_code == 200
    rotated = first.get_json()["refresh_token"]
    assert rotated != pair["refresh_token"]
    assert claims_of(rotated)["sid"] == claims_of(pair["refresh_token"])["sid"]

    second = refresh(client, rotated)
    assert second.status_code == 200


def test_a_reused_refresh_token_ends_its_whole_family(client: Any, pair: dict[str, str]) -> None:
    stolen = pair["refresh_token"]
    legit = refresh(client, stolen).get_json()  # the owner rotates

    assert_auth_error(refresh(client, stolen))  # the thief replays the old one

    assert_auth_error(refresh(client, legit["refresh_token"]))  # the family is dead
    assert_auth_error(client.get("/v1/auth/me", headers=bearer(legit["access_token"])))
    assert_auth_error(client.get("/v1/auth/me", headers=bearer(pair["access_token"])))


def test_sessions_are_listed_with_device_address_and_times(
    client: Any, make_user: Any, login: Any
) -> None:
    user = make_user()
    phone = login(user, device="Pixel 8", addr="10.9.0.1").get_json()
    laptop = client.post(
        "/v1/auth/login",
        json={"tenant": tenant_of(user).slug, "email": user.email, "password": PASSWORD},
        headers={"User-Agent": "Firefox/140"},
        environ_base={"REMOTE_ADDR": "10.9.0.2"},
    ).get_json()

    response = client.get("/v1/auth/sessions", headers=bearer(laptop["access_token"]))

    assert response.status_code == 200
    rows = {row["device"]: row for row in response.get_json()}
    assert set(rows) == {"Pixel 8", "Firefox/140"}
    assert rows["Pixel 8"]["address"] == "10.9.0.1" and not rows["Pixel 8"]["current"]
    assert rows["Firefox/140"]["current"]
    assert {"created_at", "last_used_at", "id"} <= set(rows["Pixel 8"])
    assert claims_of(phone["access_token"])["sid"] == rows["Pixel 8"]["id"]


def test_ending_a_session_kills_its_refresh_and_access_tokens_only(
    client: Any, make_user: Any, login: Any
) -> None:
    user = make_user()
    phone = login(user, device="phone").get_json()
    laptop = login(user, device="laptop").get_json()
    sid = claims_of(phone["access_token"])["sid"]

    ended = client.delete(f"/v1/auth/sessions/{sid}", headers=bearer(laptop["access_token"]))

    assert ended.status_code == 204
    assert_auth_error(refresh(client, phone["refresh_token"]))
    assert_auth_error(client.get("/v1/auth/me", headers=bearer(phone["access_token"])))
    assert client.get("/v1/auth/me", headers=bearer(laptop["access_token"])).status_code == 200
    listed = client.get("/v1/auth/sessions", headers=bearer(laptop["access_token"])).get_json()
    assert [row["device"] for row in listed] == ["laptop"]


def test_another_users_session_is_a_404_in_any_tenant(
    client: Any, make_user: Any, login: Any
) -> None:
    me = make_user()
    colleague = make_user(tenant_of(me))
    neighbour = make_user()  # another tenant
    mine = login(me).get_json()
    for other in (colleague, neighbour):
        theirs = login(other).get_json()
        sid = claims_of(theirs["access_token"])["sid"]

        response = client.delete(f"/v1/auth/sessions/{sid}", headers=bearer(mine["access_token"]))

        assert response.status_code == 404
        assert refresh(client, theirs["refresh_token"]).status_code == 200


def test_sign_out_everywhere_ends_every_session_and_token(
    client: Any, make_user: Any, login: Any
) -> None:
    user = make_user()
    first, second = login(user).get_json(), login(user).get_json()

    response = client.delete("/v1/auth/sessions", headers=bearer(first["access_token"]))

    assert response.status_code == 204
    for pair in (first, second):
        assert_auth_error(refresh(client, pair["refresh_token"]))
        assert_auth_error(client.get("/v1/auth/me", headers=bearer(pair["access_token"])))
    assert login(user).status_code == 200  # the account itself stays usable


def test_session_routes_need_a_token(client: Any) -> None:
    for method, path in (
        ("GET", "/v1/auth/sessions"),
        ("DELETE", "/v1/auth/sessions"),
        ("DELETE", "/v1/auth/sessions/ses_aaaaaaaaaaaaaaaaaaaa"),
    ):
        assert_auth_error(client.open(path, method=method), error="")
