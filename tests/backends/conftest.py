from tests.fakes.providers import fakes, gateway_clock, provider_gateway

__all__ = ["fakes", "gateway_clock", "provider_gateway"]
