"""``flask seed-demo``: the demo tenant, its admin and member, with passwords kept in instance/."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

pytestmark = pytest.mark.db


@pytest.fixture()
def seeded(app: Flask, tmp_path: Path) -> Any:
    app.instance_path = str(tmp_path)  # never the checkout's instance/
    runner = app.test_cli_runner()

    def seed() -> Any:
        result = runner.invoke(args=["seed-demo"])
        assert result.exit_code == 0, result.output
        return result

    return seed


def demo_users() -> dict[str, Any]:
    from auth.models import Tenant, User
    from core.store import db

    tenant = db.session.execute(db.select(Tenant).filter_by(slug="demo")).scalar_one()
    users = db.session.execute(db.select(User).filter_by(tenant_id=tenant.id)).scalars()
    return {user.email: user for user in users}


def test_seed_demo_creates_the_tenant_and_users(app: Flask, seeded: Any, tmp_path: Path) -> None:
    from auth.models import Tenant
    from auth.passwords import verify_password
    from core.store import db

    output = seeded().output
    path = tmp_path / "demo-credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    roles = {user["email"]: user["role"] for user in saved["users"]}
    assert roles == {"admin@demo.test": "admin", "member@demo.test": "member"}

    users = demo_users()
    for entry in saved["users"]:
        assert entry["password"] in output
        assert len(entry["password"]) >= 16
        assert verify_password(users[entry["email"]].password_hash, entry["password"])
        assert users[entry["email"]].role == entry["role"]
    tenant = db.session.execute(db.select(Tenant).filter_by(slug="demo")).scalar_one()
    assert tenant.allowed_models == app.config["LLM_MODELS"]


def test_seed_demo_is_idempotent_and_keeps_passwords(seeded: Any, tmp_path: Path) -> None:
    from core.store import db

    seeded()
    first = json.loads((tmp_path / "demo-credentials.json").read_text())
    seeded()
    assert json.loads((tmp_path / "demo-credentials.json").read_text()) == first
    assert len(demo_users()) == 2

    # A database that lost the kept password (reset, restored) gets it back on the next run.
    from auth.passwords import hash_password, verify_password

    admin = demo_users()["admin@demo.test"]
    admin.password_hash = hash_password("something else")
    db.session.commit()
    seeded()
    password = next(u["password"] for u in first["users"] if u["email"] == "admin@demo.test")
    assert verify_password(demo_users()["admin@demo.test"].password_hash, password)


def test_seed_demo_passwords_are_random(app: Flask, seeded: Any, tmp_path: Path) -> None:
    from auth.models import Tenant, User
    from core.store import db

    seeded()
    first = json.loads((tmp_path / "demo-credentials.json").read_text())
    # A fresh instance/ and database: new passwords, never a fixed default.
    (tmp_path / "demo-credentials.json").unlink()
    db.session.execute(db.delete(User))
    db.session.execute(db.delete(Tenant))
    db.session.commit()
    seeded()
    second = json.loads((tmp_path / "demo-credentials.json").read_text())
    old = {user["password"] for user in first["users"]}
    assert old.isdisjoint(user["password"] for user in second["users"])
