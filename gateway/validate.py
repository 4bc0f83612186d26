"""Checks on the client's JSON before anything is sent upstream: required fields and their types.

Only what the gateway itself relies on, or what every upstream would refuse anyway; everything else
passes through untouched so that new OpenAI parameters work without a gateway release.
"""

from __future__ import annotations

from typing import Any

from backends import Endpoint
from errors import InvalidRequest

_NUMBER = (int, float)
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# name -> (accepted python types, the type's name in OpenAI's words)
_COMMON: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a string"),
    "stream": ((bool,), "a boolean"),
    "n": ((int,), "an integer"),
    "max_tokens": ((int,), "an integer"),
    "max_completion_tokens": ((int,), "an integer"),
    "temperature": (_NUMBER, "a number"),
    "top_p": (_NUMBER, "a number"),
    "presence_penalty": (_NUMBER, "a number"),
    "frequency_penalty": (_NUMBER, "a number"),
    "seed": ((int,), "an integer"),
    "user": ((str,), "a string"),
    "stop": ((str, list, type(None)), "a string or an array of strings"),
    "stream_options": ((dict, type(None)), "an object"),
    "logit_bias": ((dict, type(None)), "an object"),
    "metadata": ((dict, type(None)), "an object"),
}
_CHAT = {
    **_COMMON,
    "messages": ((list,), "an array"),
    "tools": ((list,), "an array"),
    "tool_choice": ((str, dict), "a string or an object"),
    "response_format": ((dict,), "an object"),
    "logprobs": ((bool,), "a boolean"),
    "top_logprobs": ((int,), "an integer"),
    "parallel_tool_calls": ((bool,), "a boolean"),
}
_COMPLETIONS = {
    **_COMMON,
    "prompt": ((str, list), "a string or an array"),
    "logprobs": ((int, type(None)), "an integer"),
    "echo": ((bool,), "a boolean"),
    "best_of": ((int,), "an integer"),
    "suffix": ((str, type(None)), "a string"),
}
_EMBEDDINGS: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a string"),
    "input": ((str, list), "a string or an array"),
    "encoding_format": ((str,), "a string"),
    "dimensions": ((int,), "an integer"),
    "user": ((str,), "a string"),
}
_Types = dict[str, tuple[tuple[type, ...], str]]
_SCHEMAS: dict[Endpoint, tuple[_Types, tuple[str, ...]]] = {
    Endpoint.CHAT: (_CHAT, ("model", "messages")),
    Endpoint.COMPLETIONS: (_COMPLETIONS, ("model", "prompt")),
    Endpoint.EMBEDDINGS: (_EMBEDDINGS, ("model", "input")),
}
_RANGES: dict[str, tuple[float, float]] = {
    "n": (1, 128),
    "max_tokens": (1, 1 << 31),
    "max_completion_tokens": (1, 1 << 31),
    "temperature": (0, 2),
    "top_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
    "top_logprobs": (0, 20),
}


def validate(endpoint: Endpoint, body: Any) -> None:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    types, required = _SCHEMAS[endpoint]
    for name in required:
        if body.get(name) is None:
            raise InvalidRequest(
                f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
            )
    for name, value in body.items():
        spec = types.get(name)
        if spec is None or value is None:
            continue
        accepted, wording = spec
        # bool is an int in Python; JSON says otherwise.
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
            raise InvalidRequest(
                f"Invalid type for '{name}': expected {wording}, but got {_json_type(value)}.",
                param=name,
                code="invalid_type",
            )
        bounds = _RANGES.get(name)
        if bounds is not None and not bounds[0] <= value <= bounds[1]:  # type: ignore[operator]
            raise InvalidRequest(
                f"Invalid value for '{name}': {value} is not between {bounds[0]:g} and {bounds[1]:g}.",
                param=name,
                code="invalid_value",
            )
    if endpoint is Endpoint.CHAT:
        _messages(body["messages"])
    if isinstance(body.get("stop"), list) and not all(isinstance(s, str) for s in body["stop"]):
        raise InvalidRequest(
            "Invalid type for 'stop': expected a string or an array of strings.",
            param="stop",
            code="invalid_type",
        )


def _messages(messages: list[Any]) -> None:
    if not messages:
        raise InvalidRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            param="messages",
            code="empty_array",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(
                f"Invalid type for 'messages[{i}]': expected an object, but got {_json_type(message)}.",
                param=f"messages[{i}]",
                code="invalid_type",
            )
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise InvalidRequest(
                f"Invalid value for 'messages[{i}].role': expected one of {', '.join(sorted(_ROLES))}.",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequest(
                f"Invalid type for 'messages[{i}].content': expected a string or an array, "
                f"but got {_json_type(content)}.",
                param=f"messages[{i}].content",
                code="invalid_type",
            )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
