"""What a request ended with, as its settlement reads it: one frozen value made in one place, where the
request ends (admission's context exit), from what the layers reported on the request record. The ledger
record, the budget spend and the token buckets' refund are all settled from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# how the charge was found: the upstream's usage, a cache hit (free), the stream's text counted, or the
# reservation's estimate (answered without usage: the upstream may bill it)
How = Literal["usage", "cache", "counted", "estimated"]


@dataclass(frozen=True, slots=True)
class Tokens:
    prompt: int = 0
    completion: int = 0
    cached: int = 0  # of prompt: read from the provider's cache
    cache_write: int = 0  # of prompt: written to it (Anthropic, Bedrock)
    reasoning: int = 0  # of completion

    @property
    def total(self) -> int:
        return self.prompt + self.completion


NO_TOKENS = Tokens()


@dataclass(frozen=True, slots=True)
class RequestResult:
    status: int
    deployment: str  # "-" when no upstream answered
    tokens: Tokens  # what is charged (the estimate's tokens when ``how`` is "estimated")
    cost: int  # nano-USD
    how: How
    cache_hit: bool = False

    @property
    def estimated(self) -> bool:
        return self.how == "estimated"


def nothing_ran(status: int) -> RequestResult:
    """A request that reached no upstream and is charged nothing (admitted as its client left)."""
    return RequestResult(status=status, deployment="-", tokens=NO_TOKENS, cost=0, how="usage")
