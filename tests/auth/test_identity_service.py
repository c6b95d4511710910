"""auth.service: the calls the admin API and the CLI make; each change audited with it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from core.errors import ApiError
from tests.support.tokens import assert_auth_error, bearer

pytestmark = pytest.mark.db


def _audit(target_id: str) -> list[Any]:
    from auth.models import AuditEvent
    from core.store import db

    query = db.select(AuditEvent).filter_by(target_id=target_id).order_by(AuditEvent.created_at)
    return list(db.session.execute(query).scalars())


def test_create_tenant_and_user_normalize_validate_and_audit(app: Any, login: Any) -> None:
    from auth import service
    from auth.passwords import verify_password

    tenant = service.create_tenant("  Acme-Labs ", "Acme Labs", "usr_actor")
    user = service.create_user(tenant.id, " Bob@Example.COM ", "a long passphrase", "usr_actor")

    assert tenant.slug == "acme-labs" and tenant.allowed_models == ["fake-model"]
    assert user.email == "bob@example.com" and user.role == "member"
    assert verify_password(user.password_hash, "a long passphrase")
    assert [e.action for e in _audit(tenant.id)] == ["tenant.create"]
    [created] = _audit(user.id)
    assert created.action == "user.create" and created.actor_id == "usr_actor"
    assert created.tenant_id == tenant.id
    assert login(user, "a long passphrase").status_code == 200


@pytest.mark.parametrize(
    ("call", "status"),
    [
        (lambda s, t: s.create_tenant("Not A Slug!", "x"), 422),
        (lambda s, t: s.create_tenant(t.slug, "dup"), 409),
        (lambda s, t: s.create_user(t.id, "not-an-email", "long enough pw"), 422),
        (lambda s, t: s.create_user(t.id, "a@example.com", "short"), 422),
        (lambda s, t: s.create_user(t.id, "a@example.com", "long enough pw", role="root"), 422),
        (lambda s, t: s.create_user(t.id, "a@example.com", "long enough pw", role="operator"), 403),
        (lambda s, t: s.create_user("ten_missing", "a@example.com", "long enough pw"), 404),
    ],
    ids=[
        "bad-slug",
        "dup-slug",
        "bad-email",
        "short-password",
        "bad-role",
        "operator-outside-cli",
        "no-tenant",
    ],
)
def test_invalid_creations_are_refused_and_write_nothing(
    app: Any, make_tenant: Any, call: Any, status: int
) -> None:
    from auth import service
    from auth.models import AuditEvent, User
    from core.store import db

    tenant = make_tenant()

    with pytest.raises(ApiError) as caught:
        call(service, tenant)

    assert caught.value.code == status
    db.session.rollback()
    assert db.session.execute(db.select(User)).first() is None
    assert db.session.execute(db.select(AuditEvent)).first() is None


def test_a_duplicate_email_in_the_same_tenant_is_a_409_but_fine_in_another(
    app: Any, make_tenant: Any
) -> None:
    from auth import service

    first, second = make_tenant(), make_tenant()
    service.create_user(first.id, "same@example.com", "long enough pw")

    with pytest.raises(ApiError) as caught:
        service.create_user(first.id, "SAME@example.com", "long enough pw")
    assert caught.value.code == 409
    assert service.create_user(second.id, "same@example.com", "long enough pw").id


def test_disable_user_revokes_everything_and_audits_the_reason(
    client: Any, signed_in: tuple[Any, dict[str, str]]
) -> None:
    from auth import service

    user, pair = signed_in

    service.disable_user(user.tenant_id, user.id, "usr_admin", "phished")

    assert user.disabled and user.tokens_valid_after is not None
    [event] = _audit(user.id)[-1:]
    assert (event.action, event.actor_id, event.reason) == ("user.disable", "usr_admin", "phished")
    assert_auth_error(client.get("/v1/auth/me", headers=bearer(pair["access_token"])))


def test_enable_user_lets_new_logins_in_but_old_tokens_stay_dead(
    client: Any, make_user: Any, tokens_for: Any
) -> None:
    from auth import service

    user = make_user()
    old = tokens_for(user)
    service.disable_user(user.tenant_id, user.id, None)

    service.enable_user(user.tenant_id, user.id, None)
    time.sleep(0.005)
    new = tokens_for(user)

    assert_auth_error(client.get("/v1/auth/me", headers=bearer(old["access_token"])))
    assert client.get("/v1/auth/me", headers=bearer(new["access_token"])).status_code == 200


def test_a_demotion_revokes_tokens_and_a_promotion_keeps_them(
    client: Any, make_user: Any, tokens_for: Any
) -> None:
    from auth import service

    user = make_user()
    member_pair = tokens_for(user)

    service.set_user_role(user.tenant_id, user.id, "admin", "usr_actor", "team lead")
    assert client.get("/v1/auth/me", headers=bearer(member_pair["access_token"])).status_code == 200

    time.sleep(0.005)
    admin_pair = tokens_for(user)
    service.set_user_role(user.tenant_id, user.id, "member", "usr_actor")

    assert_auth_error(client.get("/v1/auth/me", headers=bearer(admin_pair["access_token"])))
    assert [e.details for e in _audit(user.id)] == [
        {"from": "member", "to": "admin"},
        {"from": "admin", "to": "member"},
    ]


def test_a_tenant_admin_cannot_touch_an_operator_or_make_one(
    app: Any, make_tenant: Any, make_user: Any
) -> None:
    from auth import service

    tenant = make_tenant()
    operator, member = make_user(tenant, role="operator"), make_user(tenant)

    for call in (
        lambda: service.disable_user(tenant.id, operator.id, "usr_admin"),
        lambda: service.set_user_role(tenant.id, operator.id, "member", "usr_admin"),
        lambda: service.set_user_role(tenant.id, member.id, "operator", "usr_admin"),
    ):
        with pytest.raises(ApiError) as caught:
            call()
        assert caught.value.code == 403
    # an operator (tenant_id=None) may
    assert service.disable_user(None, operator.id, "usr_other_operator").disabled


def test_another_tenants_user_is_a_404(app: Any, make_user: Any) -> None:
    from auth import service

    mine, theirs = make_user(), make_user()

    for call in (
        lambda: service.disable_user(mine.tenant_id, theirs.id, "usr_admin"),
        lambda: service.enable_user(mine.tenant_id, theirs.id, "usr_admin"),
        lambda: service.set_user_role(mine.tenant_id, theirs.id, "admin", "usr_admin"),
        lambda: service.sign_out_everywhere(mine.tenant_id, theirs.id, "usr_admin"),
        lambda: service.revoke_app_token(mine.tenant_id, "jti-of-theirs", "usr_admin"),
    ):
        with pytest.raises(ApiError) as caught:
            call()
        assert caught.value.code == 404
    assert not theirs.disabled and theirs.role == "member"


def test_sign_out_everywhere_keeps_the_account_enabled(
    client: Any, make_user: Any, tokens_for: Any
) -> None:
    from auth import service

    user = make_user()
    before = tokens_for(user)

    service.sign_out_everywhere(user.tenant_id, user.id, None, "lost phone")
    time.sleep(0.005)

    assert_auth_error(client.get("/v1/auth/me", headers=bearer(before["access_token"])))
    assert not user.disabled
    after = tokens_for(user)
    assert client.get("/v1/auth/me", headers=bearer(after["access_token"])).status_code == 200


def test_disable_and_enable_tenant(
    client: Any, make_tenant: Any, make_user: Any, login: Any
) -> None:
    from auth import service

    tenant = make_tenant()
    user = make_user(tenant)

    service.disable_tenant(tenant.id, None, "unpaid")
    assert login(user).status_code == 401
    service.enable_tenant(tenant.id, None, "paid")
    time.sleep(0.005)

    response = login(user, addr="10.6.0.1")
    assert response.status_code == 200
    assert [e.action for e in _audit(tenant.id)] == ["tenant.disable", "tenant.enable"]
