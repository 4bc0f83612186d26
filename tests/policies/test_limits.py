"""Rate limits end to end through the openai SDK, on the memory store and on a real Redis."""

from __future__ import annotations

import time

import openai
import pytest

from tests.policies.conftest import OTHER_KEY, SECOND_KEY, chat, key_id, sdk, settled


def test_request_bucket_admits_its_burst_then_refuses_with_openai_429(policy_gateway):
    server = policy_gateway(acme="    limits: {rpm: 3}")
    with sdk(server) as client:
        remaining = []
        for _ in range(3):
            raw = chat(client)
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
            assert raw.headers["x-ratelimit-reset-requests"].endswith(("ms", "s"))
        assert remaining == [2, 1, 0]
        with pytest.raises(openai.RateLimitError) as refused:
            chat(client)
    error = refused.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert "Rate limit reached for tenant (acme) on requests per min (RPM): Limit 3" in error.message
    retry_after = int(error.response.headers["Retry-After"])
    assert 1 <= retry_after <= 20  # 3 per minute: one request refills in 20 s
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    # another tenant has its own buckets
    with sdk(server, OTHER_KEY) as other:
        assert chat(other).parse().choices[0].message.content


def test_a_refused_request_waits_in_the_queue_until_the_bucket_refills(policy_gateway):
    server = policy_gateway(acme="    limits: {rpm: 120, rpm_burst: 1}\n    max_wait_s: 3")
    with sdk(server) as client:
        chat(client)
        started = time.monotonic()
        raw = chat(client)  # the bucket refills one request each 0.5 s
        waited = time.monotonic() - started
    assert raw.parse().choices[0].message.content
    assert 0.3 < waited < 2.0


def test_a_wait_longer_than_max_wait_is_refused_at_once(policy_gateway):
    server = policy_gateway(acme="    limits: {rpm: 6, rpm_burst: 1}\n    max_wait_s: 1")
    with sdk(server) as client:
        chat(client)
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as refused:
            chat(client)  # refill in 10 s > max_wait 1 s: no point waiting
    assert time.monotonic() - started < 0.5
    assert int(refused.value.response.headers["Retry-After"]) == 10


def test_key_and_model_buckets_apply_beside_the_tenant_bucket(policy_gateway):
    server = policy_gateway(
        acme=f"""    key_limits: {{rpm: 5}}
    per_key:
      {key_id(SECOND_KEY)}: {{limits: {{rpm: 1}}}}
    model_limits:
      slow: {{rpm: 1}}"""
    )
    with sdk(server, SECOND_KEY) as second:
        chat(second)
        with pytest.raises(openai.RateLimitError, match=r"for key \(acme\)"):
            chat(second)
    with sdk(server) as first:  # the other key of the same tenant has its own (default) key bucket
        for _ in range(2):
            chat(first)
        chat(first, model="slow", max_tokens=3)
        with pytest.raises(openai.RateLimitError, match=r"for model slow \(acme\)"):
            chat(first, model="slow", max_tokens=3)


def test_token_bucket_reserves_the_estimate_and_refunds_the_difference(policy_gateway, upstream):
    server = policy_gateway(acme="    limits: {tpm: 6000}")
    with sdk(server) as client:
        first = chat(client, "one two three", max_tokens=1000)
        before = int(first.headers["x-ratelimit-remaining-tokens"])
        usage = first.parse().usage
        assert usage is not None
        reserved = 6000 - before
        assert reserved >= 1000  # prompt estimate + max_tokens
        second = chat(client, "one two three", max_tokens=1000)
        after = int(second.headers["x-ratelimit-remaining-tokens"])
    # the first request's unused reservation came back: the second started from 6000 - actual usage
    refund = reserved - usage.total_tokens
    assert refund > 900
    assert after >= before - reserved + refund - 2
    assert after <= before - reserved + refund + 2 + 200  # plus what refilled meanwhile (100/s)


def test_a_request_larger_than_the_token_bucket_is_refused_as_too_large(policy_gateway):
    server = policy_gateway(acme="    limits: {tpm: 500}\n    max_wait_s: 5")
    with sdk(server) as client:
        with pytest.raises(openai.RateLimitError) as refused:
            chat(client, max_tokens=600)
        assert chat(client).parse().choices  # no max_tokens: the default reservation is capped at capacity
    assert refused.value.type == "tokens"
    assert "Request too large for tenant (acme) on tokens per min (TPM): Limit 500" in refused.value.message


def test_concurrency_limit_counts_requests_in_flight(policy_gateway):
    import threading

    server = policy_gateway(acme="    limits: {max_concurrency: 1}")
    with sdk(server) as client:
        stream = client.chat.completions.create(
            model="slow", stream=True, messages=[{"role": "user", "content": "x"}]
        )
        next(iter(stream))
        with pytest.raises(openai.RateLimitError, match="in flight"):
            chat(client)
        done = threading.Event()

        def finish() -> None:
            for _ in stream:
                pass
            done.set()

        threading.Thread(target=finish).start()
        assert done.wait(10)
    settled(server)  # the slot is freed by the settlement just after the stream's end
    with sdk(server) as client:
        assert chat(client).parse().choices


def test_a_queued_request_gets_the_slot_when_the_running_one_ends(policy_gateway):
    server = policy_gateway(acme="    limits: {max_concurrency: 1}\n    max_wait_s: 5")
    with sdk(server) as client:
        stream = client.chat.completions.create(
            model="slow", stream=True, messages=[{"role": "user", "content": "x"}]
        )
        first = iter(stream)
        next(first)
        import threading

        reader = threading.Thread(target=lambda: list(first))
        reader.start()
        started = time.monotonic()
        assert chat(client).parse().choices  # waited for the stream (about 2 s) instead of failing
        assert time.monotonic() - started > 1.0
        # The stream's end freed the slot; its last bytes are read before the client closes under the reader.
        reader.join(30)
        assert not reader.is_alive()


def test_deployment_max_concurrency_holds_across_tenants(upstream, start_gateway, stores_yaml):
    import threading

    from tests.policies.conftest import policy_config

    text = policy_config(upstream[0].url, stores=stores_yaml).replace(
        "model: slow-stream\n",
        "model: slow-stream\n        max_concurrency: 1\n        timeouts: {connect_s: 0.5}\n",
    )
    server = start_gateway(text)
    with sdk(server) as client, sdk(server, OTHER_KEY) as other:
        stream = client.chat.completions.create(
            model="slow", stream=True, messages=[{"role": "user", "content": "x"}]
        )
        chunks = iter(stream)
        next(chunks)
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as busy:
            chat(other, model="slow", max_tokens=5)  # another tenant, same deployment: waits 0.5 s, then 429
        assert time.monotonic() - started >= 0.45
        assert busy.value.code == "deployment_busy"
        assert chat(other).parse().choices  # other deployments are not limited
        finisher = threading.Thread(target=lambda: list(chunks))
        finisher.start()
        finisher.join(10)
        assert chat(other, model="slow", max_tokens=5).parse() is not None  # the slot came back
