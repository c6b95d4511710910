"""Placeholder: /v1/auth and /v1/tokens (issue 3)."""

from flask_smorest import Blueprint

bp = Blueprint("auth", __name__, url_prefix="/v1/auth")
tokens_bp = Blueprint("tokens", __name__, url_prefix="/v1/tokens")
