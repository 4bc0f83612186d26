"""The store layer: one Redis client per process (or none: memory), one failure policy, a generic key/value
surface, and the stores each policy builds on it. See ``layer.py``."""

from .health import StoreHealth
from .keyvalue import KeyValue
from .layer import StoreLayer

__all__ = ["KeyValue", "StoreHealth", "StoreLayer"]
