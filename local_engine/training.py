"""LoRA fine-tuning of a local model with ``peft``, run as its own process:
``python -m local_engine.training SPEC.json``.

The spec (``TrainingSpec``, JSON) names the base model (what ``resolve_model`` takes), the chat JSONL files
(OpenAI's fine-tuning format, already checked by the caller), the output directory and the hyperparameters.
Progress goes to stdout, one JSON object a line: ``started``, ``step`` (training loss; validation loss at
each epoch's end), ``checkpoint`` (an epoch's adapter, saved with its optimizer state), ``done`` (the adapter
directory and the tokens trained) or ``error``.

Resuming: started again with the same spec, training goes on after the last checkpoint whose state was saved
whole (the epoch's data order is drawn from ``seed + epoch``, so a resumed run sees the same batches).
The process ends on its own when its parent goes away, so a killed gateway leaves no trainer behind.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_STATE = "trainer.pt"


@dataclass(frozen=True)
class TrainingSpec:
    base_model: str
    training_file: str
    output_dir: str
    validation_file: str | None = None
    n_epochs: int = 3
    batch_size: int = 4
    learning_rate: float = 1e-3
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 0
    max_seq_len: int = 512
    threads: int = 1
    nice: int = 0
    device: str = "auto"  # "auto": CUDA when present, else CPU
    parent_pid: int | None = None  # stop when this process is gone (the gateway that started it)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> TrainingSpec:
        data = json.loads(Path(path).read_text())
        data["target_modules"] = tuple(data.get("target_modules") or cls.target_modules)
        return cls(**data)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 where the loss is not taken (everything but the trained assistant turns)


def _emit(kind: str, **data: Any) -> None:
    print(json.dumps({"type": kind, **data}), flush=True)


def encode(tokenizer: Any, record: dict[str, Any], max_seq_len: int) -> Example:
    """One chat example as tokens, with labels on the assistant messages (those without ``weight: 0``)."""
    messages = [
        {**{k: v for k, v in m.items() if k != "weight"}, "content": _text(m.get("content"))}
        for m in record["messages"]
    ]
    tools = record.get("tools")

    def render(upto: int, prompt: bool) -> str:
        text: str = tokenizer.apply_chat_template(
            messages[:upto], tools=tools, tokenize=False, add_generation_prompt=prompt
        )
        return text

    full = render(len(messages), False)
    spans = []
    for i, message in enumerate(record["messages"]):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        start, end = len(render(i, True)), len(render(i + 1, False))
        spans.append((start, end))
    enc = tokenizer(full, return_offsets_mapping=True, add_special_tokens=False)
    ids: list[int] = enc["input_ids"][:max_seq_len]
    labels = [
        tok if any(s <= a < e for s, e in spans) else -100
        for tok, (a, _) in zip(ids, enc["offset_mapping"], strict=False)
    ]
    return Example(ids, labels)


def _text(content: Any) -> str:
    """A message's content as the chat template takes it: text parts joined, none as empty."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return content or ""


def _read(tokenizer: Any, path: str, max_seq_len: int) -> list[Example]:
    with open(path, encoding="utf-8") as f:
        return [encode(tokenizer, json.loads(line), max_seq_len) for line in f if line.strip()]


