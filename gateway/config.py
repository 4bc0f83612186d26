"""config.yaml: loaded once, ``${ENV}`` substituted, validated into frozen models.

Errors name the exact field: ``models[2].deployments[0].api_base: not a URL``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from backends.config import DeploymentConfig
from policies.cache.config import CacheConfig, CacheOverride
from policies.config import PolicyDefaults, StoresConfig, TenantPolicyFields
from policies.context import ContextConfig
from policies.resilience_config import (
    FallbackConfig,
    ResilienceConfig,
    RetryConfig,
    RoutingConfig,
    check_models,
)
from policies.variants import VariantConfig, check_variants

from .extras import missing_extras
from .security.config import (
    CIDR,
    AuditConfig,
    EncryptionConfig,
    GuardrailConfig,
    KeyScope,
    ListenerLimits,
    MetricsAccess,
    PIIConfig,
    TLSConfig,
)
from .security.roles import Role

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_KEY_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


def state_file(name: str) -> str:
    """Where the gateway keeps a file of its own by default: ``$XDG_STATE_HOME/llm-gateway/NAME``
    (``~/.local/state/llm-gateway/NAME`` when that is unset)."""
    return os.path.join(os.environ.get("XDG_STATE_HOME") or "~/.local/state", "llm-gateway", name)


class _Loader(yaml.SafeLoader):
    """YAML 1.2's booleans (true/false only): under 1.1 rules ``on:`` in ``fallbacks: [{alias: x, on: [any]}]``
    would become the key True, and ``no``/``off``/``yes`` values booleans."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.yaml"


class ConfigError(Exception):
    """A config file that cannot be used; ``problems`` lists ``path: message`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid config:\n  " + "\n  ".join(problems))
        self.problems = problems


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=256)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    log_requests: bool = True
    log_prompts: bool = False
    upstream_max_connections: int = Field(default=1000, ge=1)
    watch_config: bool = False  # reload when the file changes (checked every second), as on SIGHUP
    limits: ListenerLimits = ListenerLimits()
    tls: TLSConfig | None = None
    metrics_access: MetricsAccess = "loopback"  # who may read /metrics on the main listener
    metrics_listen: str | None = Field(
        default=None,
        pattern=r"^.+:\d{1,5}$",
        description="host:port of a listener serving /metrics only; then not on the main listener",
    )
    admin_listen: str | None = Field(
        default=None,
        pattern=r"^.+:\d{1,5}$",
        description="host:port of a listener "
        "serving /admin/* and /metrics; then neither on the main listener",
    )
    trusted_proxies: tuple[CIDR, ...] = Field(
        default=(), description="whose X-Forwarded-For names the client"
    )
    responses_ttl_s: float = Field(default=24 * 3600, gt=0)  # how long store: true responses are kept


UPSTREAM_BATCH_PROVIDERS = ("openai", "azure", "anthropic")  # whose own batch API a batch can be forwarded to


class AliasBatchConfig(_Frozen):
    """How an alias's batches run (docs/batches.md): ``pipeline``, line by line in the gateway; ``upstream``,
    forwarded to its first OpenAI or Anthropic deployment's own batch API."""

    mode: Literal["pipeline", "upstream"] = "pipeline"


class ModelAlias(_Frozen):
    name: str = Field(min_length=1)
    deployments: tuple[DeploymentConfig, ...] = Field(min_length=1)
    routing: RoutingConfig = RoutingConfig()
    fallbacks: tuple[FallbackConfig, ...] = ()
    retry: RetryConfig | None = None  # None: resilience.retry
    cache: CacheOverride | None = None
    context: ContextConfig | None = None  # None: policy fallback (policies/context.py)
    variants: dict[str, VariantConfig] = Field(default_factory=dict)  # policies/variants.py
    batch: AliasBatchConfig = AliasBatchConfig()

    @model_validator(mode="after")
    def _batch_upstream_known(self) -> ModelAlias:
        if self.batch.mode == "upstream" and not any(
            d.provider in UPSTREAM_BATCH_PROVIDERS for d in self.deployments
        ):
            raise ValueError("batch.mode upstream needs a deployment of provider openai, azure or anthropic")
        return self


def _key_hash(value: str) -> str:
    if not _KEY_HASH.match(value):
        raise ValueError(
            "must be 'sha256:' and 64 lowercase hex digits "
            "(make one with: python -m gateway keys new --tenant NAME)"
        )
    return value


