"""Prices per deployment (the config's ``price``, else the shipped catalog) and the cost of a usage.

A usage's prompt tokens are of three kinds, each priced at its own rate: uncached input, cache reads
(OpenAI ``cached_tokens``, Anthropic ``cache_read_input_tokens``, Gemini ``cachedContentTokenCount``) and
cache writes (Anthropic ``cache_creation_input_tokens``, Bedrock ``cacheWriteInputTokens``). A rate the
catalog does not publish is the input rate (ratio 1.0): the gateway never assumes a discount or a surcharge
nobody published. Reasoning tokens are part of the completion tokens and priced at the output rate, as every
provider bills them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .models import ModelInfo, model_info
from .stores.base import NANO


@dataclass(frozen=True, slots=True)
class PriceTable:
    """USD per million tokens: input, cache read, cache write, output. Zero when neither config nor catalog
    knows it."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None  # a cache read (None: the input rate)
    cache_write_input: float | None = None  # a cache write (None: the input rate)
    known: bool = True
    batch_discount: float = 0.5  # the share taken off a batch line (OpenAI's and Anthropic's 50%)

    @classmethod
    def of(cls, info: ModelInfo | None) -> PriceTable:
        if info is None:
            return cls(known=False)
        return cls(
            input=info.input,
            output=info.output,
            cached_input=info.cached_input,
            cache_write_input=info.cache_write_input,
        )

    def nano(
        self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, cache_write_tokens: int = 0
    ) -> int:
        """Cost in nano-USD (rounded per request); cache reads and writes are part of ``prompt_tokens``."""
        read_price = self.input if self.cached_input is None else self.cached_input
        write_price = self.input if self.cache_write_input is None else self.cache_write_input
        read = min(max(cached_tokens, 0), prompt_tokens)
        written = min(max(cache_write_tokens, 0), prompt_tokens - read)
        micro = (
            (prompt_tokens - read - written) * self.input
            + read * read_price
            + written * write_price
            + completion_tokens * self.output
        )  # USD per million tokens x tokens = micro-USD
        return round(micro * (NANO / 1_000_000))

    def usd(self, usage: Any) -> float | None:
        """The USD of an OpenAI-shaped ``usage`` (None when it is not one)."""
        if not isinstance(usage, dict):
            return None
        prompt = usage.get("prompt_tokens_details")
        details = prompt if isinstance(prompt, dict) else {}
        return (
            self.nano(
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
                int(details.get("cached_tokens") or 0),
                int(details.get("cache_creation_tokens") or 0),
            )
            / NANO
        )


UNPRICED = PriceTable(known=False)


def deployment_price(model: str, override: Any | None) -> PriceTable:
    """A deployment's ``price`` from config (``input``, ``output``, ``cached_input``, ``cache_write_input``),
    else the catalog's."""
    if override is not None:
        return PriceTable(
            input=override.input,
            output=override.output,
            cached_input=override.cached_input,
            cache_write_input=override.cache_write_input,
            batch_discount=override.batch_discount,
        )
    return PriceTable.of(model_info(model))


def dearest(prices: list[PriceTable]) -> PriceTable:
    """The price a reservation is made at when the deployment is not chosen yet."""
    if not prices:
        return UNPRICED
    return max(prices, key=lambda p: (p.input + p.output, p.output))


def usd(nano: int) -> float:
    return nano / NANO
