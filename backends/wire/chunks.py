"""Reading the internal stream (OpenAI chat chunks) for the writers of other formats' streams
(``anthropic.MessageEvents``, ``responses.ResponseEvents``): one reader, each writer says what a piece
becomes in its format."""

from __future__ import annotations

import abc
from typing import Any

from .reasoning import THINKING_BLOCKS, signed_blocks


class Relayed:
    """What of a stream went out to the client: its text, reasoning and tool arguments, and the upstream's
    usage so far (an Anthropic ``message_start``'s input tokens). A stream that breaks off is ledgered at it
    (``Pipeline.broken``): the prompt (the upstream's count, else the estimate) and the text's tokens."""

    __slots__ = ("texts", "usage")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.usage: dict[str, Any] | None = None  # chat-shaped, as the upstream reported it before it broke

    def text(self) -> str:
        return "".join(self.texts)


class ChunkReader(abc.ABC):
    """Feeds the first choice's pieces of each chunk, in order, to the subclass's hooks; keeps the usage.

    Reasoning comes as vLLM / DeepSeek-style servers send it (``reasoning_content``, or ``reasoning``); a tool
    call's id and name come in its first piece only (``tool_start``), its arguments in fragments after.
    """

    def __init__(self) -> None:
        self.usage: Any = None
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None  # the stop sequence that ended it, where the upstream says
        self._started: set[int] = set()  # the chat tool call indexes seen
        self.relayed = Relayed()  # text, reasoning and tool arguments read so far

    def read(self, chunk: dict[str, Any]) -> bytes:
        usage = chunk.get("usage")
        if usage is not None and isinstance(usage, dict):
            self.usage = usage
        out = b""
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if delta:
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning and isinstance(reasoning, str):
                    self.relayed.texts.append(reasoning)
                    out += self.reasoning(reasoning)
                content = delta.get("content")
                if content:
                    self.relayed.texts.append(content)
                    out += self.text(content)
                calls = delta.get("tool_calls")
                if calls:
                    out += self._calls(calls)
                if THINKING_BLOCKS in delta:
                    out += self.signed(signed_blocks(delta[THINKING_BLOCKS]))
            finish = choice.get("finish_reason")
            if finish:
                self.finish_reason = finish
                stop = choice.get("stop_reason")
                self.stop_reason = stop if isinstance(stop, str) else None
        return out

    def read_all(self, batch: list[dict[str, Any]]) -> bytes:
        """The events of several chunks (those one upstream read brought), as one write."""
        return b"".join([self.chunk(chunk) for chunk in batch])

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        return self.read(chunk)

    def _calls(self, calls: list[dict[str, Any]]) -> bytes:
        out = b""
        for call in calls:
            function = call.get("function") or {}
            tool = call.get("index", 0)
            if tool not in self._started:
                self._started.add(tool)
                out += self.tool_start(tool, call.get("id"), str(function.get("name") or ""))
            if function.get("arguments"):
                self.relayed.texts.append(function["arguments"])
                out += self.tool_arguments(tool, function["arguments"])
        return out

    def signed(self, blocks: list[dict[str, Any]]) -> bytes:
        """Signed thinking blocks (an Anthropic upstream's, ``thinking_blocks``), each once whole: a format
        that can carry them back keeps them; the others leave them out."""
        return b""

    @abc.abstractmethod
    def text(self, text: str) -> bytes: ...

    @abc.abstractmethod
    def reasoning(self, text: str) -> bytes: ...

    @abc.abstractmethod
    def tool_start(self, tool: int, call_id: Any, name: str) -> bytes: ...

    @abc.abstractmethod
    def tool_arguments(self, tool: int, fragment: str) -> bytes: ...


def stop_sequence(finish_reason: Any, stop_reason: Any, stops: Any) -> str | None:
    """The stop sequence that ended an answer: the one a chat upstream names in ``stop_reason`` (vLLM, SGLang,
    the gateway's Anthropic adapter) among the request's, when it finished with ``stop``. OpenAI reports only
    ``stop``; which sequence it cut, or whether one at all, is then unknown (the text never shows it)."""
    if (
        finish_reason == "stop"
        and isinstance(stop_reason, str)
        and isinstance(stops, list)
        and stop_reason in stops
    ):
        return stop_reason
    return None


def message_signed(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole answer's signed thinking blocks (``thinking_blocks``), if any."""
    return signed_blocks(message.get(THINKING_BLOCKS))


def message_reasoning(message: dict[str, Any]) -> str | None:
    """A whole answer's reasoning text (``reasoning_content`` or ``reasoning``), if any."""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return reasoning if isinstance(reasoning, str) and reasoning else None


class TextReader(ChunkReader):
    """Reads chat (or legacy completions) chunks for their text alone (``relayed``): what a pass-through
    stream relayed."""

    def read(self, chunk: dict[str, Any]) -> bytes:
        for choice in chunk.get("choices") or ():
            if (
                isinstance(choice, dict)
                and choice.get("index", 0) == 0
                and isinstance(choice.get("text"), str)
            ):
                self.relayed.texts.append(choice["text"])  # a legacy completions chunk
        return super().read(chunk)

    def text(self, text: str) -> bytes:
        return b""

    def reasoning(self, text: str) -> bytes:
        return b""

    def tool_start(self, tool: int, call_id: Any, name: str) -> bytes:
        return b""

    def tool_arguments(self, tool: int, fragment: str) -> bytes:
        return b""
