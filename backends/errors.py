"""The gateway's one error tree. Every layer raises these; ``gateway`` turns them into responses.

    GatewayError                      500 api_error          (internal: a bug or an unexpected state)
    ├── ClientError                   4xx invalid_request_error
    │   ├── InvalidRequest            400 invalid_request_error
    │   │   └── ContextWindowExceeded 400 invalid_request_error / context_length_exceeded
    │   ├── RequestTimeout            408 invalid_request_error / request_timeout (the body came too slowly)
    │   ├── PayloadTooLarge           413 invalid_request_error
    │   ├── AuthenticationFailed      401 invalid_request_error / invalid_api_key
    │   ├── PermissionDenied          403 invalid_request_error / permission_denied
    │   ├── NotFound                  404 invalid_request_error / not_found
    │   │   └── ModelNotFound         404 invalid_request_error / model_not_found
    │   ├── MethodNotAllowed          405 invalid_request_error / method_not_allowed
    │   ├── RateLimited               429 requests|tokens / rate_limit_exceeded   (+ Retry-After, x-ratelimit-*)
    │   └── QuotaExceeded             429 insufficient_quota / insufficient_quota  (a budget's hard stop)
    ├── Unavailable                   503 service_unavailable     (no enabled deployment, shutting down)
    └── UpstreamError                 the upstream's status       (the upstream said no)
        ├── DeploymentBusy            429 rate_limit_error / deployment_busy  (its max_concurrency is taken)
        ├── UpstreamAuthFailed        502 upstream_error / upstream_auth_failed (the upstream refused the
        │                                 gateway's own credentials: the operator's to fix, never the client's 401)
        ├── UpstreamConnectionError   502 upstream_error / upstream_unreachable
        └── UpstreamTimeout           504 timeout / upstream_timeout
            └── DeadlineExceeded      504 timeout / deadline_exceeded (the request's total deadline)

Status, OpenAI error ``type``/``code`` and log level live on the class, so one look here
shows what a client sees for each. Every message is scrubbed of secrets (``secrets.scrub``) when the error is
made, so no body, stream error event, log line or request-log row built from it can carry a key.
"""

from __future__ import annotations

from typing import Any

from .secrets import scrub

# An upstream's 401/403 (and a proxy's 407) is about the gateway's credentials, which the client never sees.
AUTH_STATUSES = frozenset({401, 403, 407})


class GatewayError(Exception):
    status: int = 500
    type: str = "api_error"
    code: str | None = "internal_error"
    log_level: str = "error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None, error_type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
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
    status = 400
    type = "invalid_request_error"
    code: str | None = None
    log_level = "info"


class InvalidRequest(ClientError):
    pass


class ContextWindowExceeded(InvalidRequest):
    """The prompt does not fit any deployment's context window (refused before calling, as OpenAI would)."""

    code = "context_length_exceeded"


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(ClientError):
    status = 413
    code = "request_too_large"


class AuthenticationFailed(ClientError):
    status = 401
    code = "invalid_api_key"


class PermissionDenied(ClientError):
    status = 403
    code = "permission_denied"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class RateLimited(ClientError):
    """A limit of the gateway (not the upstream's): OpenAI's ``type`` names the bucket, requests or tokens."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"
    log_level = "warning"


class QuotaExceeded(ClientError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"
    log_level = "warning"


class Unavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"
    log_level = "warning"


class UpstreamError(GatewayError):
    """The upstream answered with an error; its status and error fields are passed on."""

    status = 502
    type = "upstream_error"
    code: str | None = None
    log_level = "warning"


class DeploymentBusy(UpstreamError):
    """A deployment's own in-flight cap (``max_concurrency``) is taken; another deployment may answer."""

    status = 429
    type = "rate_limit_error"
    code = "deployment_busy"


class UpstreamAuthFailed(UpstreamError):
    status = 502
    code = "upstream_auth_failed"
    log_level = "error"


def from_upstream(error: UpstreamError, backend_id: str) -> UpstreamError:
    """``error`` as the client should see it: an upstream's refusal of the gateway's own credentials becomes
    a 502 naming the deployment (the upstream's text is dropped: it may quote part of the key)."""
    if error.status not in AUTH_STATUSES:
        return error
    return UpstreamAuthFailed(
        f"upstream {backend_id} refused the gateway's credentials for this deployment (HTTP {error.status}); "
        "the gateway's operator must check the deployment's api_key or credentials. Your own API key was "
        "accepted by the gateway.", headers=error.headers)


class UpstreamConnectionError(UpstreamError):
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout"
    code = "upstream_timeout"


class DeadlineExceeded(UpstreamTimeout):
    code = "deadline_exceeded"
