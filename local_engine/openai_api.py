"""OpenAI wire format for the engine: request dict → SamplingParams, engine outputs → response dicts.

Shared by ``local_engine serve`` and the gateway's in-process adapter, so both speak
the same dialect. Errors are raised as :class:`OpenAIError`, which carries the HTTP
status and renders OpenAI's ``{"error": {"message", "type", "param", "code"}}`` body.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from local_engine.engine import ContextLengthError, Prompt, RequestError
from local_engine.lora import LoRAError
from local_engine.outputs import RequestOutput
from local_engine.sampling_params import MAX_LOGPROBS, SamplingParams
from local_engine.sequence import TokenLogprob
from local_engine.structured import GrammarError, json_schema_grammar, lark_grammar
from local_engine.tokenizer import Tokenizer
from local_engine.tools import (
    ToolCallParser,
    ToolFormat,
    ToolRequestError,
    detect_format,
    parse_tool_choice,
    parse_tools,
    prepare_messages,
    response_schema,
    tool_grammar,
)

if TYPE_CHECKING:
    from local_engine.async_engine import AsyncEngine
    from local_engine.kv_transfer import KVConnector


MAX_N = 16


class OpenAIError(Exception):
    """An error with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _num(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not isinstance(value, int))
    ):
        raise OpenAIError(f"'{key}' must be {'an integer' if kind is int else 'a number'}", param=key)
    return kind(value)


