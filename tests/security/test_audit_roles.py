"""The audit log (every admin request, allowed or denied, key changes and reloads; hash-chained; verified by
``python -m gateway audit verify``; exported by the admin API), admin roles, and tenant keys limited to some
endpoints and expiring."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import openai
import pytest

from gateway.auth import hash_key, new_key
from tests.conftest import KEY, OTHER_KEY, config_text
from tests.security.serve import ADMIN_KEY, ROOT, error_of, log_lines, poll, serving

VIEWER, BILLING = new_key(), new_key()


def _config(upstream_url: str, audit_path, extra_tenant: str = "") -> str:
    text = config_text(upstream_url).replace(
        '    models: ["chat", "embed"]\n', '    models: ["chat", "embed"]\n' + extra_tenant, 1
    )
    return (
        text
        + f"""
admin:
  keys: ["{hash_key(ADMIN_KEY)}", "{hash_key(VIEWER)}", "{hash_key(BILLING)}"]
  roles: {{"{hash_key(VIEWER)}": viewer, "{hash_key(BILLING)}": billing}}
audit: {{path: {audit_path}}}
"""
    )


def _verify(path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", "--path", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_roles_and_the_audit_trail_of_admin_requests(start_gateway, upstream, tmp_path):
    path = tmp_path / "audit.jsonl"
    gateway = start_gateway(_config(upstream[0].url, path))
    url = gateway.url
    assert httpx.get(url + "/admin/deployments", headers=_as(VIEWER)).status_code == 200
    denied = httpx.delete(url + "/admin/cache/acme", headers=_as(VIEWER))
    assert denied.status_code == 403 and "cache.purge" in denied.json()["error"]["message"]
    assert httpx.get(url + "/admin/usage", headers=_as(BILLING)).status_code == 200
    assert httpx.get(url + "/admin/deployments", headers=_as(BILLING)).status_code == 403
    assert httpx.get(url + "/admin/audit", headers=_as(VIEWER)).status_code == 403
    assert httpx.get(url + "/admin/deployments", headers=_as(KEY)).status_code == 403  # a tenant key
    assert httpx.get(url + "/admin/deployments").status_code == 401  # no key
    assert httpx.delete(url + "/admin/cache/acme", headers=_as(ADMIN_KEY)).status_code == 200
    exported = httpx.get(url + "/admin/audit", headers=_as(ADMIN_KEY)).json()
    trail = [(r["action"], r["outcome"], r["role"]) for r in exported["data"]]
    assert trail == [
        ("GET /admin/deployments", "ok", "viewer"),
        ("DELETE /admin/cache/acme", "denied", "viewer"),
        ("GET /admin/usage", "ok", "billing"),
        ("GET /admin/deployments", "denied", "billing"),
        ("GET /admin/audit", "denied", "viewer"),
        ("GET /admin/deployments", "denied", "tenant-or-none"),
        ("GET /admin/deployments", "denied", "tenant-or-none"),
        ("DELETE /admin/cache/acme", "ok", "admin"),
    ]
    assert exported["chain"]["ok"] and exported["chain"]["records"] == 8
    assert all(KEY not in json.dumps(r) and ADMIN_KEY not in json.dumps(r) for r in exported["data"])
    assert _verify(path).returncode == 0

    # tampering: an edited record, then a removed one, are found
    lines = path.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["outcome"] = "ok"
    path.write_text("\n".join([lines[0], json.dumps(edited), *lines[2:]]) + "\n")
    broken = _verify(path)
    assert broken.returncode == 1 and "line 2: hash does not match" in broken.stderr
    path.write_text("\n".join([lines[0], *lines[2:]]) + "\n")
    assert "line 2: prev does not match" in _verify(path).stderr


def test_reloads_and_key_changes_are_audited(tmp_path, upstream):
    path = tmp_path / "audit.jsonl"
    with serving(tmp_path, _config(upstream[0].url, path)) as (url, _):
        config = tmp_path / "config.yaml"
        added = new_key()
        config.write_text(
            config.read_text().replace(
                f'keys: ["{hash_key(KEY)}"]', f'keys: ["{hash_key(KEY)}", "{hash_key(added)}"]'
            )
        )
        pid = next(
            line["pid"] for line in log_lines(tmp_path / "stdout.log") if line.get("event") == "listening"
        )
        os.kill(pid, signal.SIGHUP)
        assert poll(lambda: path.exists() and "key.added" in path.read_text(), timeout=20)
        with openai.OpenAI(base_url=url + "/v1", api_key=added, max_retries=0) as client:
            assert client.models.list().data
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["action"] for r in records] == ["config.reloaded", "key.added"]
    assert records[1]["owner"] == "tenant:acme" and records[1]["key_id"] == hash_key(added)[7:19]
    assert _verify(path).returncode == 0


def test_tenant_keys_limited_to_endpoints_and_expiring(start_gateway, upstream, tmp_path):
    embed_only, old = new_key(), new_key()
    scopes = f"""    key_scopes:
      {hash_key(embed_only)[7:19]}: {{endpoints: [embeddings]}}
      {hash_key(old)[7:19]}: {{expires: "2020-01-01T00:00:00Z"}}  # date-ok: an expiry long past
"""
    text = _config(upstream[0].url, tmp_path / "audit.jsonl", scopes).replace(
        f'keys: ["{hash_key(KEY)}"]',
        f'keys: ["{hash_key(KEY)}", "{hash_key(embed_only)}", "{hash_key(old)}"]',
    )
    gateway = start_gateway(text)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=embed_only, max_retries=0) as client:
        assert client.embeddings.create(model="embed", input="x").data
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert error_of(refused)["code"] == "endpoint_not_allowed"
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=old, max_retries=0) as client,
        pytest.raises(openai.AuthenticationError) as expired,
    ):
        client.embeddings.create(model="embed", input="x")
    assert error_of(expired)["code"] == "key_expired"
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0) as client:
        assert client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
