"""Placeholder blueprint; filled in by its issue."""

from flask_smorest import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/v1")
