"""The OpenAPI document: built from the flask-smorest schemas plus the fragments in ``data/``.

``openapi_yaml(app)`` serves ``GET /openapi.yaml`` (api/routes/docs.py) and writes the committed
``openapi.yaml`` (``make openapi``, scripts/gen_openapi.py), so the two cannot differ
(tests/api/test_openapi.py checks it).
"""

from api.openapi.spec import build_spec, openapi_yaml, render_yaml

__all__ = ["build_spec", "openapi_yaml", "render_yaml"]
