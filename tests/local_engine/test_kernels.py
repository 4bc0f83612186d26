"""The compiled kernels (local_engine/qkernels.c): the int8 / int4 matmuls against a float64 reference
of the dequantized weights, the fallback to torch's kernels, and the build; the decode step's fused
small ops (residual add + RMSNorm, RoPE + K/V writes) bit for bit against the torch ops they replace,
in the model and without the kernels."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F

from local_engine import kernels
from local_engine.attention import build_metadata, paged_attention
from local_engine.loader import load_model
from local_engine.models.llama import DecoderLayer, LlamaForCausalLM, apply_rope
from local_engine.quant import (
    KERNEL_MAX_ROWS,
    PACKED_MAX_ROWS,
    Int4Head,
    Int4Linear,
    Int8BlockLinear,
    Int8Blocks,
    Int8Linear,
    quantize_int4,
    quantize_int8,
)

ROOT = Path(__file__).resolve().parents[2]


def _machine_can_build() -> bool:
    import platform
    import shutil

    flags = kernels._cpu_flags()
    return (
        platform.machine().lower() in ("x86_64", "amd64")
        and shutil.which("cc") is not None
        and all(f in flags for f in kernels.REQUIRED_FLAGS)
    )


@pytest.fixture
def lib(monkeypatch: pytest.MonkeyPatch) -> Iterator[ctypes.CDLL]:
    """The compiled kernels, built here whatever the caller's environment says (the suite's machines have
    cc, AVX2 and FMA: `make test` checks for cc); a machine that cannot build them fails these tests."""
    monkeypatch.delenv(kernels.DISABLE_ENV, raising=False)
    loader = kernels.library  # the real loader: a test may replace it
    loader.cache_clear()
    got = loader()
    assert got is not None, (
        "the kernels did not build (they need cc, an x86-64 CPU with AVX2 and FMA; "
        f"this one: can build = {_machine_can_build()})"
    )
    yield got
    loader.cache_clear()  # built past the caller's environment: not kept for the tests after


@pytest.fixture
def fresh_library() -> Iterator[None]:
    """The loader's cached answer dropped before and after the test (which sets what it reads)."""
    kernels.library.cache_clear()
    yield
    kernels.library.cache_clear()


