"""The ``/ui`` dashboard: one static page and its script, reading the admin JSON APIs in the browser."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

_HERE = Path(__file__).parent
_TYPES = {"index.html": "text/html", "app.js": "text/javascript"}
_FILES = {name: (_HERE / name).read_bytes() for name in _TYPES}  # read once: a few kB


async def _serve(request: web.Request) -> web.Response:
    name = request.match_info.get("name") or "index.html"
    if name not in _FILES:
        raise web.HTTPNotFound()
    return web.Response(body=_FILES[name], content_type=_TYPES[name], headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui", _serve)
    app.router.add_get("/ui/{name}", _serve)


__all__ = ["add_routes"]
