"""HTTPS on the listener (``server.tls``) and client certificates standing for tenants (mTLS), with
certificates made in the test."""

from __future__ import annotations

import ssl

import httpx
import openai
import pytest

from tests.conftest import KEY, config_text
from tests.security.certs import CA
from tests.security.serve import serving


def _tls_config(upstream_url: str, ca: CA, client_cert: str, tenant_certs: str) -> str:
    server = ca.issue("gateway", server=True)
    text = config_text(
        upstream_url,
        server=f"""  tls:
    cert: {server.cert}
    key: {server.key}
    client_ca: {ca.pair.cert}
    client_cert: {client_cert}""",
    )
    return text.replace(
        '    models: ["chat", "embed"]\n',
        f'    models: ["chat", "embed"]\n    client_certs: {tenant_certs}\n',
    )


def _context(ca: CA, cert=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.pair.cert))
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context


def test_https_and_client_certificates_as_tenants(tmp_path, upstream):
    ca = CA(tmp_path)
    service = ca.issue("acme-service")
    pinned = ca.issue("pinned-service")
    unknown = ca.issue("stranger")
    (tmp_path / "rogue").mkdir()
    rogue_ca = CA(tmp_path / "rogue", "rogue-ca")
    rogue = rogue_ca.issue("acme-service")  # the right name, signed by the wrong CA
    config = _tls_config(upstream[0].url, ca, "optional", f'["CN=acme-service", "{pinned.fingerprint}"]')
    with serving(tmp_path, config, scheme="https", verify=_context(ca)) as (url, _):
        # TLS with a key: any client that trusts the CA
        with openai.OpenAI(
            base_url=url + "/v1",
            api_key=KEY,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(verify=_context(ca)),
        ) as client:
            assert client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        # a certificate instead of a key: its tenant's models (acme may not use `private`)
        for cert in (service, pinned):
            with httpx.Client(verify=_context(ca, cert), timeout=10) as client:
                models = client.get(url + "/v1/models")
                assert models.status_code == 200, models.text
                assert sorted(m["id"] for m in models.json()["data"]) == ["chat", "embed"]
        with httpx.Client(verify=_context(ca, unknown), timeout=10) as client:
            assert client.get(url + "/v1/models").status_code == 401  # verified, but nobody's certificate
        with httpx.Client(verify=_context(ca), timeout=10) as client:
            assert client.get(url + "/v1/models").status_code == 401  # no key, no certificate
        with (
            httpx.Client(verify=_context(ca, rogue), timeout=10) as client,
            pytest.raises(httpx.TransportError),
        ):
            client.get(url + "/v1/models")  # a certificate no trusted CA signed
        with pytest.raises(httpx.TransportError):
            httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5)  # no plain HTTP on the port
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/healthz", timeout=5)  # a client that does not trust the CA


def test_required_client_certificates_refuse_a_client_without_one(tmp_path, upstream):
    ca = CA(tmp_path)
    service = ca.issue("acme-service")
    config = _tls_config(upstream[0].url, ca, "required", '["CN=acme-service"]')
    with serving(tmp_path, config, scheme="https", verify=_context(ca, service)) as (url, _):
        with httpx.Client(verify=_context(ca), timeout=10) as client, pytest.raises(httpx.TransportError):
            client.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        with httpx.Client(verify=_context(ca, service), timeout=10) as client:
            assert (
                client.post(
                    url + "/v1/chat/completions",
                    json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
                ).status_code
                == 200
            )