def _weights(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.1


def _assert_matches(got: torch.Tensor, want: torch.Tensor) -> None:
    """float32 against a float64 reference: the error of summing K products in float32."""
    assert got.dtype == torch.float32 and got.shape == want.shape
    err = float((got.double() - want).abs().max())
    assert err <= 1e-5 * float(want.abs().max()) + 1e-6, err


@pytest.mark.parametrize("m", [1, 2, 5, 23])
@pytest.mark.parametrize("n, k", [(160, 96), (37, 72), (13, 5), (9, 1536)])  # N off the 8-row blocks, K off 8
def test_int8_kernel_matches_a_float64_reference(lib: object, m: int, n: int, k: int) -> None:
    q, scale = quantize_int8(_weights(n, k, seed=n + k))
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    want = x.double() @ (q.double() * scale.double()[:, None]).t()
    _assert_matches(kernels.int8_mm(lib, x, q, scale), want)  # type: ignore[arg-type]
    # Through the module, with a non-contiguous row stride and a bias.
    lin = Int8Linear(q, scale, torch.ones(n))
    wide = torch.randn(m, k + 3, generator=torch.Generator().manual_seed(1))[:, :k]
    _assert_matches(lin(wide), wide.double() @ (q.double() * scale.double()[:, None]).t() + 1)


@pytest.mark.parametrize("m", [1, 2, 5, 23])
@pytest.mark.parametrize("n, k", [(160, 128), (37, 96), (9, 32), (5, 288)])  # groups of 32; 288: 9 groups
def test_int4_kernel_matches_a_float64_reference(lib: object, m: int, n: int, k: int) -> None:
    blocks = quantize_int4(_weights(n, k, seed=n * k))
    scale, zero = (
        blocks.scale.bfloat16().double(),
        blocks.zero.bfloat16().double(),
    )  # as the engine keeps them
    w = ((blocks.q.double().reshape(n, -1, 32) - 8) * scale[..., None] + zero[..., None]).reshape(n, k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    lin = Int4Linear(blocks, None)
    assert lin.kernel
    _assert_matches(lin(x), x.double() @ w.t())
    # The module's dequantized weights (the many-rows path) are those, rounded to bf16 as before.
    torch.testing.assert_close(lin.dequantize().double(), w, atol=1e-2 * float(w.abs().max()), rtol=1e-2)


def _q8_blocks(n: int, k: int, seed: int) -> Int8Blocks:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    return Int8Blocks(q, (torch.rand(n, k // 32, generator=g) * 0.01 + 1e-4).half())


@pytest.mark.parametrize("m", [1, 2, 5, 23])
@pytest.mark.parametrize("n, k", [(160, 128), (37, 96), (9, 32), (5, 576)])  # blocks of 32; 576: 18 blocks
def test_int8_block_kernel_matches_a_float64_reference(lib: object, m: int, n: int, k: int) -> None:
    """GGUF's Q8_0 as the file holds it: int8 values, a float16 scale per 32 inputs."""
    blocks = _q8_blocks(n, k, seed=n * k)
    w = blocks.q.double() * blocks.d.double().repeat_interleave(32, dim=1)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    _assert_matches(kernels.int8b_mm(lib, x, blocks.q, blocks.d), x.double() @ w.t())  # type: ignore[arg-type]
    # Through the module, with a non-contiguous row stride and a bias; its weights are those, exactly.
    lin = Int8BlockLinear(blocks, torch.ones(n))
    wide = torch.randn(m, k + 3, generator=torch.Generator().manual_seed(1))[:, :k]
    _assert_matches(lin(wide), wide.double() @ w.t() + 1)
    assert torch.equal(lin.dequantize().double(), w)


def test_int8_blocks_without_the_kernels_and_for_many_rows_take_the_dequantized_matmul(
    lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch
) -> None:
    dtype = torch.bfloat16 if kernels.has_amx_bf16() else torch.float32
    lin = Int8BlockLinear(_q8_blocks(64, 96, seed=3), None)

    def dequantized(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.to(dtype), lin.dequantize().to(dtype)).float()

    x = torch.randn(2, 96, generator=torch.Generator().manual_seed(4))
    many = torch.randn(PACKED_MAX_ROWS if dtype is torch.bfloat16 else KERNEL_MAX_ROWS, 96)
    fast = lin(x)
    torch.testing.assert_close(fast, kernels.int8b_mm(lib, x, lin.q, lin.d), atol=0, rtol=0)
    torch.testing.assert_close(lin(many), dequantized(many))
    monkeypatch.setattr(kernels, "library", lambda: None)
    slow = lin(x)
    assert torch.equal(slow, dequantized(x))
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="one scale per 32 inputs"):
        Int8BlockLinear(Int8Blocks(lin.q, lin.d[:, :2]), None)


def test_int4_nibbles_round_trip() -> None:
    q = torch.randint(0, 16, (7, 96), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    nib = kernels.pack_int4(q)
    assert nib.shape == (7, 48)
    assert torch.equal(nib[:, :16] & 15, q[:, :16]) and torch.equal(nib[:, :16] >> 4, q[:, 16:32])
    assert torch.equal(kernels.unpack_int4(nib), q)


def test_without_the_kernels_the_modules_use_torchs_and_agree(
    lib: object, fresh_library: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(96, 128, generator=g) * 0.1
    x = torch.randn(3, 128, generator=g)
    q8 = Int8Linear(*quantize_int8(weight), None)
    blocks = quantize_int4(weight)
    k4 = Int4Linear(blocks, None)
    fast8, fast4 = q8(x), k4(x)
    assert k4.kernel

    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    kernels.library.cache_clear()
    assert kernels.library() is None
    # int8: the fallback is torch's packed kernel on bf16 activations, bit for bit.
    want8 = torch.ops.aten._weight_int8pack_mm(x.bfloat16(), q8.qweight, q8.scale).float()
    assert torch.equal(q8(x), want8)
    # int4: built without the kernels, the module keeps torch's layout and kernel.
    q4 = Int4Linear(blocks, None)
    assert not q4.kernel and hasattr(q4, "packed") and not hasattr(q4, "nib")
    want4 = torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), q4.packed, 32, q4.scale_zero)
    assert torch.equal(q4(x), want4[:, :96].float())
    # Both layouts hold the same weights, and both kernels compute the same products up to the
    # fallback's bf16 activations.
    assert torch.equal(k4.dequantize(), q4.dequantize())
    torch.testing.assert_close(fast4, q4(x), atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(fast8, want8, atol=3e-2, rtol=2e-2)
    assert not torch.equal(fast8, want8)  # the kernel was not the fallback


def test_a_module_built_with_the_kernels_still_runs_without_them(
    lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel-layout int4 module whose library goes away (as the loader can return None) takes the
    dequantized matmul, and many rows always do: in bf16 on a CPU with AMX, else in float32."""
    dtype = torch.bfloat16 if kernels.has_amx_bf16() else torch.float32

    def dequantized(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.to(dtype), lin.dequantize().to(dtype)).float()

    weight = _weights(64, 96, seed=8)
    x = torch.randn(2, 96, generator=torch.Generator().manual_seed(9))
    lin = Int4Linear(quantize_int4(weight), None)
    assert lin.kernel
    fast = lin(x)
    many = torch.randn(PACKED_MAX_ROWS if dtype is torch.bfloat16 else KERNEL_MAX_ROWS, 96)
    torch.testing.assert_close(lin(many), dequantized(many))
    torch.testing.assert_close(lin(many[:-1]), kernels.int4_mm(lib, many[:-1], lin.nib, lin.sz))
    monkeypatch.setattr(kernels, "library", lambda: None)
    slow = lin(x)
    torch.testing.assert_close(slow, dequantized(x))
    torch.testing.assert_close(fast, slow, atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(lin(many), dequantized(many))


def test_a_failing_compiler_means_no_kernels(
    fresh_library: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(kernels.DIR_ENV, str(tmp_path))
    monkeypatch.setenv("CC", "false")  # found, and fails
    assert kernels.library() is None
    assert not list(tmp_path.iterdir())  # its temporary output removed
    kernels.library.cache_clear()
    monkeypatch.setenv("CC", "no-such-compiler")
    assert kernels.library() is None


_BUILD = """
import sys, torch
from local_engine import kernels
from local_engine.quant import quantize_int8
lib = kernels.library()
q, s = quantize_int8(torch.ones(8, 16))
print(float(kernels.int8_mm(lib, torch.ones(1, 16), q, s).sum()))
"""


def test_parallel_builds_share_one_library(lib: object, tmp_path: Path) -> None:
    """Three processes building at once (pytest-xdist's workers) each get a whole library."""
    env = {**os.environ, kernels.DIR_ENV: str(tmp_path), "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _BUILD], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert all(float(o) == pytest.approx(128.0, rel=1e-2) for o in outs), outs
    assert [p.name for p in tmp_path.iterdir()] == [p.name for p in tmp_path.glob("qkernels-*.so")]
    assert len(list(tmp_path.iterdir())) == 1


def test_a_matmul_split_across_threads_is_the_one_thread_matmul(lib: object) -> None:
    """Large matmuls are split by output rows across OpenMP's threads (torch's runtime): each row
    is computed as on one thread, so the results are identical."""
    g = torch.Generator().manual_seed(10)
    q, scale = quantize_int8(torch.randn(3001, 700, generator=g))
    four = Int4Linear(quantize_int4(torch.randn(2999, 608, generator=g)), None)
    x8, x4 = torch.randn(3, 700, generator=g), torch.randn(3, 608, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.int8_mm(lib, x8, q, scale), four(x4)  # type: ignore[arg-type]
        torch.set_num_threads(2)
        two = kernels.int8_mm(lib, x8, q, scale), four(x4)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    _assert_matches(one[0], x8.double() @ (q.double() * scale.double()[:, None]).t())


def test_int4_keeps_the_4bit_head_scan_only_without_the_kernels(
    lib: object, tiny_llama: Path, fresh_library: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With our kernels the int8 head is faster than the 4-bit scan plus its refinement, and exact."""
    from local_engine.loader import load_model

    assert isinstance(load_model(tiny_llama, 256, quantization="int4").lm_head, Int8Linear)
    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    kernels.library.cache_clear()
    assert isinstance(load_model(tiny_llama, 256, quantization="int4").lm_head, Int4Head)


# ---- The decode step's fused small ops (qk_add_rms_norm, qk_rope_kv): bit for bit torch's ops.


@pytest.mark.parametrize("rows", [1, 2, 7, 40])
@pytest.mark.parametrize("width", [576, 64, 100, 13])  # 100 and 13: not whole 8-lane vectors
def test_fused_add_rms_norm_is_torchs_ops_bit_for_bit(lib: ctypes.CDLL, rows: int, width: int) -> None:
    g = torch.Generator().manual_seed(rows * 1000 + width)
    x = (torch.randn(rows, width + 3, generator=g) * 4)[:, :width]  # rows of a wider tensor
    d = torch.randn(rows, width, generator=g)
    w = torch.randn(width, generator=g)
    for delta in (d, None):
        want = x if delta is None else x + delta
        s, h = kernels.add_rms_norm(lib, x, delta, w, 1e-5)
        assert torch.equal(s, want)
        assert torch.equal(h, F.rms_norm(want, (width,), w, 1e-5))
    assert kernels.add_rms_norm_ok(width, 1e-5)


@pytest.mark.parametrize("rows", [1, 5, 40])
@pytest.mark.parametrize("heads, kv_heads, d", [(9, 3, 64), (4, 2, 16), (3, 3, 6)])
def test_fused_rope_and_kv_writes_are_torchs_ops_bit_for_bit(
    lib: ctypes.CDLL, rows: int, heads: int, kv_heads: int, d: int
) -> None:
    g = torch.Generator().manual_seed(rows + heads + d)
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * d, generator=g)
    cos, sin = torch.randn(rows, 1, d, generator=g), torch.randn(rows, 1, d, generator=g)
    slots = torch.randperm(8 * 16, generator=g)[:rows]
    want_k, want_v, k_cache, v_cache = (torch.randn(8, 16, kv_heads, d, generator=g) for _ in range(4))
    k_cache.copy_(want_k)
    v_cache.copy_(want_v)
    qk = apply_rope(qkv[:, : (heads + kv_heads) * d].view(rows, heads + kv_heads, d), (cos, sin))
    want_k.view(-1, kv_heads, d).index_copy_(0, slots, qk[:, heads:])
    want_v.view(-1, kv_heads, d).index_copy_(
        0, slots, qkv[:, (heads + kv_heads) * d :].view(rows, kv_heads, d)
    )
    q = kernels.rope_kv(lib, qkv, heads, kv_heads, cos, sin, slots, k_cache, v_cache)
    assert torch.equal(q, qk[:, :heads])
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)  # other slots untouched
    assert kernels.rope_kv_ok(heads, kv_heads, d)


def _decode_run(model: LlamaForCausalLM, prompt: list[int], steps: int) -> list[torch.Tensor]:
    """The final hidden states of a prefill of ``prompt`` and of ``steps`` decode steps after it (greedy
    on the logits), over a fresh paged cache."""
    cfg = model.config
    shape = (8, 4, cfg.num_key_value_heads, cfg.head_dim)
    kv = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(cfg.num_hidden_layers)]
    table = list(range(8))
    tokens, out = list(prompt), []
    with torch.inference_mode():
        n = len(tokens)
        meta = build_metadata([n], [n], [table], 4, torch.device("cpu"))
        hidden = model(torch.tensor(tokens), torch.arange(n), kv, meta)
        for _ in range(steps):
            out.append(hidden)
            tokens.append(int(model.logits(hidden[-1:]).argmax()))
            n = len(tokens)
            meta = build_metadata([1], [n], [table], 4, torch.device("cpu"))
            hidden = model(torch.tensor(tokens[-1:]), torch.tensor([n - 1]), kv, meta)
        out.append(hidden)
    return out


def test_the_model_computes_the_same_bits_with_the_fused_ops_and_without(
    lib: ctypes.CDLL, fresh_library: None, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused ops run in a step where the kernels are built, and with LLM_GATEWAY_NO_KERNELS=1 the
    step takes torch's ops instead; both give the same hidden states bit for bit (prefill and decode). (The
    lone decode's attention kernel, not bit-identical to SDPA, is left out: it has its own tests.)"""
    monkeypatch.setattr(kernels, "DECODE_ATTENTION_MAX_LEN", 0)
    model = load_model(tiny_model, 64)
    used: list[str] = []
    for name in ("add_rms_norm", "rope_kv"):
        real: Callable[..., object] = getattr(kernels, name)

        def spy(*args: object, real: Callable[..., object] = real, name: str = name) -> object:
            used.append(name)
            return real(*args)

        monkeypatch.setattr(kernels, name, spy)
    fused = _decode_run(model, [5, 9, 30, 41, 7, 3, 12], 4)
    assert {"add_rms_norm", "rope_kv"} <= set(used)
    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    kernels.library.cache_clear()
    used.clear()
    plain = _decode_run(model, [5, 9, 30, 41, 7, 3, 12], 4)
    assert not used
    assert all(torch.equal(a, b) for a, b in zip(fused, plain, strict=True))


@pytest.mark.parametrize("op", ["add_rms_norm", "rope_kv"])
def test_a_fused_op_that_differs_from_torchs_is_not_used(
    lib: ctypes.CDLL, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch, op: str
) -> None:
    """The first-use check compares each fused op with torch's ops; one that differs (here: made to)
    is never called, and the model computes what torch's ops compute."""
    model = load_model(tiny_llama, 64)
    want = _decode_run(model, [4, 8, 15, 16, 23], 2)
    real = getattr(kernels, op)

    def off(*args: object) -> object:
        got = real(*args)
        out = got[1] if isinstance(got, tuple) else got
        out.view(-1)[0] += 1.0  # a wrong bit where the check looks
        return got

    check = kernels.add_rms_norm_ok if op == "add_rms_norm" else kernels.rope_kv_ok
    check.cache_clear()
    monkeypatch.setattr(kernels, op, off)
    try:
        assert all(
            torch.equal(a, b) for a, b in zip(_decode_run(model, [4, 8, 15, 16, 23], 2), want, strict=True)
        )
        cfg = model.config
        shape = (
            (cfg.hidden_size, cfg.rms_norm_eps)
            if op == "add_rms_norm"
            else (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
        )
        assert check(*shape) is False
    finally:
        check.cache_clear()


def test_hooks_on_the_models_modules_still_run(lib: ctypes.CDLL, tiny_llama: Path) -> None:
    """Submodules' forward is called directly, and norms are fused with the residual adds, only where
    nothing hooks them: a hook on a projection, on a norm or on a decoder layer runs, the output unchanged."""
    model = load_model(tiny_llama, 64)
    want = _decode_run(model, [4, 8, 15, 16], 1)
    calls: list[str] = []
    layer = cast("DecoderLayer", model.model.layers[1])
    handles = [
        layer.mlp.down_proj.register_forward_hook(lambda *_: calls.append("down_proj")),
        layer.post_attention_layernorm.register_forward_pre_hook(lambda *_: calls.append("norm")),
        model.model.layers[0].register_forward_hook(lambda *_: calls.append("layer")),
    ]
    try:
        got = _decode_run(model, [4, 8, 15, 16], 1)
    finally:
        for h in handles:
            h.remove()
    assert calls.count("down_proj") == calls.count("norm") == calls.count("layer") == 2  # prefill, decode
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_with_autograd_the_model_takes_torchs_ops_and_has_gradients(
    lib: ctypes.CDLL, tiny_llama: Path
) -> None:
    """The fused ops and the in-place activation have no backward: with grad enabled the model runs
    torch's ops, out of place, to the same values."""
    model = load_model(tiny_llama, 64)
    want = _decode_run(model, [4, 8, 15, 16], 0)[0]
    cfg = model.config
    shape = (8, 4, cfg.num_key_value_heads, cfg.head_dim)
    kv = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(cfg.num_hidden_layers)]
    meta = build_metadata([4], [4], [list(range(8))], 4, torch.device("cpu"))
    weight = cast("DecoderLayer", model.model.layers[0]).mlp.gate_up_proj.weight
    weight.requires_grad_(True)
    with torch.enable_grad():
        hidden = model(torch.tensor([4, 8, 15, 16]), torch.arange(4), kv, meta)
        hidden.sum().backward()
    assert weight.grad is not None and bool(weight.grad.abs().sum() > 0)
    assert torch.equal(hidden.detach(), want)


@pytest.mark.parametrize("length", [1, 7, 37, 300])
@pytest.mark.parametrize("heads, kv_heads, d", [(9, 3, 64), (4, 4, 6), (8, 2, 20)])
def test_decode_attention_kernel_matches_sdpa_over_the_gathered_blocks(
    lib: ctypes.CDLL, length: int, heads: int, kv_heads: int, d: int
) -> None:
    g = torch.Generator().manual_seed(length + heads + d)
    k_cache, v_cache = (torch.randn(128, 4, kv_heads, d, generator=g) for _ in range(2))
    table = torch.randperm(128, generator=g)[: -(-length // 4)]  # scattered blocks
    q = torch.randn(heads, d, generator=g) * 2
    keys = k_cache.index_select(0, table).view(-1, kv_heads, d)[:length].transpose(0, 1)
    values = v_cache.index_select(0, table).view(-1, kv_heads, d)[:length].transpose(0, 1)
    want = F.scaled_dot_product_attention(q[:, None], keys, values, scale=d**-0.5, enable_gqa=True)
    got = kernels.decode_attention(lib, q, k_cache, v_cache, table, length, d**-0.5)
    torch.testing.assert_close(got, want.squeeze(1), atol=2e-6, rtol=2e-5)


def test_a_lone_decode_attends_through_the_kernel_and_without_it_through_sdpa(
    lib: ctypes.CDLL, fresh_library: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """paged_attention's lone decode (concurrency 1) reads its blocks in place through the compiled
    kernel; with LLM_GATEWAY_NO_KERNELS=1 it takes SDPA, to the same values up to rounding. Several
    decodes at once always take SDPA."""
    g = torch.Generator().manual_seed(3)
    k_cache, v_cache = (torch.randn(16, 4, 2, 8, generator=g) for _ in range(2))
    calls: list[int] = []
    real = kernels.decode_attention

    def spy(*args: Any) -> torch.Tensor:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(kernels, "decode_attention", spy)
    q = torch.randn(1, 4, 8, generator=g)
    lone = build_metadata([1], [11], [[5, 2, 9]], 4, torch.device("cpu"))
    with torch.inference_mode():
        fast = paged_attention(q, None, None, k_cache, v_cache, lone, 8**-0.5)
        assert calls == [1]
        two = build_metadata([1, 1], [11, 6], [[5, 2, 9], [3, 4]], 4, torch.device("cpu"))
        both = paged_attention(torch.cat([q, q]), None, None, k_cache, v_cache, two, 8**-0.5)
        assert calls == [1]
        monkeypatch.setenv(kernels.DISABLE_ENV, "1")
        kernels.library.cache_clear()
        slow = paged_attention(q, None, None, k_cache, v_cache, lone, 8**-0.5)
    assert calls == [1]
    torch.testing.assert_close(fast, slow, atol=2e-6, rtol=2e-5)
    torch.testing.assert_close(both[:1], slow, atol=2e-6, rtol=2e-5)
