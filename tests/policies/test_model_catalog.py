"""The shipped model catalog: what a deployment is priced at when its config names no price."""

from __future__ import annotations

import pytest

from policies.cost import PriceTable
from policies.models import catalog, model_info
from policies.stores.base import NANO


def test_every_entry_has_a_price_and_a_context_window() -> None:
    models = catalog()
    assert len(models) > 40
    for name, info in models.items():
        assert info.input >= 0 and info.output >= 0, name
        assert info.context_window and info.context_window >= 2048, name


@pytest.mark.parametrize(
    ("asked", "found"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # dated snapshots  # date-ok
        ("openai/gpt-4o", "gpt-4o"),  # OpenRouter-style org prefix
        (
            "us.anthropic.claude-3-5-sonnet-20240620-v1:0",
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
        ),  # Bedrock profile
    ],
)
def test_lookup_by_upstream_model_name(asked: str, found: str) -> None:
    assert model_info(asked) == catalog()[found]


def test_unknown_models_have_no_entry() -> None:
    assert model_info("my-finetune") is None
    assert model_info("") is None


def test_cost_counts_cached_prompt_tokens_at_their_price() -> None:
    price = PriceTable.of(catalog()["gpt-4o"])  # $2.50 in, $1.25 cached in, $10 out per million
    assert price.nano(1_000_000, 0) / NANO == pytest.approx(2.50)
    assert price.nano(1_000_000, 1_000_000, cached_tokens=400_000) / NANO == pytest.approx(
        0.6 * 2.5 + 0.4 * 1.25 + 10
    )
    # OpenAI publishes no cache-write price: a write is charged as input
    assert price.nano(1_000_000, 0, cache_write_tokens=400_000) / NANO == pytest.approx(2.50)


def test_anthropic_cache_writes_and_reads_have_their_own_prices() -> None:
    price = PriceTable.of(model_info("claude-sonnet-4-5-20250929"))  # $3 in, $0.30 read, $3.75 write, $15 out
    cost = price.nano(1_000_000, 100_000, cached_tokens=500_000, cache_write_tokens=200_000) / NANO
    assert cost == pytest.approx(0.3 * 3.00 + 0.5 * 0.30 + 0.2 * 3.75 + 0.1 * 15.00)
    # a usage that claims more cache than prompt is clamped: never a negative uncached part
    assert price.nano(10, 0, cached_tokens=8, cache_write_tokens=8) == price.nano(10, 0, 8, 2)
