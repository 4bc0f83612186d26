"""``/v1/fine_tuning/jobs`` (OpenAI's fine-tuning API): create, retrieve, list, cancel, events, checkpoints.

LoRA adapters are trained on a local model by gateway/fine_tuning_runner.py. A job's state lives in the store
layer's key/value surface, so every gateway process sees it and any of them may train it. Keys, for job ``J``
of tenant ``T``:

    ftjob:J              hash: the job's fields (status, files, hyperparameters, times, tenant, result)
    ftjob:J:events       list: its events (OpenAI's event objects), oldest first
    ftjob:J:checkpoints  list: its checkpoints, oldest first
    ftjob:J:lease        the process training it (a lease with a TTL, renewed while it trains)
    ftjobs, ftjobs:T     every job id, and tenant T's
    ftmodels:T           hash: fine-tuned model name -> {base alias, adapter name, adapter path, job}
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from errors import InvalidRequest, ModelNotFound, NotFound
from policies.clock import Clock
from policies.stores.keyvalue import KeyValue

from .config import FineTuningConfig
from .files import FILES, _tenant, page, respond
from .keys import GATEWAY
from .records import TenantRecords, metadata_of

TERMINAL = ("succeeded", "failed", "cancelled")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
_TTL_S = 90 * 24 * 3600
_SUFFIX_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


@dataclass(frozen=True)
class FineTunedModel:
    """A trained adapter as the gateway serves it: ``name`` (``ft:BASE:TENANT:SUFFIX:ID``), for ``tenant`` only,
    is the adapter of that name (the directory ``path``) on the local engine of the alias ``base``: the
    gateway routes it as the model ``BASE:NAME`` (docs/lora.md)."""

    name: str
    tenant: str
    base: str
    path: str
    job: str
    created: int

    def json(self) -> str:
        return orjson.dumps(self.__dict__).decode()


class Jobs(TenantRecords):
    """Fine-tuning job records on ``kv``; the runner and the handlers both go through it."""

    def __init__(self, kv: KeyValue, config: FineTuningConfig, clock: Clock) -> None:
        super().__init__(kv, clock, "ftjob", _TTL_S, "fine-tuning job", "fine_tuning_job_id")
        self.config = config

    async def create(self, tenant: str, key_id: str, fields: dict[str, str]) -> dict[str, str]:
        job_id = "ftjob-" + secrets.token_hex(12)
        fields = {
            **fields,
            "id": job_id,
            "tenant": tenant,
            "key_id": key_id,
            "created_at": str(self.now()),
            "status": "validating_files",
        }
        await self.add(tenant, job_id, fields)
        await self.event(job_id, f"Created fine-tuning job: {job_id}", kind="message")
        return fields

    async def ids(self, tenant: str | None = None) -> list[str]:
        """Oldest first, each once."""
        return list(dict.fromkeys(await self._listed_ids(tenant)))

    async def event(
        self,
        job_id: str,
        message: str,
        level: str = "info",
        kind: str = "message",
        data: dict[str, Any] | None = None,
    ) -> None:
        event = {
            "id": "ftevent-" + secrets.token_hex(12),
            "object": "fine_tuning.job.event",
            "created_at": self.now(),
            "level": level,
            "message": message,
            "data": data or {},
            "type": kind,
        }
        await self.kv.append(f"ftjob:{job_id}:events", orjson.dumps(event).decode(), ttl_s=_TTL_S)

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        """Newest first."""
        return [orjson.loads(e) for e in reversed(await self.kv.items(f"ftjob:{job_id}:events"))]

    async def checkpoint(self, job_id: str, checkpoint: dict[str, Any]) -> None:
        await self.kv.append(f"ftjob:{job_id}:checkpoints", orjson.dumps(checkpoint).decode(), ttl_s=_TTL_S)

    async def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """Newest first."""
        return [orjson.loads(c) for c in reversed(await self.kv.items(f"ftjob:{job_id}:checkpoints"))]

    async def cancel(self, tenant: str, job_id: str) -> dict[str, str]:
        fields = await self.get(tenant, job_id)
        if fields["status"] in TERMINAL:
            raise InvalidRequest(
                f"Cannot cancel a job with status '{fields['status']}'.", param="fine_tuning_job_id"
            )
        # A running job is stopped by the process training it; one not yet training ends here.
        await self.update(job_id, cancel_requested="1")
        if fields["status"] in ("validating_files", "queued"):
            await self.finish(job_id, "cancelled")
        return await self.get(tenant, job_id)

    async def finish(self, job_id: str, status: str, **fields: str) -> None:
        await self.update(job_id, status=status, finished_at=str(self.now()), **fields)
        message = {
            "succeeded": "The job has successfully completed",
            "failed": "The job failed",
            "cancelled": "The job was cancelled",
        }[status]
        await self.event(job_id, message, level="error" if status == "failed" else "info")

    async def register(self, model: FineTunedModel) -> None:
        await self.kv.hash_set(f"ftmodels:{model.tenant}", {model.name: model.json()}, _TTL_S)
        await self.kv.hash_set("ftmodels", {model.name: model.json()}, _TTL_S)

    async def models(self, tenant: str | None = None) -> list[FineTunedModel]:
        """The tenant's fine-tuned models; every tenant's with None."""
        found = await self.kv.hash_get("ftmodels" if tenant is None else f"ftmodels:{tenant}")
        return [FineTunedModel(**orjson.loads(v)) for v in found.values()]

    async def model(self, tenant: str, name: str) -> FineTunedModel | None:
        """The tenant's fine-tuned model of that name; another tenant's is None, as an unknown one."""
        raw = (await self.kv.hash_get(f"ftmodels:{tenant}")).get(name)
        return None if raw is None else FineTunedModel(**orjson.loads(raw))


def model_name(base: str, tenant: str, suffix: str, job_id: str) -> str:
    return f"ft:{base}:{tenant}:{suffix}:{job_id.removeprefix('ftjob-')[:8]}"


def render(fields: dict[str, str]) -> dict[str, Any]:
    """The OpenAI FineTuningJob object (``lora``: this gateway's extension)."""
    hyper = orjson.loads(fields["hyperparameters"])
    status = fields["status"]
    return {
        "id": fields["id"],
        "object": "fine_tuning.job",
        "created_at": int(fields["created_at"]),
        "error": orjson.loads(fields["error"]) if "error" in fields else None,
        "fine_tuned_model": fields.get("fine_tuned_model"),
        "finished_at": int(fields["finished_at"]) if status in TERMINAL and "finished_at" in fields else None,
        "hyperparameters": hyper,
        "model": fields["model"],
        "organization_id": fields["tenant"],
        "result_files": [],
        "seed": int(fields["seed"]),
        "status": status,
        "trained_tokens": int(fields["trained_tokens"]) if "trained_tokens" in fields else None,
        "training_file": fields["training_file"],
        "validation_file": fields.get("validation_file") or None,
        "estimated_finish": None,
        "integrations": [],
        "user_provided_suffix": fields.get("suffix") or None,
        "metadata": orjson.loads(fields.get("metadata", "null")),
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        "lora": orjson.loads(fields["lora"]),
    }


def _hyperparameters(body: dict[str, Any], config: FineTuningConfig) -> dict[str, Any]:
    """The job's hyperparameters, from ``method.supervised.hyperparameters`` or the older top-level field;
    each "auto" (or absent) until the files are counted."""
    hyper = body.get("hyperparameters")
    method = body.get("method")
    if method is not None:
        if not isinstance(method, dict) or method.get("type", "supervised") != "supervised":
            raise InvalidRequest(
                "Only the 'supervised' fine-tuning method is supported.", param="method.type"
            )
        hyper = (method.get("supervised") or {}).get("hyperparameters", hyper)
    if hyper is None:
        hyper = {}
    if not isinstance(hyper, dict):
        raise InvalidRequest("'hyperparameters' must be an object.", param="hyperparameters")
    unknown = sorted(set(hyper) - {"n_epochs", "batch_size", "learning_rate_multiplier"})
    if unknown:
        raise InvalidRequest(
            f"Unrecognized hyperparameter(s): {', '.join(unknown)}.", param="hyperparameters"
        )
    out: dict[str, Any] = {}
    for name, kind, low, high in (
        ("n_epochs", int, 1, config.max_epochs),
        ("batch_size", int, 1, 256),
        ("learning_rate_multiplier", float, 1e-6, 100.0),
    ):
        value = hyper.get(name, "auto")
        if value != "auto" and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (kind is int and not float(value).is_integer())
            or not low <= value <= high
        ):
            raise InvalidRequest(
                f"Invalid value for '{name}': expected 'auto' or a number from {low} to {high}.",
                param=f"hyperparameters.{name}",
            )
        out[name] = value if value == "auto" else kind(value)
    return out


