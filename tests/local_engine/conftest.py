"""Tiny random Llama / Qwen2 checkpoints and a tiny BPE tokenizer, built in code (no download)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from tests.harness import reference_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB = 512
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a paged cache keeps keys and values in fixed size blocks",
    "continuous batching schedules tokens at every step",
    "héllo wörld ünïcode ✓ 日本語 テキスト",
] * 50


def _write_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 8,
        special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    tok.save(str(path / "tokenizer.json"))
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "chat_template": CHATML}
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))


def _build(path: Path, kind: str, max_positions: int = 256) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        # Wider than the default 0.02 so greedy choices are not near-ties a rounding error could flip.
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
    )
    model: torch.nn.Module
    if kind == "llama-plain":  # default RoPE, untied head: what a GGUF round trip can carry
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    elif kind == "llama":
        llama3: dict[str, Any] = dict(
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            rope_theta=500000.0,
        )
        model = LlamaForCausalLM(LlamaConfig(**common, **llama3, tie_word_embeddings=True))
    else:
        qwen = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
        with torch.no_grad():  # transformers zero-inits biases; random ones test that we load them
            for layer in qwen.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
        model = qwen
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    _write_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="session")
def tiny_llama_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("tiny") / "llama-plain", "llama-plain")


@pytest.fixture(scope="session")
def tiny_llama_long(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a 2,048-token context: room for tool descriptions in the prompt."""
    return _build(tmp_path_factory.mktemp("tiny") / "llama-long", "llama", max_positions=2048)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("tiny") / "qwen2", "qwen2")


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_model(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from local_engine import resolve_model

    return resolve_model("smollm2")


@pytest.fixture
async def loop_guard() -> AsyncIterator[None]:
    """Fails the test if work on the event loop holds it for long (torch must run off the loop).

    What counts is the CPU the loop's own thread burned between two of its ticks, not the wall-clock gap: on
    a loaded machine the thread also waits for a core (or for the GIL, held by the engine's step thread),
    and such a wait is not work done on the loop. Nor is a garbage collection of the test process's heap that
    happens to run on the loop's thread (a full one took 2.5 s of CPU late in a full run): its CPU is not
    counted, as in tests/harness.py's guard."""
    import asyncio
    import threading
    import time

    from tests.harness import _gc_cpu

    worst = 0.0
    stop = False
    me = threading.get_ident()

    def work() -> float:
        return time.thread_time() - _gc_cpu.get(me, 0.0)

    async def watch() -> None:
        nonlocal worst
        while not stop:
            cpu = work()
            await asyncio.sleep(0.01)
            worst = max(worst, work() - cpu)

    task = asyncio.create_task(watch())
    yield
    stop = True
    await task
    assert worst < 0.25, f"the event loop's thread burned {worst:.3f} s of CPU between two ticks"


# LoRA adapters of the tiny Llama: name -> (rank, alpha, target modules, rsLoRA)
ADAPTERS: dict[str, tuple[int, int, list[str], bool]] = {
    "attn": (4, 8, ["q_proj", "v_proj"], False),
    "every": (8, 16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], True),
    "mlp": (2, 4, ["o_proj", "gate_proj", "down_proj"], False),
}


def hf_model(path: Path) -> torch.nn.Module:
    return cast("torch.nn.Module", reference_model(path))


def make_adapter(
    base: Path, out: Path, rank: int, alpha: int, targets: list[str], rslora: bool, seed: int
) -> torch.nn.Module:
    """A peft adapter with random non-zero B (peft starts B at zero), saved to ``out``; returns the merged model."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, use_rslora=rslora, lora_dropout=0.0)
    with warnings.catch_warnings():  # peft 0.21 reads a property transformers 5.24 deprecates
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        model = get_peft_model(hf_model(base), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    model.save_pretrained(str(out))
    return model.merge_and_unload().eval()


@pytest.fixture(scope="session")
def adapters(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """ADAPTERS made by peft on the tiny Llama: name -> (directory, transformers model with it merged)."""
    root = tmp_path_factory.mktemp("loras")
    return {
        name: (root / name, make_adapter(tiny_llama, root / name, *spec, seed=i))
        for i, (name, spec) in enumerate(ADAPTERS.items())
    }
