"""Incremental detokenization that never emits half a UTF-8 character."""

from __future__ import annotations

from local_engine.tokenizer import Tokenizer

_CONTEXT_TOKENS = 5  # earlier tokens decoded along so word-initial spaces come out right


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decoding the window ``[prefix, read)`` and ``[prefix, end)`` and emitting the
    difference handles tokens that only make sense next to their neighbours; a
    trailing U+FFFD means a multi-byte character is still incomplete, so we wait.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read], self._skip)
        new_text = self._tok.decode(self._ids[self._prefix :], self._skip)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            return delta
        return ""
