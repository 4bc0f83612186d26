"""Network isolation through real HTTP: IP allowlists per tenant and for admin keys (with X-Forwarded-For
believed only from trusted proxies), /metrics access, and the upstream egress proxy."""

from __future__ import annotations

import base64

import httpx
import pytest
from aiohttp import ClientSession, web

from tests.conftest import KEY, OTHER_KEY, UPSTREAM_KEY, config_text
from tests.harness import ServerThread
from tests.security.serve import ADMIN, ADMIN_KEY

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def _client(local_address: str = "127.0.0.1") -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(local_address=local_address), timeout=10, trust_env=False
    )


def _chat(url: str, key: str, *, source: str = "127.0.0.1", forwarded: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    with _client(source) as client:
        return client.post(url + "/v1/chat/completions", json=CHAT, headers=headers)


def _allowlisted(upstream_url: str, server: str = "") -> str:
    text = config_text(upstream_url, server=server)
    # globex may call only from 127.0.0.2 (or a client a trusted proxy names as 10.1.2.3)
    return text.replace(
        '    models: "*"\n', '    models: "*"\n    allowed_ips: ["127.0.0.2/32", "10.1.2.0/24"]\n'
    )


def test_a_tenant_key_is_refused_outside_its_allowlist(start_gateway, upstream):
    gateway = start_gateway(_allowlisted(upstream[0].url))
    refused = _chat(gateway.url, OTHER_KEY, source="127.0.0.1")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "ip_not_allowed"
    assert _chat(gateway.url, OTHER_KEY, source="127.0.0.2").status_code == 200
    assert _chat(gateway.url, KEY, source="127.0.0.1").status_code == 200  # acme has no allowlist
    # Without trusted proxies, X-Forwarded-For is the client's to forge: ignored.
    assert _chat(gateway.url, OTHER_KEY, source="127.0.0.1", forwarded="127.0.0.2").status_code == 403


def test_x_forwarded_for_is_believed_only_from_trusted_proxies(start_gateway, upstream):
    gateway = start_gateway(_allowlisted(upstream[0].url, server='  trusted_proxies: ["127.0.0.1/32"]'))
    assert _chat(gateway.url, OTHER_KEY, source="127.0.0.1", forwarded="10.1.2.3").status_code == 200
    # the left-most entry is the client's to write; the proxy appended the real one on the right
    forged = _chat(gateway.url, OTHER_KEY, source="127.0.0.1", forwarded="10.1.2.3, 198.51.100.7")
    assert forged.status_code == 403
    untrusted = _chat(gateway.url, OTHER_KEY, source="127.0.0.3", forwarded="10.1.2.3")
    assert untrusted.status_code == 403


def test_admin_keys_only_from_the_admin_allowlist(start_gateway, upstream):
    text = config_text(upstream[0].url) + ADMIN + '  allowed_ips: ["127.0.0.2"]\n'
    gateway = start_gateway(text)
    bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with _client("127.0.0.1") as outside, _client("127.0.0.2") as inside:
        refused = outside.get(gateway.url + "/admin/deployments", headers=bearer)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "ip_not_allowed"
        assert inside.get(gateway.url + "/admin/deployments", headers=bearer).status_code == 200


@pytest.mark.parametrize("access", ["admin", "loopback"])
def test_metrics_need_an_admin_key_unless_allowed(start_gateway, upstream, access):
    text = config_text(
        upstream[0].url, server=f'  metrics_access: {access}\n  trusted_proxies: ["127.0.0.1/32"]'
    )
    gateway = start_gateway(text + ADMIN)
    with _client() as client:
        remote = {"X-Forwarded-For": "203.0.113.9"}  # a client on the internet, through the trusted proxy
        anonymous = client.get(gateway.url + "/metrics", headers=remote)
        assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "invalid_request_error"
        assert "acme" not in anonymous.text
        tenant = client.get(gateway.url + "/metrics", headers={**remote, "Authorization": f"Bearer {KEY}"})
        assert tenant.status_code == 403
        admin = client.get(
            gateway.url + "/metrics", headers={**remote, "Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert admin.status_code == 200 and "gateway_requests_total" in admin.text
        local = client.get(gateway.url + "/metrics")
        assert local.status_code == (200 if access == "loopback" else 401)


class _Proxy:
    """A forward HTTP proxy on loopback that records each request's target and relays it."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.credentials: list[str | None] = []  # each request's Proxy-Authorization
        self.server = ServerThread(self._app).start()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._relay)
        return app

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(str(request.url))
        self.credentials.append(request.headers.get("Proxy-Authorization"))
        async with (
            ClientSession() as session,
            session.request(
                request.method,
                request.url,
                # hop-by-hop: the proxy's own credentials stop here
                headers={
                    k: v for k, v in request.headers.items() if k not in ("Host", "Proxy-Authorization")
                },
                data=await request.read(),
            ) as answer,
        ):
            return web.Response(
                body=await answer.read(), status=answer.status, content_type=answer.content_type
            )


@pytest.fixture
def proxy():
    p = _Proxy()
    yield p
    p.server.stop()


def test_upstream_calls_go_through_http_proxy_from_the_environment(
    start_gateway, upstream, proxy, monkeypatch
):
    monkeypatch.setenv("HTTP_PROXY", proxy.server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    gateway = start_gateway(config_text(upstream[0].url))
    assert _chat(gateway.url, KEY).status_code == 200
    assert proxy.seen and proxy.seen[-1].endswith("/v1/chat/completions")
    assert upstream[1].requests[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_no_proxy_and_netrc_from_the_environment(start_gateway, upstream, proxy, monkeypatch, tmp_path):
    """NO_PROXY naming the upstream's host sends it direct; a ``.netrc`` entry for the upstream's host is not
    used upstream (aiohttp's trust_env added it to each request, where it clashed with the upstream key: every
    call failed with 500)."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login operator password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTP_PROXY", proxy.server.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = start_gateway(config_text(upstream[0].url))
    assert _chat(direct.url, KEY).status_code == 200
    assert proxy.seen == []
    monkeypatch.delenv("NO_PROXY")
    proxied = start_gateway(config_text(upstream[0].url))
    assert _chat(proxied.url, KEY).status_code == 200
    assert len(proxy.seen) == 1
    # .netrc's entry for the proxy's host (loopback here, as the upstream's) is the proxy's credential, as curl
    # and aiohttp read it, and goes to the proxy alone
    assert proxy.credentials == ["Basic " + base64.b64encode(b"operator:netrc-secret").decode()]
    for request in upstream[1].requests:
        assert request.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_a_deployment_proxy_overrides_the_environment(start_gateway, upstream, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there: using it would fail
    extra = f"""  - name: proxied
    deployments:
      - {{provider: openai-compatible, model: fake-model, api_base: "{upstream[0].url}/v1", api_key: {UPSTREAM_KEY},
          proxy: "{proxy.server.url}"}}
  - name: direct
    deployments:
      - {{provider: openai-compatible, model: fake-model, api_base: "{upstream[0].url}/v1", api_key: {UPSTREAM_KEY},
          proxy: none}}"""
    gateway = start_gateway(config_text(upstream[0].url, extra))
    assert _chat_model(gateway.url, "proxied").status_code == 200
    assert len(proxy.seen) == 1
    assert _chat_model(gateway.url, "direct").status_code == 200
    assert len(proxy.seen) == 1


def _chat_model(url: str, model: str) -> httpx.Response:
    with _client() as client:
        return client.post(
            url + "/v1/chat/completions",
            json={**CHAT, "model": model},
            headers={"Authorization": f"Bearer {OTHER_KEY}"},
        )
