"""The request translations in detail: what each provider receives for OpenAI's parameters, and the
providers' models in the shipped catalog."""

from __future__ import annotations

import re

import pytest

from backends.bedrock import to_converse
from backends.gemini import to_gemini
from backends.wire.anthropic import to_anthropic
from errors import InvalidRequest
from policies.models import model_info

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
}
HISTORY = [
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": "Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'},
    {"role": "user", "content": "and tomorrow?"},
]


def test_anthropic_request():
    request = to_anthropic(
        {
            "messages": HISTORY,
            "temperature": 1.6,
            "top_p": 0.9,
            "stop": "END",
            "user": "u1",
            "max_completion_tokens": 50,
            "tools": [TOOL],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
        "claude-x",
        4096,
    )
    assert request["system"] == [{"type": "text", "text": "Be brief."}]
    assert request["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Rome"}}],
    }
    # the tool result and the next question are one user turn, result first
    assert request["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": '{"sky": "clear"}'},
        {"type": "text", "text": "and tomorrow?"},
    ]
    assert request["temperature"] == 1.0 and request["top_p"] == 0.9 and request["stop_sequences"] == ["END"]
    assert request["max_tokens"] == 50 and request["metadata"] == {"user_id": "u1"}
    assert request["tools"] == [{"name": "get_weather", "input_schema": {"type": "object"}}]
    assert request["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    named = to_anthropic(
        {
            "messages": HISTORY[:2],
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        "c",
        7,
    )
    assert named["tool_choice"] == {"type": "tool", "name": "get_weather"} and named["max_tokens"] == 7
    assert "tool_choice" not in to_anthropic({"messages": HISTORY[:2], "tools": [TOOL]}, "c", 7)


def test_gemini_request():
    request = to_gemini(
        {
            "messages": HISTORY,
            "temperature": 0.2,
            "max_tokens": 30,
            "stop": ["END"],
            "seed": 3,
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {"type": "json_object"},
        }
    )
    assert request["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in request["contents"]] == ["user", "model", "user"]
    assert request["contents"][1]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}
    ]
    assert request["contents"][2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}},
        {"text": "and tomorrow?"},
    ]
    assert request["generationConfig"] == {
        "temperature": 0.2,
        "seed": 3,
        "maxOutputTokens": 30,
        "stopSequences": ["END"],
        "responseMimeType": "application/json",
    }
    assert request["tools"] == [
        {"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": {"type": "object"}}]}
    ]
    assert request["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }
    with pytest.raises(InvalidRequest, match="tool_call_id"):
        to_gemini({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]})


def test_converse_request():
    request = to_converse(
        {
            "messages": HISTORY,
            "temperature": 0.5,
            "max_tokens": 30,
            "stop": ["END"],
            "tools": [TOOL],
            "tool_choice": "auto",
        }
    )
    assert request["system"] == [{"text": "Be brief."}]
    assert request["messages"][1]["content"] == [
        {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Rome"}}}
    ]
    assert request["messages"][2]["content"][0] == {
        "toolResult": {"toolUseId": "call_1", "content": [{"text": '{"sky": "clear"}'}]}
    }
    assert request["inferenceConfig"] == {"maxTokens": 30, "temperature": 0.5, "stopSequences": ["END"]}
    assert request["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}],
        "toolChoice": {"auto": {}},
    }
    # Converse has no tool_choice "none": without a tool history the tools are left out
    assert "toolConfig" not in to_converse({"messages": HISTORY[:2], "tools": [TOOL], "tool_choice": "none"})


@pytest.mark.parametrize("translate", [lambda p: to_anthropic(p, "m", 10), to_converse])
def test_several_choices_are_refused_clearly(translate):
    with pytest.raises(InvalidRequest, match="'n'"):
        translate({"messages": HISTORY[:2], "n": 2})


@pytest.mark.parametrize("translate", [lambda p: to_anthropic(p, "m", 10), to_gemini, to_converse])
def test_bad_image_data_is_refused_clearly(translate):
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}
    with pytest.raises(InvalidRequest, match="not valid base64"):
        translate({"messages": [{"role": "user", "content": [part]}]})


@pytest.mark.parametrize(
    ("model", "provider", "context"),
    [
        ("claude-3-5-sonnet-20241022", "anthropic", 200000),
        ("claude-sonnet-4-20250514", "anthropic", 200000),
        ("claude-3-7-sonnet-latest", "anthropic", 200000),
        ("gemini-2.5-flash", "gemini", 1048576),
        ("gemini-1.5-pro-002", "gemini", 2097152),
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", "bedrock", 200000),
        ("meta.llama3-1-70b-instruct-v1:0", "bedrock", 128000),
        ("amazon.nova-lite-v1:0", "bedrock", 300000),
    ],
)
def test_provider_models_are_in_the_catalog(model, provider, context):
    info = model_info(model)
    assert info is not None and info.provider == provider and info.context_window == context
    assert info.input > 0 and info.output >= info.input and info.max_output_tokens


def test_gemini_thought_signatures_travel_in_the_call_id():
    call = {**CALL, "id": "call_1__thought__c2lnbmVk"}
    request = to_gemini(
        {
            "messages": [
                HISTORY[1],
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
            ]
        }
    )
    assert request["contents"][1]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}, "thoughtSignature": "c2lnbmVk"}
    ]
    assert request["contents"][2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}
    ]


@pytest.mark.parametrize(
    "translate", [lambda p: to_anthropic(p, "m", 10)["messages"], lambda p: to_converse(p)["messages"]]
)
def test_foreign_tool_call_ids_are_made_acceptable_and_still_match(translate):
    foreign = "call_1__thought__c2ln+bmVk/" + "x" * 80  # a Gemini id with its signature
    messages = translate(
        {
            "messages": [
                HISTORY[1],
                {"role": "assistant", "tool_calls": [{**CALL, "id": foreign}]},
                {"role": "tool", "tool_call_id": foreign, "content": "sunny"},
            ]
        }
    )
    text = str(messages)
    ids = set(re.findall(r"toolu_[0-9a-f]{40}", text))
    assert len(ids) == 1 and foreign not in text and text.count(ids.pop()) == 2
