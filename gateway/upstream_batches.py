"""Batches forwarded to the provider's own batch API (an alias with ``batch.mode: upstream``), instead of run
line by line in the gateway.

A batch is forwarded when every line names the same alias and that alias says ``upstream``, to its first
deployment whose batch API speaks the batch's format: OpenAI's (``provider: openai``, or ``azure``: the same
APIs on an Azure OpenAI resource) for ``/v1/batches``, Anthropic's (``provider: anthropic``) for
``/v1/messages/batches``. Where it has none, chat goes across: a ``/v1/chat/completions`` batch to Anthropic's
API (each line translated by ``wire.anthropic`` as a live chat request to an Anthropic deployment is), a
message batch to OpenAI's (each request as chat, as the runner sends one to a chat backend), and each result
translated back. A batch of other lines that no batch API of the alias takes is refused when it is validated.

Its lines go upstream once (a lease), the model names rewritten to the deployment's (a line that cannot be
translated is answered at once with the error the live path gives, and not sent); the upstream batch is looked
at every ``batches.upstream_poll_s`` by the gateway's clock (its status and counts copied onto the gateway's
batch, a cancel passed on); once it ended, its results become the gateway's output lines (the alias's name
back in place of the deployment's, the gateway's own ids), each ledgered and counted at the batch price as a
line run here would be. The runner then writes the result files as for any batch.

State, beside the batch's own (gateway/batches.py): ``upstream`` (the alias), ``upstream_batch_id`` (empty:
every line was answered before sending, nothing went upstream), ``upstream_refused`` (those lines' count),
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
from errors import GatewayError, InvalidRequest
from policies.call import Call
from policies.record import RequestRecord

from .batches import LINE_ENDPOINTS, MESSAGES, Batches
from .blobs import lines
from .config import ModelAlias
from .files import Files
from .logs import get_logger
from .state import Gateway

CHAT = "/v1/chat/completions"
_OPENAI_ENDS = {"completed": "completed", "cancelled": "cancelled", "expired": "expired"}
_OPENAI = ("openai", "azure")
# the providers whose batch API takes a batch's lines: as they are, then translated (chat only goes across)
_NATIVE = {MESSAGES: ("anthropic",)}
_ACROSS = {MESSAGES: _OPENAI, CHAT: ("anthropic",)}

# (status, body, usage) of an upstream result line, from it and its request; None: it was not run
Answer = tuple[int, Any, dict[str, Any]] | None


def deployment_for(alias: ModelAlias, endpoint: str) -> DeploymentConfig | None:
    """The deployment a batch on ``endpoint`` is forwarded to: the first whose batch API speaks its format,
    else the first whose batch API takes its lines translated (chat, across OpenAI's and Anthropic's)."""
    enabled = [d for d in alias.deployments if d.enabled]
    for providers in (_NATIVE.get(endpoint, _OPENAI), _ACROSS.get(endpoint, ())):
        found = next((d for d in enabled if d.provider in providers), None)
        if found is not None:
            return found
    return None


def translated(endpoint: str, deployment: DeploymentConfig) -> bool:
    """Whether a batch on ``endpoint`` goes to ``deployment``'s batch API in the other format."""
    return (endpoint == MESSAGES) != (deployment.provider == "anthropic")


