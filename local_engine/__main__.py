"""``python -m local_engine serve --model PATH --host 127.0.0.1 --port 8000 [--role prefill|decode|both]``
and ``python -m local_engine route --prefill URL --decode URL --both URL --port 8000``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from aiohttp import web

from local_engine.async_engine import AsyncEngine
from local_engine.disagg import add_prefill_routes, make_connector
from local_engine.disagg_router import DisaggRouter, build_router_app
from local_engine.server import build_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_engine")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    serve.add_argument("--model", default="smollm2", help="HF directory, .gguf file, or 'smollm2' (bundled)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-num-seqs", type=int, default=64)
    serve.add_argument("--max-num-batched-tokens", type=int, default=512)
    serve.add_argument(
        "--max-background-seqs",
        type=lambda v: None if v == "none" else int(v),
        default=0,
        help="worse-priority sequences decoded per step beside a better one ('none': no limit)",
    )
    serve.add_argument("--block-size", type=int, default=16)
    serve.add_argument("--kv-cache-gib", type=float, default=1.0)
    serve.add_argument("--device", default="cpu")
    serve.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    serve.add_argument("--no-prefix-caching", action="store_true")
    serve.add_argument(
        "--speculative",
        type=json.loads,
        default=None,
        help='speculative decoding, a JSON object: {"method": "ngram", "num_tokens": 4}',
    )
    serve.add_argument("--quantization", default=None, choices=["int8", "int4"])
    serve.add_argument("--max-loras", type=int, default=4, help="LoRA adapters resident at once (0: none)")
    serve.add_argument("--max-lora-rank", type=int, default=16)
    serve.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a PEFT adapter directory served as NAME (repeatable)",
    )
    serve.add_argument(
        "--role",
        default="both",
        choices=["prefill", "decode", "both"],
        help="prefill: hand prompts' KV to decode workers; decode: continue handoffs",
    )
    serve.add_argument(
        "--kv-transport", default="tcp", choices=["shm", "tcp"], help="how a prefill worker hands off"
    )
    serve.add_argument(
        "--kv-host", default="127.0.0.1", help="a tcp prefill worker's KV listener (and advertised) host"
    )
    serve.add_argument("--kv-port", type=int, default=0, help="its port (0: any free port)")
    serve.add_argument("--kv-ttl-s", type=float, default=30.0, help="how long an untaken handoff is kept")
    route = sub.add_parser("route", help="route prefill and decode to separate workers")
    route.add_argument("--prefill", action="append", default=[], help="a prefill worker's URL (repeatable)")
    route.add_argument("--decode", action="append", default=[], help="a decode worker's URL (repeatable)")
    route.add_argument("--both", action="append", default=[], help="a fallback worker's URL (repeatable)")
    route.add_argument(
        "--max-inflight", type=int, default=64, help="requests per worker before it counts as busy"
    )
    route.add_argument("--host", default="127.0.0.1")
    route.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    printer = lambda s: print(s, file=sys.stderr)  # noqa: E731
    if args.command == "route":
        router = DisaggRouter(args.prefill, args.decode, args.both, max_inflight=args.max_inflight)
        web.run_app(build_router_app(router), host=args.host, port=args.port, print=printer)
        return 0
    loras = [spec.partition("=")[::2] for spec in args.lora]
    if any(not name or not path for name, path in loras):
        parser.error("--lora takes NAME=PATH")
    opts = dict(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_background_seqs=args.max_background_seqs,
        block_size=args.block_size,
        kv_cache_bytes=int(args.kv_cache_gib * (1 << 30)),
        device=args.device,
        dtype=args.dtype,
        enable_prefix_caching=not args.no_prefix_caching,
        speculative=args.speculative,
        quantization=args.quantization,
        max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank,
    )

    async def factory() -> AsyncEngine:
        engine = await AsyncEngine.create(args.model, **opts)
        for name, path in loras:
            await engine.add_lora(name, path)
        return engine

    app = build_app(factory)
    if args.role == "prefill":
        add_prefill_routes(
            app, make_connector(args.kv_transport, host=args.kv_host, port=args.kv_port, ttl_s=args.kv_ttl_s)
        )
    web.run_app(app, host=args.host, port=args.port, print=printer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
