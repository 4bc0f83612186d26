"""Provider deployments in config.yaml: defaults and errors that name the field."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config


def _config(deployment: str) -> str:
    return f"""
models:
  - name: m
    deployments:
      - {deployment}
"""


@pytest.mark.parametrize(
    ("deployment", "base"),
    [
        ("{provider: anthropic, model: claude-3-5-haiku}", "https://api.anthropic.com/v1"),
        ("{provider: gemini, model: gemini-2.0-flash}", "https://generativelanguage.googleapis.com/v1beta"),
    ],
)
def test_native_providers_have_default_bases(deployment, base):
    loaded = parse_config(_config(deployment), env={})
    assert loaded.config.models[0].deployments[0].base_url == base


def test_bedrock_needs_no_base_and_takes_aws_settings():
    deployment = parse_config(
        _config(
            "{provider: bedrock, model: 'amazon.nova-lite-v1:0', aws_region: eu-west-1, "
            "aws_access_key_id: AKID, aws_secret_access_key: s}"
        ),
        env={},
    )
    settings = deployment.config.models[0].deployments[0]
    assert settings.aws_region == "eu-west-1" and settings.default_max_tokens == 4096


@pytest.mark.parametrize(
    ("deployment", "problem"),
    [
        ("{provider: bedrock, model: x, aws_access_key_id: AKID}", "aws_secret_access_key go together"),
        (
            "{provider: anthropic, model: x, default_max_tokens: 0}",
            "models[0].deployments[0].default_max_tokens",
        ),
        ("{provider: claude, model: x}", "models[0].deployments[0].provider"),
    ],
)
def test_bad_provider_settings_name_the_field(deployment, problem):
    with pytest.raises(ConfigError) as failed:
        parse_config(_config(deployment), env={})
    assert problem in str(failed.value)
