"""Validation against the schemas of OpenAI's published OpenAPI spec."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

# A copy of ../shared/specs/openai-openapi.yaml (MIT, see specs/openai-openapi.LICENSE).
_SPEC = Path(__file__).resolve().parent / "specs" / "openai-openapi.yaml"


@functools.cache
def _spec() -> tuple[dict[str, Any], Registry]:
    spec = yaml.load(_SPEC.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    _nullable(spec)
    registry = Registry().with_resource(
        "urn:openai", Resource.from_contents(spec, default_specification=DRAFT202012)
    )
    return spec, registry


def validate(schema: str, instance: Any) -> None:
    """Raises jsonschema.ValidationError if ``instance`` is not a valid ``components.schemas[schema]``."""
    _, registry = _spec()
    validator = jsonschema.Draft202012Validator(
        {"$ref": f"urn:openai#/components/schemas/{schema}"}, registry=registry
    )
    validator.validate(instance)


def _nullable(node: Any) -> None:
    """The spec still marks null with OpenAPI 3.0's ``nullable: true``; say it in JSON Schema's words."""
    if isinstance(node, dict):
        if node.get("nullable") is True:
            if isinstance(node.get("type"), str):
                node["type"] = [node["type"], "null"]
            if isinstance(node.get("enum"), list) and None not in node["enum"]:
                node["enum"].append(None)
            if "$ref" in node or "allOf" in node or "oneOf" in node or "anyOf" in node:
                branches = [{k: node.pop(k)} for k in ("$ref", "allOf", "oneOf", "anyOf") if k in node]
                node["anyOf"] = [{"type": "null"}, *branches]
        for value in node.values():
            _nullable(value)
    elif isinstance(node, list):
        for value in node:
            _nullable(value)
