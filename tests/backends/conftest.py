from tests.fakes.providers import fakes, provider_gateway

__all__ = ["fakes", "provider_gateway"]
