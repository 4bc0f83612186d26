"""Runs batches in the background of every gateway process, off the path of live requests.

Each process looks for unfinished batches every ``batches.poll_s``; the work is shared through the store
layer: one process validates a batch (a lease), lines are claimed one by one (a lease per line, with a TTL:
a killed process's lines go to another after ``lease_s``), a line's output line is written once and a line
that has one is never sent again, one process writes the result files (a lease). Each line goes through
``Pipeline.answer`` as a live request does (admission at ``batch`` priority under the tenant's limits and
budgets, the cache, retries, fallbacks), priced at the batch price.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from backends import UpstreamResponse
from backends.wire import anthropic
from backends.wire import responses as responses_wire
from errors import DeadlineExceeded, GatewayError, InvalidRequest, QuotaExceeded, RateLimited
from policies.admission import PRIORITY_HEADER
from policies.call import Call
from policies.record import RequestRecord
from policies.stored_responses import StoredResponses

from . import metrics, responses
from .batches import LINE_ENDPOINTS, MESSAGES, TERMINAL, Batches
from .blobs import lines
from .config import BatchesConfig
from .files import Files, new_id
from .poller import Poller
from .state import Gateway
from .upstream_batches import Forwarder, forwarded_alias
from .validate import validate

ENDPOINTS = LINE_ENDPOINTS
RESPONSES = "/v1/responses"  # made ready as a live /v1/responses request is (gateway/responses.py)
_HEADERS = {PRIORITY_HEADER: "batch"}
ENGINE_PRIORITY = 1  # the local engine's (vLLM's) request priority for a batch line: live requests are 0
_OWNER = f"{os.getpid()}-{os.urandom(4).hex()}"
_CLOSE_WAIT_S = 2.0
_READ_CHUNK = 512  # output lines read from the store per round trip while finalizing


class BatchRunner(Poller):
    def __init__(
        self,
        gateway: Callable[[], Gateway],
        batches: Batches,
        files: Files,
        config: BatchesConfig,
        stored: StoredResponses,
    ) -> None:
        self._gateway = gateway  # read at each line: a reloaded config applies to the next line
        self.batches, self.files, self.config, self.stored = batches, files, config, stored
        self.kv = batches.kv
        self.forwarder = Forwarder(gateway, batches, files, config.lease_s, config.upstream_poll_s, _counted)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._windows: dict[tuple[str, int], asyncio.Semaphore] = {}  # (alias, size): an engine's window
        super().__init__("batch", config.poll_s)

    async def close(self) -> None:
        """Stops looking for work and lets what is running finish for a moment (a store command cut off
        midway would leave its connection unusable), then cuts off the rest: their leases expire and another
        process, or this one restarted, runs those lines."""
        tasks = self._stop_looking()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_CLOSE_WAIT_S)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def tick(self) -> None:
        """Starts work on each unfinished batch this process is not already working on."""
        for batch_id in await self.batches.ids():
            if batch_id in self._working:
                continue
            fields = await self.batches.fields(batch_id)
            if not fields or fields["status"] in TERMINAL:
                continue
            self._spawn(batch_id, self._work(batch_id))

    async def _work(self, batch_id: str) -> None:
        try:
            fields = await self.batches.fields(batch_id)
            if fields["status"] == "validating":
                if not await self.kv.set_if_absent(f"batch:{batch_id}:validate", _OWNER, self.config.lease_s):
                    return
                await self._validate(fields)
                fields = await self.batches.fields(batch_id)
            if fields["status"] not in ("in_progress", "finalizing"):
                return
            if "upstream" in fields:  # forwarded to the provider's own batch API
                end = (
                    await self.forwarder.advance(fields) if fields["status"] == "in_progress" else "completed"
                )
                if end is not None and await self.kv.set_if_absent(
                    f"batch:{batch_id}:finalize", _OWNER, self.config.lease_s
                ):
                    await self._finalize(await self.batches.fields(batch_id), end)
                return
            stopping = self._stopping(fields)
            if stopping is None:
                await self._run_lines(fields)
                fields = await self.batches.fields(batch_id)
                stopping = self._stopping(fields)
            done = await self.kv.hash_get(f"batch:{batch_id}:done")
            if stopping is None and len(done) < int(fields["total"]):
                return  # other processes hold the rest: looked at again next time
            if await self.kv.set_if_absent(f"batch:{batch_id}:finalize", _OWNER, self.config.lease_s):
                await self._finalize(fields, stopping or "completed")
        except Exception:
            self._log.exception("batch runner: a batch failed to progress", batch_id=batch_id)

    def _stopping(self, fields: dict[str, str]) -> str | None:
        """The end a batch is going to early: cancelled, or expired past its window."""
        if fields.get("cancel_requested"):
            return "cancelled"
        if self.batches.now() >= int(fields["expires_at"]):
            return "expired"
        return None

    async def _lines(self, fields: dict[str, str]) -> AsyncIterator[bytes]:
        chunks = await self.files.content(fields["tenant"], fields["input_file_id"])
        async for line in lines(chunks):
            yield line

    async def _validate(self, fields: dict[str, str]) -> None:
        gateway = self._gateway()
        tenant = next((t for t in gateway.loaded.config.tenants if t.name == fields["tenant"]), None)
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        models: set[str] = set()
        total = 0
        try:
            async for raw in self._lines(fields):
                total += 1
                problem = _check_line(raw, fields["endpoint"], seen, models, gateway, tenant)
                if problem is not None:
                    errors.append({**problem, "line": total})
                if total > self.config.max_lines:
                    errors.append(
                        {
                            "code": "too_many_requests",
                            "line": total,
                            "param": None,
                            "message": f"A batch may have at most {self.config.max_lines} requests.",
                        }
                    )
                    break
                if len(errors) >= 100:
                    break
        except GatewayError as exc:  # the input file was deleted meanwhile
            errors.append(
                {"code": "invalid_file", "message": exc.message, "param": "input_file_id", "line": None}
            )
        if total == 0 and not errors:
            errors.append(
                {"code": "empty_file", "message": "The input file is empty.", "param": None, "line": None}
            )
        forwarded: dict[str, str] = {}
        if not errors:
            try:
                if alias := forwarded_alias(gateway, fields["endpoint"], models):
                    forwarded["upstream"] = alias
            except InvalidRequest as exc:  # its alias's batches go upstream, and none there takes these lines
                errors.append({"code": exc.code, "message": exc.message, "param": exc.param, "line": None})
        if errors:
            await self.batches.update(
                fields["id"], errors=orjson.dumps({"object": "list", "data": errors}).decode()
            )
            await self.batches.moved(fields["id"], "failed")
            return
        await self.batches.update(fields["id"], total=str(total), **forwarded)
        await self.batches.moved(fields["id"], "in_progress")

    async def _run_lines(self, fields: dict[str, str]) -> None:
        batch_id = fields["id"]
        done = await self.kv.hash_get(f"batch:{batch_id}:done")
        running: set[asyncio.Task[None]] = set()
        index = -1
        try:
            async for raw in self._lines(fields):
                index += 1
                if str(index) in done:
                    continue
                if self._stop.is_set():
                    break
                if index % 64 == 0 and self._stopping(await self.batches.fields(batch_id)) is not None:
                    break
                line = orjson.loads(raw)
                slots = self._slots_for(line["body"]["model"])
                await slots.acquire()
                if not await self.kv.set_if_absent(
                    f"batch:{batch_id}:lease:{index}", _OWNER, self.config.lease_s
                ):
                    slots.release()
                    continue
                task = asyncio.create_task(self._line(fields, index, line, slots))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    def _slots_for(self, alias: str) -> asyncio.Semaphore:
        """The places a line of ``alias`` takes: where every deployment of the alias runs lines together (the
        local engine), as many as those engines hold (their ``batch_window``), apart from the other lines,
        so that the engine runs full; else one of the runner's ``batches.concurrency``."""
        router = self._gateway().router
        try:
            windows = [route.backend.batch_window for route in router.routes(alias)]
        except (KeyError, GatewayError):  # no such alias, or none enabled: the line's answer says so
            return self._slots
        if None in windows:
            return self._slots
        key = (alias, sum(w for w in windows if w is not None))
        if key not in self._windows:
            self._windows[key] = asyncio.Semaphore(key[1])
        return self._windows[key]

    async def _line(
        self, fields: dict[str, str], index: int, line: dict[str, Any], slots: asyncio.Semaphore
    ) -> None:
        batch_id = fields["id"]
        lease = f"batch:{batch_id}:lease:{index}"
        try:
            if await self.kv.get(f"batch:{batch_id}:out:{index}") is not None:  # answered, not yet counted
                await self.kv.hash_set(f"batch:{batch_id}:done", {str(index): "1"})
                return
            status, body, record = await self._send(fields, line)
            if status is None:  # rate limited, or past its deadline: left for a later pass
                await self.kv.delete(lease)
                return
            _counted(record, status)
            await self.batches.answered(batch_id, index, line["custom_id"], status, record.request_id, body)
            await self.kv.hash_incr(f"batch:{batch_id}", "completed" if status < 400 else "failed")
        except Exception:
            self._log.exception("batch runner: a line failed", batch_id=batch_id, line=index)
            await self.kv.delete(lease)
        finally:
            slots.release()

    async def _send(
        self, fields: dict[str, str], line: dict[str, Any]
    ) -> tuple[int | None, Any, RequestRecord]:
        """The line's answer through the pipeline, as a live request on its url: (status, body, record);
        status None to try later: refused for a rate limit, or kept waiting past the request's deadline (behind
        live traffic, or an upstream too slow for now); tried again until the batch's window ends, when it is
        reported expired as OpenAI reports it."""
        gateway = self._gateway()
        url = fields["endpoint"]
        asked = dict(line["body"])
        asked.pop("stream", None)
        record = RequestRecord(
            request_id=new_id("req_"),
            started=time.perf_counter(),
            endpoint="batch:" + url,
            tenant=fields["tenant"],
            key_id=fields["key_id"],
            alias=asked["model"],
        )
        try:
            if asked["model"] not in gateway.router:
                raise GatewayError(
                    f"The model `{asked['model']}` does not exist.",
                    status=404,
                    error_type="invalid_request_error",
                    code="model_not_found",
                )
            if url == RESPONSES:
                tenant = next((t for t in gateway.loaded.config.tenants if t.name == fields["tenant"]), None)
                if tenant is None:
                    raise GatewayError(
                        f"The tenant `{fields['tenant']}` is no longer configured.",
                        status=403,
                        error_type="permission_error",
                        code="tenant_unknown",
                    )
                ready = await responses.turn(
                    gateway, self.stored, record, tenant, fields["key_id"], asked, False, _HEADERS
                )
                call, finish = ready.call, ready.whole
            else:
                body = anthropic.to_chat(asked) if url == MESSAGES else asked
                call = Call(
                    record=record,
                    tenant=fields["tenant"],
                    key_id=fields["key_id"],
                    alias=asked["model"],
                    endpoint=ENDPOINTS[url],
                    body=body,
                    stream=False,
                    headers=_HEADERS,
                )
                finish = functools.partial(_whole, asked if url == MESSAGES else None)
            call.batch = True
            if all(route.deployment.provider == "local" for route in gateway.router.routes(call.alias)):
                # the engine schedules it after live requests (and preempts it first when its KV cache is full)
                call.body = {**call.body, "priority": ENGINE_PRIORITY}
            async with gateway.pipeline.answer(call) as answer:
                return answer.status, await finish(answer), record
        except QuotaExceeded as exc:
            return exc.status, exc.body(), record
        except (RateLimited, DeadlineExceeded):
            return None, None, record
        except GatewayError as exc:
            return exc.status, exc.body(), record

    async def _finalize(self, fields: dict[str, str], end: str) -> None:
        """Writes the output and error files in line order and moves the batch to ``end``."""
        batch_id, tenant = fields["id"], fields["tenant"]
        await self.batches.moved(batch_id, "finalizing")
        counted = {"completed": 0, "failed": 0}

        async def written(ok: bool) -> AsyncIterator[bytes]:
            async for line, raw in self._answers(fields):
                if raw is None:
                    if ok:
                        continue
                    custom_id = orjson.loads(line).get("custom_id")
                    code = "batch_expired" if end == "expired" else "batch_cancelled"
                    message = (
                        "This request could not be executed before the completion window expired."
                        if end == "expired"
                        else "This request was not executed: the batch was cancelled."
                    )
                    counted["failed"] += end == "expired"
                    yield (
                        orjson.dumps(
                            {
                                "id": new_id("batch_req_"),
                                "custom_id": custom_id,
                                "response": None,
                                "error": {"code": code, "message": message},
                            }
                        )
                        + b"\n"
                    )
                    continue
                if (orjson.loads(raw)["response"]["status_code"] < 400) == ok:
                    counted["completed" if ok else "failed"] += 1
                    yield raw.encode() + b"\n"

        output = await self._file(tenant, f"{batch_id}_output.jsonl", written(True))
        errors = await self._file(tenant, f"{batch_id}_error.jsonl", written(False))
        ids = {"completed": str(counted["completed"]), "failed": str(counted["failed"])}
        if output is not None:
            ids["output_file_id"] = output
        if errors is not None:
            ids["error_file_id"] = errors
        await self.batches.update(batch_id, **ids)
        await self.batches.moved(batch_id, end)
        self._log.info("batch finished", batch_id=batch_id, status=end, **counted)

    async def _answers(self, fields: dict[str, str]) -> AsyncIterator[tuple[bytes, str | None]]:
        """Each input line with its output line (None: not run), read from the store a chunk at a time: one
        round trip per ``_READ_CHUNK`` lines, not per line."""
        batch_id = fields["id"]
        chunk: list[bytes] = []
        index = 0

        async def flush() -> list[tuple[bytes, str | None]]:
            keys = [f"batch:{batch_id}:out:{i}" for i in range(index - len(chunk), index)]
            return list(zip(chunk, await self.kv.get_many(keys), strict=True))

        async for line in self._lines(fields):
            chunk.append(line)
            index += 1
            if len(chunk) == _READ_CHUNK:
                for pair in await flush():
                    yield pair
                chunk = []
        if chunk:
            for pair in await flush():
                yield pair

    async def _file(self, tenant: str, name: str, chunks: AsyncIterator[bytes]) -> str | None:
        record = await self.files.create(tenant, name, "batch_output", chunks)
        if record["bytes"] == 0:  # OpenAI leaves a file id out when it would be empty
            await self.files.delete(tenant, record["id"])
            return None
        return str(record["id"])


