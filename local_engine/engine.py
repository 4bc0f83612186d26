"""The synchronous core: ``step()`` = schedule → run → postprocess."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from collections.abc import Sequence as Sequence_
from pathlib import Path
from typing import Any

import torch

from local_engine.block_manager import BlockManager
from local_engine.config import EngineConfig
from local_engine.detokenizer import IncrementalDetokenizer
from local_engine.draft import DraftProposer
from local_engine.kv_transfer.layout import KVCaches, scatter_kv
from local_engine.loader import load_model
from local_engine.lora import LoRAError, LoRAInfo, LoRAManager
from local_engine.metrics import EngineMetrics
from local_engine.model_runner import ModelRunner, kv_bytes_per_token
from local_engine.model_source import resolve_model
from local_engine.outputs import RequestOutput
from local_engine.sampling_params import SamplingParams
from local_engine.scheduler import Scheduler
from local_engine.sequence import Sequence, SequenceStatus, TokenLogprob
from local_engine.speculative import can_speculate, propose
from local_engine.structured import GrammarCompiler, GrammarError
from local_engine.tokenizer import Tokenizer

Prompt = str | list[int] | list[dict[str, Any]]
# Prefill side of a handoff: (prompt token ids, kv caches, the prompt's block ids) -> kv_transfer_params.
KVSaver = Callable[[list[int], KVCaches, list[int]], dict[str, Any]]


class RequestError(ValueError):
    """A request the engine cannot serve (prompt too long, duplicate id, bad prompt)."""


class ContextLengthError(RequestError):
    """The prompt does not fit in the engine's context."""


