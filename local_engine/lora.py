"""LoRA adapters served next to each other on one base model (docs/lora.md).

An adapter is a PEFT directory, checked against the base model when it is added and loaded on
first use by a loader thread; the step loop then copies it into one of ``max_loras`` slots of
stacked tensors (evicting the least recently used idle adapter). The hook is
:class:`LoRAProjection`, wrapped around the four projection modules of every layer after the
weights are loaded: ``y = base(x) + delta(x)``, where each token's delta comes from its own slot.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from local_engine.config import ModelConfig
from local_engine.models.llama import call_module

# The engine's fused projection modules and the PEFT target modules each is made of, in order.
FUSED: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "o_proj": ("o_proj",),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "down_proj": ("down_proj",),
}
_PARENT = {"qkv_proj": "self_attn", "o_proj": "self_attn", "gate_up_proj": "mlp", "down_proj": "mlp"}
TARGETS = tuple(t for parts in FUSED.values() for t in parts)
_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
_WEIGHTS = "adapter_model.safetensors"
# An adapter with at least this many tokens in a step (a prefill chunk, or many decodes) gets its own exact
# matmuls on its rows; the others (a few decodes each) share the masked matmuls over every such adapter.
GROUP_TOKENS = 16

Weights = tuple[torch.Tensor, list[torch.Tensor]]  # A, B^T per part


class LoRAError(ValueError):
    """An adapter that cannot be served: a bad directory, shapes that do not fit the base, an unknown name."""


def module_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) features of each PEFT target module of ``cfg``'s model."""
    h, q, kv, i = (
        cfg.hidden_size,
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
        cfg.intermediate_size,
    )
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


