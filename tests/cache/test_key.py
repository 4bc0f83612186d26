"""The exact key and the semantic fingerprint: what splits the cache and what does not."""

from __future__ import annotations

from typing import Any

import pytest

from policies.cache.key import identify

BASE: dict[str, Any] = {
    "model": "chat",
    "temperature": 0,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
}


def _id(tenant: str = "acme", alias: str = "chat", **changes: Any):
    return identify(tenant, alias, "chat/completions", {**BASE, **changes})


def test_delivery_only_fields_do_not_split_the_cache() -> None:
    plain = _id()
    for change in (
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "u-1"},
        {"metadata": {"a": "b"}},
        {"temperature": 0.0},
    ):
        assert _id(**change).key == plain.key


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"max_tokens": 10},
        {"seed": 1},
        {"stop": ["\n"]},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"tool_choice": "none"},
        {"response_format": {"type": "json_object"}},
        {"presence_penalty": 1},
        {"some_future_field": True},
        {"messages": [{"role": "system", "content": "Be verbose."}, BASE["messages"][1]]},
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                BASE["messages"][1],
            ]
        },
    ],
)
def test_everything_that_decides_the_answer_splits_key_and_fingerprint(change: dict[str, Any]) -> None:
    plain, changed = _id(), _id(**change)
    assert changed.key != plain.key
    assert changed.fingerprint != plain.fingerprint
    assert changed.question == plain.question


def test_tenant_and_alias_split_everything() -> None:
    plain = _id()
    for other in (_id(tenant="globex"), _id(alias="other")):
        assert other.key != plain.key and other.fingerprint != plain.fingerprint


def test_the_question_is_the_last_user_turn_and_not_in_the_fingerprint() -> None:
    one = _id()
    two = _id(messages=[BASE["messages"][0], {"role": "user", "content": "Which city is France's capital?"}])
    assert one.key != two.key
    assert one.fingerprint == two.fingerprint
    assert two.question == "Which city is France's capital?"
    parts = _id(
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    )
    assert parts.question == "a\nb"


def test_requests_without_a_text_user_turn_have_no_question() -> None:
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}
    assert _id(messages=[image]).question is None
    assert _id(messages=[{"role": "tool", "tool_call_id": "x", "content": "42"}]).question is None
    assert identify("acme", "embed", "embeddings", {"model": "embed", "input": "x"}).question is None
