"""Prices per deployment (the config's ``price``, else the shipped catalog) and the cost of a usage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .models import ModelInfo, model_info
from .stores.base import NANO


@dataclass(frozen=True, slots=True)
class PriceTable:
    """USD per million tokens: input, cached input, output. Zero when neither config nor catalog knows it."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None
    known: bool = True

    @classmethod
    def of(cls, info: ModelInfo | None) -> PriceTable:
        if info is None:
            return cls(known=False)
        return cls(input=info.input, output=info.output, cached_input=info.cached_input)

    def nano(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
        """Cost in nano-USD (rounded per request); cached tokens are part of ``prompt_tokens``."""
        cached_price = self.input if self.cached_input is None else self.cached_input
        cached = min(max(cached_tokens, 0), prompt_tokens)
        micro = ((prompt_tokens - cached) * self.input + cached * cached_price
                 + completion_tokens * self.output)  # USD per million tokens x tokens = micro-USD
        return round(micro * (NANO / 1_000_000))


UNPRICED = PriceTable(known=False)


def deployment_price(model: str, override: Any | None) -> PriceTable:
    """A deployment's ``price`` from config (``input``, ``output``, ``cached_input``), else the catalog's."""
    if override is not None:
        return PriceTable(input=override.input, output=override.output, cached_input=override.cached_input)
    return PriceTable.of(model_info(model))


def dearest(prices: list[PriceTable]) -> PriceTable:
    """The price a reservation is made at when the deployment is not chosen yet."""
    if not prices:
        return UNPRICED
    return max(prices, key=lambda p: (p.input + p.output, p.output))


def usd(nano: int) -> float:
    return nano / NANO