@dataclass(frozen=True, slots=True)
class LoRAAdapter:
    """A checked PEFT adapter directory (weights not read yet)."""

    name: str
    path: Path
    rank: int
    alpha: float
    scale: float  # alpha / r, or alpha / sqrt(r) with rsLoRA
    target_modules: tuple[str, ...]

    @classmethod
    def read(cls, name: str, path: str | Path, cfg: ModelConfig, max_rank: int) -> LoRAAdapter:
        """Read ``adapter_config.json`` and the tensors' shapes; :class:`LoRAError` for anything unservable."""
        path = Path(path).expanduser()
        where = f"LoRA adapter {name!r} ({path})"
        try:
            conf = json.loads((path / "adapter_config.json").read_text())
        except FileNotFoundError:
            raise LoRAError(f"{where}: no adapter_config.json (expected a PEFT adapter directory)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LoRAError(f"{where}: adapter_config.json is not valid JSON ({e})") from None
        if not isinstance(conf, dict):
            raise LoRAError(f"{where}: adapter_config.json is not a JSON object")
        if conf.get("peft_type", "LORA") != "LORA":
            raise LoRAError(f"{where}: peft_type {conf.get('peft_type')!r} is not LORA")
        unsupported = [
            k for k in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save") if conf.get(k)
        ]
        if conf.get("bias", "none") != "none":
            unsupported.append("bias")
        if unsupported:
            raise LoRAError(
                f"{where}: {', '.join(unsupported)} not supported (plain LoRA on {', '.join(TARGETS)})"
            )
        rank, alpha = conf.get("r"), conf.get("lora_alpha", conf.get("r"))
        if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, int | float):
            raise LoRAError(f"{where}: 'r' must be a positive integer and 'lora_alpha' a number")
        if rank > max_rank:
            raise LoRAError(f"{where}: rank {rank} is above this engine's max_lora_rank {max_rank}")
        file = path / _WEIGHTS
        if not file.exists():
            raise LoRAError(f"{where}: no {_WEIGHTS}")
        shapes = module_shapes(cfg)
        seen: set[tuple[int, str, str]] = set()
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                m = _KEY.match(key)
                if m is None or m.group(2) not in shapes:
                    raise LoRAError(f"{where}: tensor {key!r} is not a LoRA weight of {', '.join(TARGETS)}")
                layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
                if layer >= cfg.num_hidden_layers:
                    raise LoRAError(
                        f"{where}: {key} is for layer {layer}; the base has {cfg.num_hidden_layers}"
                    )
                d_in, d_out = shapes[module]
                want = (rank, d_in) if ab == "A" else (d_out, rank)
                got = tuple(f.get_slice(key).get_shape())
                if got != want:
                    raise LoRAError(
                        f"{where}: {key} has shape {list(got)}, the base model needs {list(want)} "
                        f"(an adapter trained on another model?)"
                    )
                seen.add((layer, module, ab))
        if not seen:
            raise LoRAError(f"{where}: {_WEIGHTS} holds no LoRA weights")
        unpaired = sorted({(la, mo) for la, mo, _ in seen if {(la, mo, "A"), (la, mo, "B")} - seen})
        if unpaired:
            raise LoRAError(
                f"{where}: layer {unpaired[0][0]} {unpaired[0][1]} has lora_A or lora_B, not both"
            )
        scale = alpha / math.sqrt(rank) if conf.get("use_rslora") else alpha / rank
        targets = tuple(t for t in TARGETS if any(mo == t for _, mo, _ in seen))
        return cls(name, path, rank, float(alpha), scale, targets)

    def load(self, cfg: ModelConfig, max_rank: int, dtype: torch.dtype) -> dict[tuple[int, str], Weights]:
        """``{(layer, fused module): (A [parts*max_rank, in], [B^T [max_rank, out] per part])}``, zero-padded to
        ``max_rank``, the scale folded into B; a fused module's parts share one A stacked along the rank."""
        state = load_file(str(self.path / _WEIGHTS), device="cpu")
        shapes = module_shapes(cfg)
        out = {}
        for layer in range(cfg.num_hidden_layers):
            for fused, parts in FUSED.items():
                a = torch.zeros(len(parts) * max_rank, shapes[parts[0]][0])
                bs = [torch.zeros(max_rank, shapes[part][1]) for part in parts]
                used = False
                for k, part in enumerate(parts):
                    prefix = f"base_model.model.model.layers.{layer}.{_PARENT[fused]}.{part}"
                    if f"{prefix}.lora_A.weight" in state:
                        a[k * max_rank : k * max_rank + self.rank] = state[f"{prefix}.lora_A.weight"].float()
                        bs[k][: self.rank] = state[f"{prefix}.lora_B.weight"].float().T * self.scale
                        used = True
                if used:
                    out[(layer, fused)] = (a.to(dtype), [b.to(dtype) for b in bs])
        return out


@dataclass(frozen=True, slots=True)
class LoRAInfo:
    """What ``list_loras`` shows of one adapter."""

    name: str
    path: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    resident: bool


@dataclass(eq=False, slots=True)
class LoRAEntry:
    """One registration of an adapter: the handle its sequences hold."""

    adapter: LoRAAdapter
    id: int
    slot: int = -1  # -1: not resident
    refs: int = 0  # unfinished sequences using it
    last_used: int = 0  # LoRAManager's use counter when last acquired or released
    removed: bool = False
    loading: Future[dict[tuple[int, str], Weights]] | None = None
    error: BaseException | None = None

    @property
    def cache_seed(self) -> int:
        """Where this adapter's prefix-cache keys start: never a base (0) or another adapter's key."""
        return hash(("lora", self.id))


@dataclass(slots=True)
class LoRABatch:
    """Per-step indices every projection reads (built once per step by :meth:`LoRAManager.begin`)."""

    groups: list[tuple[int, slice | torch.Tensor]]  # (slot, its rows): adapters with many tokens
    active: torch.Tensor | slice | None  # slots of the other tokens (a slice when contiguous)
    mask: torch.Tensor | None  # [tokens, n active, 1]: each of those tokens' own adapter
    rows: torch.Tensor | None  # which tokens the masked part covers; None: all of them


@dataclass(slots=True)
class LoRAState:
    batch: LoRABatch | None = None


