"""Flask CLI commands (``flask --app api:create_app ...``)."""

from __future__ import annotations

import click
from flask import Flask

from api.config import markdown_table
from auth.cli import register as register_auth_cli


def register_cli(app: Flask) -> None:
    """Attach Streamgate's commands to ``app.cli``."""
    register_auth_cli(app)

    @app.cli.command("config-table")
    def config_table() -> None:
        """Print the README's configuration table."""
        click.echo(markdown_table())
