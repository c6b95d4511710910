"""The chat page at ``/`` and the admin console at ``/console``: plain HTML, CSS and JavaScript
(no build step), served by Flask.

Both use only the public API, as any browser app would: cookie login with CSRF headers,
``/v1/conversations`` (each reply a channel-mode stream) and ``EventSource`` on ``/v1/events``;
the console the admin routes and the tenant's lifecycle channel. Third-party scripts (Markdown,
sanitizer, highlighter, charts) are vendored under ``static/vendor/`` with their licenses:
nothing is fetched at run time.
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

# The pages hold no secret, but their scripts handle auth cookies: keep them out of frames, and
# let nothing run or load that the app does not serve itself.
CSP = (
    "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def page(template: str, **context: object) -> Response:
    """A page of the web UI with its security headers (the console renders through this too)."""
    response = Response(render_template(template, **context), mimetype="text/html")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = CSP
    return response


@bp.get("/")
def playground() -> Response:
    """The chat page."""
    return page("playground.html")


@bp.get("/favicon.ico")
def favicon() -> Response:
    """The site icon, for browsers that ask for it before reading a page's ``<link rel=icon>``."""
    return bp.send_static_file("favicon.ico")


@bp.get("/console")
def console() -> Response:
    """The admin console page (its data comes from the admin API, for admins and operators)."""
    return page("console.html")
