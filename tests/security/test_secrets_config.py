"""The passwords of the store URLs the config holds are secrets: no error, log line or stream carries them."""

from __future__ import annotations

from errors import secrets
from gateway.config import parse_config
from gateway.security.secrets import register


def test_the_redis_and_postgres_passwords_are_registered_secrets() -> None:
    register(
        parse_config(
            "stores: {redis_url: 'redis://:r3dis-Pa55word-xyz@127.0.0.1:6390/0'}\n"
            "request_log: {enabled: true, store: postgres,"
            " dsn: 'postgresql://gw:pg-Pa55word-xyz@127.0.0.1:5432/gw'}\n"
        ).config
    )
    said = "connect failed: postgresql://gw:pg-Pa55word-xyz@127.0.0.1 and r3dis-Pa55word-xyz"
    scrubbed = secrets.scrub(said)
    assert "pg-Pa55word-xyz" not in scrubbed and "r3dis-Pa55word-xyz" not in scrubbed
    assert "connect failed" in scrubbed
