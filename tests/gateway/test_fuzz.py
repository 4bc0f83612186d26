"""No input crashes a worker: random JSON gets a clean answer and the gateway keeps serving."""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import KEY
from tests.openapi import validate

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(
    [
        "model",
        "messages",
        "stream",
        "n",
        "temperature",
        "max_tokens",
        "stop",
        "tools",
        "stream_options",
        "prompt",
        "input",
        "top_p",
        "logprobs",
    ]
)
bodies = st.one_of(
    json_values,
    st.dictionaries(fields, json_values, max_size=6),
    st.fixed_dictionaries(
        {
            "model": st.sampled_from(["chat", "embed", "nope"]),
            "messages": st.lists(
                st.dictionaries(st.sampled_from(["role", "content", "name"]), json_values, max_size=3),
                max_size=3,
            ),
        },
        optional={"stream": json_values, "n": json_values},
    ),
)


def test_random_bodies_get_clean_answers(gateway):
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=20) as http:

        @settings(
            max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
        )
        @given(
            path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]), body=bodies
        )
        def check(path, body):
            response = http.post(path, content=json.dumps(body))
            assert response.status_code in (200, 400, 404), response.text
            if response.status_code != 200:
                validate("ErrorResponse", response.json())

        check()
        assert http.get("/healthz").status_code == 200
