"""The gateway's /openapi.json: consistent with OpenAI's published spec where they share endpoints, and
fuzzed by schemathesis (a bounded number of cases): every answer a documented status, its body in the
documented format, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks
from schemathesis.core.result import Ok

from tests.conftest import KEY
from tests.openapi import _spec

EXAMPLES = 20  # per operation and mode: 8 operations x 2 modes x 20, about 30 s on the CI machine


def _openai_properties(spec: dict[str, Any], name: str) -> tuple[set[str], set[str]]:
    """(every property, required ones) of an OpenAI request schema, allOf parts and $refs followed."""
    schemas = spec["components"]["schemas"]
    schema = schemas[name]
    properties: set[str] = set(schema.get("properties", {}))
    required: set[str] = set(schema.get("required", []))
    for part in schema.get("allOf", []):
        if "$ref" in part:
            more, needed = _openai_properties(spec, part["$ref"].rsplit("/", 1)[1])
        else:
            more, needed = set(part.get("properties", {})), set(part.get("required", []))
        properties |= more
        required |= needed
    return properties, required


def test_openapi_json_agrees_with_openai_for_the_shared_endpoints(gateway):
    ours = httpx.get(gateway.url + "/openapi.json").json()
    spec, _ = _spec()
    shared = [path for path in ours["paths"] if path.startswith("/v1/") and path[3:] in spec["paths"]]
    assert sorted(shared) == [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model}",
    ]
    for path in shared:
        theirs = spec["paths"][path[3:]]
        for method, operation in ours["paths"][path].items():
            assert method in theirs, (path, method)
            ref = (
                operation.get("requestBody", {})
                .get("content", {})
                .get("application/json", {})
                .get("schema", {})
            )
            if "$ref" not in ref:
                continue
            name = ref["$ref"].rsplit("/", 1)[1]
            assert theirs[method]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
                name
            )
            properties, required = _openai_properties(spec, name)
            schema = ours["components"]["schemas"][name]
            assert set(schema["required"]) == required, name
            assert set(schema["properties"]) <= properties, (
                set(schema["properties"]) - properties
            )  # nothing invented


def test_fuzzed_requests_get_documented_answers_and_never_a_500(gateway):
    # schemathesis's pytest plugin does not run under this pytest; its strategies are driven directly instead.
    api = schemathesis.openapi.from_url(gateway.url + "/openapi.json")
    operations = []
    for result in api.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) == 8
    for operation in operations:
        takes_input = {"requestBody", "parameters"} & set(operation.definition.raw)
        for mode in (
            (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,)
        ):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def call(case: Any) -> None:
                case.call_and_validate(
                    headers={"Authorization": f"Bearer {KEY}"},
                    timeout=20,
                    checks=[
                        checks.not_a_server_error,
                        checks.status_code_conformance,
                        checks.content_type_conformance,
                        checks.response_schema_conformance,
                    ],
                )

            call()
