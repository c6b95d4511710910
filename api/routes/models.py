"""``GET /v1/models``: the models this tenant may use, in OpenAI's list shape."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from api.schemas.chat import ModelListSchema
from api.services.generations import allowed_models
from auth.access import current_identity, require

bp = Blueprint("models", __name__, url_prefix="/v1", description="Models a tenant may use")


@bp.get("/models")
@require()
@bp.response(200, ModelListSchema)
def list_models() -> dict[str, Any]:
    """List the models this tenant may use."""
    ident = current_identity()
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "streamgate"}
            for name in allowed_models(ident.tenant_id, ident.jti if ident.kind == "app" else None)
        ],
    }
