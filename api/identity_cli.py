"""Operator commands: ``flask tenants|users|tokens ...``.

They call the same service functions as the HTTP API, so every change is audited (actor ``None``:
the command line). The commands that revoke credentials (``tokens revoke``, ``users disable``,
``users set-role`` to a lower role, ``tenants disable``) go through ``streaming.revocation`` like
the admin API: the tokens die at once and the principal's running generations and open subscriptions
are stopped on every worker (which is why these commands live in the api layer). The command line
is the only way to create an operator.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

import click
from flask import Flask
from flask.cli import AppGroup

from auth import service
from auth.models import ROLES, SCOPES, User
from core.errors import ApiError
from streaming import revocation

F = TypeVar("F", bound=Callable[..., Any])

tenants_cli = AppGroup("tenants", help="Create, list and disable tenants.")
users_cli = AppGroup("users", help="Create, list, disable users and set their roles.")
tokens_cli = AppGroup("tokens", help="Issue and revoke app tokens.")


def register(app: Flask) -> None:
    """Attach the identity commands to ``app.cli``."""
    for group in (tenants_cli, users_cli, tokens_cli):
        app.cli.add_command(group)


def _api_errors(command: F) -> F:
    """Show a service error as a one-line CLI error (exit status 1), not a traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ApiError as exc:
            raise click.ClickException(exc.message) from exc

    return cast(F, wrapper)


# Options several commands take, declared once.
_tenant_option = click.option("--tenant", "tenant_slug", required=True, help="Tenant slug.")
_reason_option = click.option("--reason", help="Recorded in the audit log.")


def _slug_and_reason(command: F) -> F:
    """A tenant command's ``SLUG [--reason TEXT]``."""
    return click.argument("slug")(_reason_option(_api_errors(command)))


def _email_and_reason(command: F) -> F:
    """A user command's ``--tenant SLUG EMAIL [--reason TEXT]``."""
    return _tenant_option(click.argument("email")(_reason_option(_api_errors(command))))


def _user(tenant_slug: str, email: str) -> User:
    """The user ``email`` of the tenant ``tenant_slug`` (a 404 as a CLI error)."""
    return service.user_by_email(service.tenant_by_slug(tenant_slug).id, email)


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _stopped(streams: list[str]) -> str:
    return f"; {len(streams)} running stream(s) revoked" if streams else ""


# --- tenants ------------------------------------------------------------------------------------


@tenants_cli.command("create")
@click.argument("slug")
@click.option("--name", help="Display name (default: the slug).")
@click.option("--models", help="Comma-separated allowed models (default: LLM_MODELS).")
@_api_errors
def create_tenant(slug: str, name: str | None, models: str | None) -> None:
    """Create a tenant."""
    tenant = service.create_tenant(
        slug, name or slug, allowed_models=_csv(models) if models is not None else None
    )
    click.echo(f"created tenant {tenant.slug} ({tenant.id})")


@tenants_cli.command("list")
def list_tenants() -> None:
    """List every tenant."""
    for tenant in service.list_tenants():
        state = "disabled" if tenant.disabled else "active"
        models = ",".join(tenant.allowed_models or [])
        click.echo(f"{tenant.id}  {tenant.slug:<24} {state:<8} {tenant.name}  models={models}")


@tenants_cli.command("disable")
@_slug_and_reason
def disable_tenant(slug: str, reason: str | None) -> None:
    """Disable a tenant: all its tokens stop working, its running streams are revoked."""
    tenant = revocation.disable_tenant(service.tenant_by_slug(slug).id, None, reason)
    click.echo(f"disabled tenant {tenant.slug}; every token of its users is revoked")


@tenants_cli.command("enable")
@_slug_and_reason
def enable_tenant(slug: str, reason: str | None) -> None:
    """Re-enable a disabled tenant (old tokens stay revoked)."""
    tenant = service.enable_tenant(service.tenant_by_slug(slug).id, None, reason)
    click.echo(f"enabled tenant {tenant.slug}")


# --- users --------------------------------------------------------------------------------------


@users_cli.command("create")
@_tenant_option
@click.option("--email", required=True)
@click.option("--role", type=click.Choice(ROLES), default="member", show_default=True)
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="Prompted for when omitted (keeps it out of the shell history).",
)
@_api_errors
def create_user(tenant_slug: str, email: str, role: str, password: str) -> None:
    """Create a user (the only way to create an operator)."""
    tenant = service.tenant_by_slug(tenant_slug)
    user = service.create_user(tenant.id, email, password, role=role, allow_operator=True)
    click.echo(f"created {user.role} {user.email} ({user.id}) in {tenant.slug}")


@users_cli.command("list")
@_tenant_option
@_api_errors
def list_users(tenant_slug: str) -> None:
    """List a tenant's users."""
    for user in service.list_users(service.tenant_by_slug(tenant_slug).id):
        state = "disabled" if user.disabled else "active"
        click.echo(f"{user.id}  {user.email:<32} {user.role:<8} {state}")


@users_cli.command("disable")
@_email_and_reason
def disable_user(tenant_slug: str, email: str, reason: str | None) -> None:
    """Disable a user: every token they hold stops working, their running streams are revoked."""
    user = _user(tenant_slug, email)
    user, streams = revocation.disable_user(None, user.id, None, reason)
    click.echo(f"disabled {user.email}; their tokens are revoked{_stopped(streams)}")


@users_cli.command("enable")
@_email_and_reason
def enable_user(tenant_slug: str, email: str, reason: str | None) -> None:
    """Re-enable a disabled user (old tokens stay revoked)."""
    user = _user(tenant_slug, email)
    service.enable_user(None, user.id, None, reason)
    click.echo(f"enabled {user.email}")


@users_cli.command("set-role")
@_tenant_option
@click.argument("email")
@click.argument("role", type=click.Choice(ROLES))
@_reason_option
@_api_errors
def set_role(tenant_slug: str, email: str, role: str, reason: str | None) -> None:
    """Set a user's role (a demotion revokes their tokens and stops their streams)."""
    user = _user(tenant_slug, email)
    revocation.set_user_role(None, user.id, role, None, reason, allow_operator=True)
    click.echo(f"{user.email} is now {role}")


# --- app tokens ---------------------------------------------------------------------------------


@tokens_cli.command("issue")
@_tenant_option
@click.option("--email", required=True, help="The owner: the token acts as this user.")
@click.option("--name", required=True, help="What the token is for.")
@click.option(
    "--scopes",
    default="chat,read",
    show_default=True,
    help=f"Comma-separated, from: {', '.join(SCOPES)}.",
)
@click.option("--days", "expires_in_days", type=int, default=90, show_default=True)
@_api_errors
def issue_token(tenant_slug: str, email: str, name: str, scopes: str, expires_in_days: int) -> None:
    """Issue an app token and print it (shown once)."""
    user = _user(tenant_slug, email)
    if user.disabled:
        raise click.ClickException(f"{user.email} is disabled")
    row, encoded = service.create_app_token(
        user.tenant_id,
        user.id,
        role=user.role,
        name=name,
        scopes=_csv(scopes),
        expires_in_days=expires_in_days,
    )
    click.echo(f"jti: {row.jti}  expires: {row.expires_at.isoformat()}", err=True)
    click.echo(encoded)


@tokens_cli.command("revoke")
@click.argument("jti")
@_reason_option
@_api_errors
def revoke_token(jti: str, reason: str | None) -> None:
    """Revoke an app token by its jti; the streams it started are revoked."""
    row, streams = revocation.revoke_app_token(None, jti, None, reason)
    click.echo(f"revoked app token {row.jti} ({row.name}){_stopped(streams)}")
