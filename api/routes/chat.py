"""Placeholder blueprint; filled in by its issue."""

from flask_smorest import Blueprint

bp = Blueprint("chat", __name__, url_prefix="/v1")
