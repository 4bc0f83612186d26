"""What a tenant's PII policy and guardrail do to one request: ``inbound`` before the pipeline (mask, block,
judge the input), ``outbound`` on the answer (restore placeholders, judge the output)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from backends import Endpoint, UpstreamResponse
from errors import InvalidRequest
from policies.call import Call
from policies.record import RequestRecord

from ..config import TenantConfig
from ..pipeline import Pipeline
from .config import GuardrailConfig, PIIConfig
from .privacy import Masker, Privacy, map_texts, restored

_policies: dict[int, tuple[PIIConfig, Privacy]] = {}


def _privacy(config: PIIConfig) -> Privacy:
    # Built once per config object (a reload makes new ones); the config is kept so its id cannot be reused.
    found = _policies.get(id(config))
    if found is None or found[0] is not config:
        found = _policies[id(config)] = (config, Privacy(config))
    return found[1]


@dataclass(slots=True)
class Screen:
    """One request's screening: the body for the upstream, the body for the log, and what the answer needs."""

    body: dict[str, Any]
    logged: dict[str, Any]
    masker: Masker | None = None
    guardrail: GuardrailConfig | None = None
    pipeline: Pipeline | None = None
    call: Call | None = None

    async def outbound(self, answer: UpstreamResponse) -> UpstreamResponse:
        if self.guardrail is not None and self.guardrail.on != "input" and answer.chunks is None:
            data = answer.data if answer.data is not None else orjson.loads(answer.body or b"{}")
            texts = [str((c.get("message") or {}).get("content") or c.get("text") or "")
                     for c in data.get("choices") or ()]
            await _judge(self, "\n".join(texts))
        if self.masker is not None:
            answer = restored(answer, self.masker)
        return answer


async def inbound(pipeline: Pipeline, tenant: TenantConfig, key_id: str, endpoint: Endpoint,
                  body: dict[str, Any], record: RequestRecord) -> Screen:
    if tenant.pii is None and tenant.guardrail is None:
        return Screen(body, body)
    screen = Screen(body, body, guardrail=tenant.guardrail, pipeline=pipeline)
    if tenant.pii is not None:
        sent, screen.masker = _privacy(tenant.pii).inbound(endpoint, body)
        screen.body = sent
        screen.logged = sent if sent is not body else map_texts(endpoint, body, screen.masker.mask)
    if tenant.guardrail is not None:
        screen.call = Call(record=record, tenant=tenant.name, key_id=key_id, alias=tenant.guardrail.alias,
                           endpoint=Endpoint.CHAT, body={}, stream=False)
        if tenant.guardrail.on != "output":
            texts: list[str] = []

            def collect(text: str) -> str:
                texts.append(text)
                return text
            map_texts(endpoint, screen.body, collect)
            await _judge(screen, "\n".join(texts))
    return screen


async def _judge(screen: Screen, text: str) -> None:
    """Asks the tenant's moderation alias, through this gateway's own pipeline (limits, budget, fallbacks,
    cache), and refuses the request when its verdict matches ``block_if``."""
    guard, parent, pipeline = screen.guardrail, screen.call, screen.pipeline
    assert guard is not None and parent is not None and pipeline is not None
    messages = [{"role": "system", "content": guard.instructions}] if guard.instructions else []
    record = RequestRecord(request_id=f"{parent.record.request_id}-guardrail", started=time.perf_counter(),
                           endpoint="guardrail", tenant=parent.tenant, key_id=parent.key_id, alias=guard.alias)
    call = Call(record=record, tenant=parent.tenant, key_id=parent.key_id, alias=guard.alias,
                endpoint=Endpoint.CHAT, stream=False,
                body={"model": guard.alias, "temperature": 0, "messages": [*messages, {"role": "user", "content": text}]})
    async with pipeline.answer(call) as answer:
        data = answer.data if answer.data is not None else orjson.loads(answer.body or b"{}")
    choices = data.get("choices") or [{}]
    verdict = str((choices[0].get("message") or {}).get("content") or "")
    if re.search(guard.block_if, verdict):
        raise InvalidRequest("The request was refused by this tenant's content guardrail.",
                             code="content_policy_violation")
