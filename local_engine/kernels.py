"""The weight-only int8 / int4 matmul kernels of ``qkernels.c``, compiled at first use and called
through ``ctypes`` (:mod:`local_engine.quant` uses them for decode-sized steps).

A decode step reads every weight once, so its speed is the rate the weights stream in; torch's
packed CPU kernels (``_weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``) convert them at
4-6 GB/s, a third of what this machine reads, which kept int8 and int4 far from their bandwidth
bounds. These loops read the packed weights, dequantize them in registers (AVX2 + FMA) and
multiply float32 activations (nothing is rounded on the activation side).

The library is built once per source, compiler and CPU with the system C compiler (``cc -O3
-march=native``) into ``~/.cache/llm-gateway/kernels/`` (``LLM_GATEWAY_KERNEL_DIR`` overrides);
parallel builders (pytest-xdist workers, several engines) each write a temporary file and
``os.replace`` it, so a reader never sees half a library. Without a compiler, AVX2, FMA and F16C, on
another architecture, or with ``LLM_GATEWAY_NO_KERNELS=1``, :func:`library` is None and the
callers keep torch's kernels.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("qkernels.c")
DISABLE_ENV = "LLM_GATEWAY_NO_KERNELS"
DIR_ENV = "LLM_GATEWAY_KERNEL_DIR"
CFLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-fopenmp", "-Wall")
REQUIRED_FLAGS = ("avx2", "fma", "f16c")  # /proc/cpuinfo flags the source needs (it #errors without them)
INT4_GROUP = 32

_L, _P = ctypes.c_long, ctypes.c_void_p


@functools.cache
def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_amx_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX): there oneDNN's bf16 GEMM is the fast way to
    run a matmul of many rows; elsewhere (AVX2 machines) torch's bf16 GEMM is several times slower than
    float32's."""
    return "amx_bf16" in _cpu_flags()


def _build(cc: str, flags: set[str]) -> Path:
    """The library's path, compiled unless this source, compiler and CPU already have one: the key
    holds the CPU's flags because ``-march=native`` code may not run on another machine sharing the
    cache directory."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(
        b"\0".join(
            [
                SOURCE.read_bytes(),
                version.encode(),
                " ".join(sorted(flags)).encode(),
                " ".join(CFLAGS).encode(),
            ]
        )
    ).hexdigest()[:16]
    directory = Path(os.environ.get(DIR_ENV) or Path.home() / ".cache" / "llm-gateway" / "kernels")
    path = directory / f"qkernels-{key}.so"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".qkernels-", suffix=".so")
    os.close(fd)
    try:
        subprocess.run(
            [cc, *CFLAGS, "-o", tmp, str(SOURCE), "-lm"], check=True, capture_output=True, timeout=300
        )
        os.replace(tmp, path)  # atomic: a concurrent builder's identical file may be replaced, never torn
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they cannot be used here (then the callers use torch's)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    flags = _cpu_flags()
    cc = shutil.which(os.environ.get("CC") or "cc")
    if cc is None or not all(f in flags for f in REQUIRED_FLAGS):
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc, flags)))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        log.warning(
            "quantized kernels unavailable, using torch's: %s %s", exc, detail.decode(errors="replace")
        )
        return None
    lib.qk_int8_mm.argtypes = [_L, _L, _L, _P, _L, _P, _P, _P, _L]
    lib.qk_int8_mm.restype = None
    lib.qk_int4_mm.argtypes = [_L, _L, _L, _P, _L, _P, _P, _P, _L]
    lib.qk_int4_mm.restype = None
    lib.qk_int8b_mm.argtypes = [_L, _L, _L, _P, _L, _P, _P, _P, _L]
    lib.qk_int8b_mm.restype = None
    lib.qk_add_rms_norm.argtypes = [_L, _L, _P, _L, _P, _L, _P, ctypes.c_float, _P, _P]
    lib.qk_add_rms_norm.restype = None
    lib.qk_rope_kv.argtypes = [_L, _L, _L, _L, _P, _L, _P, _P, _P, _P, _P, _P]
    lib.qk_rope_kv.restype = None
    lib.qk_decode_attention.argtypes = [_L, _L, _L, _L, _L, _P, _P, _P, _P, ctypes.c_float, _P]
    lib.qk_decode_attention.restype = None
    return lib


def _rows(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as the kernels read it (float32, rows of unit stride) and the ``[M, n]`` float32 output."""
    if x.dtype is not torch.float32:
        x = x.float()
    if x.stride(1) != 1:
        x = x.contiguous()
    return x, torch.empty(x.shape[0], n)


