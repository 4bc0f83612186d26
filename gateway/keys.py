"""Typed keys for what the aiohttp app and each request carry."""

from aiohttp import web

from policies.record import RequestRecord

from .state import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
RECORD = web.RequestKey("record", RequestRecord)

__all__ = ["GATEWAY", "RECORD", "RequestRecord"]
