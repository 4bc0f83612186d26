"""The config models of the security controls (``server.limits``, ``server.tls``, allowlists), kept here so that
gateway/config.py only names them."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP address or CIDR block (e.g. 10.0.0.0/8)") from exc
    return value


CIDR = Annotated[str, AfterValidator(_network)]


class ListenerLimits(_Frozen):
    """``server.limits``: what one client connection may hold. Together they bound the process's file
    descriptors (docs/security.md, "fd budget")."""

    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="a connection must send a whole request "
        "head within this (also the idle keep-alive limit)",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="the whole request body must arrive within this"
    )
    max_connections: int = Field(default=4096, ge=1, description="client connections at once, all clients")
    max_connections_per_ip: int = Field(
        default=256, ge=1, description="client connections at once from one IP"
    )


class TLSConfig(_Frozen):
    """``server.tls``: HTTPS on the listener; with ``client_ca``, client certificates (mTLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = Field(default=None, description="CA bundle that signs client certificates")
    client_cert: Literal["optional", "required"] = "optional"


MetricsAccess = Literal["admin", "loopback", "public"]


class PIIConfig(_Frozen):
    """``tenants[].pii``: detect personal data in what the tenant sends (gateway/security/privacy.py)."""

    mode: Literal["log_only", "mask", "block"] = "log_only"
    kinds: tuple[Literal["email", "phone", "credit_card", "iban", "ssn", "ip_address", "api_key"], ...] = (
        "email",
        "phone",
        "credit_card",
        "iban",
        "ssn",
        "ip_address",
        "api_key",
    )
    rules: dict[str, str] = Field(default_factory=dict, description="kind name -> regular expression")
    words: tuple[str, ...] = Field(default=(), description="matched as whole words, case-insensitively")

    @model_validator(mode="after")
    def _patterns(self) -> PIIConfig:
        for name, pattern in self.rules.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"rules.{name}: not a valid regular expression: {exc}") from exc
        return self


class GuardrailConfig(_Frozen):
    """``tenants[].guardrail``: a moderation model (any alias of this gateway, called through its own pipeline,
    limits and costs included) judges the input, the output or both; an answer matching ``block_if`` refuses
    the request with 400 ``content_policy_violation``."""

    alias: str = Field(min_length=1)
    on: Literal["input", "output", "both"] = "input"
    block_if: str = Field(
        default=r"(?i)^\s*unsafe",
        description="regex on the moderation model's answer "
        "(the default fits Llama Guard's 'safe' / 'unsafe\\nS1')",
    )
    instructions: str = Field(default="", description="a system message sent to the moderation model first")
    stream_window_chars: int = Field(
        default=400,
        ge=1,
        description="output streams: text is held back and "
        "judged this many characters at a time (and at the end)",
    )
    stream_action: Literal["end", "redact"] = Field(
        default="end",
        description="an unsafe window of a stream: end it with an error event, or send it as [redacted]",
    )


class DataKey(_Frozen):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataKey:
        if (self.env is None) == (self.file is None):
            raise ValueError("give env or file (one of them)")
        return self


class EncryptionConfig(_Frozen):
    """``encryption``: stored bodies (the exact cache's answers) sealed with AES-256-GCM; the first key seals."""

    keys: tuple[DataKey, ...] = Field(min_length=1)


class KeyScope(_Frozen):
    """``tenants[].key_scopes.<key id>``: what one tenant key may call, and until when."""

    endpoints: tuple[str, ...] | None = Field(
        default=None, description="e.g. [embeddings]; None: every endpoint"
    )
    expires: datetime.datetime | None = Field(default=None, description="ISO 8601 with a time zone")


class AuditConfig(_Frozen):
    """``audit``: the hash-chained audit log (gateway/security/audit.py)."""

    enabled: bool = True
    path: str = os.path.join(
        os.environ.get("XDG_STATE_HOME") or "~/.local/state", "llm-gateway", "audit.jsonl"
    )
    retention_days: float = Field(default=365, gt=0)