def sampling_params_from_request(
    body: dict[str, Any], *, chat: bool, default_max_tokens: int | None = None
) -> SamplingParams:
    """Read OpenAI sampling fields (plus vLLM-style top_k, min_p, repetition_penalty, stop_token_ids,
    ignore_eos, priority (lower is scheduled first; a gateway's batch lines come after live requests), and
    ``speculative``: false to decode without the engine's speculative drafts)."""
    n = _num(body, "n", int, 1)
    if not 1 <= n <= MAX_N:
        raise OpenAIError(f"'n' must be between 1 and {MAX_N}", param="n")
    max_key = (
        "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    )
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise OpenAIError("'stop' must be a string or a list of strings", param="stop")
    if chat:
        want = body.get("logprobs")
        if want is not None and not isinstance(want, bool):
            raise OpenAIError("'logprobs' must be a boolean", param="logprobs")
        top = _num(body, "top_logprobs", int, 0)
        if top and not want:
            raise OpenAIError("'top_logprobs' requires 'logprobs': true", param="top_logprobs")
        logprobs = top if want else None
        param = "top_logprobs"
    else:
        logprobs = _num(body, "logprobs", int, None)
        param = "logprobs"
    if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
        raise OpenAIError(f"'{param}' must be between 0 and {MAX_LOGPROBS}", param=param)
    speculative = body.get("speculative", True)
    if not isinstance(speculative, bool):
        raise OpenAIError("'speculative' must be a boolean", param="speculative")
    try:
        return SamplingParams(
            n=n,
            max_tokens=_num(body, max_key, int, default_max_tokens),
            temperature=_num(body, "temperature", float, 1.0),
            top_p=_num(body, "top_p", float, 1.0),
            top_k=_num(body, "top_k", int, 0),
            min_p=_num(body, "min_p", float, 0.0),
            presence_penalty=_num(body, "presence_penalty", float, 0.0),
            frequency_penalty=_num(body, "frequency_penalty", float, 0.0),
            repetition_penalty=_num(body, "repetition_penalty", float, 1.0),
            seed=_num(body, "seed", int, None),
            stop=tuple(stop or ()),
            stop_token_ids=tuple(body.get("stop_token_ids") or ()),
            ignore_eos=bool(body.get("ignore_eos", False)),
            logprobs=logprobs,
            speculative=speculative,
            priority=_num(body, "priority", int, 0),
        )
    except ValueError as e:
        raise OpenAIError(str(e)) from None


def check_supported(body: dict[str, Any], *, chat: bool) -> None:
    """Refuse OpenAI fields the engine cannot honour, rather than silently answering without them."""
    unsupported = []
    if body.get("logit_bias"):
        unsupported.append("logit_bias")
    if chat:
        if body.get("functions"):
            unsupported.append("functions")
        if body.get("audio") or "audio" in (body.get("modalities") or ()):
            unsupported.append("audio")
    else:
        if body.get("response_format") is not None:
            unsupported.append("response_format")
        if body.get("echo"):
            unsupported.append("echo")
        if body.get("suffix"):
            unsupported.append("suffix")
        if body.get("best_of") not in (None, body.get("n") or 1):
            unsupported.append("best_of")
    if unsupported:
        raise OpenAIError(
            f"the local engine does not support '{unsupported[0]}'",
            param=unsupported[0],
            code="unsupported_parameter",
        )


def _text_content(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):  # content parts: only text ones are meaningful to a text model
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise OpenAIError("only text content parts are supported", param="messages")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise OpenAIError("message content must be a string or a list of text parts", param="messages")


def prompt_from_request(body: dict[str, Any], *, chat: bool) -> Prompt:
    """The engine prompt of a request: chat messages (content flattened to text) or completion text/ids."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise OpenAIError("'messages' must be a non-empty list", param="messages")
        out = []
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise OpenAIError("each message needs a 'role'", param="messages")
            out.append({**m, "content": _text_content(m.get("content"))})
        return out
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return prompt
    raise OpenAIError("'prompt' must be a non-empty string or list of token ids (one prompt)", param="prompt")


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def _token_text(tok: Tokenizer, token_id: int) -> str:
    return tok.decode([token_id], skip_special_tokens=False)


def chat_logprobs(tok: Tokenizer, logprobs: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> dict[str, Any]:
    def entry(token_id: int, lp: float) -> dict[str, Any]:
        text = _token_text(tok, token_id)
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}

    return {
        "content": [
            {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(i, v) for i, v in lp.top]}
            for lp in logprobs
        ],
        "refusal": None,
    }


def completion_logprobs(
    tok: Tokenizer, logprobs: tuple[TokenLogprob, ...] | list[TokenLogprob], text_offset: int
) -> dict[str, Any]:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for lp in logprobs:
        text = _token_text(tok, lp.token_id)
        tokens.append(text)
        token_logprobs.append(lp.logprob)
        tops.append({_token_text(tok, i): v for i, v in lp.top})
        offsets.append(text_offset)
        text_offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def new_request_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


def _usage_of(last: dict[int, RequestOutput]) -> dict[str, Any]:
    outs = list(last.values())
    return usage(
        outs[0].prompt_tokens, sum(o.completion_tokens for o in outs), max(o.cached_tokens for o in outs)
    )


@dataclass(frozen=True, slots=True)
class _Prepared:
    params: SamplingParams
    prompt: Prompt
    tool_format: ToolFormat | None  # set when the answer may hold tool calls
    lora: str | None = None  # the adapter ``model`` names (docs/lora.md)
    continuation: tuple[int, ...] = ()  # ``continue_token_ids``: an earlier run's output to go on from
    return_token_ids: bool = False  # each choice carries the token ids it generated


def _continuation(body: dict[str, Any]) -> tuple[int, ...]:
    """``continue_token_ids``: the token ids an earlier run of this request generated (the text of which it
    sent), to go on from; the answer is what that run would have sent after them."""
    ids = body.get("continue_token_ids")
    if ids is None:
        return ()
    if not isinstance(ids, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids
    ):
        raise OpenAIError("'continue_token_ids' must be a list of token ids", param="continue_token_ids")
    return tuple(ids)


def _return_token_ids(body: dict[str, Any]) -> bool:
    want = body.get("return_token_ids", False)
    if not isinstance(want, bool):
        raise OpenAIError("'return_token_ids' must be a boolean", param="return_token_ids")
    return want


def resolve_lora(engine: AsyncEngine, model: Any) -> str | None:
    """The LoRA adapter a request's ``model`` names (None: the base); 404 for an ``X:Y`` naming none."""
    try:
        return engine.resolve_lora(model if isinstance(model, str) else None)
    except LoRAError as e:
        raise OpenAIError(
            str(e), status=404, type="not_found_error", param="model", code="model_not_found"
        ) from None


def _prepare(engine: AsyncEngine, body: dict[str, Any], *, chat: bool) -> _Prepared:
    check_supported(body, chat=chat)
    params = sampling_params_from_request(body, chat=chat)
    prompt = prompt_from_request(body, chat=chat)
    lora = resolve_lora(engine, body.get("model"))
    continuation, return_ids = _continuation(body), _return_token_ids(body)
    if not chat:
        return _Prepared(params, prompt, None, lora, continuation, return_ids)
    tok = engine.engine.tokenizer
    try:
        tools = parse_tools(body)
        choice = parse_tool_choice(body, tools)
        schema = response_schema(body)
        fmt = detect_format(tok.chat_template)
        # tool_choice none: the tools stay out of the prompt, so the model does not try to call them.
        messages, extra = prepare_messages(fmt, prompt, [] if choice == "none" else tools)  # type: ignore[arg-type]
        lark = tool_grammar(fmt, tools, choice, schema)
        grammar = None if lark is None else lark_grammar(lark)
        if grammar is None and schema is not None:
            grammar = json_schema_grammar(schema)
    except ToolRequestError as e:
        raise OpenAIError(str(e), param=e.param) from None
    except GrammarError as e:
        raise OpenAIError(str(e), param="tools" if body.get("tools") else "response_format") from None
    if extra:
        # The template needs the tools: render here (what the engine would do) with them.
        with _errors(chat):
            prompt = tok.encode_chat(messages, **extra)
    else:
        prompt = messages
    if grammar is not None:
        params = dataclasses.replace(params, grammar=grammar)
    tool_format = fmt if choice != "none" else None
    if continuation and tool_format is not None:
        # the tool-call parser's state (text it holds back, a call half sent) is not in the ids
        raise OpenAIError(
            "'continue_token_ids' cannot continue an answer that may call tools", param="continue_token_ids"
        )
    return _Prepared(params, prompt, tool_format, lora, continuation, return_ids)


async def stream_response(
    engine: AsyncEngine,
    body: dict[str, Any],
    *,
    chat: bool,
    request_id: str | None = None,
    model_name: str | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """Run a request and yield OpenAI stream chunks (``chat.completion.chunk`` / ``text_completion``).

    Each chunk carries one choice (its ``index`` tells which of the n). With
    ``stream_options.include_usage`` a last chunk with empty ``choices`` carries usage.
    Leaving the iteration early aborts the request. ``model_name`` replaces the engine's
    own name in the ``model`` field.
    """
    req = _prepare(engine, body, chat=chat)
    rid = request_id or new_request_id(chat)
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    tok = engine.engine.tokenizer
    base = {"id": rid, "object": obj, "created": created, "model": model_name or engine.model_name}
    offsets: dict[int, int] = {}
    last: dict[int, RequestOutput] = {}  # latest output of each choice
    parsers: dict[int, ToolCallParser] = {}
    pending: dict[int, list[int]] = {}  # each choice's token ids since its last chunk
    gen = engine.generate(
        rid, req.prompt, req.params, req.lora, kv_load=_handoff(body), continuation=req.continuation
    )
    try:
        with _errors(chat):
            async for out in gen:
                text, finish_reason = out.text, out.finish_reason
                if req.return_token_ids:
                    pending.setdefault(out.index, []).extend(out.token_ids)
                calls: list[dict[str, Any]] = []
                if req.tool_format is not None:
                    parser = parsers.setdefault(out.index, ToolCallParser(req.tool_format))
                    n_before = len(parser.calls)
                    text, calls = parser.feed(text)
                    if out.finished:
                        rest, more = parser.finish()
                        text, calls = text + rest, calls + more
                        finish_reason = _finish_reason(out.finish_reason, parser)
                    calls = [{"index": n_before + k, **c} for k, c in enumerate(calls)]
                if not text and not calls and not out.finished and not out.logprobs:
                    continue  # a token whose text is held back (partial character, stop string, tool call)
                first = out.index not in offsets
                offset = offsets.get(out.index, 0)
                offsets[out.index] = offset + len(text)
                last[out.index] = out
                choice: dict[str, Any] = {
                    "index": out.index,
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
                if chat:
                    delta: dict[str, Any] = {"role": "assistant"} if first else {}
                    delta["content"] = text if text or not calls else None
                    if calls:
                        delta["tool_calls"] = calls
                    choice["delta"] = delta
                    if out.logprobs:
                        choice["logprobs"] = chat_logprobs(tok, out.logprobs)
                else:
                    choice["text"] = text
                    if out.logprobs:
                        choice["logprobs"] = completion_logprobs(tok, out.logprobs, offset)
                if req.return_token_ids:
                    # the ids of this chunk's text, with those of outputs held back before it
                    choice["token_ids"] = pending.pop(out.index, [])
                yield {**base, "choices": [choice], **({"usage": None} if include_usage else {})}
    finally:
        await gen.aclose()
    if include_usage and last:
        yield {**base, "choices": [], "usage": _usage_of(last)}


def _handoff(body: dict[str, Any]) -> dict[str, Any] | None:
    params = body.get("kv_transfer_params")
    if params is not None and not isinstance(params, dict):
        raise OpenAIError("kv_transfer_params must be an object", param="kv_transfer_params")
    return params


async def prefill_response(
    engine: AsyncEngine, body: dict[str, Any], *, chat: bool, connector: KVConnector
) -> dict[str, Any]:
    """A prefill worker's part of a request: compute the prompt and its first token, leave the KV
    with ``connector`` and return the ``kv_transfer_params`` a decode worker continues from."""
    req = _prepare(engine, body, chat=chat)
    if req.continuation:
        raise OpenAIError("a prefill worker does not take 'continue_token_ids'", param="continue_token_ids")
    with _errors(chat):
        ids = engine.engine.tokenize(req.prompt)
    # Only the first token is sampled here, with the request's own sampling settings.
    params = dataclasses.replace(req.params, n=1, max_tokens=1, logprobs=None)
    last = None
    gen = engine.generate(f"prefill-{uuid.uuid4().hex}", ids, params, req.lora, kv_save=connector)
    try:
        with _errors(chat):
            async for out in gen:
                last = out
    finally:
        await gen.aclose()
    assert last is not None and last.kv_transfer_params is not None
    return {"kv_transfer_params": {**last.kv_transfer_params, "first_token": last.token_ids[-1]}}


def _finish_reason(reason: str | None, parser: ToolCallParser) -> str | None:
    return "tool_calls" if reason == "stop" and parser.calls else reason


async def complete_response(
    engine: AsyncEngine,
    body: dict[str, Any],
    *,
    chat: bool,
    request_id: str | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Run a request to the end and return the OpenAI ``chat.completion`` / ``text_completion`` object."""
    req = _prepare(engine, body, chat=chat)
    params = req.params
    rid = request_id or new_request_id(chat)
    created = int(time.time())
    texts: dict[int, list[str]] = {i: [] for i in range(params.n)}
    lps: dict[int, list[TokenLogprob]] = {i: [] for i in range(params.n)}
    ids: dict[int, list[int]] = {i: [] for i in range(params.n)}
    last: dict[int, RequestOutput] = {}
    gen = engine.generate(
        rid, req.prompt, params, req.lora, kv_load=_handoff(body), continuation=req.continuation
    )
    try:
        with _errors(chat):
            async for out in gen:
                texts[out.index].append(out.text)
                ids[out.index].extend(out.token_ids)
                lps[out.index].extend(out.logprobs or ())
                last[out.index] = out
    finally:
        await gen.aclose()
    tok = engine.engine.tokenizer
    want_logprobs = params.logprobs is not None
    choices = []
    for i in range(params.n):
        content: str | None = "".join(texts[i])
        choice: dict[str, Any] = {"index": i, "finish_reason": last[i].finish_reason}
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
            if req.tool_format is not None:
                parser = ToolCallParser(req.tool_format)
                head, _ = parser.feed(content or "")
                rest, _ = parser.finish()
                if parser.calls:
                    message["content"] = (head + rest) or None
                    message["tool_calls"] = parser.calls
                    choice["finish_reason"] = _finish_reason(last[i].finish_reason, parser)
            choice["message"] = message
            choice["logprobs"] = chat_logprobs(tok, lps[i]) if want_logprobs else None
        else:
            choice["text"] = content
            choice["logprobs"] = completion_logprobs(tok, lps[i], 0) if want_logprobs else None
        if req.return_token_ids:
            choice["token_ids"] = ids[i]
        choices.append(choice)
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model_name or engine.model_name,
        "choices": choices,
        "usage": _usage_of(last),
    }


@contextlib.contextmanager
def _errors(chat: bool) -> Iterator[None]:
    try:
        yield
    except RequestError as e:
        code = "context_length_exceeded" if isinstance(e, ContextLengthError) else None
        raise OpenAIError(str(e), param="messages" if chat else "prompt", code=code) from None
    except ValueError as e:  # e.g. a chat template that rejects the conversation
        raise OpenAIError(str(e)) from None
