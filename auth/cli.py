"""Placeholder: `flask tenants|users|tokens` commands (issue 3)."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    """Attach the identity commands to ``app.cli``."""
