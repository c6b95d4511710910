"""The playground at ``/``: plain HTML, CSS and JavaScript (no build step), served by Flask.

It uses only the public API, as any browser app would: cookie login with CSRF headers,
``POST /v1/streams`` and ``EventSource`` on ``/v1/events``, the admin list and revoke.
"""

from __future__ import annotations

from flask import Blueprint, Response, render_template

bp = Blueprint(
    "web",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/playground",
)


@bp.get("/")
def playground() -> Response:
    """The playground page."""
    response = Response(render_template("playground.html"), mimetype="text/html")
    # The page holds no secret, but its script handles auth cookies: keep it out of frames.
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    return response