class LLMEngine:
    """Owns the model, the KV cache and the queues. Not thread-safe: one caller drives ``step()``."""

    def __init__(self, model: str | Path = "smollm2", config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.model_path = resolve_model(model)
        self.model_name = str(model) if str(model) == "smollm2" else Path(model).name
        self.tokenizer = Tokenizer(self.model_path)
        cfg_max = json.loads((self.model_path / "config.json").read_text()).get(
            "max_position_embeddings", 4096
        )
        dtype = config.torch_dtype
        max_len = config.max_model_len or int(cfg_max)
        self.model = load_model(self.model_path, max_len, config.device, dtype, config.quantization)
        per_block = kv_bytes_per_token(self.model, dtype) * config.block_size
        num_blocks = config.num_kv_blocks or max(2, config.kv_cache_bytes // per_block)
        # A single sequence must always fit in the pool, or preemption could never make room.
        self.max_model_len = min(max_len, num_blocks * config.block_size)
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.block_manager)
        self.loras = (
            LoRAManager(
                self.model,
                self.model.config,
                config.max_loras,
                config.max_lora_rank,
                dtype,
                torch.device(config.device),
            )
            if config.max_loras
            else None
        )
        self.runner = ModelRunner(self.model, config, num_blocks, self.loras)
        spec = config.speculative
        self.drafter = (
            DraftProposer(
                resolve_model(spec.draft_model),
                self.model.config.vocab_size,
                self.max_model_len,
                spec.num_tokens,
                config.block_size,
                # As many tokens as the target's cache holds, plus room for each sequence's guesses.
                num_blocks + config.max_num_seqs,
                config.device,
                dtype,
                config.quantization,
            )
            if spec is not None and spec.draft_model is not None
            else None
        )
        self.eos_token_ids = set(self.model.config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(self.tokenizer.eos_token_id)
        self.metrics = EngineMetrics(kv_blocks_total=num_blocks)
        self.grammars = GrammarCompiler(
            self.model_path, self.model.config.vocab_size, sorted(self.eos_token_ids)
        )
        self._requests: dict[str, list[Sequence]] = {}  # request id → its n sequences
        self.failed: list[tuple[str, Exception]] = []  # requests ended by an error after they were added
        self.kv_savers: dict[str, KVSaver] = {}  # request id → where its prompt's KV goes when prefilled
        self._loading: dict[str, Sequence] = {}  # request id → a handoff holding blocks, its KV in flight

    def add_lora(self, name: str, path: str | Path) -> LoRAInfo:
        """Register the PEFT adapter at ``path`` as ``name`` (checked now, loaded on first use); replaces
        an adapter of that name. Raises :class:`LoRAError` for a directory this base cannot serve."""
        return self._lora_manager().add(name, path)

    def remove_lora(self, name: str) -> None:
        """Unregister ``name``: new requests cannot name it; running ones finish with it."""
        self._lora_manager().remove(name)

    def list_loras(self) -> list[LoRAInfo]:
        return self.loras.registered() if self.loras is not None else []

    def resolve_lora(self, model: str | None) -> str | None:
        """The adapter a request's ``model`` names, None for the base (docs/lora.md)."""
        return self.loras.resolve(model) if self.loras is not None else None

    def _lora_manager(self) -> LoRAManager:
        if self.loras is None:
            raise LoRAError("this engine serves no LoRA adapters (max_loras is 0)")
        return self.loras

    def tokenize(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if prompt and isinstance(prompt[0], dict):
            return self.tokenizer.encode_chat(prompt)  # type: ignore[arg-type,unused-ignore]
        if not all(isinstance(t, int) for t in prompt):
            raise RequestError("prompt must be a string, a list of token ids or a list of chat messages")
        return list(prompt)  # type: ignore[arg-type]

    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams,
        lora: str | None = None,
        continuation: Sequence_[int] = (),
    ) -> list[Sequence]:
        """Queue a request (``params.n`` sequences); ``prompt`` is text, token ids, or OpenAI chat messages;
        ``lora`` names the adapter that serves it (None: the base model).

        ``continuation``: token ids an earlier run of this very request generated (and whose text it sent),
        to go on from: they follow the prompt as its answer so far, not as prompt. They count toward
        ``max_tokens`` and the completion tokens, the penalties see them as output, a grammar consumes them,
        and the text they decode to is emitted only where the earlier run would not yet have: a character
        whose bytes they began, characters held back as the possible start of a stop string. So the
        continuation's text is what that run would have sent after them (the same text, for greedy
        decoding). One sequence only (``n`` of 1); ids that already end the answer are refused."""
        seqs = self._new_sequences(request_id, prompt, params, lora, continuation)
        for seq in seqs:
            self.scheduler.add(seq)
        self._requests[request_id] = seqs
        self.metrics.prompt_tokens_total += seqs[0].num_prompt_tokens
        self._update_gauges()
        return seqs

    def reserve_handoff(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, lora: str | None = None
    ) -> bool:
        """Decode side of a handoff: allocate blocks for a prompt another worker computed (reusing
        blocks this engine's prefix cache already holds). False, and nothing held, while it does not fit."""
        if params.n != 1:
            raise RequestError("a KV handoff carries one sequence (n=1)")
        if len(self.scheduler.running) + len(self._loading) >= self.config.max_num_seqs:
            return False
        (seq,) = self._new_sequences(request_id, prompt_token_ids, params, lora)
        if self.block_manager.allocate(seq, seq.num_prompt_tokens) == 0:
            self._finish(seq, "abort")  # gives back its adapter; it held no block
            return False
        self._requests[request_id] = [seq]
        self._loading[request_id] = seq
        self._update_gauges()
        return True

    def complete_handoff(self, request_id: str, kv: Any, first_token: int) -> list[RequestOutput]:
        """Copy a reserved handoff's KV (``[layers, 2, blocks, ...]``, all the prompt's blocks) into its
        blocks and continue from the first token the prefill worker sampled."""
        seq = self._loading.pop(request_id)
        blocks = seq.block_table
        if tuple(kv.shape[2:4]) != (len(blocks), self.config.block_size):
            raise RequestError(
                f"KV handoff holds {tuple(kv.shape[2:4])} blocks x size; expected {len(blocks)}"
            )
        cached = seq.num_computed_tokens // self.config.block_size  # blocks the prefix cache filled already
        scatter_kv(self.runner.kv_caches, blocks[cached:], kv[:, :, cached:])
        seq.num_computed_tokens = seq.num_prompt_tokens
        self.block_manager.commit(seq)
        seq.status = SequenceStatus.RUNNING
        self.scheduler.running.append(seq)
        self.metrics.prompt_tokens_total += seq.num_prompt_tokens
        out = [self._append_token(seq, first_token, None, time.perf_counter())]
        self._update_gauges()
        return out

    def _new_sequences(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams,
        lora: str | None,
        continuation: Sequence_[int] = (),
    ) -> list[Sequence]:
        if lora is not None and self.loras is None:
            raise RequestError("this engine serves no LoRA adapters (max_loras is 0)")
        if request_id in self._requests:
            raise RequestError(f"request id {request_id!r} is already running")
        ids = self.tokenize(prompt)
        if not ids:
            raise RequestError("prompt is empty")
        if len(ids) + len(continuation) >= self.max_model_len:
            raise ContextLengthError(
                f"prompt has {len(ids)} tokens"
                + (f" and its continuation {len(continuation)}" if continuation else "")
                + f"; this engine's context is {self.max_model_len} tokens"
            )
        vocab = self.model.config.vocab_size
        if any(t < 0 or t >= vocab for t in ids):
            raise RequestError("prompt contains token ids outside the vocabulary")
        if continuation and params.n != 1:
            raise RequestError("a continuation continues one sequence (n=1)")
        if any(not isinstance(t, int) or t < 0 or t >= vocab for t in continuation):
            raise RequestError("the continuation contains token ids outside the vocabulary")
        matchers = []
        if params.grammar is not None:
            try:
                matchers = [self.grammars.matcher(params.grammar) for _ in range(params.n)]
            except GrammarError as e:
                raise RequestError(str(e)) from None
        now = time.perf_counter()
        seqs: list[Sequence] = []
        for i in range(params.n):
            # Siblings wait for the first to compute the prompt, then take its blocks from the cache.
            parent = seqs[0] if seqs and self.config.enable_prefix_caching else None
            seq = Sequence(
                request_id,
                ids,
                params,
                IncrementalDetokenizer(self.tokenizer, ids, params.skip_special_tokens),
                i,
                parent,
            )
            if params.seed is not None and i:
                seq.generator = torch.Generator().manual_seed(params.seed + i)
            seq.arrival_time = now
            if matchers:
                seq.matcher = matchers[i]
            if lora is not None:
                assert self.loras is not None
                try:
                    seq.lora = self.loras.acquire(lora)
                except LoRAError as e:  # unknown, or removed meanwhile by another thread
                    for s in seqs:
                        self._finish(s, "abort")
                    raise RequestError(str(e)) from None
                seq.cache_seed = seq.lora.cache_seed
            seqs.append(seq)
        if continuation:
            try:
                self._continue(seqs[0], continuation)
            except RequestError:
                self._finish(seqs[0], "abort")  # gives back its adapter; it holds no block yet
                raise
        return seqs

    def _continue(self, seq: Sequence, continuation: Sequence_[int]) -> None:
        """Puts ``continuation`` in ``seq`` as output it already has, as if the engine had just generated it:
        decoded through the sequence's detokenizer, checked for the stops, consumed by its grammar, and with
        the text that run would have emitted marked emitted (the rest, held back, comes out next)."""
        for token in continuation:
            seq.token_ids.append(token)
            old_len = len(seq.output_text)
            assert seq.detokenizer is not None
            seq.output_text += seq.detokenizer.add(token)
            if seq.matcher is not None and not seq.matcher.consume_token(token):
                raise RequestError("the continuation does not match the request's grammar")
            if self._stop_reason(seq, token, old_len) is not None:
                raise RequestError("the continuation already ends the answer")
        seq.num_emitted_chars = self._emittable(seq)

    def abort_request(self, request_id: str) -> None:
        """Stop a request now and free its KV blocks; a no-op if it is unknown or already done."""
        seqs = self._requests.pop(request_id, None)
        self.kv_savers.pop(request_id, None)
        self._loading.pop(request_id, None)
        for seq in seqs or ():
            if not seq.finished:
                self._finish(seq, "abort")
        self._update_gauges()

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.finish(seq, reason)
        if seq.lora is not None and self.loras is not None:
            self.loras.release(seq.lora)
            seq.lora = None

    def _install_loras(self) -> None:
        assert self.loras is not None
        failed = self.loras.install()
        if not failed:
            return
        for rid, seqs in list(self._requests.items()):
            entry = next((s.lora for s in seqs if s.lora in failed), None)
            if entry is not None:
                self.abort_request(rid)
                self.failed.append(
                    (rid, RequestError(f"LoRA adapter {entry.adapter.name!r} failed to load: {entry.error}"))
                )

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        if self.config.speculative is not None:
            self._propose_drafts()
        if self.loras is not None and self.loras.loading:
            self._install_loras()
        batch = self.scheduler.schedule()
        if not batch:
            if self.loras is not None and self.loras.loading:
                self.loras.wait(0.05)  # only requests whose adapter loads are left: do not spin
            self._update_gauges()
            return []
        sampled = self.runner.run(batch)
        now = time.perf_counter()
        outputs = []
        for i, s in enumerate(batch):
            seq = s.seq
            seq.num_computed_tokens += s.num_tokens - len(s.draft)
            self.block_manager.commit(seq)
            tokens = sampled.get(i, [])
            if s.draft:
                self._record_verification(seq, len(s.draft), len(tokens) - 1)
            for k, (token, logprob) in enumerate(tokens):
                outputs.append(self._append_token(seq, token, logprob, now))
                if seq.finished:
                    break
                if k < len(tokens) - 1:  # an accepted draft: this step already computed its KV
                    seq.num_computed_tokens += 1
                    self.block_manager.commit(seq)
        self.metrics.record_step(now, len(outputs))
        self._update_gauges()
        return outputs

    def _propose_drafts(self) -> None:
        spec = self.config.speculative
        assert spec is not None
        wanted = []
        for seq in self.scheduler.running:
            seq.draft, seq.draft_probs = [], None
            if seq.num_tokens - seq.num_computed_tokens != 1 or not can_speculate(seq):
                continue
            # A draft never runs past the context or past max_tokens (the last token is the target's).
            room = self.max_model_len - seq.num_tokens
            if seq.params.max_tokens is not None:
                room = min(room, seq.params.max_tokens - seq.num_output_tokens - 1)
            if room > 0:
                wanted.append((seq, min(room, spec.num_tokens)))
        if self.drafter is not None:
            self.drafter.propose(wanted)
        else:
            for seq, k in wanted:
                seq.draft = propose(seq, spec, k)

    def _record_verification(self, seq: Sequence, proposed: int, accepted: int) -> None:
        spec = self.config.speculative
        assert spec is not None
        seq.spec_proposed += proposed
        seq.spec_accepted += accepted
        self.metrics.record_verification(proposed, accepted)
        if (
            seq.spec_proposed >= spec.min_proposed
            and seq.spec_accepted < spec.min_acceptance * seq.spec_proposed
        ):
            seq.spec_off = True  # its drafts cost more than they save

    def _append_token(
        self, seq: Sequence, token: int, logprob: TokenLogprob | None, now: float
    ) -> RequestOutput:
        if seq.last_token_time is None:
            self.metrics.record_ttft(now - seq.arrival_time)
        else:
            self.metrics.record_itl(now - seq.last_token_time)
        seq.last_token_time = now
        seq.token_ids.append(token)
        if logprob is not None:
            seq.logprobs.append(logprob)
        assert seq.detokenizer is not None
        old_len = len(seq.output_text)
        seq.output_text += seq.detokenizer.add(token)
        if seq.matcher is not None:
            seq.matcher.consume_token(token)  # the mask offered only the tokens it allows
        reason = self._stop_reason(seq, token, old_len)
        done = False
        kv_params = None
        if reason is not None:
            saver = self.kv_savers.pop(seq.request_id, None)
            if saver is not None:  # a prefill worker's sequence: its prompt's KV leaves before the blocks go
                n = -(-seq.num_prompt_tokens // self.config.block_size)
                kv_params = saver(seq.prompt_token_ids, self.runner.kv_caches, seq.block_table[:n])
            self._finish(seq, reason)
            siblings = self._requests[seq.request_id]
            done = all(s.finished for s in siblings)
            if done:
                del self._requests[seq.request_id]
                self.metrics.requests_finished_total += 1
        return self._output(seq, [token], [logprob] if logprob is not None else [], done, kv_params)

    def _stop_reason(self, seq: Sequence, token: int, old_len: int) -> str | None:
        """Why ``seq`` ends with ``token``, its newest (``old_len``: its text's length before it), or None; a
        stop string found is cut from its text (kept with ``include_stop_str_in_output``)."""
        p = seq.params
        reason = None
        if seq.matcher is not None and seq.matcher.is_stopped():
            reason = "stop"  # a stopped matcher means the grammar is complete
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            reason = "stop"
        elif p.stop:
            longest = max(len(s) for s in p.stop)
            # Only text that could end in a new stop string needs searching.
            window_start = max(0, old_len - longest + 1)
            hits = [(i, s) for s in p.stop if (i := seq.output_text.find(s, window_start)) >= 0]
            if hits:
                idx, stop = min(hits)
                seq.output_text = seq.output_text[: idx + (len(stop) if p.include_stop_str_in_output else 0)]
                reason = "stop"
        if reason is None and (
            (p.max_tokens is not None and seq.num_output_tokens >= p.max_tokens)
            or seq.num_tokens >= self.max_model_len
        ):
            reason = "length"
        return reason

    @staticmethod
    def _emittable(seq: Sequence) -> int:
        """How much of ``seq``'s text may go out now: a running one's holds back what might be the start of a
        stop string until it is decided."""
        end = len(seq.output_text)
        if not seq.finished and seq.params.stop:
            end = max(seq.num_emitted_chars, end - max(len(s) for s in seq.params.stop) + 1)
        return end

    def _output(
        self,
        seq: Sequence,
        tokens: list[int],
        logprobs: list[TokenLogprob],
        done: bool,
        kv_transfer_params: dict[str, Any] | None = None,
    ) -> RequestOutput:
        end = self._emittable(seq)
        text = seq.output_text[seq.num_emitted_chars : end]
        seq.num_emitted_chars = end
        return RequestOutput(
            request_id=seq.request_id,
            index=seq.index,
            text=text,
            token_ids=tuple(tokens),
            logprobs=tuple(logprobs) if seq.params.logprobs is not None else None,
            finish_reason=seq.finish_reason,
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=seq.num_output_tokens,
            # a continuation's cache hit may run into its earlier output: the prompt's part counts
            cached_tokens=min(seq.num_cached_tokens, seq.num_prompt_tokens),
            done=done,
            kv_transfer_params=kv_transfer_params,
        )

    def _update_gauges(self) -> None:
        m = self.metrics
        m.running_seqs = len(self.scheduler.running)
        m.waiting_seqs = len(self.scheduler.waiting)
        m.kv_blocks_used = self.block_manager.num_used_blocks
        m.prefix_cache_hit_rate = self.block_manager.prefix_cache_hit_rate
        m.num_preemptions = self.scheduler.num_preemptions