class LoRAProjection(nn.Module):
    """``base(x)`` plus each token's adapter delta ``(x @ A_s^T) @ B_s^T`` (scale folded in ``B``)."""

    def __init__(self, base: nn.Module, state: LoRAState, rank: int) -> None:
        super().__init__()
        self.base = base
        self.state = state
        self.rank = rank
        self.a: torch.Tensor | None = None  # [slots, parts * rank, in], allocated with the first adapter
        self.b: list[torch.Tensor] = []  # per part [slots, rank, out of that part]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = call_module(self.base)(x)
        batch = self.state.batch
        if batch is None or self.a is None:
            return y
        for slot, rows in batch.groups:
            u = (x[rows] if isinstance(rows, slice) else x.index_select(0, rows)) @ self.a[slot].T
            u = u.view(u.shape[0], 1, -1)
            if isinstance(rows, slice):
                self._expand(y[rows], u, slice(slot, slot + 1))
            else:
                delta = torch.zeros(u.shape[0], y.shape[1], dtype=y.dtype, device=y.device)
                self._expand(delta, u, slice(slot, slot + 1))
                y.index_add_(0, rows, delta)
        if batch.active is not None:
            assert batch.mask is not None
            xs = x if batch.rows is None else x.index_select(0, batch.rows)
            a = self.a[batch.active]
            n = a.shape[0]
            # Every active adapter's shrink in one matmul; a token keeps only its own adapter's columns.
            u = (xs @ a.reshape(n * a.shape[1], -1).T).view(xs.shape[0], n, -1) * batch.mask
            if batch.rows is None:
                self._expand(y, u, batch.active)
            else:
                delta = torch.zeros(xs.shape[0], y.shape[1], dtype=y.dtype, device=y.device)
                self._expand(delta, u, batch.active)
                y.index_add_(0, batch.rows, delta)
        return y

    def _expand(self, out: torch.Tensor, u: torch.Tensor, active: torch.Tensor | slice) -> None:
        """``out += u @ B^T`` part by part; ``u`` is ``[tokens, n, parts * rank]``, zero outside each token's own."""
        t, n, r = u.shape[0], u.shape[1], self.rank
        col = 0
        for k, b in enumerate(self.b):
            width = b.shape[2]
            part = u[:, :, k * r : (k + 1) * r].reshape(t, n * r)
            out[:, col : col + width].addmm_(part, b[active].reshape(n * r, width))
            col += width


