"""The Anthropic and Gemini adapters read their upstream's SSE stream event by event whatever its framing
(LF, CRLF or CR line ends, ``field:value`` with or without the space): the client gets the first text while
the upstream still holds the rest, and the ledger has the usage the upstream reported."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.auth import hash_key
from tests.conftest import KEY
from tests.fakes.providers import Fakes, deployment
from tests.harness import ServerThread
from tests.held_stream import LINE_ENDS, read_held, text_of
from tests.policies.conftest import ADMIN_KEY, sdk, settled, usage

# Events the fake sends before its first text: Anthropic's message_start, ping, content_block_start and the
# first delta; Gemini's first chunk carries text.
HOLD_AFTER = {"anthropic": 4, "gemini": 1}
MODELS = {"anthropic": "claude-3-5-sonnet-20241022", "gemini": "gemini-2.0-flash"}


def _config(provider: str, fakes: Fakes) -> str:
    return f"""
admin:
  keys: ["{hash_key(ADMIN_KEY)}"]
models:
  - name: {provider}
    deployments:
      - {deployment(provider, fakes, MODELS[provider])}
tenants:
  - name: acme
    keys: ["{hash_key(KEY)}"]
"""


@pytest.mark.parametrize("data_space", [True, False], ids=["data-space", "data-nospace"])
@pytest.mark.parametrize("ending", list(LINE_ENDS))
@pytest.mark.parametrize("provider", list(HOLD_AFTER))
def test_adapter_reads_its_stream_in_any_framing(
    provider: str, ending: str, data_space: bool, fakes: Fakes, start_gateway: Callable[[str], ServerThread]
) -> None:
    state = fakes[provider].state
    state.line_end, state.data_space, state.hold_after = LINE_ENDS[ending], data_space, HOLD_AFTER[provider]
    server = start_gateway(_config(provider, fakes))
    with sdk(server, timeout=10) as client:
        chunks = read_held(
            client.chat.completions.create(
                model=provider, stream=True, messages=[{"role": "user", "content": "hello there"}]
            ),
            state,
        )
    assert text_of(chunks) == "Echo: hello there"
    assert chunks[-1].choices[0].finish_reason == "stop"
    settled(server)
    [record] = usage(server, tenant="acme", group_by="request").json()["data"]
    assert state.usage_sent is not None and state.usage_sent["completion_tokens"] == 3
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        state.usage_sent["prompt_tokens"],
        state.usage_sent["completion_tokens"],
    )
    assert record["state"] == "settled"
