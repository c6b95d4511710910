"""Unbound singletons of the HTTP layer, bound to an app in ``create_app``."""

from __future__ import annotations

from flask_migrate import Migrate
from flask_smorest import Api

migrate = Migrate()
api = Api()
