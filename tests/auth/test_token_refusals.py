"""Every way a token can be wrong is refused with a 401 in the envelope and an RFC 6750 challenge.

Forged tokens are built with PyJWT directly, from the claims of a genuine one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.tokens import (
    OTHER_SECRET,
    assert_auth_error,
    assert_pair_refused,
    bearer,
    claims_of,
    sign,
    tampered,
    unsigned,
)


def _without(claims: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k not in names}


# name -> (forge the genuine token, a fragment of the refusal message that names the reason)
FORGERIES: dict[str, tuple[Callable[[str], str], str]] = {
    "expired": (lambda t: sign({**claims_of(t), "exp": int(time.time()) - 5}), "expired"),
    "signed-with-another-key": (lambda t: sign(claims_of(t), key=OTHER_SECRET), "Signature"),
    "alg-none": (lambda t: unsigned(claims_of(t)), "alg value is not allowed"),
    "alg-hs512-same-key": (lambda t: sign(claims_of(t), alg="HS512"), "alg value is not allowed"),
    "tampered-tenant": (lambda t: tampered(t, tenant="ten_aaaaaaaaaaaaaaaaaaaa"), "Signature"),
    "tampered-role": (lambda t: tampered(t, role="operator"), "Signature"),
    "tampered-scopes": (lambda t: tampered(t, scopes=["admin", "chat", "read"]), "Signature"),
    "wrong-audience": (lambda t: sign({**claims_of(t), "aud": "someone-else"}), "Audience"),
    "wrong-issuer": (lambda t: sign({**claims_of(t), "iss": "evil"}), "issuer"),
    "no-audience": (lambda t: sign(_without(claims_of(t), "aud")), '"aud"'),
    "no-issuer": (lambda t: sign(_without(claims_of(t), "iss")), '"iss"'),
    "no-exp": (lambda t: sign(_without(claims_of(t), "exp")), "claims are invalid"),
    "no-tenant": (lambda t: sign(_without(claims_of(t), "tenant")), "claims are invalid"),
    "unknown-role": (lambda t: sign({**claims_of(t), "role": "root"}), "claims are invalid"),
    "garbage": (lambda t: "not.a.jwt", "Invalid token"),
    "truncated-signature": (lambda t: t[:-4], "Invalid token"),
}


@pytest.mark.parametrize(("forge", "reason"), FORGERIES.values(), ids=FORGERIES.keys())
def test_a_forged_or_broken_token_is_refused(
    client: Any, make_user: Any, tokens_for: Any, forge: Callable[[str], str], reason: str
) -> None:
    token = tokens_for(make_user(role="admin"))["access_token"]
    assert client.get("/v1/auth/me", headers=bearer(token)).status_code == 200  # the control

    response = client.get("/v1/auth/me", headers=bearer(forge(token)))

    assert_auth_error(response)
    assert reason in response.get_json()["message"]


def test_the_genuine_claims_re_signed_with_the_right_key_are_accepted(
    client: Any, pair: dict[str, str]
) -> None:
    # Proves the forgeries above fail for the reason they name, not because PyJWT signs oddly.
    token = pair["access_token"]

    assert client.get("/v1/auth/me", headers=bearer(sign(claims_of(token)))).status_code == 200


def test_an_expired_token_says_so(client: Any, pair: dict[str, str]) -> None:
    token = pair["access_token"]

    response = client.get("/v1/auth/me", headers=bearer(sign({**claims_of(token), "exp": 1})))

    assert_auth_error(response)
    assert response.get_json()["message"] == "Token has expired"


def test_a_refresh_token_is_not_an_access_token(client: Any, pair: dict[str, str]) -> None:
    assert_auth_error(client.get("/v1/auth/me", headers=bearer(pair["refresh_token"])))
    assert_auth_error(client.post("/v1/auth/logout", headers=bearer(pair["refresh_token"])))


def test_an_access_token_is_not_a_refresh_token(client: Any, pair: dict[str, str]) -> None:
    assert_auth_error(client.post("/v1/auth/refresh", headers=bearer(pair["access_token"])))


def test_a_revoked_jti_is_refused(client: Any, pair: dict[str, str]) -> None:
    from auth.tokens import revoke_jti

    token = pair["access_token"]
    claims = claims_of(token)

    revoke_jti(claims["jti"], claims["exp"])

    response = client.get("/v1/auth/me", headers=bearer(token))
    assert_auth_error(response)
    assert response.get_json()["message"] == "Token has been revoked"


def test_a_token_issued_before_the_users_cutoff_is_refused_and_later_ones_work(
    client: Any, make_user: Any, tokens_for: Any
) -> None:
    from auth.tokens import revoke_user_tokens

    user = make_user()
    before = tokens_for(user)

    revoke_user_tokens(user.id)
    time.sleep(0.005)  # the cutoff is in milliseconds
    after = tokens_for(user)

    assert_pair_refused(client, before)
    assert client.get("/v1/auth/me", headers=bearer(after["access_token"])).status_code == 200


@pytest.mark.db
def test_a_disabled_user_is_refused_everywhere(
    client: Any, login: Any, signed_in: tuple[Any, dict[str, str]]
) -> None:
    from auth import service

    user, pair = signed_in

    service.disable_user(user.tenant_id, user.id, None, "left the company")

    assert_pair_refused(client, pair)
    response = login(user)
    assert_auth_error(response)
    assert response.get_json() == login(user, "wrong password", addr="10.9.9.9").get_json()


@pytest.mark.db
def test_a_disabled_tenant_is_refused_everywhere(
    client: Any, make_tenant: Any, make_user: Any, tokens_for: Any, login: Any
) -> None:
    from auth import service

    tenant = make_tenant()
    admin, member = make_user(tenant, role="admin"), make_user(tenant)
    pairs = [tokens_for(admin), tokens_for(member)]

    service.disable_tenant(tenant.id, None, "unpaid")

    for pair in pairs:
        assert_pair_refused(client, pair)
    response = login(member)
    assert_auth_error(response)
    assert response.get_json()["message"] == "Invalid tenant, email or password."


@pytest.mark.db
def test_a_disabled_account_stays_out_even_if_redis_forgets(
    client: Any, redis: Any, signed_in: tuple[Any, dict[str, str]]
) -> None:
    from auth import service

    user, pair = signed_in
    service.disable_user(user.tenant_id, user.id, None)

    redis.flushall()  # Redis restarted without persistence: the revocation keys are gone

    assert_auth_error(client.post("/v1/auth/refresh", headers=bearer(pair["refresh_token"])))


def test_challenge_descriptions_stay_inside_the_quoted_string(
    client: Any, pair: dict[str, str]
) -> None:
    token = pair["access_token"]

    response = client.get("/v1/auth/me", headers=bearer(token[:20] + '"\\' + token[20:]))

    assert_auth_error(response)
    description = response.headers["WWW-Authenticate"].split('error_description="', 1)[1]
    assert description.count('"') == 1 and description.endswith('"') and "\\" not in description
