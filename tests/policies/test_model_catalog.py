"""The shipped model catalog: what a deployment is priced at when its config names no price."""

from __future__ import annotations

import pytest

from policies.models import catalog, model_info


def test_every_entry_has_a_price_and_a_context_window() -> None:
    models = catalog()
    assert len(models) > 40
    for name, info in models.items():
        assert info.input >= 0 and info.output >= 0, name
        assert info.context_window and info.context_window >= 2048, name


@pytest.mark.parametrize(("asked", "found"), [
    ("gpt-4o-mini", "gpt-4o-mini"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),           # dated snapshots  # date-ok
    ("openai/gpt-4o", "gpt-4o"),                          # OpenRouter-style org prefix
    ("us.anthropic.claude-3-5-sonnet-20240620-v1:0", "anthropic.claude-3-5-sonnet-20240620-v1:0"),  # Bedrock profile
])
def test_lookup_by_upstream_model_name(asked: str, found: str) -> None:
    assert model_info(asked) == catalog()[found]


def test_unknown_models_have_no_entry() -> None:
    assert model_info("my-finetune") is None
    assert model_info("") is None


def test_cost_counts_cached_prompt_tokens_at_their_price() -> None:
    info = catalog()["gpt-4o"]  # $2.50 in, $1.25 cached in, $10 out per million
    assert info.cost(1_000_000, 0) == pytest.approx(2.50)
    assert info.cost(1_000_000, 1_000_000, cached_tokens=400_000) == pytest.approx(0.6 * 2.5 + 0.4 * 1.25 + 10)
