"""Grammar-constrained decoding with llguidance: one matcher per constrained sequence.

A request carries an llguidance grammar (``SamplingParams.grammar``, built by
:func:`json_schema_grammar` or :func:`lark_grammar`). Each of its sequences gets its
own ``LLMatcher``; before sampling, the matcher's token bitmask is applied to that
row's logits only, so constrained and free requests share one batch. llguidance was
chosen over xgrammar by measurement (docs/local_engine.md): the same per-token mask
cost on SmolLM2's 49k vocabulary, a grammar built lazily instead of compiled up front,
Lark grammars with JSON-schema sub-rules (what tool calls need), and no torch/triton
dependency of its own.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import llguidance

_BITS = torch.arange(32, dtype=torch.int32)
# JSON as json.dumps writes it: no free whitespace, which a model can otherwise emit forever.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    """A grammar or JSON schema llguidance cannot use."""


def _lib() -> Any:
    try:
        import llguidance
    except ImportError as e:  # pragma: no cover - the engine extra installs it
        raise GrammarError("structured outputs need llguidance: pip install llguidance") from e
    return llguidance


def _checked(grammar: str) -> str:
    is_error, messages = _lib().LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise GrammarError(messages[0] if messages else "invalid grammar")
    return grammar


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar of JSON text valid against ``schema``; :class:`GrammarError` if unusable."""
    try:
        grammar = str(_lib().LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS))
    except (ValueError, TypeError) as e:
        raise GrammarError(f"invalid JSON schema: {e}") from None
    return _checked(grammar)


def lark_json(schema: dict[str, Any]) -> str:
    """A Lark rule body (``%json {...}``) for JSON valid against ``schema``, written like json.dumps."""
    return "%json " + json.dumps({**schema, "x-guidance": {**JSON_OPTIONS, **schema.get("x-guidance", {})}})


def lark_grammar(lark: str) -> str:
    """The llguidance grammar of a Lark grammar (llguidance's dialect: ``%json {...}`` rules), checked."""
    return _checked(str(_lib().LLMatcher.grammar_from_lark(lark)))


class GrammarCompiler:
    """Makes matchers for one model's tokenizer; the tokenizer is converted once, at first use."""

    def __init__(self, tokenizer_dir: Path, vocab_size: int, eos_token_ids: list[int]) -> None:
        self._path = tokenizer_dir / "tokenizer.json"
        self._vocab_size = vocab_size
        self._eos = eos_token_ids
        self._tok: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    def _tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tok is None:
                # ~0.8 s for a 49k vocabulary: paid by the first constrained request, not at load.
                self._tok = _lib().LLTokenizer(
                    self._path.read_text(), n_vocab=self._vocab_size, eos_token=self._eos
                )
            return self._tok

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        """A fresh matcher at the grammar's start; raises :class:`GrammarError` for a bad grammar."""
        m = _lib().LLMatcher(self._tokenizer(), grammar, log_level=0)
        if m.is_error():
            raise GrammarError(f"invalid grammar: {m.get_error()}")
        return m


def apply_masks(logits: torch.Tensor, matchers: list[llguidance.LLMatcher | None]) -> torch.Tensor:
    """Set to -inf, row by row, the logits of tokens each row's matcher forbids (rows without one are kept)."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return logits
    vocab = logits.shape[-1]
    bitmask = torch.zeros((len(rows), (vocab + 31) // 32), dtype=torch.int32)
    for j, i in enumerate(rows):
        m = matchers[i]
        assert m is not None
        row = bitmask[j]
        m.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
    allowed = ((bitmask.unsqueeze(-1) >> _BITS) & 1).bool().view(len(rows), -1)[:, :vocab]
    logits = logits.clone()
    index = torch.tensor(rows)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
    return logits
