"""Flask CLI commands (``flask --app api:create_app ...``)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app

from api.config import markdown_table
from api.identity_cli import register as register_identity_cli
from auth.models import Tenant, User
from auth.passwords import hash_password, verify_password
from core.store import db

DEMO_TENANT = "demo"
DEMO_USERS = (("admin@demo.test", "admin"), ("member@demo.test", "member"))
DEMO_CREDENTIALS_FILE = "demo-credentials.json"


def register_cli(app: Flask) -> None:
    """Attach Streamgate's commands to ``app.cli``."""
    register_identity_cli(app)

    @app.cli.command("config-table")
    def config_table() -> None:
        """Print the README's configuration table."""
        click.echo(markdown_table())

    @app.cli.command("seed-demo")
    def seed_demo_command() -> None:
        """Create (or repair) the demo tenant, its admin and member; print their credentials."""
        path = Path(current_app.instance_path) / DEMO_CREDENTIALS_FILE
        credentials = seed_demo(path, current_app.config["LLM_MODELS"])
        click.echo(describe_credentials(credentials, path))


def describe_credentials(credentials: dict[str, Any], path: Path) -> str:
    """The demo tenant and its users' passwords, for a terminal."""
    lines = [f"Demo tenant: {credentials['tenant']}  (credentials kept in {path})"]
    lines += [
        f"  {user['role']:<7} {user['email']:<18} password: {user['password']}"
        for user in credentials["users"]
    ]
    return "\n".join(lines)


def _load_credentials(path: Path) -> dict[str, Any]:
    if path.exists():
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("users"), list):
            return data
    return {"tenant": DEMO_TENANT, "users": []}


def _save_credentials(path: Path, data: dict[str, Any]) -> None:
    # Written to a private temp file, then renamed: never world-readable, never half-written.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


def seed_demo(credentials_path: Path, models: list[str]) -> dict[str, Any]:
    """Make sure the demo tenant and users exist and that the kept passwords work; idempotent.

    Passwords are generated on first use and kept in ``credentials_path``; a user whose stored
    hash no longer matches (the database was reset, the file was not) gets the kept password again.
    """
    credentials = _load_credentials(credentials_path)
    known = {user.get("email"): user for user in credentials["users"] if isinstance(user, dict)}
    tenant = db.session.execute(db.select(Tenant).filter_by(slug=DEMO_TENANT)).scalar_one_or_none()
    if tenant is None:
        tenant = Tenant(slug=DEMO_TENANT, name="Demo", allowed_models=list(models))
        db.session.add(tenant)
        db.session.flush()
    else:
        # The demo tenant may always use the models this deployment serves.
        allowed = list(tenant.allowed_models or [])
        missing = [model for model in models if model not in allowed]
        if missing:
            tenant.allowed_models = allowed + missing

    users = []
    for email, role in DEMO_USERS:
        password = str(known.get(email, {}).get("password") or secrets.token_urlsafe(12))
        user = db.session.execute(
            db.select(User).filter_by(tenant_id=tenant.id, email=email)
        ).scalar_one_or_none()
        if user is None:
            user = User(tenant_id=tenant.id, email=email, role=role)
            user.password_hash = hash_password(password)
            db.session.add(user)
        elif not verify_password(user.password_hash, password):
            user.password_hash = hash_password(password)
        users.append({"email": email, "role": role, "password": password})
    result = {"tenant": DEMO_TENANT, "users": users}
    if result != credentials:
        _save_credentials(credentials_path, result)
    db.session.commit()
    return result
