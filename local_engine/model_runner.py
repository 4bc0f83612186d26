"""Flattens a scheduled batch into tensors, runs the model over the paged cache, samples."""

from __future__ import annotations

import torch

from local_engine.attention import build_metadata
from local_engine.config import EngineConfig
from local_engine.lora import LoRAManager
from local_engine.models.llama import LlamaForCausalLM
from local_engine.sampler import sample
from local_engine.scheduler import ScheduledSeq
from local_engine.sequence import TokenLogprob
from local_engine.speculative import verify

Sampled = list[tuple[int, TokenLogprob | None]]


def kv_bytes_per_token(model: LlamaForCausalLM, dtype: torch.dtype) -> int:
    cfg = model.config
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * elem


class ModelRunner:
    def __init__(
        self, model: LlamaForCausalLM, config: EngineConfig, num_blocks: int, lora: LoRAManager | None = None
    ) -> None:
        self.model = model
        self.lora = lora
        self.block_size = config.block_size
        self.device = torch.device(config.device)
        cfg = model.config
        dtype = config.torch_dtype
        shape = (num_blocks, config.block_size, cfg.num_key_value_heads, cfg.head_dim)
        self.kv_caches = [
            (
                torch.zeros(shape, dtype=dtype, device=self.device),
                torch.zeros(shape, dtype=dtype, device=self.device),
            )
            for _ in range(cfg.num_hidden_layers)
        ]

    @torch.inference_mode()
    def run(self, batch: list[ScheduledSeq]) -> dict[int, Sampled]:
        """Compute ``batch``; return ``{index in batch: [(new token, logprob), ...]}`` for the rows
        that sample: one token, or with a draft the accepted drafts and one more."""
        input_ids: list[int] = []
        positions: list[int] = []
        query_lens: list[int] = []
        context_lens: list[int] = []
        logit_rows: list[int] = []
        sampling: list[int] = []
        token_slots: list[int] = []  # each token's LoRA slot, -1 for the base model
        for i, s in enumerate(batch):
            if self.lora is not None:
                token_slots.extend([s.seq.lora.slot if s.seq.lora is not None else -1] * s.num_tokens)
            start = s.seq.num_computed_tokens
            end = start + s.num_tokens
            input_ids.extend(s.seq.token_ids[start : end - len(s.draft)])
            input_ids.extend(s.draft)
            positions.extend(range(start, end))
            query_lens.append(s.num_tokens)
            context_lens.append(end)
            if s.samples:
                # A draft's rows check it: row j holds the target's choice after draft[:j].
                logit_rows.extend(range(len(input_ids) - 1 - len(s.draft), len(input_ids)))
                sampling.append(i)
        meta = build_metadata(
            query_lens, context_lens, [s.seq.block_table for s in batch], self.block_size, self.device
        )
        if self.lora is not None:
            self.lora.begin(token_slots)
        try:
            hidden = self.model(
                torch.tensor(input_ids, device=self.device),
                torch.tensor(positions, device=self.device),
                self.kv_caches,
                meta,
            )
        finally:
            if self.lora is not None:
                self.lora.end()
        if not sampling:
            return {}
        # Only the rows that sample pay for the (vocabulary-sized) LM head.
        logits = self.model.logits(hidden[torch.tensor(logit_rows, device=self.device)]).cpu()
        return self._sample(logits, [batch[i] for i in sampling], sampling)

    @staticmethod
    def _sample(logits: torch.Tensor, rows: list[ScheduledSeq], index: list[int]) -> dict[int, Sampled]:
        out: dict[int, Sampled] = {}
        plain: list[int] = []  # logits row of each sequence without a draft
        plain_index: list[int] = []
        plain_seqs = []
        row = 0
        for i, s in zip(index, rows, strict=True):
            if s.draft:
                out[i] = verify(logits[row : row + len(s.draft) + 1], s.seq, s.draft)
            else:
                plain.append(row)
                plain_index.append(i)
                plain_seqs.append(s.seq)
            row += len(s.draft) + 1
        if plain:
            picked = logits if len(plain) == row else logits[torch.tensor(plain)]
            tokens, logprobs = sample(picked, plain_seqs)
            for i, t, lp in zip(plain_index, tokens, logprobs, strict=True):
                out[i] = [(t, lp)]
        return out
