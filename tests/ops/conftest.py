from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ops.otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    """A real OTLP/HTTP receiver on loopback, for the tracing tests' exports."""
    receiver = OtlpReceiver()
    receiver.server.start()
    yield receiver
    receiver.server.stop()
