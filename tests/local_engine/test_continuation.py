"""Going on with an answer from the token ids an earlier run of the request generated (``continue_token_ids``),
and the ids behind each chunk (``return_token_ids``): what a managed worker pool resumes a stream with when
its worker dies midway (docs/deploy.md). Greedy, the continuation sends exactly what the uninterrupted
stream sent after those ids, a cut inside a multi-byte character and a stop string across the cut included.
Through the openai SDK against the served tiny engine."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from local_engine.async_engine import AsyncEngine
from tests.local_engine.test_openai_sdk import _client, _engine

openai = pytest.importorskip("openai")
# what the SDK would import on its first request, on the loop, beyond what the loop guard allows
importlib.import_module("openai.resources.chat.completions")
importlib.import_module("openai.resources.completions")
importlib.import_module("anyio._backends._asyncio")
pytestmark = pytest.mark.usefixtures("loop_guard")

PROMPT = "✓"  # the tiny model's greedy answers to it split characters across tokens
MAX_TOKENS = 24
NEVER = "never-ever"  # a stop string the answers do not hold: 9 characters held back at every point


@pytest.fixture(scope="module")
def tiny_engine(tiny_llama: Path) -> Iterator[AsyncEngine]:
    yield from _engine(tiny_llama, block_size=4, num_kv_blocks=256)


@pytest.fixture
def sdk() -> Any:
    # built off the loop (loading the TLS trust store takes longer than the loop guard allows)
    return openai.AsyncOpenAI(base_url="http://127.0.0.1:1/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
async def client(tiny_engine: AsyncEngine, sdk: Any) -> AsyncIterator[Any]:
    async for served in _client(tiny_engine, sdk):
        yield served


@dataclass
class Streamed:
    chunks: list[tuple[list[int], str]]  # each chunk's token ids and text
    finish_reason: str | None
    usage: Any

    @property
    def ids(self) -> list[int]:
        return [t for ids, _ in self.chunks for t in ids]

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.chunks)

    def sent_through(self, k: int) -> str:
        """The text the stream had sent once its first ``k`` token ids were generated: that of the chunks
        they complete (a chunk's ids before its last are those whose text was held back)."""
        sent, count = [], 0
        for ids, text in self.chunks:
            count += len(ids)
            if count > k:
                break
            sent.append(text)
        return "".join(sent)


async def stream(client: Any, chat: bool, **extra: Any) -> Streamed:
    kwargs: dict[str, Any] = dict(
        model="llama",
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True, "return_token_ids": True, **extra},
    )
    if chat:
        answer = await client.chat.completions.create(
            messages=[{"role": "user", "content": PROMPT}], **kwargs
        )
    else:
        answer = await client.completions.create(prompt=PROMPT, **kwargs)
    chunks, finish, usage = [], None, None
    async for chunk in answer:
        if chunk.choices:
            choice = chunk.choices[0]
            text = choice.delta.content if chat else choice.text
            chunks.append((choice.model_extra["token_ids"], text or ""))
            finish = choice.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
    return Streamed(chunks, finish, usage)


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
async def test_a_greedy_continuation_sends_what_the_uninterrupted_stream_sent_after_its_ids(
    client: Any, tiny_engine: AsyncEngine, chat: bool
) -> None:
    plain = await stream(client, chat, stop=[NEVER])
    assert len(plain.ids) == plain.usage.completion_tokens == MAX_TOKENS
    # a stop string that first comes late in the answer ends it there, across a cut too
    text = plain.text
    stop = next(text[j : j + 3] for j in range(len(text) - 3, 0, -1) if text.find(text[j : j + 3]) == j)
    assert text.index(stop) > 0
    reference = await stream(client, chat, stop=[NEVER, stop])
    assert reference.finish_reason == "stop" and reference.text == text[: text.index(stop)]
    ids = reference.ids
    decode = tiny_engine.engine.tokenizer.decode
    inside = [k for k in range(1, len(ids)) if decode(ids[:k]).endswith("\ufffd")]
    assert inside, "no cut falls inside a character"
    # cuts after the stop string's first characters were generated (held back, not sent)
    across = [k for k in range(1, len(ids)) if len(decode(ids[:k])) > len(reference.text)]
    assert across, "no cut falls inside the stop string"
    for k in sorted({1, len(ids) // 2, inside[0], across[0]}):
        resumed = await stream(client, chat, stop=[NEVER, stop], continue_token_ids=ids[:k])
        assert reference.sent_through(k) + resumed.text == reference.text, k
        assert resumed.ids == ids[k:], k
        assert resumed.finish_reason == "stop"
        # one answer: the prompt once, every generated token
        assert resumed.usage.prompt_tokens == reference.usage.prompt_tokens
        assert resumed.usage.completion_tokens == reference.usage.completion_tokens == len(ids)

    # whole, not streamed: the text after the cut and its ids
    k = inside[0]
    body = {"ignore_eos": True, "return_token_ids": True, "continue_token_ids": ids[:k]}
    if chat:
        whole = await client.chat.completions.create(
            model="llama",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=MAX_TOKENS,
            temperature=0,
            stop=[NEVER, stop],
            extra_body=body,
        )
        text = whole.choices[0].message.content
    else:
        whole = await client.completions.create(
            model="llama",
            prompt=PROMPT,
            max_tokens=MAX_TOKENS,
            temperature=0,
            stop=[NEVER, stop],
            extra_body=body,
        )
        text = whole.choices[0].text
    assert reference.sent_through(k) + text == reference.text
    assert whole.choices[0].model_extra["token_ids"] == ids[k:]
    assert whole.usage.completion_tokens == len(ids)


async def test_a_continuation_that_cannot_go_on_is_refused(client: Any, tiny_engine: AsyncEngine) -> None:
    eos = tiny_engine.engine.tokenizer.eos_token_id
    cases: list[tuple[dict[str, Any], str]] = [
        ({"continue_token_ids": [5, 6], "n": 2}, "one sequence"),
        ({"continue_token_ids": [5, eos]}, "already ends"),  # ended by its end-of-sequence token
        ({"continue_token_ids": [5, 6, 7, 8], "max_tokens": 4}, "already ends"),  # by max_tokens
        ({"continue_token_ids": [5, 100_000]}, "outside the vocabulary"),
        ({"continue_token_ids": "5 6"}, "list of token ids"),
        ({"return_token_ids": "yes"}, "'return_token_ids' must be a boolean"),
        (
            {
                "continue_token_ids": [5],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            },
            "may call tools",
        ),
    ]
    for extra, message in cases:
        body = {"max_tokens": 8, **extra}
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="llama", messages=[{"role": "user", "content": PROMPT}], extra_body=body
            )
        assert message in refused.value.message, (extra, refused.value.message)