def _lora(body: dict[str, Any], config: FineTuningConfig) -> dict[str, Any]:
    lora = body.get("lora") or {}
    if not isinstance(lora, dict) or set(lora) - {"rank", "alpha", "target_modules"}:
        raise InvalidRequest("'lora' takes 'rank', 'alpha' and 'target_modules'.", param="lora")
    rank = lora.get("rank", 8)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= config.max_rank:
        raise InvalidRequest(
            f"Invalid 'lora.rank': an integer from 1 to {config.max_rank}.", param="lora.rank"
        )
    alpha = lora.get("alpha", 2 * rank)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise InvalidRequest("Invalid 'lora.alpha': a positive number.", param="lora.alpha")
    targets = lora.get("target_modules", list(DEFAULT_TARGETS))
    if not isinstance(targets, list) or not targets or not all(t in TARGETS for t in targets):
        raise InvalidRequest(
            f"Invalid 'lora.target_modules': a non-empty list among {', '.join(TARGETS)}.",
            param="lora.target_modules",
        )
    return {"rank": rank, "alpha": alpha, "target_modules": list(dict.fromkeys(targets))}


def _text(body: dict[str, Any], name: str, limit: int) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidRequest(f"Invalid '{name}': a string of at most {limit} characters.", param=name)
    return value


JOBS = web.AppKey("fine_tuning_jobs", Jobs)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("We could not parse the JSON body of your request.") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


