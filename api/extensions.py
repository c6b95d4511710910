"""Unbound singletons of the HTTP layer, bound to an app in ``create_app``."""

from __future__ import annotations

from typing import Any

import flask_smorest
from apispec import APISpec
from flask import Flask
from flask_migrate import Migrate


class Api(flask_smorest.Api):  # type: ignore[misc]  # flask-smorest ships no type hints
    """flask-smorest's ``Api``, whose views enter the OpenAPI document when it is first read
    (``documented_spec``) rather than while the app starts.

    flask-smorest documents each blueprint as it is registered: apispec resolving every schema of
    every view, ~0.1 s of CPU per app, paid by every worker at boot and every in-process test app
    for a document only ``/openapi.yaml`` and ``make openapi`` read. The blueprints are
    documented in the order they were registered, so the document is the same.
    """

    def init_app(self, app: Flask, **kwargs: Any) -> None:
        self._undocumented: list[tuple[flask_smorest.Blueprint, str, Any]] = []
        super().init_app(app, **kwargs)

    def register_blueprint(
        self, blp: flask_smorest.Blueprint, *, parameters: Any = None, **options: Any
    ) -> None:
        name = options.get("name", blp.name)
        self._app.extensions["flask-smorest"]["blp_name_to_api"][name] = self
        self._app.register_blueprint(blp, **options)
        self._undocumented.append((blp, name, parameters))

    def documented_spec(self) -> APISpec:
        """The app's spec with every registered blueprint's views in it."""
        while self._undocumented:
            blp, name, parameters = self._undocumented.pop(0)
            blp.register_views_in_doc(self, self._app, self.spec, name=name, parameters=parameters)
            self.spec.tag({"name": name, "description": blp.description})
        spec: APISpec = self.spec
        return spec


migrate = Migrate()
api = Api()
