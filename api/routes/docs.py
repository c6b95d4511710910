"""The documented contract: ``GET /openapi.yaml`` and the API reference at ``GET /docs``.

The document is built by ``api.openapi`` (the same function writes the committed
``openapi.yaml``). ``/docs`` is Swagger UI served from the ``flask-swagger-ui`` package's files:
no CDN, works offline.
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, current_app, url_for

from api.openapi import openapi_yaml

SWAGGER_DIST = Path(flask_swagger_ui.__file__).resolve().parent / "dist"

bp = Blueprint("docs", __name__, static_folder=str(SWAGGER_DIST), static_url_path="/docs/assets")


@bp.get("/openapi.yaml")
def get_openapi() -> Response:
    """The OpenAPI 3.1 description of this API."""
    # text/yaml, inline: a browser shows it as text (application/yaml makes Chromium download
    # it); Swagger UI and other tools read it whatever the type.
    return Response(
        openapi_yaml(current_app),
        mimetype="text/yaml",
        headers={"Content-Disposition": 'inline; filename="openapi.yaml"'},
    )


@bp.get("/docs")
def get_docs() -> Response:
    """The API reference (Swagger UI over /openapi.yaml), served without any CDN."""
    html = _DOCS_HTML.replace("{assets}", url_for("docs.static", filename="")).replace(
        "{spec}", url_for("docs.get_openapi")
    )
    return Response(html, mimetype="text/html")


_DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Streamgate API reference</title>
  <link rel="stylesheet" href="{assets}swagger-ui.css">
  <link rel="icon" type="image/png" href="{assets}favicon-32x32.png">
  <style>body { margin: 0 } .topbar-note { font: 14px system-ui, sans-serif; padding: 8px 20px;
    background: #1f2430; color: #eee } .topbar-note a { color: #8cc8ff }</style>
</head>
<body>
  <div class="topbar-note">Streamgate API reference &middot; <a href="{spec}">openapi.yaml</a>
    &middot; <a href="/">playground</a></div>
  <div id="swagger-ui"></div>
  <script src="{assets}swagger-ui-bundle.js"></script>
  <script>
    function csrf() {
      var m = document.cookie.match(/(?:^|; )csrf_access_token=([^;]*)/);
      return m ? decodeURIComponent(m[1]) : null;
    }
    window.ui = SwaggerUIBundle({
      url: "{spec}",
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
      // "Try it out" with the playground's cookie login: send the CSRF header it needs.
      requestInterceptor: function (req) {
        var token = csrf();
        if (token && req.method !== "GET") { req.headers["X-CSRF-TOKEN"] = token; }
        return req;
      }
    });
  </script>
</body>
</html>
"""
