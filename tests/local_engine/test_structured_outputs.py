"""Grammar-constrained decoding: JSON schemas and tool calls, on a tiny random model (which left alone
writes no JSON at all, so every valid output is the grammar's doing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from local_engine import LLM, LLMEngine, SamplingParams
from local_engine.config import EngineConfig
from local_engine.structured import json_schema_grammar, lark_grammar
from local_engine.tools import (
    GENERIC,
    HERMES,
    LLAMA3_JSON,
    ToolCallParser,
    detect_format,
    prepare_messages,
    tool_grammar,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
        "score": {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 0, "maximum": 1}]},
    },
    "required": ["name", "age", "tags", "ok", "score"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 5}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
    {
        "name": "add",
        "description": "Adds two integers",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": -99, "maximum": 99},
                "b": {"type": "integer", "minimum": -99, "maximum": 99},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
]
PARAMS = {t["name"]: t["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> Iterator[LLM]:
    yield LLM(tiny_llama, block_size=4, num_kv_blocks=2048, max_num_seqs=64)


def _sampled(llm: LLM, grammar: str, n: int, max_tokens: int = 160) -> list[Any]:
    params = [
        SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=i, grammar=grammar) for i in range(n)
    ]
    return llm.generate(["the quick brown"] * n, params)


def test_every_output_is_valid_against_its_schema_on_200_seeded_samples(llm: LLM) -> None:
    outs = _sampled(llm, json_schema_grammar(SCHEMA), 200)
    for o in outs:
        assert o.finish_reason == "stop", o.text
        jsonschema.validate(json.loads(o.text), SCHEMA)
    assert len({o.text for o in outs}) > 150  # sampled, not one forced answer


def test_unconstrained_model_does_not_write_json(llm: LLM) -> None:
    outs = llm.generate(["the quick brown"] * 20, [SamplingParams(max_tokens=40, seed=i) for i in range(20)])
    assert not any(o.text.startswith("{") and o.text.endswith("}") for o in outs)


def test_constrained_and_free_requests_share_a_step_without_changing_each_other(tiny_llama: Path) -> None:
    engine = LLMEngine(tiny_llama, EngineConfig(block_size=4, num_kv_blocks=512))
    free = SamplingParams(max_tokens=12, temperature=0)
    engine.add_request("alone", "the quick brown", free)
    alone = _drain(engine)["alone"]
    engine.add_request("free", "the quick brown", free)
    engine.add_request(
        "json",
        "the quick brown",
        SamplingParams(max_tokens=60, temperature=0, grammar=json_schema_grammar(SCHEMA)),
    )
    shared_steps = 0
    tokens: dict[str, list[int]] = {"free": [], "json": []}
    text = ""
    while engine.has_unfinished():
        outs = engine.step()
        shared_steps += {o.request_id for o in outs} == {"free", "json"}
        for o in outs:
            tokens[o.request_id] += o.token_ids
            text += o.text if o.request_id == "json" else ""
    assert shared_steps >= 10
    assert tokens["free"] == alone
    jsonschema.validate(json.loads(text), SCHEMA)


def _drain(engine: LLMEngine) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for o in engine.step():
            tokens.setdefault(o.request_id, []).extend(o.token_ids)
    return tokens


def _calls(fmt: Any, text: str) -> tuple[str, list[dict[str, Any]]]:
    parser = ToolCallParser(fmt)
    head, _ = parser.feed(text)
    rest, _ = parser.finish()
    return head + rest, parser.calls


@pytest.mark.parametrize("fmt", [GENERIC, LLAMA3_JSON], ids=lambda f: f.name)
def test_required_tool_calls_parse_and_match_their_schemas(llm: LLM, fmt: Any) -> None:
    outs = _sampled(llm, lark_grammar(tool_grammar(fmt, TOOLS, "required") or ""), 30, max_tokens=120)
    counts = []
    for o in outs:
        rest, calls = _calls(fmt, o.text)
        # The random model may chain calls until max_tokens: then the last one is left unfinished.
        assert calls and (rest == "" if o.finish_reason == "stop" else fmt.begin in rest), o.text
        for c in calls:
            assert c["type"] == "function" and c["id"].startswith("call_")
            jsonschema.validate(json.loads(c["function"]["arguments"]), PARAMS[c["function"]["name"]])
        counts.append(len(calls) + (o.finish_reason == "length"))
    assert max(counts) > 1  # a second call per turn (finished, or cut by max_tokens) happens
    assert {c["function"]["name"] for o in outs for c in _calls(fmt, o.text)[1]} == set(PARAMS)


def test_a_named_tool_choice_gives_exactly_one_call_of_that_function(llm: LLM) -> None:
    outs = _sampled(llm, lark_grammar(tool_grammar(GENERIC, TOOLS, "add") or ""), 30)
    for o in outs:
        _, calls = _calls(GENERIC, o.text)
        assert [c["function"]["name"] for c in calls] == ["add"], o.text
        jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), PARAMS["add"])


def test_auto_answers_text_or_well_formed_calls(llm: LLM) -> None:
    outs = _sampled(llm, lark_grammar(tool_grammar(GENERIC, TOOLS, "auto") or ""), 30, max_tokens=40)
    for o in outs:
        rest, calls = _calls(GENERIC, o.text)
        if o.text.lstrip().startswith("<tool_call>"):
            assert calls or o.finish_reason == "length", o.text
        else:
            assert not calls and rest == o.text


def test_auto_with_a_response_schema_answers_that_json_or_calls(llm: LLM) -> None:
    outs = _sampled(llm, lark_grammar(tool_grammar(GENERIC, TOOLS, "auto", SCHEMA) or ""), 30, max_tokens=200)
    for o in outs:
        assert o.finish_reason == "stop", o.text
        rest, calls = _calls(GENERIC, o.text)
        if not calls:
            jsonschema.validate(json.loads(rest), SCHEMA)


def test_the_parser_streams_each_call_once_it_is_complete() -> None:
    text = (
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n</tool_call>'
    )
    parser = ToolCallParser(GENERIC)
    seen: list[tuple[int, str]] = []
    for i, ch in enumerate(text):
        content, calls = parser.feed(ch)
        assert content == ""  # a call is never leaked as content
        seen += [(i, c["function"]["name"]) for c in calls]
    assert seen == [
        (text.index("</tool_call>") + len("</tool_call>") - 1, "add"),
        (len(text) - 1, "get_weather"),
    ]
    assert json.loads(parser.calls[1]["function"]["arguments"]) == {"city": "Oslo", "unit": "c"}
    # Text that starts like a call but is not one is held back only until it is decided.
    plain = ToolCallParser(GENERIC)
    assert plain.feed(" <tool") == ("", [])
    assert plain.feed("s are fun") == (" <tools are fun", [])
    llama = ToolCallParser(LLAMA3_JSON)
    assert llama.feed('{"name": "add", "parameters": {"a": 1, "b": 2}}; {"name": "add", ') == (
        "",
        [{**llama.calls[0]}],
    )
    assert llama.finish()[0] == '{"name": "add",'  # an unfinished call (max_tokens) stays visible


QWEN_LIKE = (  # the shape of Qwen2.5's template: tools in the system turn, calls as <tool_call> blocks
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n"
    "</tools>\nFor each function call, return a json object within <tool_call></tool_call> XML tags<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}"
    '{% for c in m.tool_calls or [] %}<tool_call>\n{"name": "{{ c.function.name }}", "arguments": '
    "{{ c.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA31_LIKE = "{% if tools %}Environment: ipython\n{% endif %}{{ '<|python_tag|>' }}"


def test_tool_formats_follow_the_chat_template() -> None:
    assert detect_format(QWEN_LIKE) is HERMES
    assert detect_format(LLAMA31_LIKE) is LLAMA3_JSON
    assert detect_format(None) is GENERIC
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "add 1 and 2"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 3, "b": 4}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
        {"role": "tool", "tool_call_id": "call_2", "content": "7"},
    ]
    native, extra = prepare_messages(HERMES, history, TOOLS)
    assert extra["tools"][0] == {"type": "function", "function": TOOLS[0]}
    assert native[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1, "b": 2}  # templates tojson objects
    generic, extra = prepare_messages(GENERIC, history, TOOLS)
    assert extra == {}
    assert generic[0]["role"] == "system" and '"name": "get_weather"' in generic[0]["content"]
    assert generic[2] == {
        "role": "assistant",
        "content": GENERIC.separator.join(
            GENERIC.render_call("add", a) for a in ({"a": 1, "b": 2}, {"a": 3, "b": 4})
        ),
    }
    assert generic[3] == {
        "role": "user",
        "content": "<tool_response>\n3\n</tool_response>\n<tool_response>\n7\n</tool_response>",
    }
    assert len(generic) == 4
