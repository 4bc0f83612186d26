"""LoRA adapters on the engine against transformers + peft's merged models: same logits, same greedy tokens,
alone and in one batch that mixes three adapters and the base; the prefix cache kept apart per adapter."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

import local_engine.model_runner as model_runner
from local_engine import EngineConfig, LLMEngine, LoRAError, SamplingParams
from tests.local_engine.conftest import ADAPTERS, hf_model, make_adapter

PROMPT = [random.Random(7).randrange(5, 500) for _ in range(21)]
TOKENS = 8
ATOL = 2e-4


def _reference(model: torch.nn.Module, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens and each step's last-position logits, by running the whole sequence each time."""
    ids, logits = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            row = model(torch.tensor([ids])).logits[0, -1].float()
            logits.append(row)
            ids.append(int(row.argmax()))
    return ids[len(prompt) :], logits


def _engine(path: Path, adapters: dict[str, tuple[Path, Any]] | None = None, **options: Any) -> LLMEngine:
    engine = LLMEngine(path, EngineConfig(block_size=4, num_kv_blocks=128, **options))
    for name, (adapter_path, _) in (adapters or {}).items():
        engine.add_lora(name, adapter_path)
    return engine


def _capture(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, torch.Tensor]]:
    """Every sampled row's (request id, logits)."""
    rows: list[tuple[str, torch.Tensor]] = []
    real = model_runner.sample

    def capture(logits: torch.Tensor, seqs: list[Any]) -> Any:
        rows.extend((s.request_id, logits[i].clone()) for i, s in enumerate(seqs))
        return real(logits, seqs)

    monkeypatch.setattr(model_runner, "sample", capture)
    return rows


def _run(engine: LLMEngine, requests: dict[str, str | None], stagger: bool = False) -> dict[str, list[int]]:
    """Greedy tokens of each request (id -> adapter) on PROMPT; ``stagger``: one step after each is added."""
    params = SamplingParams(max_tokens=TOKENS, temperature=0, ignore_eos=True)
    tokens: dict[str, list[int]] = {rid: [] for rid in requests}
    for rid, lora in requests.items():
        engine.add_request(rid, PROMPT, params, lora=lora)
        if stagger:
            for out in engine.step():
                tokens[out.request_id].extend(out.token_ids)
    for _ in range(1000):  # bounded: an adapter load the step loop waits for is milliseconds here
        if not engine.has_unfinished():
            break
        for out in engine.step():
            tokens[out.request_id].extend(out.token_ids)
    assert not engine.has_unfinished()
    return tokens


def _assert_matches(
    rows: list[tuple[str, torch.Tensor]], rid: str, tokens: list[int], model: torch.nn.Module
) -> None:
    want_tokens, want_logits = _reference(model, PROMPT, TOKENS)
    got = [logits for r, logits in rows if r == rid]
    assert tokens == want_tokens
    assert len(got) == TOKENS
    for g, w in zip(got, want_logits, strict=True):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)


