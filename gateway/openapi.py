"""The gateway's own OpenAPI 3.1 description, served at ``/openapi.json``.

Request schemas are built from the tables ``validate.py`` checks requests against, so the description cannot
drift from what the gateway accepts; everything else in a body passes through (``additionalProperties``).
Every error status any endpoint can answer is listed with its body: OpenAI's error object on the OpenAI
endpoints, Anthropic's on ``/v1/messages``.
"""

from __future__ import annotations

import functools
from typing import Any

from backends import Endpoint

from .validate import _RANGES, _ROLES, _SCHEMAS  # the validator's own tables: one source for both

_JSON_TYPES = {
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    list: "array",
    dict: "object",
    type(None): "null",
}
_API_ERRORS = ("400", "401", "403", "404", "408", "413", "429", "500", "502", "503", "504")
_OPERATIONS = {
    Endpoint.CHAT: ("/v1/chat/completions", "createChatCompletion", "CreateChatCompletionRequest"),
    Endpoint.COMPLETIONS: ("/v1/completions", "createCompletion", "CreateCompletionRequest"),
    Endpoint.EMBEDDINGS: ("/v1/embeddings", "createEmbedding", "CreateEmbeddingRequest"),
}


def _property(name: str, types: tuple[type, ...], required: bool) -> dict[str, Any]:
    names = sorted({_JSON_TYPES[t] for t in types if t is not bool or bool in types})
    if float in types and "integer" in names:
        names.remove("integer")  # "number" already admits integers
    if not required and "null" not in names:
        names.append("null")  # the validator treats null as absent
    schema: dict[str, Any] = {"type": names if len(names) > 1 else names[0]}
    if name in _RANGES:
        schema["minimum"], schema["maximum"] = _RANGES[name]
    return schema


def _request(endpoint: Endpoint) -> dict[str, Any]:
    types, required = _SCHEMAS[endpoint]
    properties = {
        name: _property(name, accepted, name in required)
        for name, (accepted, _) in types.items()
        if endpoint is not Endpoint.COMPLETIONS or name not in _CHAT_ONLY
    }
    properties["model"]["minLength"] = 1
    if endpoint is Endpoint.CHAT:
        properties["messages"] = {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role"],
                "additionalProperties": True,
                "properties": {
                    "role": {"enum": sorted(_ROLES)},
                    "content": {"type": ["string", "array", "null"]},
                },
            },
        }
        properties["stop"] = {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]
        }
    return {
        "type": "object",
        "required": list(required),
        "properties": properties,
        "additionalProperties": True,
    }


def _errors(schema: str) -> dict[str, Any]:
    body = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}
    return {
        status: {"description": "An error, in the endpoint's API format.", **body} for status in _API_ERRORS
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_OBJECT: dict[str, Any] = {"type": "object"}
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
# Type-checked by the validator on every endpoint, but parameters of chat only in OpenAI's API: not described
# for legacy completions (they still pass through).
_CHAT_ONLY = {"max_completion_tokens", "metadata"}


@functools.cache
def document() -> dict[str, Any]:
    """The description as a JSON-ready dict (built once)."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        },
        "ErrorResponse": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"$ref": "#/components/schemas/Error"}},
        },
        "AnthropicErrorResponse": {
            "type": "object",
            "required": ["type", "error"],
            "properties": {
                "type": {"const": "error"},
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    }
    for endpoint, (path, operation_id, schema_name) in _OPERATIONS.items():
        schemas[schema_name] = _request(endpoint)
        ok: dict[str, Any] = {"application/json": {"schema": _OBJECT}}
        if endpoint is not Endpoint.EMBEDDINGS:
            ok["text/event-stream"] = {"schema": {"type": "string"}}
        paths[path] = {
            "post": {
                "operationId": operation_id,
                "security": _AUTH,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
                    },
                },
                "responses": {
                    "200": {
                        "description": "The upstream's answer (a stream when `stream` is true).",
                        "content": ok,
                    },
                    **_errors("ErrorResponse"),
                },
            }
        }
    paths["/v1/models"] = {
        "get": {
            "operationId": "listModels",
            "security": _AUTH,
            "responses": {
                "200": _json(
                    "The aliases this key may use.", {"type": "object", "required": ["object", "data"]}
                ),
                **_errors("ErrorResponse"),
            },
        }
    }
    paths["/v1/models/{model}"] = {
        "get": {
            "operationId": "retrieveModel",
            "security": _AUTH,
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": _json("One alias.", {"type": "object", "required": ["id", "object"]}),
                **_errors("ErrorResponse"),
            },
        }
    }
    paths["/v1/messages"] = {
        "post": {
            "operationId": "createMessage",
            "security": _AUTH,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["model", "max_tokens", "messages"],
                            "additionalProperties": True,
                            "properties": {
                                "model": {"type": "string", "minLength": 1},
                                "max_tokens": {"type": "integer", "minimum": 1},
                                "messages": {"type": "array", "minItems": 1, "items": _OBJECT},
                                "stream": {"type": "boolean"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "Anthropic's message (or its event stream).",
                    "content": {
                        "application/json": {"schema": _OBJECT},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **_errors("AnthropicErrorResponse"),
            },
        }
    }
    for path, what in (("/healthz", "The process is alive."), ("/readyz", "Ready to serve (503 while not).")):
        paths[path] = {
            "get": {
                "operationId": path.strip("/"),
                "security": [],
                "responses": {
                    "200": _json(what, {"type": "object", "required": ["status"]}),
                    "503": _json("Starting or draining.", {"type": "object", "required": ["status"]}),
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "LLM gateway",
            "version": "1",
            "description": "OpenAI-compatible endpoints, Anthropic's "
            "Messages API, health checks. Admin endpoints: docs/configuration.md.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }
