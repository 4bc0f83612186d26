"""Batches forwarded to the provider's own batch API (an alias with ``batch.mode: upstream``), instead of run
line by line in the gateway.

A batch is forwarded when every line names the same alias, that alias says ``upstream``, and it has a
deployment whose batch API speaks the batch's format: OpenAI's (``provider: openai``, or ``azure``: the same
APIs on an Azure OpenAI resource) for ``/v1/batches``, Anthropic's (``provider: anthropic``) for
``/v1/messages/batches``. Its lines go upstream once (a lease), the model names rewritten to the deployment's;
the upstream batch is looked at every ``batches.upstream_poll_s`` by the gateway's clock (its status and counts
copied onto the gateway's batch, a cancel passed on); once it ended, its results become the gateway's output
lines (the alias's name back in place of the deployment's, the gateway's own ids), each ledgered and counted
at the batch price as a line run here would be. The runner then writes the result files as for any batch.

State, beside the batch's own (gateway/batches.py): ``upstream`` (the alias), ``upstream_batch_id``,
``upstream_next_poll``, ``upstream_cancelled``; leases ``batch:B:submit`` and ``batch:B:poll``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from backends.batch_api import AnthropicBatchAPI, AzureBatchAPI, OpenAIBatchAPI
from backends.config import DeploymentConfig
from backends.wire import anthropic
from backends.wire import responses as responses_wire
from errors import GatewayError
from policies.call import Call
from policies.record import RequestRecord

from .batches import LINE_ENDPOINTS, MESSAGES, Batches
from .blobs import lines
from .config import ModelAlias
from .files import Files, new_id
from .logs import get_logger
from .state import Gateway

_OPENAI_ENDS = {"completed": "completed", "cancelled": "cancelled", "expired": "expired"}


def deployment_for(alias: ModelAlias, endpoint: str) -> DeploymentConfig | None:
    """The deployment a batch on ``endpoint`` is forwarded to: the first whose batch API speaks its format."""
    providers = ("anthropic",) if endpoint == MESSAGES else ("openai", "azure")
    return next((d for d in alias.deployments if d.provider in providers and d.enabled), None)


def forwarded_alias(gateway: Gateway, endpoint: str, models: set[str]) -> str | None:
    """The alias a validated batch goes upstream for, or None: its lines run in the gateway."""
    if len(models) != 1:
        return None
    [name] = models
    alias = next((a for a in gateway.loaded.config.models if a.name == name), None)
    if alias is None or alias.batch.mode != "upstream" or deployment_for(alias, endpoint) is None:
        return None
    return name


class Forwarder:
    """Moves forwarded batches along; every gateway process runs one (in its BatchRunner)."""

    def __init__(
        self,
        gateway: Callable[[], Gateway],
        batches: Batches,
        files: Files,
        lease_s: float,
        poll_s: float,
        counted: Callable[[RequestRecord, int], None],
    ) -> None:
        self._gateway, self.batches, self.files = gateway, batches, files
        self.kv, self.lease_s, self.poll_s, self._counted = batches.kv, lease_s, poll_s, counted
        self._log = get_logger()

    async def advance(self, fields: dict[str, str]) -> str | None:
        """One step for a forwarded batch; the end it reached (``completed``, ``cancelled``, ``expired``) once
        its results are the gateway's output lines, else None."""
        batch_id = fields["id"]
        if "upstream_batch_id" not in fields:
            if await self.kv.set_if_absent(f"batch:{batch_id}:submit", "1", 30 * 24 * 3600):
                try:
                    await self._submit(fields)
                except Exception:  # nothing went upstream (or it is not known to): tried again next time
                    await self.kv.delete(f"batch:{batch_id}:submit")
                    raise
            return None
        if self.batches.now() < float(fields.get("upstream_next_poll", 0)):
            return None
        if not await self.kv.set_if_absent(f"batch:{batch_id}:poll", "1", self.lease_s):
            return None
        try:
            return await self._poll(fields)
        finally:
            await self.kv.delete(f"batch:{batch_id}:poll")

    def _target(self, fields: dict[str, str]) -> tuple[ModelAlias, DeploymentConfig]:
        gateway = self._gateway()
        alias = next(a for a in gateway.loaded.config.models if a.name == fields["upstream"])
        deployment = deployment_for(alias, fields["endpoint"])
        assert deployment is not None, "checked when the batch was validated"
        return alias, deployment

    def _openai(self, deployment: DeploymentConfig) -> OpenAIBatchAPI:
        if deployment.provider == "azure":
            return AzureBatchAPI(deployment, self._gateway().pool)
        return OpenAIBatchAPI(deployment, self._gateway().pool)

    def _anthropic(self, deployment: DeploymentConfig) -> AnthropicBatchAPI:
        return AnthropicBatchAPI(deployment, self._gateway().pool)

    async def _input(self, fields: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        chunks = await self.files.content(fields["tenant"], fields["input_file_id"])
        async for raw in lines(chunks):
            yield orjson.loads(raw)

    async def _submit(self, fields: dict[str, str]) -> None:
        # the next look is poll_s after the batch was sent, by the clock read before sending: a clock that moved
        # while the upload was on the wire must not push the look a whole period later
        sent = self.batches.now()
        _, deployment = self._target(fields)
        model = deployment.model
        if fields["endpoint"] == MESSAGES:
            requests = [
                {"custom_id": line["custom_id"], "params": {**line["body"], "model": model}}
                async for line in self._input(fields)
            ]
            created = await self._anthropic(deployment).create(requests)
        else:
            api = self._openai(deployment)

            async def rewritten() -> AsyncIterator[bytes]:
                async for line in self._input(fields):
                    line = {**line, "body": {**line["body"], "model": model}}
                    if isinstance(api, AzureBatchAPI):
                        line["url"] = api.endpoint(line["url"])
                    yield orjson.dumps(line) + b"\n"

            file_id = await api.upload(f"{fields['id']}.jsonl", rewritten())
            created = await api.create(file_id, fields["endpoint"], {"gateway_batch_id": fields["id"]})
        await self.batches.update(
            fields["id"],
            upstream_batch_id=str(created["id"]),
            upstream_next_poll=str(sent + self.poll_s),
        )

    async def _poll(self, fields: dict[str, str]) -> str | None:
        batch_id = fields["id"]
        alias, deployment = self._target(fields)
        upstream_id = fields["upstream_batch_id"]
        anthropic_api = fields["endpoint"] == MESSAGES
        api: OpenAIBatchAPI | AnthropicBatchAPI = (
            self._anthropic(deployment) if anthropic_api else self._openai(deployment)
        )
        if fields.get("cancel_requested") and not fields.get("upstream_cancelled"):
            await api.cancel(upstream_id)
            await self.batches.update(batch_id, upstream_cancelled="1")
        asked = self.batches.now()  # the next look is poll_s after this one was asked (see _submit)
        found = await api.retrieve(upstream_id)
        await self.batches.update(batch_id, upstream_next_poll=str(asked + self.poll_s))
        if isinstance(api, AnthropicBatchAPI):
            counts = found.get("request_counts") or {}
            await self.batches.update(
                batch_id, completed=str(counts.get("succeeded", 0)), failed=str(counts.get("errored", 0))
            )
            if found.get("processing_status") != "ended":
                return None
            await self._results(fields, alias, deployment, api.results(upstream_id), _from_anthropic)
            return "cancelled" if fields.get("cancel_requested") else "completed"
        counts = found.get("request_counts") or {}
        await self.batches.update(
            batch_id, completed=str(counts.get("completed", 0)), failed=str(counts.get("failed", 0))
        )
        status = found.get("status")
        if status == "failed":
            errors = found.get("errors") or {"object": "list", "data": []}
            await self.batches.update(batch_id, errors=orjson.dumps(errors).decode())
            await self.batches.moved(batch_id, "failed")
            return None
        if status not in _OPENAI_ENDS:
            return None
        for name in ("output_file_id", "error_file_id"):
            if found.get(name):
                await self._results(fields, alias, deployment, api.content(found[name]), _from_openai)
        return _OPENAI_ENDS[status]

    async def _results(
        self,
        fields: dict[str, str],
        alias: ModelAlias,
        deployment: DeploymentConfig,
        chunks: AsyncIterator[bytes],
        translate: Callable[[dict[str, Any]], tuple[int, Any, dict[str, Any]] | None],
    ) -> None:
        """Each upstream result line as the gateway's output line, ledgered at the batch price."""
        batch_id = fields["id"]
        index_of: dict[str, int] = {}
        bodies: dict[str, dict[str, Any]] = {}
        async for line in self._input(fields):
            index_of[line["custom_id"]] = len(index_of)
            bodies[line["custom_id"]] = line["body"]
        gateway = self._gateway()
        async for raw in lines(chunks):
            result = orjson.loads(raw)
            index = index_of.get(result.get("custom_id"))
            answer = translate(result)
            if index is None or answer is None:  # not run (cancelled, expired): the runner writes that line
                continue
            status, body, usage = answer
            if isinstance(body, dict) and "model" in body:
                body = {**body, "model": alias.name}
            # the same id each time a result is read again: the ledger charges it once
            record = RequestRecord(
                request_id=f"req_{batch_id}_{index}",
                started=time.perf_counter(),
                endpoint="batch:" + fields["endpoint"],
                tenant=fields["tenant"],
                key_id=fields["key_id"],
                alias=alias.name,
            )
            record.deployment, record.status = deployment.id, status
            record.take_usage(usage)
            out = {
                "id": new_id("batch_req_"),
                "custom_id": result["custom_id"],
                "response": {"status_code": status, "request_id": record.request_id, "body": body},
                "error": None,
            }
            await self.kv.set(f"batch:{batch_id}:out:{index}", orjson.dumps(out).decode(), 30 * 24 * 3600)
            await self.kv.hash_set(f"batch:{batch_id}:done", {str(index): "1" if status < 400 else "0"})
            call = Call(
                record=record,
                tenant=fields["tenant"],
                key_id=fields["key_id"],
                alias=alias.name,
                endpoint=LINE_ENDPOINTS[fields["endpoint"]],
                body=bodies[result["custom_id"]],
                stream=False,
                batch=True,
            )
            try:
                await gateway.pipeline.admission.charge(call)
            except (
                GatewayError
            ) as exc:  # the answer stands; one line's ledger entry must not hold up the rest
                self._log.warning(
                    "an upstream batch line was not ledgered",
                    batch_id=batch_id,
                    line=index,
                    error=exc.message,
                )
            self._counted(record, status)


def _from_openai(result: dict[str, Any]) -> tuple[int, Any, dict[str, Any]] | None:
    response = result.get("response")
    if not isinstance(response, dict):
        return None
    body = response.get("body")
    usage = body.get("usage") if isinstance(body, dict) else None
    if isinstance(usage, dict) and "input_tokens" in usage:  # a Responses answer's
        usage = responses_wire.chat_usage(usage)
    return int(response["status_code"]), body, usage or {}


def _from_anthropic(result: dict[str, Any]) -> tuple[int, Any, dict[str, Any]] | None:
    outcome = result.get("result") or {}
    if outcome.get("type") == "succeeded":
        message = outcome["message"]
        return 200, message, anthropic.usage_of(message.get("usage")).openai()
    if outcome.get("type") == "errored":
        error = outcome.get("error") or {}
        inner: dict[str, Any] = error["error"] if isinstance(error.get("error"), dict) else error
        status = anthropic.ERROR_STATUS.get(str(inner.get("type")), 500)
        return (
            status,
            {"error": {"message": inner.get("message", "upstream error"), "type": inner.get("type")}},
            {},
        )
    return None
