"""Placeholder: serves openapi.yaml and /docs (issue 8)."""

from flask import Blueprint

bp = Blueprint("docs", __name__)
