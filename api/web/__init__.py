"""The playground at ``/`` and the admin console at ``/console``: plain HTML, CSS and
JavaScript (no build step), served by Flask.

Both use only the public API, as any browser app would: cookie login with CSRF headers,
``POST /v1/streams`` and ``EventSource`` on ``/v1/events``; the console the admin routes and the
tenant's lifecycle channel. Vendored libraries (``static/vendor/``) are committed with their
licenses: nothing is fetched at run time.
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

# The pages hold no secret, but their scripts handle auth cookies: keep them out of frames.
_SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
}


def _page(template: str) -> Response:
    response = Response(render_template(template), mimetype="text/html")
    response.headers.update(_SECURITY_HEADERS)
    return response


@bp.get("/")
def playground() -> Response:
    """The playground page."""
    return _page("playground.html")


@bp.get("/console")
def console() -> Response:
    """The admin console page (its data comes from the admin API, for admins and operators)."""
    return _page("console.html")