def _batch(examples: list[Example], pad: int, torch: Any, device: Any) -> tuple[Any, Any, Any]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def _loss(model: Any, examples: list[Example], pad: int, torch: Any, device: Any) -> Any:
    ids, labels, mask = _batch(examples, pad, torch, device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def _whole_checkpoints(out: Path) -> list[Path]:
    """The epochs' checkpoints whose state file was written (a checkpoint counts once it is whole), in order."""
    return sorted(
        (p for p in (out / "checkpoints").glob("epoch-*") if (p / _STATE).exists()),
        key=lambda p: int(p.name.split("-")[1]),
    )


def train(spec: TrainingSpec) -> Path:
    """Trains, checkpointing each epoch; returns the final adapter's directory."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from local_engine.model_source import resolve_model

    if spec.nice:
        os.nice(spec.nice)
    torch.set_num_threads(spec.threads)
    device = torch.device(
        "cuda"
        if spec.device == "auto" and torch.cuda.is_available()
        else ("cpu" if spec.device == "auto" else spec.device)
    )
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    base = resolve_model(spec.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_set = _read(tokenizer, spec.training_file, spec.max_seq_len)
    valid_set = _read(tokenizer, spec.validation_file, spec.max_seq_len) if spec.validation_file else []
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = model.to(device)
    lora = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        target_modules=list(spec.target_modules),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.learning_rate)
    out = Path(spec.output_dir)
    steps_per_epoch = math.ceil(len(train_set) / spec.batch_size)
    first_epoch, step, trained_tokens = 1, 0, 0
    whole = _whole_checkpoints(out)
    resumed = whole[-1] if whole else None
    if resumed is not None:
        set_peft_model_state_dict(model, load_file(str(resumed / "adapter_model.safetensors")))
        state = torch.load(resumed / _STATE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        first_epoch, step, trained_tokens = state["epoch"] + 1, state["step"], state["trained_tokens"]
    epoch_tokens = sum(len(e.input_ids) for e in train_set)
    epochs = [int(p.name.split("-")[1]) for p in whole]
    _emit(
        "started",
        examples=len(train_set),
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * spec.n_epochs,
        device=str(device),
        resumed_from=None if resumed is None else resumed.name,
        # every whole checkpoint on disk: one written just as the gateway died was never recorded by it
        checkpoints=[{"step": e * steps_per_epoch, "trained_tokens": e * epoch_tokens} for e in epochs],
    )
    for epoch in range(first_epoch, spec.n_epochs + 1):
        order = list(range(len(train_set)))
        random.Random(spec.seed + epoch).shuffle(order)
        model.train()
        for start in range(0, len(order), spec.batch_size):
            _check_parent(spec)
            batch = [train_set[i] for i in order[start : start + spec.batch_size]]
            loss = _loss(model, batch, pad, torch, device)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            data: dict[str, Any] = {"step": step, "epoch": epoch, "train_loss": round(loss.item(), 6)}
            if start + spec.batch_size >= len(order) and valid_set:
                data["valid_loss"] = round(
                    _validation_loss(model, valid_set, spec.batch_size, pad, torch, device), 6
                )
            _emit("step", total_steps=steps_per_epoch * spec.n_epochs, **data)
        trained_tokens += epoch_tokens
        checkpoint = out / "checkpoints" / f"epoch-{epoch}"
        model.save_pretrained(str(checkpoint))
        # The state file last, written beside and renamed: a checkpoint counts only once it is whole.
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "step": step,
                "trained_tokens": trained_tokens,
            },
            checkpoint / f"{_STATE}.tmp",
        )
        os.replace(checkpoint / f"{_STATE}.tmp", checkpoint / _STATE)
        _emit("checkpoint", epoch=epoch, step=step, path=str(checkpoint), trained_tokens=trained_tokens)
    final = out / "adapter"
    model.save_pretrained(str(final))
    _emit("done", adapter=str(final), trained_tokens=trained_tokens, steps=step)
    return final


def _validation_loss(
    model: Any, examples: list[Example], batch_size: int, pad: int, torch: Any, device: Any
) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            total += _loss(model, batch, pad, torch, device).item() * len(batch)
            count += len(batch)
    model.train()
    return total / max(count, 1)


def _check_parent(spec: TrainingSpec) -> None:
    if spec.parent_pid is not None and os.getppid() != spec.parent_pid:
        _emit("error", message="the gateway that started this training went away")
        sys.exit(3)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m local_engine.training SPEC.json", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        train(TrainingSpec.read(args[0]))
    except Exception as exc:  # reported to the gateway as the job's error, whatever it is
        _emit("error", message=f"{type(exc).__name__}: {exc}")
        return 1
    print(f"trained in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
