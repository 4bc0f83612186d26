"""OpenAI tool calling for the engine: tool formats, prompts, grammars and the output parser.

A model's tool format is read from its chat template:

- ``hermes`` (Qwen2.5 and other templates that render ``tools`` and write ``<tool_call>``):
  each call is ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, one per line.
- ``llama3_json`` (Llama 3.1+ templates, ``<|python_tag|>`` / ``ipython``): each call is
  ``{"name": ..., "parameters": {...}}``; several are joined by ``"; "``.
- ``generic`` (templates without tool support, e.g. SmolLM2's GGUF template): the
  hermes call syntax, with the tools described in a system message written here;
  assistant tool calls in the history are written back in that syntax and tool results
  become a user message of ``<tool_response>`` blocks.

The calls are enforced by a grammar (``tool_choice`` ``auto``: free text that does not
start with a call, or calls; ``required``: one or more calls; a named function: exactly
one call of it; ``none``: the tools are left out of the prompt and nothing is constrained).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from local_engine.structured import lark_json

GENERIC_SYSTEM_PROMPT = (
    "You can call functions to answer. The functions, as JSON schemas:\n{tools}\n"
    "To call functions, answer with one block per call and nothing else:\n"
    '<tool_call>\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n</tool_call>'
)


@dataclass(frozen=True, slots=True)
class ToolFormat:
    """How one model writes tool calls, and whether its chat template renders ``tools`` itself."""

    name: str
    native: bool
    begin: str  # what every call starts with
    args_key: str
    separator: str

    def render_call(self, name: str, arguments: Any) -> str:
        body = json.dumps({"name": name, self.args_key: arguments}, ensure_ascii=False)
        return f"<tool_call>\n{body}\n</tool_call>" if self.begin == "<tool_call>" else body


HERMES = ToolFormat("hermes", True, "<tool_call>", "arguments", "\n")
LLAMA3_JSON = ToolFormat("llama3_json", True, "{", "parameters", "; ")
GENERIC = ToolFormat("generic", False, "<tool_call>", "arguments", "\n")


def detect_format(chat_template: str | None) -> ToolFormat:
    """The tool format a chat template was written for (``generic`` when it has none)."""
    t = chat_template or ""
    if "tools" in t and "<tool_call>" in t:
        return HERMES
    if "tools" in t and ("<|python_tag|>" in t or "ipython" in t):
        return LLAMA3_JSON
    return GENERIC


class ToolRequestError(ValueError):
    """``tools`` / ``tool_choice`` / ``response_format`` that cannot be honoured; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def parse_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's functions (``name``, ``description``, ``parameters``), validated."""
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ToolRequestError("'tools' must be a list", "tools")
    out = []
    for t in tools:
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ToolRequestError(
                "each tool must be {'type': 'function', 'function': {'name': ...}}", "tools"
            )
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise ToolRequestError(
                f"parameters of function {fn['name']!r} must be a JSON schema object", "tools"
            )
        out.append(
            {
                "name": fn["name"],
                "description": fn.get("description") or "",
                "parameters": params or {"type": "object", "properties": {}},
            }
        )
    return out


def parse_tool_choice(body: dict[str, Any], tools: list[dict[str, Any]]) -> str:
    """``none``, ``auto``, ``required`` or the name of the function that must be called."""
    choice = body.get("tool_choice")
    if choice is None:
        return "auto" if tools else "none"
    if choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise ToolRequestError("tool_choice 'required' needs 'tools'", "tool_choice")
        return str(choice)
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise ToolRequestError(
            "'tool_choice' must be none, auto, required or a named function", "tool_choice"
        )
    if name not in {t["name"] for t in tools}:
        raise ToolRequestError(f"tool_choice names {name!r}, which is not in 'tools'", "tool_choice")
    return name


def response_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema ``response_format`` asks for (``json_object``: any object), or None for text."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ToolRequestError(
                "response_format json_schema needs 'json_schema': {'name', 'schema'}", "response_format"
            )
        return schema
    raise ToolRequestError(
        "'response_format' type must be text, json_object or json_schema", "response_format"
    )


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return raw
    return raw


