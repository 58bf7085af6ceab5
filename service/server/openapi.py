"""The OpenAPI description of /convolve: the multipart form with its ``spec`` part typed as JSON of the Spec schema,
and the error shape; :func:`install_openapi` publishes Spec, its filter and ROI models and Error in
``components.schemas`` (FastAPI cannot see them: the form is parsed by the route itself)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..imaging.codec import CONTENT_TYPES
from ..imaging.spec import Spec

__all__ = ["DETECT_SCHEMA", "ERROR_SCHEMA", "FORM_SCHEMA", "install_openapi"]

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "field", "reason", "errors"],
    "properties": {
        "error": {"type": "string", "description": "a short code, e.g. invalid_request, queue_full"},
        "field": {"type": ["string", "null"], "description": "the input at fault, e.g. spec.filter.ksize"},
        "reason": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def _multipart(spec_schema: str, **parts: dict) -> dict:
    """The requestBody of a multipart ``image`` (+ ``parts``) + JSON ``spec`` (components/schemas/``spec_schema``)."""
    image = {"type": "string", "format": "binary", "description": "PNG/JPEG/TIFF/BMP/WebP/npy"}
    properties = {"image": image, **parts, "spec": {"$ref": f"#/components/schemas/{spec_schema}"}}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image", "spec"], "properties": properties},
                "encoding": {"spec": {"contentType": "application/json"}},
            }
        },
    }


_FORM = _multipart("Spec", mask={"type": "string", "format": "binary", "description": "same size; nonzero = ROI"})
_RAW = {"schema": {"type": "string", "format": "binary", "description": "the image file; its spec in X-Spec"}}
_X_SPEC = {
    "name": "X-Spec",
    "in": "header",
    "required": False,
    "description": "with an application/octet-stream body: the spec JSON (components/schemas/Spec)",
    "schema": {"type": "string"},
}

FORM_SCHEMA = {
    "requestBody": {**_FORM, "content": {**_FORM["content"], "application/octet-stream": _RAW}},
    "parameters": [_X_SPEC],
    "responses": {
        "200": {"description": "The filtered image", "content": {t: {} for t in sorted(set(CONTENT_TYPES.values()))}},
        **{
            code: {"description": text, "content": _ERROR}
            for code, text in {
                "401": "Missing or wrong X-API-Key",
                "408": "The body did not arrive within ROICONV_BODY_TIMEOUT_S",
                "413": "Body, spec or image too large, or more memory than the server admits",
                "422": "Invalid image, mask or spec (the body names the field)",
                "429": "Queue or uploads full; see Retry-After",
                "500": "The computation failed",
                "503": "Draining",
                "504": "Deadline passed",
            }.items()
        },
    },
}


_POINT = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
DETECT_SCHEMA = {
    "requestBody": _multipart("Detect"),
    "responses": {
        "200": {
            "description": "The faces found, by decreasing score, and the ROI pieces /convolve would use for them",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["detections", "roi"],
                        "properties": {
                            "detections": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["box", "score", "landmarks"],
                                    "properties": {
                                        "box": {"type": "array", "items": {"type": "number"}, "minItems": 4},
                                        "score": {"type": "number"},
                                        "landmarks": {"type": "array", "items": _POINT, "minItems": 5},
                                    },
                                },
                            },
                            "roi": {"type": "object"},
                        },
                    }
                }
            },
        },
        **{
            code: {"description": text, "content": _ERROR}
            for code, text in {
                "401": "Missing or wrong X-API-Key",
                "413": "Body or image too large, or more memory than the server admits",
                "422": "Invalid image or spec (the body names the field)",
                "429": "Queue or uploads full; see Retry-After",
                "501": "The detect extra is not installed (the body says how to install it)",
                "504": "Deadline passed",
            }.items()
        },
    },
}


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` include Spec (with its filter/ROI models) and Error in ``components.schemas``."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            spec = Spec.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(spec.pop("$defs", {}))
            components["Spec"] = spec
            components["Error"] = ERROR_SCHEMA
            app.openapi_schema = _markdown(schema)
        return app.openapi_schema

    app.openapi = openapi


def _markdown(node):
    """Descriptions as OpenAPI reads them (CommonMark): the docstrings' ``code`` becomes `code`."""
    if isinstance(node, dict):
        return {k: v.replace("``", "`") if k in _TEXT and isinstance(v, str) else _markdown(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_markdown(v) for v in node]
    return node


_TEXT = ("description", "summary", "title")
