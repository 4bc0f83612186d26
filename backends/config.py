"""Configuration of one deployment: an upstream model behind one wire format."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Providers that speak OpenAI's wire format, with the api_base used when none is given.
OPENAI_COMPATIBLE_BASES: dict[str, str | None] = {
    "openai": "https://api.openai.com/v1",
    "azure": None,
    "openai-compatible": None,
    "vllm": "http://127.0.0.1:8000/v1",
    "ollama": "http://127.0.0.1:11434/v1",
    "groq": "https://api.groq.com/openai/v1",
    "together": "https://api.together.xyz/v1",
    "mistral": "https://api.mistral.ai/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    # The bundled engine: in-process without an api_base, a `python -m local_engine serve` with one.
    "local": None,
}
# Providers with their own wire format (backends/anthropic.py, gemini.py, bedrock.py).
NATIVE_BASES: dict[str, str | None] = {
    "anthropic": "https://api.anthropic.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "bedrock": None,  # https://bedrock-runtime.{region}.amazonaws.com, from the region
}
Provider = Literal[
    "openai",
    "azure",
    "openai-compatible",
    "vllm",
    "ollama",
    "groq",
    "together",
    "mistral",
    "openrouter",
    "local",
    "anthropic",
    "gemini",
    "bedrock",
]


class Timeouts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    connect_s: float = Field(default=10.0, gt=0)
    read_s: float = Field(default=600.0, gt=0, description="longest silence between two reads")
    # Enforced by policies/resilience.py; a breach fails the attempt, which may then be retried elsewhere.
    ttft_s: float | None = Field(default=None, gt=0, description="streams: longest wait for the first chunk")
    attempt_s: float | None = Field(
        default=None, gt=0, description="longest one attempt may take until its answer can be relayed"
    )


class LocalSpeculativeSettings(BaseModel):
    """Speculative decoding of an in-process local engine (``local_engine.SpeculativeConfig``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["ngram", "draft"] = "ngram"
    num_tokens: int = Field(default=4, ge=1, le=16, description="draft tokens checked per step")
    min_acceptance: float = Field(
        default=0.3, ge=0, le=1, description="a sequence stops speculating below this acceptance rate"
    )
    draft_model: str | None = Field(
        default=None, description="method draft: the draft model (same tokenizer)"
    )

    @model_validator(mode="after")
    def _draft(self) -> LocalSpeculativeSettings:
        if (self.method == "draft") != (self.draft_model is not None):
            raise ValueError("draft_model is required with method draft, and only with it")
        return self


class EngineWorkers(BaseModel):
    """The engine as managed ``python -m local_engine serve`` processes (backends/workers.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min: int = Field(default=0, ge=0, description="workers kept running; 0 scales to zero when idle")
    max: int = Field(default=1, ge=1, description="workers at most")
    idle_s: float = Field(default=300.0, gt=0, description="a worker without requests this long stops")
    target_inflight: int = Field(default=8, ge=1, description="requests per worker before another starts")
    start_timeout_s: float = Field(default=120.0, gt=0, description="longest a worker may take to start")
    resumes: int = Field(
        default=1,
        ge=0,
        description="times a stream whose worker died after its first chunk goes on from another worker "
        "(0: never; docs/deploy.md)",
    )
    coalesce_ms: float = Field(
        default=5.0,
        ge=0,
        description="batch lines (non-streamed, at batch priority) bound for the same worker within this "
        "window travel as one POST /v1/batch; 0: one HTTP request each (docs/batches.md)",
    )
    disaggregated: bool = Field(
        default=False,
        description="each worker is prefill and decode processes behind a router (docs/disaggregation.md)",
    )
    kv_transport: Literal["shm", "tcp"] = Field(
        default="shm",
        description="how a disaggregated worker's prefill processes hand KV to its decode processes",
    )
    prefill: int = Field(default=1, ge=1, description="prefill processes in each disaggregated worker")
    decode: int = Field(default=1, ge=1, description="decode processes in each disaggregated worker")
    both: int = Field(
        default=0,
        ge=0,
        description="processes in each disaggregated worker taking requests whole when no prefill or decode one can",
    )

    @model_validator(mode="after")
    def _bounds(self) -> EngineWorkers:
        if self.min > self.max:
            raise ValueError("min must not exceed max")
        split = self.model_fields_set & {"prefill", "decode", "both"}
        if split and not self.disaggregated:
            raise ValueError(f"{', '.join(sorted(split))} apply only with disaggregated: true")
        return self


class LocalEngineSettings(BaseModel):
    """Settings of an in-process local engine (``provider: local`` without ``api_base``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_num_seqs: int = Field(default=64, ge=1, description="sequences decoded together at most")
    max_num_batched_tokens: int = Field(
        default=512, ge=1, description="tokens computed per engine step at most"
    )
    max_background_seqs: int | None = Field(
        default=0,
        ge=0,
        description="while a better priority (a live request) is present, worse ones (batch lines) decode "
        "at most this many a step and never prefill; null: they fill any spare room",
    )
    block_size: int = Field(default=16, ge=1, description="tokens per KV cache block (a power of two)")
    kv_cache_gib: float = Field(
        default=1.0, gt=0, description="memory for the KV cache, when num_kv_blocks is unset"
    )
    num_kv_blocks: int | None = Field(default=None, ge=2)
    max_model_len: int | None = Field(default=None, ge=2, description="context length; default the model's")
    enable_prefix_caching: bool = True
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$")
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    num_threads: int | None = Field(default=None, ge=1, description="torch CPU threads; default all cores")
    load_timeout_s: float = Field(
        default=10.0, ge=0, description="how long a request waits for the model to finish loading"
    )
    speculative: LocalSpeculativeSettings | None = None
    quantization: Literal["int8", "int4"] | None = Field(
        default=None, description="weight-only int8 (per row) or int4 (per 32 inputs) linear layers"
    )
    workers: EngineWorkers | None = Field(
        default=None, description="run the engine as managed worker processes"
    )
    max_loras: int = Field(
        default=4, ge=0, description="LoRA adapters resident at once (docs/lora.md); 0: none"
    )
    max_lora_rank: int = Field(default=16, ge=1, description="the largest LoRA rank served")
    loras: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapters served from start-up: name -> PEFT adapter directory"
    )

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two")
        return value

    @field_validator("loras")
    @classmethod
    def _adapter_dirs(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not (Path(path).expanduser() / "adapter_config.json").exists():
                raise ValueError(f"{name}: {path} is no PEFT adapter directory (no adapter_config.json)")
        return {name: str(Path(path).expanduser()) for name, path in value.items()}

    @model_validator(mode="after")
    def _loras_fit(self) -> LocalEngineSettings:
        if self.loras and not self.max_loras:
            raise ValueError("loras need max_loras >= 1")
        return self

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments of ``local_engine.EngineConfig``."""
        return {
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_background_seqs": self.max_background_seqs,
            "block_size": self.block_size,
            "kv_cache_bytes": int(self.kv_cache_gib * (1 << 30)),
            "num_kv_blocks": self.num_kv_blocks,
            "max_model_len": self.max_model_len,
            "enable_prefix_caching": self.enable_prefix_caching,
            "device": self.device,
            "dtype": self.dtype,
            "num_threads": self.num_threads,
            "speculative": self.speculative.model_dump(exclude_none=True) if self.speculative else None,
            "quantization": self.quantization,
            "max_loras": self.max_loras,
            "max_lora_rank": self.max_lora_rank,
        }


class Price(BaseModel):
    """USD per million tokens; overrides the shipped model catalog for one deployment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(
        default=None, ge=0, description="a cache read; default: the input price"
    )
    cache_write_input: float | None = Field(
        default=None, ge=0, description="a cache write; default: the input price"
    )
    batch_discount: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="the share taken off a batch line's cost (OpenAI and Anthropic: 50%)",
    )


class DeploymentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Provider
    model: str = Field(min_length=1)
    name: str | None = None
    api_base: str | None = None
    api_key: str | None = None
    api_version: str = "2024-10-21"
    weight: float = Field(default=1.0, gt=0)
    enabled: bool = True
    timeouts: Timeouts = Timeouts()
    headers: dict[str, str] = Field(default_factory=dict)
    proxy: str | None = Field(
        default=None,
        pattern=r"^(none|https?://.+)$",
        description="egress proxy URL for this "
        "deployment; none: direct; unset: HTTPS_PROXY/HTTP_PROXY/NO_PROXY from the environment",
    )
    stream_usage: bool = Field(default=True, description="ask for stream_options.include_usage upstream")
    # provider: local, in-process only
    model_path: str | None = Field(
        default=None, description="HF directory or .gguf file; default the bundled SmolLM2"
    )
    engine: LocalEngineSettings | None = None
    # anthropic / bedrock: max_tokens sent when the client gives none (both APIs require one)
    default_max_tokens: int = Field(default=4096, ge=1)
    anthropic_version: str = "2023-06-01"
    # bedrock: region and credentials; unset, botocore's usual chain (AWS_REGION, AWS_ACCESS_KEY_ID, …)
    aws_region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    context_window: int | None = Field(
        default=None, gt=0, description="tokens; overrides the model catalog's"
    )
    price: Price | None = None  # default: the catalog's price for `model`
    max_concurrency: int | None = Field(default=None, ge=1, description="requests in flight at once")

    @field_validator("api_base")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not a URL")
        return value.rstrip("/")

    @field_validator("model_path")
    @classmethod
    def _model_exists(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.exists():
            raise ValueError(f"{value} does not exist")
        if (path.is_file() and path.suffix != ".gguf") or (
            path.is_dir() and not (path / "config.json").exists()
        ):
            raise ValueError(f"{value} is neither a .gguf file nor a directory with config.json")
        return str(path)

    @model_validator(mode="after")
    def _base_known(self) -> DeploymentConfig:
        if (
            self.api_base is None
            and self.provider not in ("local", "bedrock")
            and _default_base(self.provider) is None
        ):
            raise ValueError(f"api_base is required for provider {self.provider!r}")
        if not self.in_process and (self.model_path is not None or self.engine is not None):
            raise ValueError(
                "model_path and engine apply only to provider 'local' without api_base (in-process)"
            )
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("aws_access_key_id and aws_secret_access_key go together")
        return self

    @property
    def in_process(self) -> bool:
        """A local engine inside the gateway process rather than an upstream over HTTP."""
        return self.provider == "local" and self.api_base is None

    @property
    def base_url(self) -> str:
        base = self.api_base or _default_base(self.provider)
        assert base is not None, "bedrock's base comes from its region (backends/bedrock.py)"
        return base

    @property
    def id(self) -> str:
        return self.name or f"{self.provider}/{self.model}"


def _default_base(provider: str) -> str | None:
    return OPENAI_COMPATIBLE_BASES.get(provider) or NATIVE_BASES.get(provider)
