"""Request and response bodies in the request log (``request_log.bodies``, ``tenants[].log_bodies``).

Opt-in: off unless ``request_log.bodies: true`` or a tenant's ``log_bodies: true`` (a tenant's ``false``
overrides the default). A middleware keeps the bytes of the request body aiohttp already read and of a
non-streamed answer, cut to a little over ``max_body_bytes``. A streamed answer's body is folded as it is
relayed into the object the same request without ``stream`` would have answered (gateway/streambody.py: a
``chat.completion``, a ``response``, a ``message``), its text kept up to the same cap; one that broke off is
what went out. Either way the request log's writer, off the event loop,
then masks personal data with the tenant's PII detector when the tenant has ``pii`` configured
(gateway/security/privacy.py's placeholders, ``[EMAIL_1]``), cuts the text to ``max_body_bytes`` and, when
``encryption`` is configured, seals it with the keyring (AES-256-GCM, bound to the request id and column, so a
body copied to another record does not open). A streamed answer's body is not kept (the request's is).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import streambody
from .config import GatewayConfig
from .keys import GATEWAY, RECORD
from .streambody import StreamBody

BODIES = web.RequestKey("request_log_bodies", tuple)  # (request bytes, response bytes), cut
_STREAMED = web.RequestKey("request_log_streamed_body", StreamBody)
# bytes kept past the cap until masking, so a value straddling the cut is still recognised and masked
_SLACK = 256
_SEALED = "gwenc1."


class BodyPolicy:
    """One config's rules for bodies: which tenants, their detectors, the cap and the keyring."""

    def __init__(self, config: GatewayConfig) -> None:
        from .security.pii import Detector

        self.config = config
        self.default = config.request_log.bodies
        self.max_bytes = config.request_log.max_body_bytes
        self.tenants = {t.name: t.log_bodies for t in config.tenants if t.log_bodies is not None}
        self.detectors = {
            t.name: Detector(t.pii.kinds, t.pii.rules, t.pii.words)
            for t in config.tenants
            if t.pii is not None
        }
        self.keyring: Any = None
        if config.encryption is not None:
            from .security.crypto import keyring

            self.keyring = keyring(config.encryption)

    @staticmethod
    def wanted(config: GatewayConfig) -> bool:
        """Whether any tenant's bodies are logged under this config."""
        return config.request_log.bodies or any(t.log_bodies for t in config.tenants)

    @classmethod
    def of(cls, config: GatewayConfig) -> BodyPolicy:
        return cls(config)

    def logs(self, tenant: str) -> bool:
        return self.tenants.get(tenant, self.default)

    def stored(
        self, tenant: str, request_id: str, bodies: tuple[bytes | None, bytes | None]
    ) -> tuple[Any, Any]:
        """The two bodies as the database keeps them: masked, cut, sealed (or None)."""
        return tuple(
            None if raw is None else self._store(tenant, request_id, column, raw)  # type: ignore[return-value]
            for column, raw in zip(("request_body", "response_body"), bodies, strict=True)
        )

    def _store(self, tenant: str, request_id: str, column: str, raw: bytes) -> str:
        text = raw.decode("utf-8", errors="replace")
        detector = self.detectors.get(tenant)
        if detector is not None:
            from .security.privacy import Masker

            text = Masker(detector).mask(text)
        encoded = text.encode()
        if len(encoded) > self.max_bytes:
            text = encoded[: self.max_bytes].decode("utf-8", errors="ignore") + " [cut]"
        if self.keyring is not None:
            return self.keyring.seal(text.encode(), _context(request_id, column)).decode()
        return text

    def shown(self, value: str | None, request_id: str, column: str) -> tuple[str | None, bool]:
        """A stored body for ``GET /admin/requests/{id}``: opened when sealed; ``(None, True)`` when it does not
        open (its key is no longer configured)."""
        if value is None or not value.startswith(_SEALED):
            return value, False
        opened = (
            None if self.keyring is None else self.keyring.open(value.encode(), _context(request_id, column))
        )
        return (None, True) if opened is None else (opened.decode(), False)

    def cut(self, raw: bytes) -> bytes:
        """What the request path keeps: the cap plus a little slack for masking."""
        return raw if len(raw) <= self.max_bytes + _SLACK else raw[: self.max_bytes + _SLACK]


# set by the middleware: the rules in force, so that a stream's relay knows whether to fold its body
_POLICY = web.RequestKey("request_log_body_policy", BodyPolicy)


def _context(request_id: str, column: str) -> bytes:
    return f"request-log/{request_id}/{column}".encode()


def middleware(paths: tuple[str, ...], log_key: Any) -> Any:
    """Keeps the bodies of API requests whose tenant logs them (installed only when some tenant does)."""

    @web.middleware
    async def keep_bodies(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith(paths):
            return await handler(request)
        log = request.app.get(log_key)
        if log is None:
            return await handler(request)
        request[_POLICY] = _policy(request, log)
        response = None
        try:
            response = await handler(request)
            return response
        finally:
            await _keep(request, response, request[_POLICY])

    return keep_bodies


def streamed(request: web.Request) -> StreamBody | None:
    """The fold of a streamed answer's body, when its tenant's bodies are logged: the relay feeds it each
    piece it wrote (one dict read when no tenant logs bodies)."""
    policy = request.get(_POLICY)
    if policy is None or not policy.logs(request[RECORD].tenant):
        return None
    body = request[_STREAMED] = streambody.of(request.path, policy.max_bytes + _SLACK)
    return body


def _policy(request: web.Request, log: Any) -> BodyPolicy:
    config = request.app[GATEWAY].loaded.config
    policy: BodyPolicy | None = log.bodies
    if policy is None or policy.config is not config:  # a reload: its tenants' settings from now on
        policy = log.bodies = BodyPolicy.of(config)
    return policy


async def _keep(request: web.Request, response: web.StreamResponse | None, policy: BodyPolicy) -> None:
    record = request[RECORD]
    if not policy.logs(record.tenant):
        return
    # the body the handler read (aiohttp keeps it: read() answers from memory); one it never read (refused
    # first) is not read now
    sent = await request.read() if request.body_exists and request.content.at_eof() else None
    folded = request.get(_STREAMED)
    if isinstance(response, web.Response):
        answer = response.body if isinstance(response.body, bytes) else None
    else:  # a stream, relayed whole or broken off (the client gone: no response)
        answer = None if folded is None else folded.body()
    request[BODIES] = (
        None if sent is None else policy.cut(sent),
        None if answer is None else policy.cut(answer),
    )
