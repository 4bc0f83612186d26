"""Typed keys for what the aiohttp app and each request carry."""

from aiohttp import web

from policies.record import RequestRecord
from policies.stores.layer import StoreLayer

from .state import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
STORES = web.AppKey("stores", StoreLayer)  # the process's store layer, kept across reloads
RECORD = web.RequestKey("record", RequestRecord)

__all__ = ["GATEWAY", "RECORD", "STORES", "RequestRecord"]
