"""The real listener (``python -m gateway serve``) against a hostile client: idle, slow and malformed
connections are closed or refused, and a normal request is still served."""

from __future__ import annotations

import socket
import time

import httpx
import openai

from tests.conftest import KEY, config_text
from tests.harness import free_port
from tests.security.serve import ADMIN, ADMIN_KEY, log_lines, poll, serving

LIMITS = (
    """  limits: {header_timeout_s: 1, body_timeout_s: 1, max_connections: 400, max_connections_per_ip: 40}"""
)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _closed(sock: socket.socket, within: float = 10.0) -> bool:
    """True once the server has closed ``sock`` (recv returns b"" or fails), polled up to ``within`` s."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, TimeoutError, OSError) as exc:
        return not isinstance(exc, TimeoutError)
    return True


def _chat_from(url: str, local_address: str) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=local_address), timeout=10) as client:
        return client.post(
            url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
        )


def test_300_idle_connections_neither_exhaust_descriptors_nor_stay(tmp_path, upstream):
    with serving(tmp_path, config_text(upstream[0].url, server=LIMITS)) as (url, _):
        idle = [socket.create_connection(("127.0.0.1", _port(url)), timeout=10) for _ in range(300)]
        try:
            # Over the per-IP cap: closed at once. Another address is still served meanwhile.
            assert poll(lambda: sum(_closed(s, 0.01) for s in idle[40:60]) == 20, timeout=10)
            assert _chat_from(url, "127.0.0.2").status_code == 200
            started = time.monotonic()
            assert all(_closed(s) for s in idle[:40])  # the admitted ones: closed by the header timeout
            assert time.monotonic() - started < 8
            assert _chat_from(url, "127.0.0.1").status_code == 200
        finally:
            for sock in idle:
                sock.close()


def test_partial_headers_and_partial_bodies_are_cut_off(tmp_path, upstream):
    with serving(tmp_path, config_text(upstream[0].url, server=LIMITS)) as (url, _):
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as head:
            head.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
            assert _closed(head)
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as body:
            body.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + KEY.encode()
                + b'\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"model": '
            )
            answer = b""
            body.settimeout(10)
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                piece = body.recv(65536)
                if not piece:
                    break
                answer += piece
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b'"code":"request_timeout"' in answer


def test_a_malformed_header_gets_an_openai_error_and_the_key_is_never_logged(tmp_path, upstream):
    with serving(tmp_path, config_text(upstream[0].url)) as (url, stdout):
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + KEY.encode()
                + b"\x01\r\nContent-Length: 2\r\n\r\n{}"
            )
            answer = b""
            while piece := sock.recv(65536):
                answer += piece
        assert answer.split(b" ", 2)[1] == b"400", answer
        assert b'"code":"malformed_request"' in answer and KEY.encode() not in answer
        assert b"aiohttp" not in answer
        assert poll(lambda: any(line["event"] == "malformed request" for line in log_lines(stdout)))
    assert KEY not in stdout.read_text()


def test_metrics_and_admin_on_private_listeners(tmp_path, upstream):
    admin_port, metrics_port = free_port(), free_port()
    admin = ADMIN
    server = f"  admin_listen: 127.0.0.1:{admin_port}\n"
    with serving(tmp_path, config_text(upstream[0].url, server=server) + admin) as (url, _):
        private = f"http://127.0.0.1:{admin_port}"
        bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert httpx.get(url + "/metrics").status_code == 404
        assert httpx.get(url + "/admin/deployments", headers=bearer).status_code == 404
        assert httpx.get(private + "/metrics").status_code == 200
        assert httpx.get(private + "/admin/deployments", headers=bearer).status_code == 200
        assert (
            httpx.get(private + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
        )
        with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0) as client:
            assert client.models.list().data
    server = f"  metrics_listen: 127.0.0.1:{metrics_port}\n"
    with serving(tmp_path, config_text(upstream[0].url, server=server) + admin) as (url, _):
        assert httpx.get(url + "/metrics").status_code == 404
        assert "gateway_requests_total" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert (
            httpx.get(
                url + "/admin/deployments", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            ).status_code
            == 200
        )