def forwarded_alias(gateway: Gateway, endpoint: str, models: set[str]) -> str | None:
    """The alias a validated batch goes upstream for, or None: its lines run in the gateway. InvalidRequest
    when every line names an upstream alias that has no batch API for them (an embeddings, completions or
    responses batch where only Anthropic's is there): sent live instead, it would not be what was asked."""
    if len(models) != 1:
        return None
    [name] = models
    alias = next((a for a in gateway.loaded.config.models if a.name == name), None)
    if alias is None or alias.batch.mode != "upstream":
        return None
    if deployment_for(alias, endpoint) is None:
        raise InvalidRequest(
            f"The model `{name}` sends its batches to a provider's batch API (batch.mode upstream), and none "
            f"of its enabled deployments has one that takes {endpoint} requests: Anthropic's takes chat "
            "completions and messages only.",
            code="unsupported_endpoint",
            param="endpoint",
        )
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
        if not fields["upstream_batch_id"]:  # every line answered before sending
            return "cancelled" if fields.get("cancel_requested") else "completed"
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

    async def _outgoing(
        self,
        fields: dict[str, str],
        deployment: DeploymentConfig,
        refused: list[tuple[int, dict[str, Any], GatewayError]],
    ) -> AsyncIterator[dict[str, Any]]:
        """The input lines as the deployment's batch API takes them (its model; translated where it speaks
        the other format); a line that cannot be translated goes in ``refused`` instead (its index, line and
        the error a live request gets)."""
        endpoint, model = fields["endpoint"], deployment.model
        across = translated(endpoint, deployment)
        index = -1
        async for line in self._input(fields):
            index += 1
            body = line["body"]
            try:
                if not across:
                    body = {**body, "model": model}
                elif endpoint == MESSAGES:
                    body = {
                        **anthropic.to_chat({k: v for k, v in body.items() if k != "stream"}),
                        "model": model,
                    }
                else:
                    body = anthropic.to_anthropic(body, model, deployment.default_max_tokens)
            except GatewayError as exc:
                refused.append((index, line, exc))
                continue
            yield {**line, "url": CHAT if across else endpoint, "body": body}

    async def _submit(self, fields: dict[str, str]) -> None:
        # the next look is poll_s after the batch was sent, by the clock read before sending: a clock that moved
        # while the upload was on the wire must not push the look a whole period later
        sent = self.batches.now()
        alias, deployment = self._target(fields)
        refused: list[tuple[int, dict[str, Any], GatewayError]] = []
        outgoing = self._outgoing(fields, deployment, refused)
        first = await anext(outgoing, None)  # None: every line refused, nothing goes upstream
        upstream_id = "" if first is None else await self._create(fields, deployment, first, outgoing)
        for index, line, exc in refused:  # once the batch was created: a create that failed is tried again
            await self._answered(fields, alias, deployment, index, line, (exc.status, exc.body(), {}))
        await self.batches.update(
            fields["id"],
            upstream_batch_id=upstream_id,
            upstream_refused=str(len(refused)),
            upstream_next_poll=str(sent + self.poll_s),
        )

    async def _create(
        self,
        fields: dict[str, str],
        deployment: DeploymentConfig,
        first: dict[str, Any],
        rest: AsyncIterator[dict[str, Any]],
    ) -> str:
        """The upstream batch of the outgoing lines ``first`` and ``rest``; its id."""
        if deployment.provider == "anthropic":
            requests = [{"custom_id": first["custom_id"], "params": first["body"]}]
            requests += [{"custom_id": line["custom_id"], "params": line["body"]} async for line in rest]
            return str((await self._anthropic(deployment).create(requests))["id"])
        api = self._openai(deployment)

        async def rewritten() -> AsyncIterator[bytes]:
            yield _openai_line(api, first)
            async for line in rest:
                yield _openai_line(api, line)

        file_id = await api.upload(f"{fields['id']}.jsonl", rewritten())
        endpoint = CHAT if translated(fields["endpoint"], deployment) else fields["endpoint"]
        return str((await api.create(file_id, endpoint, {"gateway_batch_id": fields["id"]}))["id"])

    async def _poll(self, fields: dict[str, str]) -> str | None:
        batch_id = fields["id"]
        alias, deployment = self._target(fields)
        upstream_id = fields["upstream_batch_id"]
        across = translated(fields["endpoint"], deployment)
        refused = int(fields.get("upstream_refused", 0))
        api: OpenAIBatchAPI | AnthropicBatchAPI = (
            self._anthropic(deployment) if deployment.provider == "anthropic" else self._openai(deployment)
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
                batch_id,
                completed=str(counts.get("succeeded", 0)),
                failed=str(counts.get("errored", 0) + refused),
            )
            if found.get("processing_status") != "ended":
                return None
            translate = _message_as_chat(deployment.id) if across else _from_anthropic
            await self._results(fields, alias, deployment, api.results(upstream_id), translate)
            return "cancelled" if fields.get("cancel_requested") else "completed"
        counts = found.get("request_counts") or {}
        await self.batches.update(
            batch_id, completed=str(counts.get("completed", 0)), failed=str(counts.get("failed", 0) + refused)
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
                translate = _chat_as_message if across else _from_openai
                await self._results(fields, alias, deployment, api.content(found[name]), translate)
        return _OPENAI_ENDS[status]

    async def _results(
        self,
        fields: dict[str, str],
        alias: ModelAlias,
        deployment: DeploymentConfig,
        chunks: AsyncIterator[bytes],
        translate: Callable[[dict[str, Any], dict[str, Any]], Answer],
    ) -> None:
        """Each upstream result line as the gateway's output line, ledgered at the batch price."""
        index_of: dict[str, int] = {}
        asked: dict[str, dict[str, Any]] = {}
        async for line in self._input(fields):
            index_of[line["custom_id"]] = len(index_of)
            asked[line["custom_id"]] = line
        async for raw in lines(chunks):
            result = orjson.loads(raw)
            index = index_of.get(result.get("custom_id"))
            if index is None:
                continue
            line = asked[result["custom_id"]]
            answer = translate(result, line["body"])
            if answer is None:  # not run (cancelled, expired): the runner writes that line
                continue
            await self._answered(fields, alias, deployment, index, line, answer)

    async def _answered(
        self,
        fields: dict[str, str],
        alias: ModelAlias,
        deployment: DeploymentConfig,
        index: int,
        line: dict[str, Any],
        answer: tuple[int, Any, dict[str, Any]],
    ) -> None:
        """Input line ``index``'s answer as the gateway's output line, ledgered and counted at the batch price."""
        batch_id = fields["id"]
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
        await self.batches.answered(batch_id, index, line["custom_id"], status, record.request_id, body)
        call = Call(
            record=record,
            tenant=fields["tenant"],
            key_id=fields["key_id"],
            alias=alias.name,
            endpoint=LINE_ENDPOINTS[fields["endpoint"]],
            body=line["body"],
            stream=False,
            batch=True,
        )
        try:
            await self._gateway().pipeline.admission.charge(call)
        except GatewayError as exc:  # the answer stands; one line's ledger entry must not hold up the rest
            self._log.warning(
                "an upstream batch line was not ledgered", batch_id=batch_id, line=index, error=exc.message
            )
        self._counted(record, status)


def _openai_line(api: OpenAIBatchAPI, line: dict[str, Any]) -> bytes:
    if isinstance(api, AzureBatchAPI):
        line = {**line, "url": api.endpoint(line["url"])}
    return orjson.dumps(line) + b"\n"


def _from_openai(result: dict[str, Any], request: dict[str, Any]) -> Answer:
    response = result.get("response")
    if not isinstance(response, dict):
        return None
    body = response.get("body")
    usage = body.get("usage") if isinstance(body, dict) else None
    if isinstance(usage, dict) and "input_tokens" in usage:  # a Responses answer's
        usage = responses_wire.chat_usage(usage)
    return int(response["status_code"]), body, usage or {}


def _chat_as_message(result: dict[str, Any], request: dict[str, Any]) -> Answer:
    """A chat result line for a message batch's request: the completion as Anthropic's message (as the runner
    answers a message batch's line from a chat backend), an error as it is (the results name its status)."""
    answer = _from_openai(result, request)
    if answer is None or answer[0] >= 400 or not isinstance(answer[1], dict):
        return answer
    status, body, usage = answer
    return status, anthropic.to_message(body, str(request["model"]), request.get("stop_sequences")), usage


def _anthropic_error(outcome: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """An ``errored`` result's status (as Anthropic's live API gives that type) and its inner error."""
    error = outcome.get("error") or {}
    inner: dict[str, Any] = error["error"] if isinstance(error.get("error"), dict) else error
    return anthropic.ERROR_STATUS.get(str(inner.get("type")), 500), inner


def _from_anthropic(result: dict[str, Any], request: dict[str, Any]) -> Answer:
    outcome = result.get("result") or {}
    if outcome.get("type") == "succeeded":
        message = outcome["message"]
        return 200, message, anthropic.usage_of(message.get("usage")).openai()
    if outcome.get("type") == "errored":
        status, inner = _anthropic_error(outcome)
        body = {"error": {"message": inner.get("message", "upstream error"), "type": inner.get("type")}}
        return status, body, {}
    return None


def _message_as_chat(deployment_id: str) -> Callable[[dict[str, Any], dict[str, Any]], Answer]:
    """Anthropic's result lines for a chat batch's lines: a message as a chat completion, an error in
    OpenAI's shape, as a live chat request to an Anthropic deployment gets them."""

    def translate(result: dict[str, Any], request: dict[str, Any]) -> Answer:
        outcome = result.get("result") or {}
        if outcome.get("type") == "succeeded":
            completion = anthropic.from_anthropic(outcome["message"])
            return 200, completion, completion["usage"]
        if outcome.get("type") == "errored":
            status, inner = _anthropic_error(outcome)
            error = anthropic.error_from({"error": inner}, status, {}, deployment_id)
            return error.status, error.body(), {}
        return None

    return translate
