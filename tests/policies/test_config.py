"""The policy fields of config.yaml: validated at load, errors naming the exact field."""

from __future__ import annotations

import pytest

from gateway.auth import hash_key
from gateway.config import ConfigError, parse_config
from tests.policies.conftest import SECOND_KEY, key_id, policy_config


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as error:
        parse_config(text)
    return error.value.problems


def test_defaults_apply_and_a_tenant_field_replaces_its_default():
    text = policy_config(
        "http://127.0.0.1:1",
        policies="  limits: {rpm: 10}\n  budget: {daily_usd: 5}",
        acme="    limits: {tpm: 1000}",
    )
    config = parse_config(text).config
    assert config.policies.limits.rpm == 10 and config.policies.budget.daily_usd == 5
    acme = config.tenants[0]
    assert acme.limits is not None and acme.limits.tpm == 1000 and acme.limits.rpm is None
    assert config.stores.redis_url is None and config.stores.on_redis_error == "fail_open"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("    limits: {rpm: 0}", "tenants[0].limits.rpm: Input should be greater than or equal to 1"),
        ("    limits: {rqm: 3}", "tenants[0].limits.rqm: unknown field"),
        ("    budget: {daily_usd: -1}", "tenants[0].budget.daily_usd: Input should be greater than 0"),
        ("    priority: urgent", "tenants[0].priority: Input should be 'interactive' or 'batch'"),
        ("    model_limits: {nope: {rpm: 1}}", "tenants[0].model_limits.nope: no model alias named 'nope'"),
        (
            "    per_key: {0123456789ab: {priority: batch}}",
            "tenants[0].per_key.0123456789ab: not the id of one of this tenant's keys",
        ),
        ("    per_key: {zz: {priority: batch}}", "tenants[0].per_key: 'zz' is not a key id"),
        (
            "    per_key: {012345670123: {priority: batch}}",
            "tenants[0].per_key: 1402433619 is not a key id: YAML read it as a number",
        ),
    ],
)
def test_bad_tenant_policy_fields_are_named(section, expected):
    found = problems(policy_config("http://127.0.0.1:1", acme=section))
    assert any(p.startswith(expected) for p in found), found


def test_bad_stores_and_prices_are_named():
    found = problems(
        policy_config("http://127.0.0.1:1", stores="  redis_url: http://x\n  on_redis_error: maybe")
    )
    assert any(p.startswith("stores.redis_url: must be a redis://") for p in found), found
    assert any(p.startswith("stores.on_redis_error:") for p in found), found
    found = problems(policy_config("http://127.0.0.1:1", price="{input: -1, output: 1}"))
    assert any(p.startswith("models[0].deployments[0].price.input:") for p in found), found


def test_a_key_of_the_tenant_may_have_its_own_settings():
    text = policy_config(
        "http://127.0.0.1:1", acme=f"    per_key: {{{key_id(SECOND_KEY)}: {{priority: batch}}}}"
    )
    assert parse_config(text).config.tenants[0].per_key[key_id(SECOND_KEY)].priority == "batch"


def test_a_key_id_yaml_reads_as_a_number_is_still_that_key_id():
    """A key id is 12 hex digits; one of 12 decimal digits, unquoted, is a number to YAML (CI once drew such a
    key, and every per_key test failed)."""
    numeric = next(
        key
        for key in (f"gw-numeric-{i}" for i in range(100_000))
        if key_id(key).isdigit() and key_id(key)[0] != "0"
    )
    text = policy_config(
        "http://127.0.0.1:1", acme=f"    per_key: {{{key_id(numeric)}: {{priority: batch}}}}"
    ).replace(hash_key(SECOND_KEY), hash_key(numeric))
    assert parse_config(text).config.tenants[0].per_key[key_id(numeric)].priority == "batch"
