"""What the provider fakes answer, decided once for all of them from the gist of a request.

A last user turn holding tool results is answered with text quoting them; a request with tools gets one call
of the first tool per city named in the text (Paris, Rome, Tokyo; Paris when none); anything else is echoed,
with a note per image. Stop sequences and max_tokens cut the echo as a real model would stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CITIES = ("Paris", "Rome", "Tokyo")
TOOL_CALL_TOKENS = 9


@dataclass
class Gist:
    text: str = ""
    tool_results: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    tool_name: str | None = None  # first tool offered, if the model may call it
    stop: list[str] = field(default_factory=list)
    max_tokens: int | None = None


@dataclass
class Answer:
    words: list[str] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (tool name, arguments)
    stop: str = "end"  # end | tool | max_tokens | stop_sequence
    stop_sequence: str | None = None

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def output_tokens(self) -> int:
        return len(self.words) + TOOL_CALL_TOKENS * len(self.calls)

    def pieces(self) -> list[str]:
        """The text as a stream sends it: one word at a time."""
        return [w if i == 0 else " " + w for i, w in enumerate(self.words)]


def answer(gist: Gist) -> Answer:
    if gist.tool_results:
        return Answer(words=["Weather:", *"; ".join(gist.tool_results).split()])
    if gist.tool_name is not None:
        cities = [c for c in CITIES if c in gist.text] or ["Paris"]
        return Answer(
            words=["Checking", "the", "weather."],
            calls=[(gist.tool_name, {"city": c}) for c in cities],
            stop="tool",
        )
    words = ["Echo:", *(f"[{image}]" for image in gist.images), *gist.text.split()]
    out = Answer()
    for word in words:
        hit = next((s for s in gist.stop if s in word), None)
        if hit is not None:
            out.stop, out.stop_sequence = "stop_sequence", hit
            return out
        if gist.max_tokens is not None and len(out.words) >= gist.max_tokens:
            out.stop = "max_tokens"
            return out
        out.words.append(word)
    return out


AGENT_MODEL = "agent"
# The shell tools of the coding agents, and the arguments that make each list the working directory.
SHELL_TOOLS: dict[str, dict[str, Any]] = {
    "Bash": {"command": "ls", "description": "List the files"},
    "exec_command": {"cmd": "ls"},
    "shell": {"command": ["ls"]},
    "shell_command": {"command": "ls"},
}


def agent(tool_names: list[str], tool_results: list[str]) -> Answer:
    """The model ``agent``: a coding agent's tool loop in two turns. First a call of the agent's shell tool
    to list the working directory; then, given its result, a final answer that quotes it."""
    if tool_results:
        return Answer(words=["Files:", *" ".join(tool_results).split()][:200])
    for name in tool_names:
        if name in SHELL_TOOLS:
            return Answer(words=["Listing", "the", "files."], calls=[(name, SHELL_TOOLS[name])], stop="tool")
    return Answer(words=["No", "shell", "tool", "offered."])


def split_arguments(arguments: str) -> list[str]:
    """A tool call's JSON arguments in three fragments, as providers stream them."""
    third = max(1, len(arguments) // 3)
    return [arguments[:third], arguments[third : 2 * third], arguments[2 * third :]]


def error_status(model: str) -> int | None:
    """``error-429`` and the like choose an error answer."""
    if model.startswith("error-") and model[6:].isdigit():
        return int(model[6:])
    return None
