"""Placeholder: the playground (issue 8)."""

from flask import Blueprint

bp = Blueprint("web", __name__)