def int8_mm(lib: ctypes.CDLL, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x [M, K] @ (q * scale[:, None])^T`` in float32: ``q`` [N, K] int8 contiguous, ``scale`` [N]
    bf16 (CPU tensors). Called ~120 times a decode step, so it does no more than it must (a call
    costs a few µs of Python and ctypes, which is a few % of the step)."""
    x, y = _rows(x, q.shape[0])
    m, k = x.shape
    n = y.shape[1]
    lib.qk_int8_mm(m, n, k, x.data_ptr(), x.stride(0), q.data_ptr(), scale.data_ptr(), y.data_ptr(), n)
    return y


def int4_mm(lib: ctypes.CDLL, x: torch.Tensor, nib: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:
    """``x [M, K] @ W^T`` in float32 with ``W = (q - 8) * scale + zero`` over groups of 32 inputs:
    ``nib`` [N, K / 2] uint8 (byte j of a group: q[j] low nibble, q[j + 16] high), ``sz`` [N, 2,
    K / 32] bf16 (each row's scales, then its zeros)."""
    x, y = _rows(x, nib.shape[0])
    m, k = x.shape
    n = y.shape[1]
    lib.qk_int4_mm(m, n, k, x.data_ptr(), x.stride(0), nib.data_ptr(), sz.data_ptr(), y.data_ptr(), n)
    return y


def int8b_mm(lib: ctypes.CDLL, x: torch.Tensor, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``x [M, K] @ W^T`` in float32 with ``W[n, k] = q[n, k] * d[n, k // 32]`` (GGUF's Q8_0 blocks):
    ``q`` [N, K] int8 contiguous, ``d`` [N, K / 32] float16 contiguous (CPU tensors)."""
    x, y = _rows(x, q.shape[0])
    m, k = x.shape
    n = y.shape[1]
    lib.qk_int8b_mm(m, n, k, x.data_ptr(), x.stride(0), q.data_ptr(), d.data_ptr(), y.data_ptr(), n)
    return y


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """``q`` [N, K] (0..15) as :func:`int4_mm`'s nibbles [N, K / 2]: byte j of each group of 32 holds
    input j in its low nibble and input j + 16 in its high one (the order of GGUF's Q4 blocks), so
    the kernel unpacks a group with a mask and a shift."""
    rows, cols = q.shape
    g = q.to(torch.uint8).reshape(rows, cols // INT4_GROUP, INT4_GROUP)
    return (g[..., :16] | (g[..., 16:] << 4)).reshape(rows, cols // 2).contiguous()


def unpack_int4(nib: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: [N, K] uint8 values 0..15."""
    rows, half = nib.shape
    g = nib.reshape(rows, half // 16, 16)
    return torch.cat((g & 15, g >> 4), dim=-1).reshape(rows, 2 * half)


# ---- The decode step's small ops, fused (one call where torch runs several ops, each a few µs of
# dispatch on a decode step's one row). Each is used only where it was found bit-identical to the torch
# ops it replaces, checked once per shape at first use (:func:`add_rms_norm_ok`, :func:`rope_kv_ok`):
# the C code rounds as those ops do, but their order of summation is torch's to choose.


def add_rms_norm(
    lib: ctypes.CDLL, x: torch.Tensor, d: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, F.rms_norm(s, weight.shape, weight, eps))`` with ``s = x + d`` (``x`` where ``d`` is None),
    for float32 CPU ``x`` and ``d`` [T, n] with rows of unit stride and a contiguous ``weight`` [n]."""
    t, n = x.shape
    s = torch.empty(t, n)
    out = torch.empty(t, n)
    lib.qk_add_rms_norm(
        t,
        n,
        x.data_ptr(),
        x.stride(0),
        None if d is None else d.data_ptr(),
        0 if d is None else d.stride(0),
        weight.data_ptr(),
        eps,
        s.data_ptr(),
        out.data_ptr(),
    )
    return s, out


def rope_kv(
    lib: ctypes.CDLL,
    qkv: torch.Tensor,
    heads: int,
    kv_heads: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slots: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> torch.Tensor:
    """The rotated queries ``[T, heads, D]`` of a fused q/k/v projection's output ``qkv`` [T, (heads + 2
    kv_heads) * D] (float32, rows of unit stride), its rotated keys and its values written into the
    caches ([blocks, block size, kv_heads, D], contiguous float32) at ``slots`` [T] (int64): the
    ``apply_rope`` of q's and k's heads and the two ``index_copy_`` of :func:`paged_attention`, in one
    call. ``cos``, ``sin`` [T, D] contiguous (``RotaryEmbedding``'s, sin signed)."""
    t, d = qkv.shape[0], k_cache.shape[-1]
    q = torch.empty(t, heads, d)
    lib.qk_rope_kv(
        t,
        heads,
        kv_heads,
        d,
        qkv.data_ptr(),
        qkv.stride(0),
        cos.data_ptr(),
        sin.data_ptr(),
        slots.data_ptr(),
        q.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
    )
    return q


# The longest context of a lone decode whose attention goes through the kernel: it is faster than the
# gather and SDPA on short contexts (SmolLM2's shapes, 1 thread: 60 tokens 14 µs a layer against 23-27,
# 300 tokens 46 against 47-57) but not on long ones (1000 tokens: 165 against 136-171), where SDPA's
# vectorized exp and blocked products win.
DECODE_ATTENTION_MAX_LEN = 512


def decode_attention(
    lib: ctypes.CDLL,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    table: torch.Tensor,
    length: int,
    scale: float,
) -> torch.Tensor:
    """One decode token's attention ``[H, D]`` over its first ``length`` cached keys and values, read in
    place through its block ``table`` (int64, contiguous) instead of gathered: ``q`` [H, D] and the caches
    ([blocks, block size, kv heads, D]) contiguous float32 on the CPU. Equal to SDPA's up to float32
    rounding (not bit for bit)."""
    heads, d = q.shape
    out = torch.empty(heads, d)
    lib.qk_decode_attention(
        heads,
        k_cache.shape[2],
        d,
        length,
        k_cache.shape[1],
        q.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        table.data_ptr(),
        scale,
        out.data_ptr(),
    )
    return out


CHECK_ROWS = (1, 3, 8, 33)  # the row counts a fused op is compared with torch's at first use


@functools.cache
def add_rms_norm_ok(n: int, eps: float) -> bool:
    """Whether :func:`add_rms_norm` equals ``x + d`` and ``F.rms_norm`` bit for bit at width ``n``
    (random rows, with and without ``d``); checked once per width and ``eps``."""
    lib = library()
    if lib is None:
        return False
    g = torch.Generator().manual_seed(n)
    w = torch.randn(n, generator=g)
    for rows in CHECK_ROWS:
        x = torch.randn(rows, n, generator=g) * 4
        d = torch.randn(rows, n, generator=g)
        for delta in (d, None):
            s = x if delta is None else x + delta
            ref = torch.nn.functional.rms_norm(s, (n,), w, eps)
            got_s, got = add_rms_norm(lib, x, delta, w, eps)
            if not (torch.equal(got_s, s) and torch.equal(got, ref)):
                log.warning("fused residual add + RMSNorm differs from torch's at width %d: not used", n)
                return False
    return True


@functools.cache
def rope_kv_ok(heads: int, kv_heads: int, d: int) -> bool:
    """Whether :func:`rope_kv` equals ``x * cos + x.roll(d // 2, -1) * sin`` and the caches'
    ``index_copy_`` bit for bit for these head counts and head size; checked once per shape."""
    lib = library()
    if lib is None or d % 2:
        return False
    g = torch.Generator().manual_seed(d)
    blocks, block = 4, 16
    for rows in CHECK_ROWS:
        qkv = torch.randn(rows, (heads + 2 * kv_heads) * d, generator=g)
        cos, sin = torch.randn(rows, d, generator=g), torch.randn(rows, d, generator=g)
        slots = torch.randperm(blocks * block, generator=g)[:rows]
        caches = [torch.zeros(blocks, block, kv_heads, d) for _ in range(4)]
        qk = qkv[:, : (heads + kv_heads) * d].view(rows, heads + kv_heads, d)
        ref = qk * cos[:, None] + qk.roll(d // 2, -1) * sin[:, None]
        caches[0].view(-1, kv_heads, d).index_copy_(0, slots, ref[:, heads:])
        caches[1].view(-1, kv_heads, d).index_copy_(
            0, slots, qkv[:, (heads + kv_heads) * d :].view(rows, kv_heads, d)
        )
        q = rope_kv(lib, qkv, heads, kv_heads, cos, sin, slots, caches[2], caches[3])
        if not (
            torch.equal(q, ref[:, :heads])
            and torch.equal(caches[2], caches[0])
            and torch.equal(caches[3], caches[1])
        ):
            log.warning(
                "fused RoPE + K/V write differs from torch's for %d/%d heads of %d: not used",
                heads,
                kv_heads,
                d,
            )
            return False
    return True
