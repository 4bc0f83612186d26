#!/usr/bin/env bash
# The local engine on a CUDA machine, in under 8 minutes: the equivalence tests, then the
# throughput bench in bf16 with tokens/s printed next to the HBM bound.
#
#   bench/gpu_check.sh                      # SmolLM2-135M-Instruct (must be in the local HF cache)
#   MODEL=/models/qwen2.5-0.5b HBM_GBPS=3350 bench/gpu_check.sh
#
# HBM_GBPS is the GPU's memory bandwidth in GB/s; by default it is looked up from the GPU's
# name (H200 4800, H100 SXM 3350, A100 80GB 2039, L4 300); unknown GPUs need it set.
# The bound is one decode step per full read of the weights: bandwidth / weight bytes tokens/s
# at concurrency 1 (concurrency c can reach c times that while the weights dominate).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
MODEL=${MODEL:-smollm2}
export HF_HUB_OFFLINE=1
deadline=$((SECONDS + 480))

"$PY" - <<'PY' || { echo "gpu_check: no CUDA device visible to torch" >&2; exit 1; }
import torch
assert torch.cuda.is_available()
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY

echo "== equivalence tests (greedy identical to transformers, speculative decoding) =="
# The tests drive the engine on CPU in float32 against transformers: they check the engine's
# logic on this machine's torch build; the bench below exercises the CUDA path.
timeout 240 "$PY" -m pytest -q -p no:cacheprovider \
    tests/local_engine/test_equivalence.py tests/local_engine/test_speculative.py

echo "== throughput, bf16 on cuda =="
left=$((deadline - SECONDS))
timeout "$left" "$PY" bench/engine_bench.py --model "$MODEL" --device cuda --dtype bfloat16 \
    --skip-hf --concurrency 1,8,32 --max-tokens 128 | tee /tmp/gpu_check_bench.txt

echo "== against the HBM bound =="
MODEL="$MODEL" HBM_GBPS="${HBM_GBPS:-}" "$PY" - <<'PY'
import os, re
import torch
from local_engine import resolve_model
from local_engine.loader import load_model

name = torch.cuda.get_device_name(0)
known = {"H200": 4800, "H100": 3350, "A100": 2039, "L40S": 864, "L4": 300, "A10": 600}
gbps = float(os.environ["HBM_GBPS"]) if os.environ.get("HBM_GBPS") else next(
    (v for k, v in known.items() if k in name), None)
if gbps is None:
    raise SystemExit(f"unknown GPU {name!r}: set HBM_GBPS")
model = load_model(resolve_model(os.environ["MODEL"]), 2048, "cuda", torch.bfloat16)
weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
bound = gbps * 1e9 / weight_bytes
print(f"weights {weight_bytes / 1e6:.0f} MB bf16, HBM {gbps:.0f} GB/s -> bound {bound:.0f} tokens/s per sequence")
print(f"{'concurrent':>10} {'tok/s':>10} {'bound':>10} {'of bound':>9}")
for line in open("/tmp/gpu_check_bench.txt"):
    m = re.match(r"\|?\s*ours[^|]*\|\s*(\d+)\s*\|\s*([\d.]+)", line)
    if m:
        c, tps = int(m.group(1)), float(m.group(2))
        print(f"{c:>10} {tps:>10.1f} {bound * c:>10.0f} {tps / (bound * c):>8.1%}")
PY
echo "gpu_check: done in ${SECONDS}s"