def prepare_messages(
    fmt: ToolFormat, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Messages and extra template variables for a conversation that may hold tools and tool calls."""
    out: list[dict[str, Any]] = []
    for m in messages:
        calls = m.get("tool_calls") or []
        if fmt.native:
            if calls:  # templates write arguments with tojson: give them objects, not JSON text
                m = {
                    **m,
                    "tool_calls": [
                        {
                            **c,
                            "function": {
                                **c.get("function", {}),
                                "arguments": _arguments(c.get("function", {}).get("arguments")),
                            },
                        }
                        for c in calls
                    ],
                }
            out.append(m)
            continue
        if m.get("role") == "assistant" and calls:
            text = fmt.separator.join(
                fmt.render_call(
                    c.get("function", {}).get("name", ""), _arguments(c.get("function", {}).get("arguments"))
                )
                for c in calls
            )
            content = m.get("content") or ""
            out.append({"role": "assistant", "content": f"{content}\n{text}" if content else text})
        elif m.get("role") == "tool":
            block = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("role") == "user" and out[-1].get("_tool_results"):
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + block}
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
        else:
            out.append(m)
    out = [{k: v for k, v in m.items() if k != "_tool_results"} for m in out]
    if not tools:
        return out, {}
    if fmt.native:
        return out, {"tools": [{"type": "function", "function": t} for t in tools]}
    described = GENERIC_SYSTEM_PROMPT.format(
        tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    )
    if out and out[0].get("role") == "system":
        out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{described}".lstrip()}
    else:
        out.insert(0, {"role": "system", "content": described})
    return out, {}


def _lark_str(s: str) -> str:
    return json.dumps(s)


def tool_grammar(
    fmt: ToolFormat, tools: list[dict[str, Any]], choice: str, text_schema: dict[str, Any] | None = None
) -> str | None:
    """The Lark grammar (llguidance's dialect) of an answer under ``choice``; None when unconstrained."""
    if choice == "none":
        return None if text_schema is None else f"start: {lark_json(text_schema)}"
    chosen = tools if choice in ("auto", "required") else [t for t in tools if t["name"] == choice]
    call_schema = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t["name"]}, fmt.args_key: t["parameters"]},
                "required": ["name", fmt.args_key],
                "additionalProperties": False,
            }
            for t in chosen
        ]
    }
    if fmt.begin == "<tool_call>":
        call = f"call: {_lark_str('<tool_call>' + chr(10))} fn {_lark_str(chr(10) + '</tool_call>')}"
    else:
        call = "call: fn"
    rules = [call, f"fn: {lark_json(call_schema)}", f"calls: call ({_lark_str(fmt.separator)} call)*"]
    if choice == "auto":
        if text_schema is not None:
            start = "start: text | calls"
            rules.append(f"text: {lark_json(text_schema)}")
        else:
            start = "start: TEXT | calls"
            # Any text, except text that starts like a call: a call must parse as one.
            rules.append(f"TEXT: /(?s:.*)/ & ~/{re.escape(fmt.begin)}(?s:.*)/")
    elif choice == "required":
        start = "start: calls"
    else:
        start = "start: call"
    return "\n".join([start, *rules])


def _call(name: str, arguments: Any) -> dict[str, Any]:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


class ToolCallParser:
    """Splits a completion, as it streams, into content and OpenAI ``tool_calls``.

    Text that could still be the start of a call is held back until it is decided;
    each call is handed out once it is complete (its whole arguments in one delta).
    """

    def __init__(self, fmt: ToolFormat) -> None:
        self.fmt = fmt
        self.calls: list[dict[str, Any]] = []
        self._buf = ""
        self._pos = 0
        self._mode: str | None = None  # None: undecided, "text" or "calls"

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """Content to pass on now, and the calls completed by ``text``."""
        if self._mode == "text":
            return text, []
        self._buf += text
        if self._mode is None:
            head = self._buf.lstrip()
            if head.startswith(self.fmt.begin):
                self._mode = "calls"
            elif self.fmt.begin.startswith(head):
                return "", []
            else:
                self._mode = "text"
                out, self._buf = self._buf, ""
                return out, []
        return "", self._extract()

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """What is left at the end: held-back text, and calls not yet handed out."""
        if self._mode != "calls":
            out, self._buf = self._buf, ""
            return out, []
        new = self._extract()
        rest = self._buf[self._pos :].strip(" \n;")
        return rest, new  # an unfinished call (max_tokens) stays visible as text

    def _extract(self) -> list[dict[str, Any]]:
        new = []
        while True:
            found = self._next_call()
            if found is None:
                break
            name, args, end = found
            self._pos = end
            new.append(_call(name, args))
        self.calls.extend(new)
        return new

    def _next_call(self) -> tuple[str, Any, int] | None:
        buf = self._buf
        if self.fmt.begin == "<tool_call>":
            m = _HERMES_CALL.search(buf, self._pos)
            if m is None:
                return None
            try:
                obj = json.loads(m.group(1))
            except json.JSONDecodeError:
                return None
            end = m.end()
        else:
            start = self._pos
            while start < len(buf) and buf[start] in " \n;":
                start += 1
            try:
                obj, end = json.JSONDecoder().raw_decode(buf, start)
            except json.JSONDecodeError:
                return None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        return obj["name"], obj.get(self.fmt.args_key, {}), end
