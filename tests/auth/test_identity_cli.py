"""`flask tenants|users|tokens ...` through app.test_cli_runner()."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.config import PASSWORD
from tests.support.tokens import assert_auth_error, bearer

pytestmark = pytest.mark.db

PW = "operator passphrase"


@pytest.fixture()
def cli(app: Any) -> Any:
    runner = app.test_cli_runner()

    def run(*args: str, ok: bool = True) -> Any:
        result = runner.invoke(args=list(args))
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return run


def test_tenants_create_list_disable(cli: Any, client: Any, make_user: Any) -> None:
    from auth import service

    created = cli("tenants", "create", "acme", "--name", "Acme Inc", "--models", "m1,m2")
    assert "created tenant acme" in created.output
    tenant = service.tenant_by_slug("acme")
    assert tenant.name == "Acme Inc" and tenant.allowed_models == ["m1", "m2"]

    listed = cli("tenants", "list").output
    assert "acme" in listed and "active" in listed

    user = make_user(tenant)
    pair = service.login("acme", user.email, PASSWORD, "127.0.0.1")
    cli("tenants", "disable", "acme", "--reason", "unpaid")

    assert "disabled" in cli("tenants", "list").output
    assert_auth_error(client.get("/v1/auth/me", headers=bearer(pair.access_token)))


def test_a_duplicate_or_unknown_tenant_is_a_clean_error(cli: Any) -> None:
    cli("tenants", "create", "acme")

    duplicate = cli("tenants", "create", "acme", ok=False)
    unknown = cli("tenants", "disable", "nope", ok=False)

    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    assert unknown.exit_code == 1 and "Tenant not found" in unknown.output
    assert "Traceback" not in duplicate.output + unknown.output


def test_users_create_list_set_role_disable(cli: Any, client: Any, login: Any) -> None:
    from auth import service

    cli("tenants", "create", "acme")
    created = cli(
        "users",
        "create",
        "--tenant",
        "acme",
        "--email",
        "Root@Acme.test",
        "--role",
        "operator",
        "--password",
        PW,
    )
    assert "created operator root@acme.test" in created.output
    cli("users", "create", "--tenant", "acme", "--email", "bob@acme.test", "--password", PW)

    listed = cli("users", "list", "--tenant", "acme").output
    assert "root@acme.test" in listed and "operator" in listed and "bob@acme.test" in listed

    cli("users", "set-role", "--tenant", "acme", "bob@acme.test", "admin")
    bob = service.user_by_email(service.tenant_by_slug("acme").id, "bob@acme.test")
    assert bob.role == "admin"

    token = login(bob, PW).get_json()["access_token"]
    cli("users", "disable", "--tenant", "acme", "bob@acme.test", "--reason", "left")

    assert bob.disabled
    assert_auth_error(client.get("/v1/auth/me", headers=bearer(token)))
    assert login(bob, PW, addr="10.7.0.1").status_code == 401


def test_users_create_prompts_for_the_password(app: Any, cli: Any) -> None:
    cli("tenants", "create", "acme")
    runner = app.test_cli_runner()

    result = runner.invoke(
        args=["users", "create", "--tenant", "acme", "--email", "p@acme.test"],
        input=f"{PW}\n{PW}\n",
    )

    assert result.exit_code == 0, result.output
    assert PW not in result.output


def issue_token(cli: Any, email: str, *options: str, ok: bool = True) -> Any:
    """``flask tokens issue`` for ``email``, a new member of a new tenant ``acme`` (by the CLI)."""
    cli("tenants", "create", "acme")
    cli("users", "create", "--tenant", "acme", "--email", email, "--password", PW)
    return cli("tokens", "issue", "--tenant", "acme", "--email", email, *options, ok=ok)


def test_tokens_issue_prints_a_working_token_and_revoke_kills_it(
    cli: Any, client: Any, make_user: Any
) -> None:
    from auth import service

    issued = issue_token(
        cli, "bot-owner@acme.test", "--name", "nightly", "--scopes", "read", "--days", "7"
    )

    token = issued.stdout.strip()
    me = client.get("/v1/auth/me", headers=bearer(token))
    assert me.status_code == 200
    assert me.get_json()["token"]["scopes"] == ["read"]
    [row] = service.list_app_tokens(service.tenant_by_slug("acme").id)
    assert row.name == "nightly" and row.jti in issued.stderr

    revoked = cli("tokens", "revoke", row.jti, "--reason", "rotated")

    assert "revoked app token" in revoked.output
    assert_auth_error(client.get("/v1/auth/me", headers=bearer(token)))


def test_tokens_issue_refuses_the_admin_scope_for_a_member(cli: Any) -> None:
    result = issue_token(cli, "m@acme.test", "--name", "x", "--scopes", "admin", ok=False)

    assert result.exit_code == 1 and "admin" in result.output