class TenantConfig(TenantPolicyFields):  # + limits, budget, priority: policies/config.py
    name: str = Field(min_length=1)
    keys: tuple[Annotated[str, AfterValidator(_key_hash)], ...] = ()
    models: Literal["*"] | tuple[str, ...] = "*"
    cache: CacheOverride | None = None
    context: ContextConfig | None = None  # replaces the alias's context policy for this tenant
    variants: dict[str, str] = Field(
        default_factory=dict, description="alias -> the variant this tenant gets"
    )
    allowed_ips: tuple[CIDR, ...] = ()  # empty: any address
    client_certs: tuple[str, ...] = ()  # mTLS: "sha256:<fingerprint>" or "CN=<common name>"
    pii: PIIConfig | None = None
    log_bodies: bool | None = None  # None: request_log.bodies (gateway/logbodies.py)
    guardrail: GuardrailConfig | None = None
    retention_days: float | None = Field(
        default=None,
        gt=0,
        description="the tenant's stored responses, files "
        "and request-log records kept no longer (when shorter than the global)",
    )
    key_scopes: dict[str, KeyScope] = Field(default_factory=dict)  # key id -> endpoints, expiry

    def allows(self, alias: str) -> bool:
        return self.models == "*" or alias in self.models


class AdminConfig(_Frozen):
    keys: tuple[Annotated[str, AfterValidator(_key_hash)], ...] = ()
    allowed_ips: tuple[CIDR, ...] = ()  # empty: any address
    roles: dict[str, Role] = Field(default_factory=dict)  # key hash -> role; unlisted keys are "admin"


class TracingConfig(_Frozen):
    """``tracing:``: OpenTelemetry export of request traces (gateway/tracing.py). Changing it needs a restart."""

    enabled: bool = False
    endpoint: str = Field(default="http://127.0.0.1:4318/v1/traces", description="OTLP/HTTP traces URL")
    headers: dict[str, str] = Field(
        default_factory=dict, description="sent with each export (collector auth)"
    )
    service_name: str = "llm-gateway"
    sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="of traces started here; a client's traceparent decides for its own",
    )
    timeout_s: float = Field(default=10.0, gt=0)
    export_interval_s: float = Field(default=5.0, gt=0, description="how often finished spans are sent")
    max_queue: int = Field(
        default=16384, ge=1, description="finished spans waiting to be sent; beyond, dropped"
    )
    exporter: Literal["process", "thread"] = Field(
        default="process",
        description="encode and post in a process of each worker's own (off its GIL), or a thread in it",
    )


class RequestLogConfig(_Frozen):
    """``request_log:``: every API request's record in an embedded SQLite database or in PostgreSQL
    (gateway/requestlog.py), written in the background; never on the request's path."""

    enabled: bool = True
    store: Literal["sqlite", "postgres"] = "sqlite"
    dsn: str | None = Field(
        default=None, description="store: postgres: postgresql://user:password@host:port/db"
    )
    bodies: bool = Field(
        default=False,
        description="keep request and response bodies (tenants[].log_bodies "
        "overrides); PII-masked when the tenant has pii, sealed when encryption is set",
    )
    max_body_bytes: int = Field(default=16384, ge=0, description="each body cut to this many bytes")
    path: str = Field(
        default=state_file("requests.db"), description="SQLite file; ~ expands, missing folders are made"
    )
    retention_days: float = Field(default=30, gt=0)
    max_buffer: int = Field(
        default=10000, ge=1, description="records waiting to be written; beyond: dropped, counted"
    )
    flush_interval_s: float = Field(default=0.2, gt=0)

    @model_validator(mode="after")
    def _dsn(self) -> RequestLogConfig:
        if self.enabled and self.store == "postgres" and not self.dsn:
            raise ValueError("store: postgres needs dsn (postgresql://user:password@host:port/db)")
        return self


class FilesConfig(_Frozen):
    """``/v1/files``: where uploads are kept and how large one may be."""

    dir: str = "./data/files"  # a local directory (the compose stack mounts a volume there)
    max_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    ttl_s: float = Field(default=30 * 24 * 3600, gt=0)  # how long a file's record is kept


class BatchesConfig(_Frozen):
    """``/v1/batches`` and ``/v1/messages/batches``: the background runner (gateway/batch_runner.py)."""

    enabled: bool = True
    concurrency: int = Field(default=16, ge=1)  # lines in flight per process, across every batch
    poll_s: float = Field(default=1.0, gt=0)  # how often a process looks for batches to work on
    lease_s: float = Field(default=900.0, gt=0)  # a claimed line is run again by another process after this
    max_lines: int = Field(default=50_000, ge=1)  # OpenAI's limit per batch
    upstream_poll_s: float = Field(default=60.0, gt=0)  # how often a forwarded batch is looked at upstream


