"""Placeholder blueprint; filled in by its issue."""

from flask_smorest import Blueprint

bp = Blueprint("usage", __name__, url_prefix="/v1")
