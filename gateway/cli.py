"""``python -m gateway``: serve, check-config, keys new, top."""

from __future__ import annotations

import argparse
import sys

from .auth import hash_key, new_key
from .config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="LLM gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the gateway")
    serve.add_argument("--config", help="config file (default: the embedded config.yaml)")
    serve.add_argument("--host", help="address to listen on (default: server.host)")
    serve.add_argument("--port", type=int, help="port (default: server.port)")
    serve.add_argument(
        "--workers", type=int, help="worker processes sharing the port (default: server.workers)"
    )

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", nargs="?", help="config file (default: the embedded config.yaml)")

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    new = key_commands.add_parser("new", help="make a key for a tenant")
    new.add_argument("--tenant", required=True)

    top = commands.add_parser("top", help="live traffic per tenant and alias, from a gateway's /metrics")
    top.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway (default: %(default)s)")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default: 2)")
    top.add_argument("--once", action="store_true", help="print one view (rates over one interval) and exit")

    audit = commands.add_parser("audit", help="the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    check_chain = audit_commands.add_parser(
        "verify", help="check the audit log's hash chain (exit 1 if broken)"
    )
    check_chain.add_argument(
        "--config", help="config file whose audit.path to check (default: the embedded one)"
    )
    check_chain.add_argument("--path", help="the audit log file (instead of the config's)")

    args = parser.parse_args(argv)
    if args.command == "audit":
        return _verify_audit(args.path, args.config)
    if args.command == "top":
        from .top import run as run_top

        try:
            return run_top(args.url, args.interval, args.once)
        except OSError as exc:
            print(f"cannot read {args.url}/metrics: {exc}", file=sys.stderr)
            return 1
    if args.command == "keys":
        key = new_key()
        print(f"New key for tenant {args.tenant!r} (shown once; store it now):\n\n  {key}\n")
        print("Paste its hash into config.yaml under that tenant's keys:\n")
        print(f'  - name: {args.tenant}\n    keys: ["{hash_key(key)}"]')
        return 0

    path = args.file if args.command == "check-config" else args.config
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if args.command == "check-config":
        config = loaded.config
        deployments = sum(len(m.deployments) for m in config.models)
        print(
            f"{loaded.path}: OK ({len(config.models)} model aliases, {deployments} deployments, "
            f"{len(config.tenants)} tenants)"
        )
        for (alias, index), reason in loaded.disabled.items():
            print(f"  disabled: {alias} deployment {index}: {reason}")
        return 0

    from .server import Listen
    from .server import serve as run

    server = loaded.config.server
    listen = Listen(
        host=args.host or server.host,
        port=server.port if args.port is None else args.port,
        workers=args.workers or server.workers,
    )
    return run(path, listen)


def _verify_audit(path: str | None, config: str | None) -> int:
    from pathlib import Path

    from .security.audit import GENESIS, verify

    if path is None:
        try:
            path = load_config(config).config.audit.path
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 1
    file = Path(path).expanduser()
    verdict = verify(file)
    if not verdict.ok:
        print(f"{file}: BROKEN after {verdict.count} good records: {verdict.problem}", file=sys.stderr)
        return 1
    anchor = (
        "from the first record"
        if verdict.anchor == GENESIS
        else f"anchored at {verdict.anchor} (older records dropped by retention)"
    )
    print(f"{file}: OK, {verdict.count} records, chain intact {anchor}")
    return 0