def test_the_adapters_change_the_model(tiny_llama: Path, adapters: dict[str, tuple[Path, Any]]) -> None:
    base, _ = _reference(hf_model(tiny_llama), PROMPT, TOKENS)
    outputs = [_reference(model, PROMPT, TOKENS)[0] for _, model in adapters.values()]
    # Otherwise the equality tests below would prove nothing.
    assert all(o != base for o in outputs) and len({tuple(o) for o in outputs}) == len(outputs)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_each_adapter_alone_equals_peft_merged(
    tiny_llama: Path, adapters: dict[str, tuple[Path, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _capture(monkeypatch)
    engine = _engine(tiny_llama, adapters)
    tokens = _run(engine, {"r": name})
    _assert_matches(rows, "r", tokens["r"], adapters[name][1])


@pytest.mark.parametrize("mode", ["whole-prefill", "chunked-prefill", "staggered"])
def test_three_adapters_and_the_base_in_one_batch(
    tiny_llama: Path, adapters: dict[str, tuple[Path, Any]], mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # whole: every prompt in one step (each adapter's tokens a long run); chunked: 5-token chunks (short runs
    # of several adapters, masked); staggered: one request added per step (a prefill next to others' decodes).
    engine = _engine(tiny_llama, adapters, max_num_batched_tokens=5 if mode == "chunked-prefill" else 512)
    _run(engine, {f"warm-{n}": n for n in ADAPTERS})  # all three resident, so the batch below starts together
    engine = _fresh_cache(engine)
    steps: list[int] = []
    real_run = engine.runner.run

    def run(batch: list[Any]) -> Any:
        steps.append(len(batch))
        return real_run(batch)

    engine.runner.run = run  # type: ignore[method-assign]
    rows = _capture(monkeypatch)
    requests = {"base": None, **{f"r-{n}": n for n in ADAPTERS}}
    tokens = _run(engine, requests, stagger=mode == "staggered")
    # All four share steps (with 5-token chunks the first is done before the last is prefilled).
    assert max(steps) == (3 if mode == "chunked-prefill" else 4)
    _assert_matches(rows, "base", tokens["base"], hf_model(tiny_llama))
    for name, (_, merged) in adapters.items():
        _assert_matches(rows, f"r-{name}", tokens[f"r-{name}"], merged)


def test_one_adapter_on_rows_spread_through_the_batch(
    tiny_llama: Path, adapters: dict[str, tuple[Path, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prompts of one adapter between base ones: its rows are gathered from several places in the batch.
    engine = _engine(tiny_llama, adapters)
    _run(engine, {"warm": "every"})  # resident, so that all six start in one step
    engine = _fresh_cache(engine)
    rows = _capture(monkeypatch)
    requests = {f"r{i}": "every" if i % 2 else None for i in range(6)}
    tokens = _run(engine, requests)
    base = hf_model(tiny_llama)
    for rid, lora in requests.items():
        _assert_matches(rows, rid, tokens[rid], adapters["every"][1] if lora else base)


def _fresh_cache(engine: LLMEngine) -> LLMEngine:
    """The same engine (adapters resident) with its prefix cache emptied."""
    from local_engine.block_manager import BlockManager

    bm = BlockManager(engine.block_manager.num_blocks, engine.block_manager.block_size)
    engine.block_manager = engine.scheduler.block_manager = bm
    return engine


def test_an_adapter_never_reads_a_base_or_other_adapter_block(
    tiny_llama: Path, adapters: dict[str, tuple[Path, Any]]
) -> None:
    engine = _engine(tiny_llama, adapters)
    params = SamplingParams(max_tokens=2, temperature=0)

    def cached(rid: str, lora: str | None) -> int:
        engine.add_request(rid, PROMPT, params, lora=lora)
        last = []
        while engine.has_unfinished():
            last.extend(engine.step())
        return last[-1].cached_tokens

    assert cached("base-1", None) == 0
    assert cached("attn-1", "attn") == 0  # the base's blocks hold the same tokens, not the same keys
    assert cached("every-1", "every") == 0
    assert cached("attn-2", "attn") == 20 and cached("base-2", None) == 20  # each still reuses its own
    engine.add_lora("attn", adapters["attn"][0])  # registered again: maybe other weights, a new chain
    assert cached("attn-3", "attn") == 0


def test_least_recently_used_adapter_is_evicted_and_reloads(
    tiny_llama: Path, adapters: dict[str, tuple[Path, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _engine(tiny_llama, adapters, max_loras=2)
    first = _run(engine, {"a": "attn"})["a"]
    _run(engine, {"b": "every"})
    _run(engine, {"c": "mlp"})  # takes attn's slot, the least recently used
    assert {i.name: i.resident for i in engine.list_loras()} == {"attn": False, "every": True, "mlp": True}
    assert _run(engine, {"a2": "attn"})["a2"] == first
    assert {i.name for i in engine.list_loras() if i.resident} == {"attn", "mlp"}
    # More adapters than slots in one go: the third waits for a slot, none is served by the wrong weights.
    rows = _capture(monkeypatch)
    tokens = _run(engine, {f"r-{n}": n for n in ADAPTERS})
    for name, (_, merged) in adapters.items():
        _assert_matches(rows, f"r-{name}", tokens[f"r-{name}"], merged)


def test_adapters_load_off_the_step_loop(tiny_llama: Path, adapters: dict[str, tuple[Path, Any]]) -> None:
    import threading

    engine = _engine(tiny_llama, adapters)
    assert engine.loras is not None
    release = threading.Event()
    gate = engine.loras._loader.submit(release.wait, 60)  # the loader thread is busy until released
    engine.add_request("base", PROMPT, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    engine.add_request(
        "lora", PROMPT, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True), lora="every"
    )
    outputs = []
    try:
        for _ in range(4):
            outputs.extend(engine.step())
    finally:
        release.set()
        gate.result()
    # The base request ran its 4 steps while the adapter waited to be loaded; then the adapter's ran.
    assert [o.request_id for o in outputs] == ["base"] * 4
    for _ in range(1000):
        if not engine.has_unfinished():
            break
        outputs.extend(engine.step())
    assert [o.request_id for o in outputs].count("lora") == 4
    assert len(engine.loras.load_seconds) == 1


def test_a_kv_handoff_waits_for_its_adapter_on_the_decode_side(
    tiny_llama: Path, adapters: dict[str, tuple[Path, Any]]
) -> None:
    """Disaggregated serving: a decode engine takes a prompt's KV from a prefill engine and goes on from its
    first token. While its adapter still loads there (lazily, on first use), the sequence waits; it does not
    decode on the base model (it did: a handoff went straight to the running sequences, and a managed worker's
    first adapted answers came out different under load)."""
    import threading

    from local_engine.kv_transfer.layout import gather_kv

    params = SamplingParams(max_tokens=TOKENS, temperature=0, ignore_eos=True)
    want = _run(_engine(tiny_llama, adapters), {"whole": "every"})["whole"]
    prefill = _engine(tiny_llama, adapters)
    handed: list[torch.Tensor] = []

    def save(prompt: list[int], kv_caches: list[tuple[torch.Tensor, torch.Tensor]], blocks: list[int]) -> Any:
        k = kv_caches[0][0]
        out = torch.empty(len(kv_caches), 2, len(blocks), *k.shape[1:], dtype=k.dtype)
        gather_kv(kv_caches, blocks, out)
        handed.append(out)
        return {}  # the handoff's parameters, for a decode worker that would fetch it

    prefill.kv_savers["h"] = save
    prefill.add_request(
        "h", PROMPT, SamplingParams(max_tokens=1, temperature=0, ignore_eos=True), lora="every"
    )
    first = [t for _ in range(100) if prefill.has_unfinished() for o in prefill.step() for t in o.token_ids]
    assert first == want[:1] and len(handed) == 1

    decode = _engine(tiny_llama, adapters)
    assert decode.loras is not None
    release = threading.Event()
    gate = decode.loras._loader.submit(release.wait, 60)  # the loader thread is busy until released
    tokens: list[int] = []
    try:
        assert decode.reserve_handoff("h", PROMPT, params, lora="every")
        tokens += [t for o in decode.complete_handoff("h", handed[0], first[0]) for t in o.token_ids]
        for _ in range(4):
            assert decode.step() == []  # nothing decodes before the adapter is in
    finally:
        release.set()
        gate.result()
    for _ in range(1000):
        if not decode.has_unfinished():
            break
        tokens += [t for o in decode.step() for t in o.token_ids]
    assert tokens == want


def test_removed_adapter_refused_running_request_finishes(
    tiny_llama: Path, adapters: dict[str, tuple[Path, Any]]
) -> None:
    from local_engine import RequestError

    engine = _engine(tiny_llama, adapters)
    engine.add_request("r", PROMPT, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True), lora="mlp")
    for _ in range(3):
        engine.step()
    engine.remove_lora("mlp")
    with pytest.raises(RequestError, match="mlp"):
        engine.add_request("r2", PROMPT, SamplingParams(), lora="mlp")
    outs = []
    while engine.has_unfinished():
        outs.extend(engine.step())
    assert outs[-1].finish_reason == "length" and outs[-1].completion_tokens == 6
    assert [i.name for i in engine.list_loras()] == ["attn", "every"]
    with pytest.raises(LoRAError, match="no LoRA adapter named 'mlp'"):
        engine.remove_lora("mlp")


def test_request_model_names_an_adapter(tiny_llama: Path, adapters: dict[str, tuple[Path, Any]]) -> None:
    engine = _engine(tiny_llama, adapters)
    engine.add_lora("ft:llama:acme:support:x1", adapters["attn"][0])
    assert engine.resolve_lora("attn") == "attn"
    assert engine.resolve_lora("llama:every") == "every"
    assert engine.resolve_lora("ft:llama:acme:support:x1") == "ft:llama:acme:support:x1"
    assert engine.resolve_lora("gateway-alias:ft:llama:acme:support:x1") == "ft:llama:acme:support:x1"
    assert engine.resolve_lora("llama") is None and engine.resolve_lora(None) is None
    with pytest.raises(LoRAError, match="'nope'"):
        engine.resolve_lora("llama:nope")


def _bad_adapter(src: Path, dst: Path, **config: Any) -> Path:
    dst.mkdir()
    (dst / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    conf = json.loads((src / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**conf, **config}))
    return dst


def test_adapters_that_do_not_fit_are_clear_errors(
    tiny_llama: Path, tiny_qwen2: Path, adapters: dict[str, tuple[Path, Any]], tmp_path: Path
) -> None:
    engine = _engine(tiny_llama, max_lora_rank=4)
    every = adapters["every"][0]
    with pytest.raises(LoRAError, match="rank 8 is above this engine's max_lora_rank 4"):
        engine.add_lora("big", every)
    with pytest.raises(LoRAError, match=r"no adapter_config\.json"):
        engine.add_lora("none", tmp_path)
    with pytest.raises(LoRAError, match="use_dora"):
        engine.add_lora("dora", _bad_adapter(adapters["attn"][0], tmp_path / "dora", use_dora=True))
    # An adapter trained on a model of other shapes.
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other-base"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).save_pretrained(str(other))
    make_adapter(other, tmp_path / "other", 4, 8, ["q_proj"], False, seed=1)
    with pytest.raises(LoRAError, match=r"has shape \[4, 32\], the base model needs \[4, 64\]"):
        engine.add_lora("other", tmp_path / "other")
    assert engine.list_loras() == []
    no_lora = LLMEngine(tiny_llama, EngineConfig(block_size=4, num_kv_blocks=32, max_loras=0))
    with pytest.raises(LoRAError, match="max_loras is 0"):
        no_lora.add_lora("attn", adapters["attn"][0])
