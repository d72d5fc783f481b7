"""The OpenAPI 3.1 document of the JSON API, generated from the endpoint list and the
pydantic models (so it describes exactly what the code accepts and returns)."""

from __future__ import annotations

import re
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from mailstead import __version__
from mailstead.web.api_models import Error, Ok

REF = "#/components/schemas/{model}"
_CONVERTER = re.compile(r"\{(\w+):\w+\}")
REASONS = {
    400: "The request is not valid (the error says why)",
    401: "Missing or wrong credentials",
    403: "Not allowed (not an administrator, or sign-up refused)",
    404: "No such thing (or not yours)",
    409: "It exists already, or is still in use",
    413: "The request body is too large",
    422: "A mailbox is full (quota)",
    429: "Too many attempts; try later",
}


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, model: type[BaseModel], mode: str) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=REF, mode=mode,  # type: ignore[arg-type]
                                         by_alias=True)
        for name, sub in schema.pop("$defs", {}).items():
            self.components.setdefault(name, sub)
        self.components.setdefault(model.__name__, schema)
        return {"$ref": REF.format(model=model.__name__)}

    def of(self, annotation: Any, mode: str) -> dict[str, Any]:
        if get_origin(annotation) is list:
            (item,) = get_args(annotation)
            return {"type": "array", "items": self.of(item, mode)}
        return self.ref(annotation, mode)


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def build_document(endpoints: list[Any], hostname: str) -> dict[str, Any]:
    schemas = _Schemas()
    error_ref = schemas.ref(Error, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        path = _CONVERTER.sub(r"{\1}", ep.path)
        operation: dict[str, Any] = {
            "operationId": ep.operation_id,
            "summary": ep.summary,
            "tags": [ep.tag],
        }
        if ep.params:
            operation["parameters"] = [
                {"name": p.name, "in": p.location, "required": p.required or p.location == "path",
                 "schema": p.schema, **({"description": p.description} if p.description else {})}
                for p in ep.params
            ]
        if ep.body is not None:
            operation["requestBody"] = {"required": True,
                                        **_json(schemas.ref(ep.body, "validation"))}
        if ep.produces == "application/json":
            success = _json(schemas.of(ep.response or Ok, "serialization"))
        else:
            success = {"content": {ep.produces: {"schema": {"type": "string",
                                                            "format": "binary"}}}}
        responses: dict[str, Any] = {str(ep.status): {"description": "Success", **success}}
        codes = set(ep.errors)
        if ep.body is not None:
            codes |= {400, 413}
        if ep.auth != "none":
            codes.add(401)
        if ep.admin:
            codes.add(403)
        for code in sorted(codes):
            responses[str(code)] = {"description": REASONS.get(code, "Error"), **_json(error_ref)}
        operation["responses"] = responses
        if ep.auth == "basic":
            operation["security"] = [{"basic": []}]
        elif ep.auth == "none":
            operation["security"] = []
        paths.setdefault(path, {})[ep.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mailstead API",
            "version": __version__,
            "description": (
                "Webmail, account and administration API of mailstead. Authenticate with "
                "'Authorization: Bearer <token>' (POST /api/token with HTTP Basic gives one). "
                "Errors are JSON objects {\"error\": \"...\"}."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
    }
