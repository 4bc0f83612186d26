"""Trial (b) of the pair-reading second stage (issue 13, third round; see bench/pair_head_trial.py): the same
pair input ("[CLS] a [SEP] b [SEP]"), all-MiniLM-L6-v2's first five layers frozen (their output computed once),
its last transformer layer fine-tuned with a one-logit head on [CLS, mean pool], on the train pairs at cosine
>= 0.70 that pass the slot checks, both orders. Out of fold on train (5 folds by family), the same two-tier
choice as pair_head_trial.py; ``--test`` trains on all of the region and reads the test split once.

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/pair_layer_trial.py [--epochs 3] [--test]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import pair_head_trial as ph  # noqa: E402
from bench import train_verifier as tv  # noqa: E402
from policies.cache.embedder import model_path  # noqa: E402
from policies.cache.normalize import canonical  # noqa: E402

MAX_TOKENS = 64


def frozen(model: Any, tokenizer: Any, pairs: list[tuple[str, str]]) -> tuple[Any, Any]:
    """Layer 5's output (float16) and the attention mask of each pair, padded to MAX_TOKENS."""
    import torch

    hs, masks = [], []
    with torch.inference_mode():
        for start in range(0, len(pairs), 64):
            chunk = pairs[start : start + 64]
            enc = tokenizer(
                [a for a, _ in chunk],
                [b for _, b in chunk],
                padding="max_length",
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            out = model(**enc, output_hidden_states=True)
            hs.append(out.hidden_states[5].half())
            masks.append(enc["attention_mask"])
    return torch.cat(hs), torch.cat(masks)


class Head:
    def __init__(self, layer: Any) -> None:
        import torch

        self.layer = copy.deepcopy(layer)
        self.linear = torch.nn.Linear(768, 1)

    def parameters(self) -> list[Any]:
        return [*self.layer.parameters(), *self.linear.parameters()]

    def __call__(self, h: Any, mask: Any) -> Any:
        import torch

        ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        out = self.layer(h.float(), attention_mask=ext)
        out = out[0] if isinstance(out, tuple) else out
        w = mask[..., None].float()
        mean = (out * w).sum(1) / w.sum(1).clamp(min=1e-9)
        return self.linear(torch.cat([out[:, 0], mean], dim=1))[:, 0]


def train_head(layer: Any, h: Any, mask: Any, y: Any, epochs: int, seed: int = 13) -> Head:
    import torch

    torch.manual_seed(seed)
    head = Head(layer)
    opt = torch.optim.AdamW(
        [
            {"params": list(head.layer.parameters()), "lr": 5e-5},
            {"params": list(head.linear.parameters()), "lr": 1e-3},
        ],
        weight_decay=0.01,
    )
    loss_fn = torch.nn.BCEWithLogitsLoss(
        pos_weight=torch.tensor(float((y == 0).sum()) / max(1.0, float((y == 1).sum())))
    )
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), 32):
            i = order[start : start + 32]
            loss = loss_fn(head(h[i], mask[i]), y[i])
            loss.backward()
            opt.step()
            opt.zero_grad()
    return head


def predict(head: Head, h: Any, mask: Any) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(h), 256):
            out.append(torch.sigmoid(head(h[start : start + 256], mask[start : start + 256])).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def states(
    model: Any, tokenizer: Any, rows: list[dict[str, object]], region: np.ndarray
) -> tuple[np.ndarray, Any, Any, Any, Any]:
    idx = np.where(region)[0]
    ab = [(canonical(str(rows[i]["a"])), canonical(str(rows[i]["b"]))) for i in idx]
    h, m = frozen(model, tokenizer, ab)
    hf, mf = frozen(model, tokenizer, [(b, a) for a, b in ab])
    return idx, h, m, hf, mf


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--test", action="store_true")
    args = parser.parse_args()

    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(2)
    rows = tv.load_pairs("train")
    d = ph.prepare(rows)
    groups = tv.near_miss_groups(rows)
    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    last = model.encoder.layer[5]
    t0 = time.perf_counter()
    idx, h, m, hf, mf = states(model, tokenizer, rows, d["region"])
    print(
        f"layer-5 states of {len(idx)} region pairs, both orders: {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    y = torch.tensor(d["y"][idx], dtype=torch.float32)
    fam = d["family"][idx]
    oof = np.zeros(len(rows))
    t0 = time.perf_counter()
    for held in np.array_split(np.random.default_rng(7).permutation(np.unique(d["family"])), 5):
        test = np.isin(fam, held)
        tr = torch.tensor(np.where(~test)[0])
        head = train_head(
            last,
            torch.cat([h[tr], hf[tr]]),
            torch.cat([m[tr], mf[tr]]),
            torch.cat([y[tr], y[tr]]),
            args.epochs,
        )
        te = torch.tensor(np.where(test)[0])
        oof[idx[test]] = (predict(head, h[te], m[te]) + predict(head, hf[te], mf[te])) / 2
        print(f"fold done {time.perf_counter() - t0:.0f} s", flush=True)
    recall, low, p, worst = ph.two_tiers(d, oof, groups)
    hit = (d["ok"] & (d["cos"] >= ph.TOP)) | (d["ok"] & (d["cos"] >= low) & (oof >= p))
    nat = hit[(d["cls"] == "natural") & (d["y"] == 1)].mean()
    gen = hit[(d["cls"] == "general") & (d["y"] == 1)].mean()
    print(
        f"last layer + head, {args.epochs} epochs: slots alone >= {ph.TOP}, head >= {p:.3f} from {low:.2f}: "
        f"recall {recall:.1%} (natural {nat:.1%}, general {gen:.1%}), worst class {worst:.2%}"
    )
    print(ph.per_class(d, hit))
    if args.test:
        head = train_head(last, torch.cat([h, hf]), torch.cat([m, mf]), torch.cat([y, y]), args.epochs)
        test_rows = tv.load_pairs("test")
        t = ph.prepare(test_rows)
        tidx, th, tm, thf, tmf = states(model, tokenizer, test_rows, t["region"])
        prob = np.zeros(len(test_rows))
        prob[tidx] = (predict(head, th, tm) + predict(head, thf, tmf)) / 2
        hit = (t["ok"] & (t["cos"] >= ph.TOP)) | (t["ok"] & (t["cos"] >= low) & (prob >= p))
        print(f"\n## Test split (read once): last layer + head, >= {p:.3f} from cosine {low:.2f}\n")
        print(ph.per_class(t, hit))


if __name__ == "__main__":
    main()
