"""A real OTLP/HTTP traces receiver on loopback: decodes each protobuf export request (opentelemetry-proto)."""

from __future__ import annotations

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.harness import ServerThread


class OtlpReceiver:
    def __init__(self) -> None:
        self.exports: list[ExportTraceServiceRequest] = []
        self.server = ServerThread(self._app)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        self.exports.append(export)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    def spans(self) -> list[tuple[dict[str, str], object]]:
        """(resource attributes, span) of every span received."""
        out: list[tuple[dict[str, str], object]] = []
        for export in list(self.exports):
            for resource_spans in export.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    out.extend((resource, span) for span in scope.spans)
        return out