async def create(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    gateway = request.app[GATEWAY]
    caller = gateway.auth.authenticate(request.headers)
    jobs = request.app[JOBS]
    body = await _body(request)
    model = body.get("model")
    if not isinstance(model, str):
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    if not tunable(gateway, model) or not caller.tenant.allows(model):
        raise InvalidRequest(
            f"Model '{model}' is not available for fine-tuning: a model served by the local "
            "engine (provider: local) is.",
            param="model",
            code="model_not_available",
        )
    files = {}
    for name in ("training_file", "validation_file"):
        file_id = body.get(name)
        if file_id is None and name == "validation_file":
            continue
        if not isinstance(file_id, str):
            raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
        try:
            record = await request.app[FILES].get(tenant, file_id)
        except NotFound as exc:
            raise InvalidRequest(f"Invalid file ID: {file_id}: no such file.", param=name) from exc
        if record["purpose"] != "fine-tune":
            raise InvalidRequest(
                f"File {file_id} has purpose '{record['purpose']}'; fine-tuning needs purpose 'fine-tune'.",
                param=name,
            )
        files[name] = file_id
    suffix = _text(body, "suffix", 64)
    if suffix and not set(suffix) <= _SUFFIX_CHARS:
        raise InvalidRequest("Invalid 'suffix': letters, digits, '-' and '_' only.", param="suffix")
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**31)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise InvalidRequest("Invalid 'seed': an integer from 0 to 2147483647.", param="seed")
    fields = {
        "model": model,
        **files,
        "suffix": suffix,
        "seed": str(seed),
        "hyperparameters": orjson.dumps(_hyperparameters(body, jobs.config)).decode(),
        "lora": orjson.dumps(_lora(body, jobs.config)).decode(),
        "metadata": orjson.dumps(metadata_of(body)).decode(),
    }
    created = await jobs.create(tenant, caller.key_id, fields)
    return respond(request, render(created))


def tunable(gateway: Any, alias: str) -> bool:
    """An alias that can be fine-tuned: one served by the local engine."""
    found = next((a for a in gateway.loaded.config.models if a.name == alias), None)
    return found is not None and any(d.provider == "local" for d in found.deployments)


async def retrieve(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    return respond(request, render(await request.app[JOBS].get(tenant, request.match_info["id"])))


async def cancel(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    return respond(request, render(await request.app[JOBS].cancel(tenant, request.match_info["id"])))


async def list_jobs(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    request.app[JOBS].kv.require_reachable()
    found = [render(fields) for fields in await request.app[JOBS].listed(tenant)]
    return respond(request, _listed(found, request.query))


async def list_events(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    jobs = request.app[JOBS]
    job_id = request.match_info["id"]
    await jobs.get(tenant, job_id)
    return respond(request, _listed(await jobs.events(job_id), request.query))


async def list_checkpoints(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    jobs = request.app[JOBS]
    job_id = request.match_info["id"]
    await jobs.get(tenant, job_id)
    return respond(request, _listed(await jobs.checkpoints(job_id), request.query, ids=True))


async def fine_tuned_models(request: web.Request, tenant: str) -> list[FineTunedModel]:
    """The tenant's fine-tuned models (for ``/v1/models``)."""
    return await request.app[JOBS].models(tenant) if JOBS in request.app else []


async def fine_tuned_model(request: web.Request, tenant: str, name: str) -> FineTunedModel | None:
    return await request.app[JOBS].model(tenant, name) if JOBS in request.app and _names_tuned(name) else None


def _names_tuned(model: str) -> bool:
    return model.startswith("ft:") or ":ft:" in model


async def served_as(request: web.Request, tenant: str, model: str) -> str:
    """The model a request names, as routed: a fine-tuned model of the tenant becomes ``BASE:NAME`` (its
    base alias with the adapter). Another tenant's fine-tuned model, or an adapter named through its base
    (``BASE:ft:...``), is not found, as an unknown model."""
    if not _names_tuned(model):
        return model
    tuned = await fine_tuned_model(request, tenant, model)
    if tuned is None:
        raise ModelNotFound(
            f"The model `{model}` does not exist or you do not have access to it.", param="model"
        )
    return f"{tuned.base}:{tuned.name}"


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/fine_tuning/jobs", create)
    app.router.add_get("/v1/fine_tuning/jobs", list_jobs)
    app.router.add_get("/v1/fine_tuning/jobs/{id}", retrieve)
    app.router.add_post("/v1/fine_tuning/jobs/{id}/cancel", cancel)
    app.router.add_get("/v1/fine_tuning/jobs/{id}/events", list_events)
    app.router.add_get("/v1/fine_tuning/jobs/{id}/checkpoints", list_checkpoints)


def _listed(found: list[dict[str, Any]], query: Any, ids: bool = False) -> dict[str, Any]:
    """OpenAI's fine-tuning pages: ``after``, ``limit`` (20 by default, 1000 at most), newest first, no
    ``order``; ``first_id``/``last_id`` on checkpoints only."""
    return page(found, query, max_limit=1000, ids=ids, orderable=False)