class FineTuningConfig(_Frozen):
    """``/v1/fine_tuning/jobs``: LoRA training in worker processes (gateway/fine_tuning_runner.py)."""

    enabled: bool = True
    dir: str = "./data/fine_tuning"  # each job's spec, checkpoints and adapter (shared by every process)
    workers: int = Field(default=1, ge=1)  # jobs training at once, across every process on one store
    poll_s: float = Field(default=1.0, gt=0)  # how often a process looks for jobs to work on
    lease_s: float = Field(default=30.0, gt=0)  # a training's slot, renewed while it runs; a dead process's
    # job is resumed elsewhere after this
    price_per_1m_tokens: float = Field(default=0.0, ge=0)  # USD per million tokens trained, in the ledger
    base_learning_rate: float = Field(default=1e-3, gt=0)  # times the job's learning_rate_multiplier
    default_epochs: int = Field(default=3, ge=1)  # n_epochs "auto"
    max_epochs: int = Field(default=50, ge=1)
    max_rank: int = Field(default=64, ge=1)
    min_examples: int = Field(default=10, ge=1)  # OpenAI's minimum
    max_examples: int = Field(default=50_000, ge=1)
    max_seq_len: int = Field(default=1024, ge=16)  # longer examples are cut
    threads: int = Field(default=1, ge=1)  # torch threads per training process (CPU)
    nice: int = Field(default=10, ge=0, le=19)  # the training process's niceness: live requests go first
    device: str = "auto"  # "auto": CUDA when present, else CPU


class ControlPlaneConfig(_Frozen):
    """``control_plane:``: keys and tenants made through the admin API (gateway/controlplane.py), kept in the
    store layer beside the YAML's. Every replica on one Redis sees a change within ``poll_interval_s``."""

    poll_interval_s: float = Field(
        default=0.25, gt=0, le=60, description="how often a replica checks for changes"
    )
    audit_max: int = Field(default=10000, ge=1, description="change records kept (newest)")


