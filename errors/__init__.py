"""The gateway's one error tree. Every layer raises these (``backends`` the upstream ones, ``policies`` and
``gateway`` the client ones); the gateway turns them into responses and one log line per request. It sits
below every layer and imports none of them.

    class                             status  type / code                                    log level
    GatewayError                      500  api_error / internal_error                        error   (a bug, an unexpected state)
    ├── ClientError                   4xx  invalid_request_error                             info    (the client's request)
    │   ├── InvalidRequest            400  invalid_request_error                             info
    │   │   └── ContextWindowExceeded 400  invalid_request_error / context_length_exceeded   info
    │   ├── RequestTimeout            408  invalid_request_error / request_timeout           info    (the body came too slowly)
    │   ├── PayloadTooLarge           413  invalid_request_error / request_too_large         info
    │   ├── AuthenticationFailed      401  invalid_request_error / invalid_api_key           warning (a wrong key: worth seeing)
    │   ├── PermissionDenied          403  invalid_request_error / permission_denied         warning
    │   ├── NotFound                  404  invalid_request_error / not_found                 info
    │   │   └── ModelNotFound         404  invalid_request_error / model_not_found           info
    │   ├── MethodNotAllowed          405  invalid_request_error / method_not_allowed        info
    │   ├── RateLimited               429  requests|tokens / rate_limit_exceeded             warning (+ Retry-After, x-ratelimit-*)
    │   └── QuotaExceeded             429  insufficient_quota / insufficient_quota           warning (a budget's hard stop)
    ├── Unavailable                   503  service_unavailable / service_unavailable         warning (no enabled deployment, shutting down)
    └── UpstreamError                 the upstream's status, type and code; else 502 upstream_error   warning (the upstream said no)
        ├── DeploymentBusy            429  rate_limit_error / deployment_busy                warning (its max_concurrency is taken)
        ├── UpstreamAuthFailed        502  upstream_error / upstream_auth_failed             error   (the upstream refused the gateway's
        │                                                                                            own credentials: the operator's to fix)
        ├── UpstreamConnectionError   502  upstream_error / upstream_unreachable             warning
        └── UpstreamTimeout           504  timeout / upstream_timeout                        warning
            └── DeadlineExceeded      504  timeout / deadline_exceeded                       warning (the request's total deadline)

``MAPPING`` below is the one place that sets them; an instance may carry another status, type or code (an
upstream's own), and keeps its class's log level. Every message is scrubbed of secrets (``secrets.scrub``) when
the error is made, so no body, stream error event, log line or request-log row built from it carries a key.
"""

from __future__ import annotations

from typing import Any, Literal

from .secrets import scrub

LogLevel = Literal["info", "warning", "error"]


class GatewayError(Exception):
    status: int
    type: str
    code: str | None
    log_level: LogLevel

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = scrub(message)
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if error_type is not None:
            self.type = error_type

    def body(self) -> dict[str, Any]:
        """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ClientError(GatewayError):
    """Something wrong with the client's request; the status says what (4xx)."""


class InvalidRequest(ClientError):
    pass


class ContextWindowExceeded(InvalidRequest):
    """The prompt does not fit any deployment's context window (refused before calling, as OpenAI would)."""


class RequestTimeout(ClientError):
    pass


class PayloadTooLarge(ClientError):
    pass


class AuthenticationFailed(ClientError):
    pass


class PermissionDenied(ClientError):
    pass


class NotFound(ClientError):
    pass


class ModelNotFound(NotFound):
    pass


class MethodNotAllowed(ClientError):
    pass


class RateLimited(ClientError):
    """A limit of the gateway (not the upstream's): OpenAI's ``type`` names the bucket, requests or tokens."""


class QuotaExceeded(ClientError):
    pass


class Unavailable(GatewayError):
    pass


class UpstreamError(GatewayError):
    """The upstream answered with an error; its status and error fields are passed on."""


class DeploymentBusy(UpstreamError):
    """A deployment's own in-flight cap (``max_concurrency``) is taken; another deployment may answer."""


class UpstreamAuthFailed(UpstreamError):
    pass


# An upstream's 401/403 (and a proxy's 407) is about the gateway's credentials, which the client never sees.
AUTH_STATUSES = frozenset({401, 403, 407})


def from_upstream(error: UpstreamError, backend_id: str) -> UpstreamError:
    """``error`` as the client should see it: an upstream's refusal of the gateway's own credentials becomes
    a 502 naming the deployment (the upstream's text is dropped: it may quote part of the key)."""
    if error.status not in AUTH_STATUSES:
        return error
    return UpstreamAuthFailed(
        f"upstream {backend_id} refused the gateway's credentials for this deployment (HTTP {error.status}); "
        "the gateway's operator must check the deployment's api_key or credentials. Your own API key was "
        "accepted by the gateway.",
        headers=error.headers,
    )


class UpstreamConnectionError(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class DeadlineExceeded(UpstreamTimeout):
    pass


# What a client sees for each class (status, OpenAI's error type and code) and the level its request is logged at.
MAPPING: dict[type[GatewayError], tuple[int, str, str | None, LogLevel]] = {
    GatewayError: (500, "api_error", "internal_error", "error"),
    ClientError: (400, "invalid_request_error", None, "info"),
    InvalidRequest: (400, "invalid_request_error", None, "info"),
    ContextWindowExceeded: (400, "invalid_request_error", "context_length_exceeded", "info"),
    RequestTimeout: (408, "invalid_request_error", "request_timeout", "info"),
    PayloadTooLarge: (413, "invalid_request_error", "request_too_large", "info"),
    AuthenticationFailed: (401, "invalid_request_error", "invalid_api_key", "warning"),
    PermissionDenied: (403, "invalid_request_error", "permission_denied", "warning"),
    NotFound: (404, "invalid_request_error", "not_found", "info"),
    ModelNotFound: (404, "invalid_request_error", "model_not_found", "info"),
    MethodNotAllowed: (405, "invalid_request_error", "method_not_allowed", "info"),
    RateLimited: (429, "requests", "rate_limit_exceeded", "warning"),
    QuotaExceeded: (429, "insufficient_quota", "insufficient_quota", "warning"),
    Unavailable: (503, "service_unavailable", "service_unavailable", "warning"),
    UpstreamError: (502, "upstream_error", None, "warning"),
    DeploymentBusy: (429, "rate_limit_error", "deployment_busy", "warning"),
    UpstreamAuthFailed: (502, "upstream_error", "upstream_auth_failed", "error"),
    UpstreamConnectionError: (502, "upstream_error", "upstream_unreachable", "warning"),
    UpstreamTimeout: (504, "timeout", "upstream_timeout", "warning"),
    DeadlineExceeded: (504, "timeout", "deadline_exceeded", "warning"),
}
for _kind, (_status, _type, _code, _level) in MAPPING.items():
    _kind.status, _kind.type, _kind.code, _kind.log_level = _status, _type, _code, _level