class LoRAManager:
    """Registered adapters, resident slots (LRU), the loader thread. Thread-safe: adds and removes may
    come from any thread; :meth:`install` and :meth:`begin` run on the step loop's."""

    def __init__(
        self,
        model: nn.Module,
        cfg: ModelConfig,
        max_loras: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.cfg, self.max_loras, self.max_rank = cfg, max_loras, max_rank
        self.dtype, self.device = dtype, device
        self.state = LoRAState()
        self.projections: dict[tuple[int, str], LoRAProjection] = {}
        for i, layer in enumerate(model.model.layers):  # type: ignore[union-attr,arg-type]
            for fused, parent in _PARENT.items():
                owner = getattr(layer, parent)
                proj = LoRAProjection(getattr(owner, fused), self.state, max_rank)
                setattr(owner, fused, proj)
                self.projections[(i, fused)] = proj
        self._lock = threading.Lock()
        self._registry: dict[str, LoRAEntry] = {}
        self._slots: list[LoRAEntry | None] = [None] * max_loras
        self._pending: list[LoRAEntry] = []  # loading or loaded, waiting for a slot
        self._ids = itertools.count(1)
        self._clock = itertools.count()  # orders uses for LRU eviction
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="lora-loader")
        self.load_seconds: list[float] = []  # how long each load took in the loader thread

    def add(self, name: str, path: str | Path) -> LoRAInfo:
        """Check and register ``path`` as ``name`` (replacing an adapter of that name)."""
        if not name or not isinstance(name, str):
            raise LoRAError("a LoRA adapter needs a non-empty name")
        adapter = LoRAAdapter.read(name, path, self.cfg, self.max_rank)
        with self._lock:
            old = self._registry.get(name)
            entry = LoRAEntry(adapter, next(self._ids))
            self._registry[name] = entry
            if old is not None:
                self._retire(old)
            return self._info(entry)

    def remove(self, name: str) -> None:
        with self._lock:
            entry = self._registry.pop(name, None)
            if entry is None:
                raise LoRAError(f"no LoRA adapter named {name!r}")
            self._retire(entry)

    def registered(self) -> list[LoRAInfo]:
        with self._lock:
            return [self._info(e) for e in self._registry.values()]

    def resolve(self, model: str | None) -> str | None:
        """The adapter a request's ``model`` names (docs/lora.md#naming-an-adapter-in-a-request), None for
        the base; :class:`LoRAError` for a ``X:Y`` name whose suffixes name no adapter."""
        if not model:
            return None
        with self._lock:
            if model in self._registry:
                return model
            parts = model.split(":")
            for k in range(1, len(parts)):
                suffix = ":".join(parts[k:])
                if suffix in self._registry:
                    return suffix
        if len(parts) > 1:
            raise LoRAError(f"no LoRA adapter named {':'.join(parts[1:])!r} on this engine")
        return None

    def acquire(self, name: str) -> LoRAEntry:
        """Pin ``name`` for one sequence; starts loading it if it is not resident."""
        with self._lock:
            entry = self._registry.get(name)
            if entry is None:
                raise LoRAError(f"no LoRA adapter named {name!r}")
            entry.refs += 1
            entry.last_used = next(self._clock)
            if entry.slot < 0 and entry.loading is None:
                entry.loading = self._loader.submit(self._load, entry.adapter)
                self._pending.append(entry)
            return entry

    def release(self, entry: LoRAEntry) -> None:
        with self._lock:
            entry.refs -= 1
            entry.last_used = next(self._clock)
            if entry.removed and entry.refs == 0:
                self._free(entry)

    @property
    def loading(self) -> bool:
        return bool(self._pending)

    def wait(self, timeout: float) -> None:
        """Block until a load finishes (or ``timeout``): the step loop has nothing else to do."""
        futures = [e.loading for e in list(self._pending) if e.loading is not None]
        if futures:
            wait_futures(futures, timeout=timeout, return_when="FIRST_COMPLETED")

    def install(self) -> list[LoRAEntry]:
        """Copy finished loads into slots; returns the entries whose load failed (their sequences must end)."""
        failed = []
        with self._lock:
            for entry in list(self._pending):
                future = entry.loading
                if future is None or not future.done():
                    continue
                if future.exception() is not None:
                    entry.error = future.exception()
                    entry.loading = None
                    self._pending.remove(entry)
                    if self._registry.get(entry.adapter.name) is entry:
                        del self._registry[entry.adapter.name]
                    entry.removed = True
                    failed.append(entry)
                    continue
                slot = self._take_slot()
                if slot is None:
                    break  # every slot serves a running request; try again next step
                self._copy_in(slot, future.result())
                self._slots[slot] = entry
                entry.slot, entry.loading = slot, None
                self._pending.remove(entry)
        return failed

    def begin(self, token_slots: list[int]) -> None:
        """Set the step's per-token slots (-1: base) for the projections; :meth:`end` clears them."""
        runs: list[tuple[int, int, int]] = []  # (slot, start, end) of each run of one slot
        start = 0
        for i in range(1, len(token_slots) + 1):
            if i == len(token_slots) or token_slots[i] != token_slots[start]:
                if token_slots[start] >= 0:
                    runs.append((token_slots[start], start, i))
                start = i
        if not runs:
            self.state.batch = None
            return
        tokens: dict[int, list[tuple[int, int]]] = {}
        for slot, a, b in runs:
            tokens.setdefault(slot, []).append((a, b))
        grouped = {s for s, spans in tokens.items() if sum(b - a for a, b in spans) >= GROUP_TOKENS}
        groups: list[tuple[int, slice | torch.Tensor]] = [
            (
                s,
                slice(*spans[0])
                if len(spans) == 1
                else torch.tensor([i for a, b in spans for i in range(a, b)], device=self.device),
            )
            for s, spans in tokens.items()
            if s in grouped
        ]
        short = [r for r in runs if r[0] not in grouped]
        active_t: torch.Tensor | slice | None = None
        mask = rows = None
        if short:
            slots = sorted({slot for slot, _, _ in short})
            position = {s: i for i, s in enumerate(slots)}
            # Without groups the masked matmuls cover every token (base ones masked out): no gather.
            if groups:
                covered = [(i, slot) for slot, a, b in short for i in range(a, b)]
                rows = torch.tensor([i for i, _ in covered], device=self.device)
            else:
                covered = list(enumerate(token_slots))
            onehot = torch.zeros(len(covered), len(slots) + 1, dtype=self.dtype)
            onehot[torch.arange(len(covered)), torch.tensor([position.get(s, -1) for _, s in covered])] = 1
            mask = onehot[:, :-1].unsqueeze(-1).to(self.device)  # base rows went to the dropped last column
            contiguous = slots == list(range(slots[0], slots[-1] + 1))
            active_t = (
                slice(slots[0], slots[-1] + 1) if contiguous else torch.tensor(slots, device=self.device)
            )
        self.state.batch = LoRABatch(groups, active_t, mask, rows)

    def end(self) -> None:
        self.state.batch = None

    def shutdown(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)

    def _load(self, adapter: LoRAAdapter) -> dict[tuple[int, str], Weights]:
        began = time.perf_counter()
        weights = adapter.load(self.cfg, self.max_rank, self.dtype)
        self.load_seconds.append(time.perf_counter() - began)
        return weights

    def _take_slot(self) -> int | None:
        for i, e in enumerate(self._slots):
            if e is None:
                return i
        idle = [(e.last_used, i) for i, e in enumerate(self._slots) if e is not None and e.refs == 0]
        if not idle:
            return None
        _, i = min(idle)
        victim = self._slots[i]
        assert victim is not None
        victim.slot = -1
        self._slots[i] = None
        return i

    def _copy_in(self, slot: int, weights: dict[tuple[int, str], Weights]) -> None:
        shapes = module_shapes(self.cfg)
        for key, proj in self.projections.items():
            parts = FUSED[key[1]]
            if proj.a is None:
                # Allocated on first use: an engine that never serves an adapter pays no memory for them.
                d, dev = self.dtype, self.device
                proj.a = torch.zeros(
                    self.max_loras, len(parts) * self.max_rank, shapes[parts[0]][0], dtype=d, device=dev
                )
                proj.b = [
                    torch.zeros(self.max_loras, self.max_rank, shapes[p][1], dtype=d, device=dev)
                    for p in parts
                ]
            pair = weights.get(key)
            if pair is None:
                proj.a[slot].zero_()
                for b in proj.b:
                    b[slot].zero_()
            else:
                proj.a[slot].copy_(pair[0])
                for b, part in zip(proj.b, pair[1], strict=True):
                    b[slot].copy_(part)

    def _retire(self, entry: LoRAEntry) -> None:
        entry.removed = True
        if entry.refs == 0:
            self._free(entry)

    def _free(self, entry: LoRAEntry) -> None:
        if entry.slot >= 0:
            self._slots[entry.slot] = None
            entry.slot = -1
        if entry in self._pending:
            self._pending.remove(entry)
            if entry.loading is not None:
                entry.loading.cancel()
            entry.loading = None

    @staticmethod
    def _info(entry: LoRAEntry) -> LoRAInfo:
        a = entry.adapter
        return LoRAInfo(a.name, str(a.path), a.rank, a.alpha, a.target_modules, entry.slot >= 0)