class GatewayConfig(_Frozen):
    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    stores: StoresConfig = StoresConfig()
    policies: PolicyDefaults = PolicyDefaults()
    models: tuple[ModelAlias, ...] = ()
    tenants: tuple[TenantConfig, ...] = ()
    resilience: ResilienceConfig = ResilienceConfig()
    cache: CacheConfig = CacheConfig()
    tracing: TracingConfig = TracingConfig()
    request_log: RequestLogConfig = RequestLogConfig()
    files: FilesConfig = FilesConfig()
    batches: BatchesConfig = BatchesConfig()
    fine_tuning: FineTuningConfig = FineTuningConfig()
    control_plane: ControlPlaneConfig = ControlPlaneConfig()
    encryption: EncryptionConfig | None = None
    audit: AuditConfig = AuditConfig()

    @model_validator(mode="after")
    def _consistent(self) -> GatewayConfig:
        problems: list[str] = []
        aliases = [m.name for m in self.models]
        for i, name in enumerate(aliases):
            if name in aliases[:i]:
                problems.append(f"models[{i}].name: alias {name!r} is defined twice")
        problems.extend(
            check_models(
                aliases,
                [[d.id for d in m.deployments] for m in self.models],
                [m.fallbacks for m in self.models],
            )
        )
        seen_keys: dict[str, str] = {}
        for i, tenant in enumerate(self.tenants):
            if any(t.name == tenant.name for t in self.tenants[:i]):
                problems.append(f"tenants[{i}].name: tenant {tenant.name!r} is defined twice")
            if tenant.models != "*":
                for j, alias in enumerate(tenant.models):
                    if alias not in aliases:
                        problems.append(f"tenants[{i}].models[{j}]: no model alias named {alias!r}")
            for j, key in enumerate(tenant.keys):
                if key in self.admin.keys:
                    problems.append(f"tenants[{i}].keys[{j}]: already an admin key")
                if key in seen_keys:
                    problems.append(f"tenants[{i}].keys[{j}]: already a key of tenant {seen_keys[key]!r}")
                seen_keys[key] = tenant.name
            if tenant.guardrail is not None and tenant.guardrail.alias not in aliases:
                problems.append(
                    f"tenants[{i}].guardrail.alias: no model alias named {tenant.guardrail.alias!r}"
                )
            for alias in tenant.model_limits or {}:
                if alias not in aliases:
                    problems.append(f"tenants[{i}].model_limits.{alias}: no model alias named {alias!r}")
            for key_id in tenant.key_scopes:
                if not any(key[7:19] == key_id for key in tenant.keys):
                    problems.append(
                        f"tenants[{i}].key_scopes.{key_id}: not the id of one of this tenant's keys"
                    )
            for key_id in tenant.per_key:
                if not any(key[7:19] == key_id for key in tenant.keys):
                    problems.append(f"tenants[{i}].per_key.{key_id}: not the id of one of this tenant's keys")
        variants = {m.name: m.variants for m in self.models}
        for m in self.models:
            problems.extend(check_variants(m.name, [d.id for d in m.deployments], m.variants))
        for i, tenant in enumerate(self.tenants):
            for alias, variant in tenant.variants.items():
                if alias not in variants:
                    problems.append(f"tenants[{i}].variants.{alias}: no model alias named {alias!r}")
                elif variant not in variants[alias]:
                    problems.append(f"tenants[{i}].variants.{alias}: the alias has no variant {variant!r}")
        for key in self.admin.roles:
            if key not in self.admin.keys:
                problems.append(f"admin.roles.{key}: not one of admin.keys")
        for alias in self.policies.model_limits:
            if alias not in aliases:
                problems.append(f"policies.model_limits.{alias}: no model alias named {alias!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated config plus what loading found out: disabled deployments and why."""

    config: GatewayConfig
    path: str | None
    disabled: dict[tuple[str, int], str] = field(default_factory=dict)
    loaded_at: int = field(default_factory=lambda: int(time.time()))

    def deployment_disabled_reason(self, alias: str, index: int) -> str | None:
        return self.disabled.get((alias, index))


def load_config(
    path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None
) -> LoadedConfig:
    """Read, substitute and validate a config file (the embedded default when ``path`` is None)."""
    source = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from exc
    return parse_config(text, path=str(source), env=os.environ if env is None else env)


def parse_config(text: str, *, path: str | None = None, env: Any = None) -> LoadedConfig:
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): must be a mapping"])
    missing: list[tuple[tuple[Any, ...], str]] = []
    raw = _substitute(raw, (), os.environ if env is None else env, missing)

    problems: list[str] = []
    disabled_paths: dict[tuple[Any, ...], str] = {}
    for loc, var in missing:
        if len(loc) == 5 and loc[0] == "models" and loc[2] == "deployments" and loc[4] == "api_key":
            deployment = raw["models"][loc[1]]["deployments"][loc[3]]
            deployment["api_key"] = None
            disabled_paths[loc[:4]] = f"environment variable {var} is not set"
        else:
            problems.append(f"{_dotted(loc)}: environment variable {var} is not set")
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        unset = {line.split(": ", 1)[0] for line in problems}  # already explained by the missing variable
        problems.extend(line for line in _format(exc) if line.split(": ", 1)[0] not in unset)
    if not problems:
        problems = missing_extras(config)
    if problems:
        raise ConfigError(problems)

    disabled: dict[tuple[str, int], str] = {}
    for m_index, alias in enumerate(config.models):
        for d_index, deployment in enumerate(alias.deployments):
            reason = disabled_paths.get(("models", m_index, "deployments", d_index))
            if reason is None and not deployment.enabled:
                reason = "enabled: false"
            if reason is not None:
                disabled[(alias.name, d_index)] = reason
    return LoadedConfig(config=config, path=path, disabled=disabled)


def _substitute(node: Any, loc: tuple[Any, ...], env: Any, missing: list[tuple[tuple[Any, ...], str]]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, (*loc, k), env, missing) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, (*loc, i), env, missing) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = env.get(name)
            if value is None or value == "":
                if default is not None:
                    return default
                missing.append((loc, name))
                return ""
            return str(value)

        return _ENV.sub(replace, node)
    return node


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _format(exc: ValidationError) -> list[str]:
    lines: list[str] = []
    errors = exc.errors()
    failed = {tuple(e["loc"]) for e in errors if e["type"] != "too_short"}
    for err in errors:
        if err["type"] == "too_short" and any(loc[: len(err["loc"])] == tuple(err["loc"]) for loc in failed):
            continue  # a list emptied by its own items' errors: those say it better
        # pydantic puts union/literal branch names in the location; they mean nothing to a user.
        loc = tuple(
            p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))
        )
        message = err["msg"].removeprefix("Value error, ")
        if not loc and err["type"] == "value_error":
            lines.extend(message.split("; "))
            continue
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "required field is missing"
        lines.append(f"{_dotted(loc)}: {message}")
    return lines
