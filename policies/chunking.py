"""The ``chunk`` context policy for embeddings: an input longer than the window is split into chunks on token
boundaries, overlapping by ``chunk_overlap`` tokens, every chunk is embedded (all in the one upstream
request, as its ``input`` list), and the input's vector is the mean of its chunks' vectors weighted by each
chunk's tokens, scaled to unit length (what OpenAI's embeddings are; cosine similarity is unchanged by it).

An input that fits is sent as it is and its vector returned untouched. Chunks are cut with the deployment's
tokenizer where the gateway has one (OpenAI's BPEs), else on characters at the documented estimate (4
characters a token less ``safety_margin``); token-array inputs are cut as they are. Vectors come back in
the format asked for (floats, or ``encoding_format: base64``, little-endian float32). With the request field
``chunk_vectors: "all"`` the answer has every chunk's vector instead: one item per chunk, ``index`` the
input's and ``chunk`` its place in the input (0 for an input that fits).
"""

from __future__ import annotations

import base64
import math
import sys
from array import array
from dataclasses import dataclass
from typing import Any

HEADER = "x-gateway-context-chunked"
FIELD = "chunk_vectors"  # request field: "mean" (default) or "all"


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """Which of the sent inputs make up each of the client's inputs, and each one's weight (its tokens)."""

    groups: tuple[tuple[int, ...], ...]
    weights: tuple[tuple[int, ...], ...]
    every: bool = False  # ``chunk_vectors: all``: every chunk's vector, not their mean


def spans(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each chunk of a sequence of ``length`` units, ``size`` long, overlapping by
    ``overlap`` (at most half a chunk, so that every chunk moves on)."""
    overlap = min(overlap, size // 2)
    out, start = [], 0
    while True:
        end = min(start + size, length)
        out.append((start, end))
        if end >= length:
            return out
        start = end - overlap


def split(
    inputs: list[Any], size: int, overlap: int, encoding: Any | None, margin: float, every: bool = False
) -> tuple[list[Any], ChunkPlan] | None:
    """The inputs to send and the plan to combine their vectors, or None when every input fits (and not
    ``every``: then each input is its one chunk)."""
    sent: list[Any] = []
    groups: list[tuple[int, ...]] = []
    weights: list[tuple[int, ...]] = []
    split_any = False
    for item in inputs:
        pieces = _pieces(item, size, overlap, encoding, margin)
        split_any = split_any or len(pieces) > 1
        groups.append(tuple(range(len(sent), len(sent) + len(pieces))))
        weights.append(tuple(weight for _, weight in pieces))
        sent.extend(piece for piece, _ in pieces)
    return (sent, ChunkPlan(tuple(groups), tuple(weights), every)) if split_any or every else None


def _pieces(item: Any, size: int, overlap: int, encoding: Any | None, margin: float) -> list[tuple[Any, int]]:
    if isinstance(item, list):  # a token array
        return (
            [(item[a:b], b - a) for a, b in spans(len(item), size, overlap)]
            if len(item) > size
            else [(item, 1)]
        )
    if not isinstance(item, str):
        return [(item, 1)]
    ids = _encode(item, encoding)
    if ids is not None and encoding is not None:
        if len(ids) <= size:
            return [(item, 1)]
        return [(encoding.decode(ids[a:b]), b - a) for a, b in spans(len(ids), size, overlap)]
    per_token = 4 / (1 + margin)  # the estimate's characters per token, margin included
    if math.ceil(len(item) / per_token) <= size:
        return [(item, 1)]
    chars, overlap_chars = max(int(size * per_token), 1), int(overlap * per_token)
    return [(item[a:b], math.ceil((b - a) / per_token)) for a, b in spans(len(item), chars, overlap_chars)]


def _encode(text: str, encoding: Any | None) -> list[int] | None:
    if encoding is None:
        return None
    try:
        return list(encoding.encode_ordinary(text))
    except ValueError:  # bpe-openai refuses one text of over 200k tokens: cut on the estimate then
        return None


def combine(plan: ChunkPlan, data: dict[str, Any]) -> dict[str, Any]:
    """The upstream's answer for the chunks, turned into one vector per client input."""
    items = sorted(data.get("data") or [], key=lambda item: item.get("index", 0))
    out: list[dict[str, Any]] = []
    for index, (group, weights) in enumerate(zip(plan.groups, plan.weights, strict=True)):
        if plan.every:
            out.extend({**items[member], "index": index, "chunk": k} for k, member in enumerate(group))
            continue
        if len(group) == 1:
            out.append({**items[group[0]], "index": index})
            continue
        first = items[group[0]]["embedding"]
        vectors = [_floats(items[i]["embedding"]) for i in group]
        total = sum(weights)
        mean = [
            sum(w * v[d] for w, v in zip(weights, vectors, strict=True)) / total
            for d in range(len(vectors[0]))
        ]
        norm = math.sqrt(sum(x * x for x in mean)) or 1.0
        unit = [x / norm for x in mean]
        out.append(
            {
                "object": "embedding",
                "index": index,
                "embedding": _b64(unit) if isinstance(first, str) else unit,
            }
        )
    return {**data, "data": out}


def _floats(vector: Any) -> list[float]:
    if isinstance(vector, str):
        values = array("f")
        values.frombytes(base64.b64decode(vector))
        if sys.byteorder == "big":
            values.byteswap()
        return list(values)
    return [float(x) for x in vector]


def _b64(vector: list[float]) -> str:
    values = array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode()
