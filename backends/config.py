"""Configuration of one deployment: an upstream model behind one wire format."""

from __future__ import annotations

from typing import Literal
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
}
Provider = Literal["openai", "azure", "openai-compatible", "vllm", "ollama", "groq", "together",
                   "mistral", "openrouter"]


class Timeouts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    connect_s: float = Field(default=10.0, gt=0)
    read_s: float = Field(default=600.0, gt=0, description="longest silence between two reads")


class Price(BaseModel):
    """USD per million tokens; overrides the shipped model catalog for one deployment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0, description="default: the input price")


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
    stream_usage: bool = Field(default=True, description="ask for stream_options.include_usage upstream")
    price: Price | None = None              # default: the catalog's price for `model`
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

    @model_validator(mode="after")
    def _base_known(self) -> DeploymentConfig:
        if self.api_base is None and OPENAI_COMPATIBLE_BASES.get(self.provider) is None:
            raise ValueError(f"api_base is required for provider {self.provider!r}")
        return self

    @property
    def base_url(self) -> str:
        base = self.api_base or OPENAI_COMPATIBLE_BASES[self.provider]
        assert base is not None
        return base

    @property
    def id(self) -> str:
        return self.name or f"{self.provider}/{self.model}"