async def _whole(message: dict[str, Any] | None, answer: UpstreamResponse) -> Any:
    """A whole answer's body; for a message batch's line (``message``: its request) as Anthropic's Message."""
    data = answer.data if answer.data is not None else orjson.loads(answer.body or b"null")
    if message is not None and answer.status < 400:
        return anthropic.to_message(data, message["model"], message.get("stop_sequences"))
    return data


def _counted(record: RequestRecord, status: int) -> None:
    """A line in the batch metrics, apart from live requests'."""
    tenant, alias = record.tenant, record.alias
    metrics.BATCH_LINES.labels(tenant, alias, str(status)).inc()
    if record.prompt_tokens:
        metrics.BATCH_TOKENS.labels(tenant, alias, "prompt").inc(record.prompt_tokens)
    if record.completion_tokens:
        metrics.BATCH_TOKENS.labels(tenant, alias, "completion").inc(record.completion_tokens)
    if record.cost_usd:
        metrics.BATCH_COST.labels(tenant, alias).inc(record.cost_usd)


def _check_line(
    raw: bytes, endpoint: str, seen: set[str], models: set[str], gateway: Gateway, tenant: Any
) -> dict[str, Any] | None:
    """A line's problem as OpenAI reports it (code, message, param), or None; its model goes in ``models``."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {
            "code": "invalid_json_line",
            "message": "This line is not parseable as valid JSON.",
            "param": None,
        }
    if not isinstance(line, dict):
        return {"code": "invalid_json_line", "message": "Each line must be a JSON object.", "param": None}
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return {
            "code": "missing_required_parameter",
            "message": "Missing required parameter: 'custom_id'.",
            "param": "custom_id",
        }
    if custom_id in seen:
        return {
            "code": "duplicate_custom_id",
            "param": "custom_id",
            "message": f"The custom_id '{custom_id}' is used more than once in this file.",
        }
    seen.add(custom_id)
    if line.get("method") != "POST":
        return {"code": "invalid_method", "message": "The method must be 'POST'.", "param": "method"}
    if line.get("url") != endpoint:
        return {
            "code": "mismatched_endpoint",
            "param": "url",
            "message": f"The url '{line.get('url')}' does not match the batch's endpoint '{endpoint}'.",
        }
    body = line.get("body")
    if not isinstance(body, dict):
        return {
            "code": "missing_required_parameter",
            "message": "Missing required parameter: 'body'.",
            "param": "body",
        }
    try:
        if endpoint == MESSAGES:
            anthropic.check(body)
        elif endpoint == RESPONSES:
            responses_wire.check(body)
        else:
            validate(ENDPOINTS[endpoint], body)
    except GatewayError as exc:
        return {"code": exc.code or "invalid_request", "message": exc.message, "param": exc.param}
    model = body["model"]
    models.add(model)
    if model not in gateway.router or tenant is None or not tenant.allows(model):
        return {
            "code": "model_not_found",
            "param": "body.model",
            "message": f"The model `{model}` does not exist or you do not have access to it.",
        }
    return None
